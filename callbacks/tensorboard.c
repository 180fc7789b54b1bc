/* TensorBoard event files written directly: TFRecord framing around Event
 * protocol buffers (wall_time = 1, step = 2, file_version = 3, summary = 5;
 * Summary.value = 1; Value.tag = 1, Value.simple_value = 2). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

/* CRC-32C (Castagnoli), table-driven; TFRecord masks it. */
static uint32_t crc_table[256];

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t masked_crc32c(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++)
    c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  c ^= 0xFFFFFFFFu;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

typedef struct buf {
  uint8_t b[1024];
  size_t n;
} buf;

static void put(buf *b, const void *p, size_t n) {
  if (b->n + n <= sizeof b->b) {
    memcpy(b->b + b->n, p, n);
    b->n += n;
  }
}

static void put_byte(buf *b, uint8_t v) { put(b, &v, 1); }

static void put_varint(buf *b, uint64_t v) {
  do {
    uint8_t byte = v & 0x7F;
    v >>= 7;
    put_byte(b, byte | (v ? 0x80 : 0));
  } while (v);
}

/* Little-endian fixed-width fields, as protobuf and TFRecord want them. */
static void put_le(buf *b, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++)
    put_byte(b, (uint8_t)(v >> (8 * i)));
}

static void put_double(buf *b, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  put_le(b, u, 8);
}

static void put_float(buf *b, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  put_le(b, u, 4);
}

static void put_bytes_field(buf *b, uint8_t key, const void *p, size_t n) {
  put_byte(b, key);
  put_varint(b, n);
  put(b, p, n);
}

typedef struct tensorboard {
  FILE *f;
  char path[4096];
  int64_t batch_every;
} tensorboard;

static int write_record(tensorboard *t, const buf *event) {
  buf head = {.n = 0};
  put_le(&head, event->n, 8);
  uint32_t len_crc = masked_crc32c(head.b, 8);
  put_le(&head, len_crc, 4);
  buf tail = {.n = 0};
  put_le(&tail, masked_crc32c(event->b, event->n), 4);
  if (fwrite(head.b, 1, head.n, t->f) != head.n || fwrite(event->b, 1, event->n, t->f) != event->n ||
      fwrite(tail.b, 1, tail.n, t->f) != tail.n)
    return loom_error_set(LOOM_EIO, "tensorboard: writing %s failed: %s", t->path, strerror(errno));
  return 0;
}

