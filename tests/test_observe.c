/* Timer, TensorBoard files parsed back, event filters, check run, batch
 * limits and overfitting. */
#include <dirent.h>
#include <math.h>
#include <time.h>

#include "helpers.h"

/* An independent CRC-32C: bit by bit, no table. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
  }
  return ~c;
}

static uint32_t unmask(uint32_t m) {
  uint32_t c = m - 0xa282ead8u;
  return (c << 15) | (c >> 17);
}

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

static uint64_t varint(const uint8_t **p) {
  uint64_t v = 0;
  for (int shift = 0;; shift += 7) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80))
      return v;
  }
}

typedef struct scalar {
  char tag[128];
  int64_t step;
  float value;
} scalar;

/* Parses a whole events file; returns the scalars, checks every CRC. */
static int parse_events(const char *path, scalar *out, int max, char *version) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  int n = 0;
  uint8_t head[12];
  version[0] = '\0';
  while (fread(head, 1, 12, f) == 12) {
    uint64_t len = le(head, 8);
    assert_int_equal(crc32c_bitwise(head, 8), unmask((uint32_t)le(head + 8, 4)));
    uint8_t *data = malloc(len + 4);
    assert_int_equal(fread(data, 1, len + 4, f), len + 4);
    assert_int_equal(crc32c_bitwise(data, len), unmask((uint32_t)le(data + len, 4)));
    const uint8_t *p = data, *end = data + len;
    int64_t step = 0;
    while (p < end) {
      uint8_t key = *p++;
      if (key == 0x09) {
        p += 8; /* wall time */
      } else if (key == 0x10) {
        step = (int64_t)varint(&p);
      } else if (key == 0x1a) {
        uint64_t l = varint(&p);
        memcpy(version, p, l);
        version[l] = '\0';
        p += l;
      } else if (key == 0x2a) { /* Summary { Value { tag, simple_value } } */
        uint64_t l = varint(&p);
        const uint8_t *s = p, *s_end = p + l;
        while (s < s_end) {
          assert_int_equal(*s++, 0x0a);
          uint64_t vl = varint(&s);
          const uint8_t *v = s;
          s += vl;
          assert_true(n < max);
          out[n].step = step;
          while (v < s) {
            uint8_t vk = *v++;
            if (vk == 0x0a) {
              uint64_t tl = varint(&v);
              memcpy(out[n].tag, v, tl);
              out[n].tag[tl] = '\0';
              v += tl;
            } else {
              assert_int_equal(vk, 0x15);
              uint32_t bits = (uint32_t)le(v, 4);
              memcpy(&out[n].value, &bits, 4);
              v += 4;
            }
          }
          n++;
        }
        p = s_end;
      } else {
        fail_msg("unexpected protobuf key 0x%02x", key);
      }
    }
    free(data);
  }
  fclose(f);
  return n;
}

static void test_crc32c_vector(void **state) {
  (void)state;
  assert_int_equal(crc32c_bitwise((const uint8_t *)"123456789", 9), 0xE3069283u);
}

