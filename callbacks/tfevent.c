/* TensorBoard event files: see callbacks/tfevent.h. */
#include "callbacks/tfevent.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "core/error_internal.h"
#include "core/fs.h"

/* CRC-32C (Castagnoli), table-driven; TFRecord masks it. */
static uint32_t crc_table[256];
static uv_once_t crc_once = UV_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
    crc_table[i] = c;
  }
}

static uint32_t masked_crc32c(const uint8_t *p, size_t n) {
  uv_once(&crc_once, crc_init);
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++)
    c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
  c ^= 0xFFFFFFFFu;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

void loom_pb_free(loom_pb *m) {
  free(m->b);
  *m = (loom_pb){0};
}

static void put(loom_pb *m, const void *p, size_t n) {
  if (m->failed || n == 0)
    return;
  if (m->n + n > m->cap) {
    size_t cap = m->cap ? m->cap : 256;
    while (cap < m->n + n)
      cap *= 2;
    uint8_t *b = realloc(m->b, cap);
    if (!b) {
      m->failed = true;
      return;
    }
    m->b = b, m->cap = cap;
  }
  memcpy(m->b + m->n, p, n);
  m->n += n;
}

static void put_varint(loom_pb *m, uint64_t v) {
  uint8_t b[10];
  size_t n = 0;
  do {
    b[n] = v & 0x7F;
    v >>= 7;
    b[n++] |= v ? 0x80 : 0;
  } while (v);
  put(m, b, n);
}

/* Little-endian fixed-width, as protobuf and TFRecord want them. */
static void put_le(loom_pb *m, uint64_t v, int bytes) {
  uint8_t b[8];
  for (int i = 0; i < bytes; i++)
    b[i] = (uint8_t)(v >> (8 * i));
  put(m, b, (size_t)bytes);
}

enum { WIRE_VARINT = 0, WIRE_FIXED64 = 1, WIRE_BYTES = 2, WIRE_FIXED32 = 5 };

static void put_key(loom_pb *m, int field, int wire) { put_varint(m, (uint64_t)field << 3 | (uint64_t)wire); }

void loom_pb_varint_field(loom_pb *m, int field, uint64_t v) {
  put_key(m, field, WIRE_VARINT);
  put_varint(m, v);
}

void loom_pb_double_field(loom_pb *m, int field, double v) {
  uint64_t u;
  memcpy(&u, &v, 8);
  put_key(m, field, WIRE_FIXED64);
  put_le(m, u, 8);
}

void loom_pb_float_field(loom_pb *m, int field, float v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  put_key(m, field, WIRE_FIXED32);
  put_le(m, u, 4);
}

void loom_pb_bytes_field(loom_pb *m, int field, const void *p, size_t n) {
  put_key(m, field, WIRE_BYTES);
  put_varint(m, n);
  put(m, p, n);
}

void loom_pb_string_field(loom_pb *m, int field, const char *s) { loom_pb_bytes_field(m, field, s, strlen(s)); }

void loom_pb_message_field(loom_pb *m, int field, const loom_pb *inner) {
  if (inner->failed)
    m->failed = true;
  loom_pb_bytes_field(m, field, inner->b, inner->n);
}

/* One TFRecord: length, its masked CRC, the data, the data's masked CRC. */
static int write_record(loom_tfevents *t, const loom_pb *event) {
  if (event->failed)
    return loom_error_oom("a TensorBoard event");
  loom_pb head = {0}, tail = {0};
  put_le(&head, event->n, 8);
  if (!head.failed) /* out of memory leaves no bytes to checksum */
    put_le(&head, masked_crc32c(head.b, 8), 4);
  put_le(&tail, masked_crc32c(event->b, event->n), 4);
  int rc = 0;
  if (head.failed || tail.failed)
    rc = loom_error_oom("a TensorBoard record");
  else if (fwrite(head.b, 1, head.n, t->f) != head.n || fwrite(event->b, 1, event->n, t->f) != event->n ||
           fwrite(tail.b, 1, tail.n, t->f) != tail.n)
    rc = loom_error_set(LOOM_EIO, "tensorboard: writing %s failed: %s", t->path, strerror(errno));
  loom_pb_free(&head);
  loom_pb_free(&tail);
  return rc;
}

static void event_head(loom_pb *e, int64_t step) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  loom_pb_double_field(e, 1, (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9);
  loom_pb_varint_field(e, 2, (uint64_t)step);
}

int loom_tfevents_flush(loom_tfevents *t) {
  return fflush(t->f) == 0 ? 0 : loom_error_set(LOOM_EIO, "tensorboard: flushing %s failed: %s", t->path, strerror(errno));
}

int loom_tfevents_create(loom_tfevents *t, const char *dir) {
  char host[256] = "localhost", name[512];
  gethostname(host, sizeof host - 1);
  int rc = loom_mkdir_p(dir);
  t->f = NULL;
  /* "x": exclusive. TensorBoard merges a directory's files by step. */
  for (int k = 0; rc == 0 && !t->f; k++) {
    snprintf(name, sizeof name, "events.out.tfevents.%lld.%s.%ld.%d.loom", (long long)time(NULL), host,
             (long)getpid(), k);
    rc = loom_path_join(t->path, sizeof t->path, dir, name);
    if (rc == 0 && !(t->f = fopen(t->path, "wbx")) && (errno != EEXIST || k == 1000))
      rc = loom_error_set(LOOM_EIO, "tensorboard: cannot create %s: %s", t->path, strerror(errno));
  }
  if (rc < 0)
    return rc;
  loom_pb e = {0};
  event_head(&e, 0);
  loom_pb_string_field(&e, 3, "brain.Event:2");
  rc = write_record(t, &e);
  loom_pb_free(&e);
  return rc == 0 ? loom_tfevents_flush(t) : rc;
}

int loom_tfevents_write_summary(loom_tfevents *t, int64_t step, const loom_pb *summary) {
  loom_pb e = {0};
  event_head(&e, step);
  loom_pb_message_field(&e, 5, summary);
  int rc = write_record(t, &e);
  loom_pb_free(&e);
  return rc;
}

int loom_tfevents_write_scalar(loom_tfevents *t, const char *tag, double value, int64_t step) {
  loom_pb v = {0}, summary = {0};
  loom_pb_string_field(&v, 1, tag);
  loom_pb_float_field(&v, 2, (float)value);
  loom_pb_message_field(&summary, 1, &v);
  int rc = loom_tfevents_write_summary(t, step, &summary);
  loom_pb_free(&v);
  loom_pb_free(&summary);
  return rc;
}

int loom_tfevents_close(loom_tfevents *t) {
  int rc = 0;
  if (t->f && fclose(t->f) != 0)
    rc = loom_error_set(LOOM_EIO, "tensorboard: closing %s failed: %s", t->path, strerror(errno));
  t->f = NULL;
  return rc;
}