static void event_head(buf *e, int64_t step) {
  e->n = 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  put_byte(e, 0x09);
  put_double(e, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
  put_byte(e, 0x10);
  put_varint(e, (uint64_t)step);
}

static int write_scalar(tensorboard *t, const char *tag, double value, int64_t step) {
  buf v = {.n = 0}, summary = {.n = 0}, e;
  put_bytes_field(&v, 0x0a, tag, strlen(tag));
  put_byte(&v, 0x15);
  put_float(&v, (float)value);
  put_bytes_field(&summary, 0x0a, v.b, v.n);
  event_head(&e, step);
  put_bytes_field(&e, 0x2a, summary.b, summary.n);
  return write_record(t, &e);
}

static int write_metrics(tensorboard *t, const loom_metrics *m, const char *prefix, bool skip_slashed, int64_t step) {
  char tag[512];
  for (size_t i = 0; i < loom_metrics_count(m); i++) {
    const char *name = loom_metrics_name(m, i);
    if (skip_slashed && strchr(name, '/'))
      continue;
    if (prefix)
      snprintf(tag, sizeof tag, "%s/%s", prefix, name);
    else
      snprintf(tag, sizeof tag, "%s", name);
    int rc = write_scalar(t, tag, loom_metrics_value(m, i), step);
    if (rc < 0)
      return rc;
  }
  return fflush(t->f) == 0 ? 0 : loom_error_set(LOOM_EIO, "tensorboard: flushing %s failed: %s", t->path, strerror(errno));
}

static int tb_experiment_start(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  if (loom_runner_resumed_finished(r))
    return 0; /* nothing will run: no file */
  const char *logdir = loom_runner_logdir(r);
  char host[256] = "localhost", name[512];
  gethostname(host, sizeof host - 1);
  /* A new file per run, never an old one reopened ("x": exclusive); the
   * counter separates runs of one process within one second. TensorBoard
   * merges a logdir's files by step. */
  int rc = loom_runner_lock_logdir(r);
  if (rc == 0)
    rc = loom_mkdir_p(logdir);
  for (int k = 0; rc == 0 && !t->f; k++) {
    snprintf(name, sizeof name, "events.out.tfevents.%lld.%s.%ld.%d.loom", (long long)time(NULL), host,
             (long)getpid(), k);
    rc = loom_path_join(t->path, sizeof t->path, logdir, name);
    if (rc == 0 && !(t->f = fopen(t->path, "wbx")) && (errno != EEXIST || k == 1000))
      rc = loom_error_set(LOOM_EIO, "tensorboard: cannot create %s: %s", t->path, strerror(errno));
  }
  if (rc < 0)
    return rc;
  buf e;
  event_head(&e, 0);
  put_bytes_field(&e, 0x1a, "brain.Event:2", 13);
  rc = write_record(t, &e);
  return rc == 0 && fflush(t->f) != 0 ? loom_error_set(LOOM_EIO, "tensorboard: flushing %s failed: %s", t->path, strerror(errno)) : rc;
}

static int tb_batch_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  if (!t->f || t->batch_every <= 0 || !loom_runner_is_train_loader(r) ||
      loom_runner_global_batch_step(r) % t->batch_every != 0)
    return 0;
  char prefix[300];
  snprintf(prefix, sizeof prefix, "batch/%s", loom_runner_loader_name(r));
  return write_metrics(t, loom_runner_batch_metrics(r), prefix, false, loom_runner_global_batch_step(r));
}

static int tb_loader_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  return t->f ? write_metrics(t, loom_runner_loader_metrics(r), loom_runner_loader_name(r), false,
                              loom_runner_global_epoch(r))
              : 0;
}

static int tb_epoch_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  return t->f ? write_metrics(t, loom_runner_epoch_metrics(r), NULL, true, loom_runner_global_epoch(r)) : 0;
}

static int tb_experiment_end(loom_callback *cb, loom_runner *r) {
  (void)r;
  tensorboard *t = loom_callback_data(cb);
  int rc = 0;
  if (t->f && fclose(t->f) != 0)
    rc = loom_error_set(LOOM_EIO, "tensorboard: closing %s failed: %s", t->path, strerror(errno));
  t->f = NULL;
  return rc;
}

static void tb_destroy(void *data) {
  tensorboard *t = data;
  if (t->f)
    fclose(t->f);
  free(t);
}

static const loom_callback_ops tensorboard_ops = {
    .type = "tensorboard",
    .on_experiment_start = tb_experiment_start,
    .on_batch_end = tb_batch_end,
    .on_loader_end = tb_loader_end,
    .on_epoch_end = tb_epoch_end,
    .on_experiment_end = tb_experiment_end,
    .destroy = tb_destroy,
};

static uv_once_t crc_once = UV_ONCE_INIT;

loom_callback *loom_tensorboard_logger_create(int64_t batch_every) {
  if (batch_every < 0) {
    loom_error_set(LOOM_EINVAL, "tensorboard: batch_every must be >= 0");
    return NULL;
  }
  uv_once(&crc_once, crc_init);
  tensorboard *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("the tensorboard logger");
    return NULL;
  }
  t->batch_every = batch_every;
  loom_callback *cb = loom_callback_create(&tensorboard_ops, t, LOOM_ORDER_LOGGING);
  if (cb)
    loom_callback_set_node(cb, LOOM_NODE_MASTER);
  return cb;
}