static loom_experiment *two_stage_training(const char *dir, int epochs_second) {
  loom_experiment *exp = loom_experiment_create("observe");
  loom_experiment_set_logdir(exp, dir);
  const int64_t sizes[] = {8, 6, 3};
  loom_adam_options adam = loom_adam_defaults();
  loom_stage *a = loom_experiment_add_stage(exp, "pretrain", 2);
  assert_int_equal(loom_stage_set_model(a, loom_mlp_create(sizes, 3, 2)), 0);
  assert_int_equal(loom_stage_set_criterion(a, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(a, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(a, "train", test_loader(64, 8, 3, 16, true)), 0);
  assert_int_equal(loom_stage_add_loader(a, "valid", test_loader(32, 8, 3, 16, false)), 0);
  assert_non_null(loom_experiment_add_stage(exp, "train", epochs_second));
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_tensorboard_logger_create(0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_timer_callback_create()), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  return exp;
}

/* Names of the events files in dir, sorted, newline-separated. */
static int events_files(const char *dir, char files[][512], int max) {
  DIR *d = opendir(dir);
  int n = 0;
  for (struct dirent *e; (e = readdir(d)) && n < max;)
    if (strncmp(e->d_name, "events.out.tfevents.", 20) == 0)
      snprintf(files[n++], 512, "%s/%s", dir, e->d_name);
  closedir(d);
  return n;
}

static float jsonl_value(const char *dir, int global_epoch, const char *loader, const char *metric) {
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  float v = NAN;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    const char *name = json_string_value(json_object_get(row, "loader")); /* NULL: the epoch's row */
    if (json_integer_value(json_object_get(row, "global_epoch")) == global_epoch &&
        (loader ? name && strcmp(name, loader) == 0 : !name))
      v = (float)json_real_value(json_object_get(json_object_get(row, "metrics"), metric));
    json_decref(row);
  }
  free(text);
  return v;
}

static void test_tensorboard_and_timer(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_experiment *exp = two_stage_training(dir, 2);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  /* The timer's loader metrics. */
  double sps, frac;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/time/samples_per_s", &sps));
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/time/data_fraction", &frac));
  assert_true(sps > 0 && frac >= 0 && frac <= 1);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);

  char files[4][512];
  assert_int_equal(events_files(dir, files, 4), 1);
  static scalar s[512];
  char version[64];
  int n = parse_events(files[0], s, 512, version);
  assert_string_equal(version, "brain.Event:2");
  /* Steps run 1..4 across both stages; values equal metrics.jsonl's. */
  int seen_loss[5] = {0};
  for (int i = 0; i < n; i++) {
    if (strcmp(s[i].tag, "valid/loss") == 0) {
      assert_true(s[i].step >= 1 && s[i].step <= 4);
      seen_loss[s[i].step]++;
      assert_true(s[i].value == jsonl_value(dir, (int)s[i].step, "valid", "loss"));
    }
    if (strcmp(s[i].tag, "lr") == 0)
      assert_true(fabsf(s[i].value - 1e-3f) < 1e-9f);
  }
  for (int e = 1; e <= 4; e++)
    assert_int_equal(seen_loss[e], 1);

  /* Resumed for one more epoch: a second file, its steps continuing at 5. */
  exp = two_stage_training(dir, 3);
  r = loom_runner_create();
  loom_runner_set_resume(r, "last");
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  assert_int_equal(events_files(dir, files, 4), 2);
  int steps5 = 0;
  for (int f = 0; f < 2; f++) {
    n = parse_events(files[f], s, 512, version);
    for (int i = 0; i < n; i++)
      steps5 += strcmp(s[i].tag, "train/accuracy") == 0 && s[i].step == 5;
  }
  assert_int_equal(steps5, 1);
  test_rm_rf(dir);
  free(dir);
}

/* --- loop control --- */

typedef struct counts {
  int batch_end[2]; /* train, valid */
  int epoch_end, loader_start;
  int64_t first_index[8];
  unsigned steps_heard; /* bit k: some loader's batch step k was heard */
} counts;

static int count_batch_end(loom_callback *cb, loom_runner *r) {
  counts *c = loom_callback_data(cb);
  c->batch_end[loom_runner_is_train_loader(r) ? 0 : 1]++;
  c->steps_heard |= 1u << loom_runner_loader_batch_step(r);
  return 0;
}

static int count_epoch_end(loom_callback *cb, loom_runner *r) {
  (void)r;
  ((counts *)loom_callback_data(cb))->epoch_end++;
  return 0;
}

static int count_loader_start(loom_callback *cb, loom_runner *r) {
  counts *c = loom_callback_data(cb);
  if (loom_runner_is_train_loader(r) && c->loader_start < 8)
    c->first_index[c->loader_start++] = loom_loader_order(loom_runner_loader(r))[0];
  return 0;
}

static const loom_callback_ops counting = {.type = "count",
                                           .on_batch_end = count_batch_end,
                                           .on_epoch_end = count_epoch_end,
                                           .on_loader_start = count_loader_start};

static int nothing(loom_runner *r, void *u) {
  (void)r, (void)u;
  return 0;
}

/* A 2-stage run of 5 epochs each, loaders of 10 batches, with `cb`. */
static void count_run(loom_callback *cb, const loom_run_options *o) {
  loom_experiment *exp = loom_experiment_create("count");
  for (int s = 0; s < 2; s++) {
    loom_stage *st = loom_experiment_add_stage(exp, s ? "two" : "one", 5);
    assert_int_equal(loom_stage_add_loader(st, "train", test_loader(20, 2, 2, 2, true)), 0);
    assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(20, 2, 2, 2, false)), 0);
  }
  assert_int_equal(loom_experiment_add_callback(exp, cb), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, nothing, NULL);
  if (o)
    loom_runner_set_options(r, o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_event_filters(void **state) {
  (void)state;
  counts c = {0};
  loom_callback *cb = loom_callback_create(&counting, &c, 0);
  loom_event_filter f = {.every_batches = 3, .loaders = (const char *[]){"train"}, .num_loaders = 1};
  assert_int_equal(loom_callback_set_filter(cb, &f), 0);
  count_run(cb, NULL);
  assert_int_equal(c.batch_end[0], 10 * 3); /* batches 3, 6, 9 of 10 epochs */
  assert_int_equal(c.steps_heard, 1u << 3 | 1u << 6 | 1u << 9);
  assert_int_equal(c.batch_end[1], 0);      /* valid filtered out */
  assert_int_equal(c.epoch_end, 10);        /* epoch events unfiltered */
  memset(&c, 0, sizeof c);
  cb = loom_callback_create(&counting, &c, 0);
  f = (loom_event_filter){.once_epoch = 7, .every_batches = 0};
  assert_int_equal(loom_callback_set_filter(cb, &f), 0);
  count_run(cb, NULL);
  assert_int_equal(c.epoch_end, 1);
  assert_int_equal(c.batch_end[0] + c.batch_end[1], 10 * 20);
  memset(&c, 0, sizeof c);
  cb = loom_callback_create(&counting, &c, 0);
  f = (loom_event_filter){.every_epochs = 4, .once_batch = 25};
  assert_int_equal(loom_callback_set_filter(cb, &f), 0);
  count_run(cb, NULL);
  assert_int_equal(c.epoch_end, 2); /* global epochs 4 and 8 */
  assert_int_equal(c.batch_end[0], 1);
  assert_int_equal(c.batch_end[1], 0);
  /* The loader list is copied: the caller's array and strings, overwritten
   * with another name and freed right after the call, no longer matter. */
  memset(&c, 0, sizeof c);
  cb = loom_callback_create(&counting, &c, 0);
  char *name = strdup("valid");
  const char **names = malloc(sizeof *names);
  names[0] = name;
  f = (loom_event_filter){.loaders = names, .num_loaders = 1};
  assert_int_equal(loom_callback_set_filter(cb, &f), 0);
  memcpy(name, "train", 5);
  free(name);
  free(names);
  count_run(cb, NULL);
  assert_int_equal(c.batch_end[0], 0);
  assert_int_equal(c.batch_end[1], 10 * 10);
  assert_int_equal(c.loader_start, 0); /* train's loader events filtered out too */
}

static void test_check_limit_overfit(void **state) {
  (void)state;
  counts c = {0};
  loom_run_options o = loom_run_options_defaults();
  o.check = true;
  count_run(loom_callback_create(&counting, &c, 0), &o);
  assert_int_equal(c.epoch_end, 4);        /* 2 stages x 2 epochs */
  assert_int_equal(c.batch_end[0], 4 * 2); /* 2 batches per loader */
  assert_int_equal(c.batch_end[1], 4 * 2);
  memset(&c, 0, sizeof c);
  o = loom_run_options_defaults();
  o.limit_batches = 3;
  count_run(loom_callback_create(&counting, &c, 0), &o);
  assert_int_equal(c.epoch_end, 10);
  assert_int_equal(c.batch_end[0], 10 * 3);
  /* Overfit: every epoch the same first samples, though the loader shuffles. */
  memset(&c, 0, sizeof c);
  o = loom_run_options_defaults();
  o.overfit_batches = 2;
  count_run(loom_callback_create(&counting, &c, 0), &o);
  assert_int_equal(c.batch_end[0], 10 * 2);
  for (int i = 1; i < 8; i++)
    assert_int_equal(c.first_index[i], c.first_index[0]);
  /* ... while a normal run reshuffles. */
  memset(&c, 0, sizeof c);
  count_run(loom_callback_create(&counting, &c, 0), NULL);
  bool differs = false;
  for (int i = 1; i < 8; i++)
    differs = differs || c.first_index[i] != c.first_index[0];
  assert_true(differs);
}

/* --- time in collectives: a world of two whose gradient all-reduce sleeps --- */

#define COMM_SLEEP_NS 4000000L  /* in every allreduce_mean_f32 */
#define OUTSIDE_SLEEP_NS 3000000L /* in a callback, between collectives */

static int slow_means;
static void sleep_ns(long ns) { nanosleep(&(struct timespec){0, ns}, NULL); }
static int slow_mean(void *c, float *b, size_t n) {
  (void)c, (void)b, (void)n;
  slow_means++;
  sleep_ns(COMM_SLEEP_NS);
  return 0;
}
static int same_sum(void *c, double *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int same_bcast(void *c, void *b, size_t n, int root) { (void)c, (void)b, (void)n, (void)root; return 0; }
static int no_barrier(void *c) { (void)c; return 0; }
static const loom_comm_ops slow_ops = {.name = "slow", .allreduce_sum_f64 = same_sum, .allreduce_mean_f32 = slow_mean,
                                       .broadcast = same_bcast, .barrier = no_barrier};

typedef struct comm_seen {
  int means_at_start, means[3];       /* all-reduces of each train epoch */
  double comm_s[3], fraction[3], elapsed[3];
  int64_t batches[3];
} comm_seen;

static int seen_loader_start(loom_callback *cb, loom_runner *r) {
  ((comm_seen *)loom_callback_data(cb))->means_at_start = slow_means;
  (void)r;
  return 0;
}
static int seen_batch_end(loom_callback *cb, loom_runner *r) {
  (void)cb, (void)r;
  sleep_ns(OUTSIDE_SLEEP_NS); /* time in the loader that no collective may claim */
  return 0;
}
static int seen_loader_end(loom_callback *cb, loom_runner *r) {
  comm_seen *s = loom_callback_data(cb);
  int e = loom_runner_epoch(r);
  loom_metrics *m = loom_runner_loader_metrics(r);
  s->means[e] = slow_means - s->means_at_start;
  s->elapsed[e] = loom_runner_loader_elapsed(r);
  s->batches[e] = loom_runner_loader_batch_step(r);
  assert_true(loom_metrics_get(m, "time/comm_s", &s->comm_s[e]));
  assert_true(loom_metrics_get(m, "time/comm_fraction", &s->fraction[e]));
  return 0;
}

static void test_timer_comm_wait(void **state) {
  (void)state;
  /* The counter itself: three sleeping all-reduces, then a reset. */
  loom_comm *comm = loom_comm_create(&slow_ops, NULL, 0, 2);
  float g[2] = {0};
  slow_means = 0;
  for (int i = 0; i < 3; i++)
    assert_int_equal(loom_comm_allreduce_mean_f32(comm, g, 2), 0);
  assert_true(loom_comm_wait_seconds(comm) >= 3 * COMM_SLEEP_NS * 1e-9);
  loom_comm_reset_wait_seconds(comm);
  assert_true(loom_comm_wait_seconds(comm) == 0.0);

  /* In a run: rank 0's shard of 32 samples is 4 batches of 4, one
   * gradient all-reduce each; the timer's loader metrics count them and
   * not the sleep outside them. */
  static const loom_callback_ops seen_ops = {.type = "comm_seen",
                                             .on_loader_start = seen_loader_start,
                                             .on_batch_end = seen_batch_end,
                                             .on_loader_end = seen_loader_end};
  comm_seen seen = {0};
  loom_callback *watcher = loom_callback_create(&seen_ops, &seen, LOOM_ORDER_LOGGING);
  const char *train_only[] = {"train"};
  loom_event_filter f = {.loaders = train_only, .num_loaders = 1};
  assert_int_equal(loom_callback_set_filter(watcher, &f), 0);
  loom_experiment *exp = loom_experiment_create("comm_wait");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 2);
  const int64_t sizes[] = {8, 6, 3};
  loom_sgd_options sgd = {.lr = 0.1};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 2)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(32, 8, 3, 4, true)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(16, 8, 3, 4, false)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_timer_callback_create()), 0);
  assert_int_equal(loom_stage_add_callback(st, watcher), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_comm(r, comm);
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  for (int e = 1; e <= 2; e++) {
    assert_int_equal(seen.batches[e], 4);
    assert_int_equal(seen.means[e], 4);
    assert_true(seen.comm_s[e] >= 4 * COMM_SLEEP_NS * 1e-9);
    /* The callback's sleeps lie inside the loader and outside every collective. */
    assert_true(seen.comm_s[e] + 4 * OUTSIDE_SLEEP_NS * 1e-9 <= seen.elapsed[e]);
    assert_true(fabs(seen.fraction[e] - seen.comm_s[e] / seen.elapsed[e]) <= 1e-12);
  }
  /* The epoch metrics carry them, prefixed by the loader. */
  double frac;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/time/comm_fraction", &frac));
  assert_true(frac == seen.fraction[2]);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_crc32c_vector),
      cmocka_unit_test(test_tensorboard_and_timer),
      cmocka_unit_test(test_timer_comm_wait),
      cmocka_unit_test(test_event_filters),
      cmocka_unit_test(test_check_limit_overfit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
