/* A snapshot taken at any event resumes exactly. A two-stage run takes one
 * at every event (experiment, stage, epoch, loader and batch starts and
 * ends, at a middle batch, the second loader, epoch 2 of stage 2); a fresh
 * run resumed from each ends with the same parameters, optimizer state,
 * counters, metrics and metrics.jsonl, bit for bit, and sees the same
 * history (every batch, loader, epoch and stage end after the snapshot)
 * as the run that was never stopped. Also: what the counters read at each
 * event, and that a batch skipped by the SKIP policy counts as a batch but
 * not as a step. */
#include <math.h>

#include "helpers.h"

/* --- a growing text trace --- */

typedef struct text {
  char *s;
  size_t len, cap;
} text;

static void appendf(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void appendf(text *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (t->len + (size_t)n + 1 > t->cap) {
    t->cap = (t->len + (size_t)n + 1) * 2;
    t->s = realloc(t->s, t->cap);
    assert_non_null(t->s);
  }
  va_start(ap, fmt);
  vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
  va_end(ap);
  t->len += (size_t)n;
}

static void append_metrics(text *t, const loom_metrics *m) {
  for (size_t i = 0; i < loom_metrics_count(m); i++)
    appendf(t, " %s=%a", loom_metrics_name(m, i), loom_metrics_value(m, i));
}

static void append_counters(text *t, loom_runner *r) {
  appendf(t, " s%d e%d g%d gbs%lld gss%lld lss%lld opt%lld", loom_runner_stage_index(r), loom_runner_epoch(r),
          loom_runner_global_epoch(r), (long long)loom_runner_global_batch_step(r),
          (long long)loom_runner_global_sample_step(r), (long long)loom_runner_loader_sample_step(r),
          (long long)loom_runner_optimizer_step_count(r));
}

/* --- the recorder: the run's history, as seen at end events --- */

static int rec_batch_end(loom_callback *cb, loom_runner *r) {
  text *t = loom_callback_data(cb);
  appendf(t, "batch_end %s:%lld", loom_runner_loader_name(r), (long long)loom_runner_loader_batch_step(r));
  append_counters(t, r);
  append_metrics(t, loom_runner_batch_metrics(r));
  appendf(t, "\n");
  return 0;
}

static int rec_loader_end(loom_callback *cb, loom_runner *r) {
  text *t = loom_callback_data(cb);
  appendf(t, "loader_end %s", loom_runner_loader_name(r));
  append_counters(t, r);
  append_metrics(t, loom_runner_loader_metrics(r));
  appendf(t, "\n");
  return 0;
}

static int rec_epoch_end(loom_callback *cb, loom_runner *r) {
  text *t = loom_callback_data(cb);
  appendf(t, "epoch_end best%d is_best%d", loom_runner_best_epoch(r), loom_runner_is_best_valid(r));
  append_counters(t, r);
  append_metrics(t, loom_runner_epoch_metrics(r));
  appendf(t, " | best");
  append_metrics(t, loom_runner_best_valid_metrics(r));
  appendf(t, "\n");
  return 0;
}

static int rec_stage_end(loom_callback *cb, loom_runner *r) {
  text *t = loom_callback_data(cb);
  appendf(t, "stage_end %s", loom_runner_stage_name(r));
  append_counters(t, r);
  appendf(t, "\n");
  return 0;
}

static const loom_callback_ops recorder_ops = {.type = "recorder",
                                               .on_batch_end = rec_batch_end,
                                               .on_loader_end = rec_loader_end,
                                               .on_epoch_end = rec_epoch_end,
                                               .on_stage_end = rec_stage_end};

/* --- the snapshotter: saves <dir>/<file> at chosen points --- */

typedef struct point {
  const char *file;
  loom_event event;
  int stage;          /* index; -1 before the first stage */
  int global_epoch;   /* 0: any */
  const char *loader; /* NULL: any */
  int64_t batch;      /* 0: any */
  size_t trace_at;    /* the recorder's length when saved */
  bool taken;
} point;

static point points[] = {
    {"experiment_start.h5", LOOM_EVENT_EXPERIMENT_START, -1, 0, NULL, 0, 0, false},
    {"stage_start_1.h5", LOOM_EVENT_STAGE_START, 0, 0, NULL, 0, 0, false},
    {"stage_start_2.h5", LOOM_EVENT_STAGE_START, 1, 0, NULL, 0, 0, false},
    {"epoch_start.h5", LOOM_EVENT_EPOCH_START, 1, 4, NULL, 0, 0, false},
    {"loader_start.h5", LOOM_EVENT_LOADER_START, 1, 4, "valid", 0, 0, false},
    {"batch_start_train.h5", LOOM_EVENT_BATCH_START, 1, 4, "train", 2, 0, false},
    {"batch_start_valid.h5", LOOM_EVENT_BATCH_START, 1, 4, "valid", 2, 0, false},
    {"batch_end.h5", LOOM_EVENT_BATCH_END, 1, 4, "train", 2, 0, false},
    {"loader_end_train.h5", LOOM_EVENT_LOADER_END, 1, 4, "train", 0, 0, false},
    {"loader_end_valid.h5", LOOM_EVENT_LOADER_END, 1, 4, "valid", 0, 0, false},
    {"epoch_end.h5", LOOM_EVENT_EPOCH_END, 1, 4, NULL, 0, 0, false},
    {"stage_end_1.h5", LOOM_EVENT_STAGE_END, 0, 0, NULL, 0, 0, false},
    {"stage_end_2.h5", LOOM_EVENT_STAGE_END, 1, 0, NULL, 0, 0, false},
    {"experiment_end.h5", LOOM_EVENT_EXPERIMENT_END, 1, 0, NULL, 0, 0, false},
};
#define NUM_POINTS (sizeof points / sizeof points[0])

typedef struct snapper {
  const char *dir;
  const text *trace;
  point *points;
  size_t n;
} snapper;

static int snap(loom_callback *cb, loom_runner *r, loom_event e) {
  snapper *s = loom_callback_data(cb);
  for (size_t i = 0; i < s->n; i++) {
    point *p = &s->points[i];
    const char *loader = loom_runner_loader_name(r);
    if (p->event != e || p->stage != loom_runner_stage_index(r) ||
        (p->global_epoch && p->global_epoch != loom_runner_global_epoch(r)) ||
        (p->loader && (!loader || strcmp(p->loader, loader) != 0)) ||
        (p->batch && p->batch != loom_runner_loader_batch_step(r)))
      continue;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", s->dir, p->file);
    int rc = loom_runner_save_checkpoint(r, path);
    if (rc < 0)
      return rc;
    p->trace_at = s->trace ? s->trace->len : 0;
    p->taken = true;
  }
  return 0;
}

#define SNAP(fn, ev) \
  static int fn(loom_callback *cb, loom_runner *r) { return snap(cb, r, ev); }
SNAP(snap_exp_start, LOOM_EVENT_EXPERIMENT_START)
SNAP(snap_stage_start, LOOM_EVENT_STAGE_START)
SNAP(snap_epoch_start, LOOM_EVENT_EPOCH_START)
SNAP(snap_loader_start, LOOM_EVENT_LOADER_START)
SNAP(snap_batch_start, LOOM_EVENT_BATCH_START)
SNAP(snap_batch_end, LOOM_EVENT_BATCH_END)
SNAP(snap_loader_end, LOOM_EVENT_LOADER_END)
SNAP(snap_epoch_end, LOOM_EVENT_EPOCH_END)
SNAP(snap_stage_end, LOOM_EVENT_STAGE_END)
SNAP(snap_exp_end, LOOM_EVENT_EXPERIMENT_END)

static const loom_callback_ops snapper_ops = {.type = "snapper",
                                              .on_experiment_start = snap_exp_start,
                                              .on_stage_start = snap_stage_start,
                                              .on_epoch_start = snap_epoch_start,
                                              .on_loader_start = snap_loader_start,
                                              .on_batch_start = snap_batch_start,
                                              .on_batch_end = snap_batch_end,
                                              .on_loader_end = snap_loader_end,
                                              .on_epoch_end = snap_epoch_end,
                                              .on_stage_end = snap_stage_end,
                                              .on_experiment_end = snap_exp_end};

/* --- the experiment --- */

/* Stage "warmup": 2 epochs of SGD with momentum; stage "tune": 3 epochs of
 * Adam on new loaders. Batches of 16 with a partial last one: train 3+4
 * batches, valid 3. The checkpoint, early-stopping and metrics-logger
 * callbacks bring saved state of their own. */
static loom_experiment *build(const char *logdir, text *trace, snapper *snapshots) {
  loom_experiment *exp = loom_experiment_create("events");
  loom_experiment_set_seed(exp, 5);
  loom_experiment_set_logdir(exp, logdir);
  const int64_t sizes[] = {8, 16, 3};
  loom_sgd_options sgd = {.lr = 0.05, .momentum = 0.9};
  loom_adam_options adam = loom_adam_defaults();
  adam.lr = 0.01;
  loom_stage *a = loom_experiment_add_stage(exp, "warmup", 2);
  assert_int_equal(loom_stage_set_model(a, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(a, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(a, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(a, "train", test_loader(40, 8, 3, 16, true)), 0);
  assert_int_equal(loom_stage_add_loader(a, "valid", test_loader(40, 8, 3, 16, false)), 0);
  loom_stage *b = loom_experiment_add_stage(exp, "tune", 3);
  assert_int_equal(loom_stage_set_optimizer(b, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(b, "train", test_loader(56, 8, 3, 16, true)), 0);
  assert_int_equal(loom_stage_add_loader(b, "valid", test_loader(40, 8, 3, 16, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  loom_early_stopping_options es = loom_early_stopping_defaults();
  es.patience = 100;
  es.restore_best_weights = true;
  assert_int_equal(loom_experiment_add_callback(exp, loom_early_stopping_callback_create(&es)), 0);
  if (trace)
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&recorder_ops, trace, 290)), 0);
  if (snapshots)
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&snapper_ops, snapshots, 300)), 0);
  return exp;
}

/* What a run ends with. */
typedef struct outcome {
  float *params, *opt_state;
  size_t n, opt_n;
  text state; /* counters and metrics */
  char *jsonl;
} outcome;

static void keep_outcome(loom_runner *r, const char *logdir, outcome *o) {
  loom_model *m = loom_runner_model(r);
  o->n = loom_model_num_params(m);
  o->params = malloc(o->n * sizeof(float));
  memcpy(o->params, loom_model_params(m), o->n * sizeof(float));
  loom_optimizer *opt = loom_runner_optimizer(r);
  float *st = loom_optimizer_state(opt, &o->opt_n);
  o->opt_state = malloc((o->opt_n ? o->opt_n : 1) * sizeof(float));
  memcpy(o->opt_state, st, o->opt_n * sizeof(float));
  appendf(&o->state, "stage %s lbs%lld best%d opt_steps%lld lr=%a", loom_runner_stage_name(r),
          (long long)loom_runner_loader_batch_step(r), loom_runner_best_epoch(r), (long long)loom_optimizer_steps(opt),
          loom_optimizer_lr(opt));
  append_counters(&o->state, r);
  appendf(&o->state, "\nloader");
  append_metrics(&o->state, loom_runner_loader_metrics(r));
  appendf(&o->state, "\nepoch");
  append_metrics(&o->state, loom_runner_epoch_metrics(r));
  appendf(&o->state, "\nbest");
  append_metrics(&o->state, loom_runner_best_valid_metrics(r));
  o->jsonl = jsonl_without_time(logdir);
}

static void outcome_free(outcome *o) {
  free(o->params);
  free(o->opt_state);
  free(o->state.s);
  free(o->jsonl);
}

static void expect_same(const outcome *want, const outcome *got) {
  assert_int_equal(want->n, got->n);
  assert_memory_equal(want->params, got->params, want->n * sizeof(float));
  assert_int_equal(want->opt_n, got->opt_n);
  assert_memory_equal(want->opt_state, got->opt_state, want->opt_n * sizeof(float));
  assert_string_equal(want->state.s, got->state.s);
  assert_string_equal(want->jsonl, got->jsonl);
}

static char *ref_dir, *snap_dir;
static outcome reference;
static text ref_trace;

/* The uninterrupted run, taking every snapshot along the way. */
static int setup(void **state) {
  (void)state;
  ref_dir = test_tmpdir();
  snap_dir = test_tmpdir();
  static snapper s;
  s = (snapper){.dir = snap_dir, .trace = &ref_trace, .points = points, .n = NUM_POINTS};
  loom_experiment *exp = build(ref_dir, &ref_trace, &s);
  loom_runner *r = loom_runner_create();
  int rc = loom_run_experiment(r, exp);
  if (rc == 0)
    keep_outcome(r, ref_dir, &reference);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  for (size_t i = 0; rc == 0 && i < NUM_POINTS; i++)
    if (!points[i].taken) {
      fprintf(stderr, "no snapshot was taken for %s: %s\n", points[i].file, loom_last_error());
      rc = -1;
    }
  return rc;
}

static int teardown(void **state) {
  (void)state;
  outcome_free(&reference);
  free(ref_trace.s);
  test_rm_rf(ref_dir);
  test_rm_rf(snap_dir);
  free(ref_dir);
  free(snap_dir);
  return 0;
}

static void copy_file(const char *from, const char *to) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  assert_int_equal(system(cmd), 0);
}

static const point *point_named(const char *file) {
  for (size_t i = 0; i < NUM_POINTS; i++)
    if (strcmp(points[i].file, file) == 0)
      return &points[i];
  fail_msg("no point %s", file);
  return NULL;
}

/* Resumes a fresh run from `path` in a logdir holding the reference's
 * whole metrics.jsonl (as a killed run leaves it); `extra` snapshots the
 * resumed run too. The history it records must be the reference's from
 * `trace_at` on. Returns the runner, for more checks. */
static loom_runner *resume_from(const char *path, size_t trace_at, snapper *extra) {
  char jsonl[512], ref_jsonl[512];
  char *dir = test_tmpdir();
  snprintf(jsonl, sizeof jsonl, "%s/metrics.jsonl", dir);
  snprintf(ref_jsonl, sizeof ref_jsonl, "%s/metrics.jsonl", ref_dir);
  copy_file(ref_jsonl, jsonl);
  text trace = {0};
  appendf(&trace, "%s", "");
  loom_experiment *exp = build(dir, &trace, extra);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_runner_set_resume(r, path), 0);
  int rc = loom_run_experiment(r, exp);
  if (rc != 0)
    fail_msg("resuming from %s: %s", path, loom_last_error());
  assert_true(loom_runner_is_resumed(r));
  outcome got = {0};
  keep_outcome(r, dir, &got);
  assert_string_equal(ref_trace.s + trace_at, trace.s);
  expect_same(&reference, &got);
  outcome_free(&got);
  free(trace.s);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
  return r;
}

static void resume_matches(const char *file) {
  const point *p = point_named(file);
  char path[512];
  snprintf(path, sizeof path, "%s/%s", snap_dir, file);
  loom_runner_destroy(resume_from(path, p->trace_at, NULL));
}

#define RESUME_TEST(name, file) \
  static void name(void **state) { (void)state; resume_matches(file); }
RESUME_TEST(test_resume_at_experiment_start, "experiment_start.h5")
RESUME_TEST(test_resume_at_first_stage_start, "stage_start_1.h5")
RESUME_TEST(test_resume_at_stage_start, "stage_start_2.h5")
RESUME_TEST(test_resume_at_epoch_start, "epoch_start.h5")
RESUME_TEST(test_resume_at_loader_start, "loader_start.h5")
RESUME_TEST(test_resume_at_train_batch_start, "batch_start_train.h5")
RESUME_TEST(test_resume_at_valid_batch_start, "batch_start_valid.h5")
RESUME_TEST(test_resume_at_batch_end, "batch_end.h5")
RESUME_TEST(test_resume_at_loader_end, "loader_end_train.h5")
RESUME_TEST(test_resume_at_last_loader_end, "loader_end_valid.h5")
RESUME_TEST(test_resume_at_epoch_end, "epoch_end.h5")
RESUME_TEST(test_resume_at_first_stage_end, "stage_end_1.h5")
RESUME_TEST(test_resume_at_stage_end, "stage_end_2.h5")

/* A run resumed from its end has nothing left to do: it returns 0, trains
 * nothing, says so, and ends in the state the run ended in. */
static void test_resume_at_experiment_end(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/experiment_end.h5", snap_dir);
  loom_runner *r = resume_from(path, point_named("experiment_end.h5")->trace_at, NULL);
  assert_non_null(strstr(loom_runner_resume_notice(r), "had finished"));
  loom_runner_destroy(r);
}

/* A resumed run, snapshotted before its saved state is back (at
 * on_experiment_start, and at the replayed on_stage_start), saves the
 * state it resumes: resuming from those equals the reference too. */
static void test_snapshot_while_resuming(void **state) {
  (void)state;
  char path[512], again[512];
  char *dir = test_tmpdir();
  point resumed[] = {
      {"again_experiment_start.h5", LOOM_EVENT_EXPERIMENT_START, -1, 0, NULL, 0, 0, false},
      {"again_stage_start.h5", LOOM_EVENT_STAGE_START, 1, 0, NULL, 0, 0, false},
  };
  snapper s = {.dir = dir, .points = resumed, .n = 2};
  const point *p = point_named("batch_end.h5");
  snprintf(path, sizeof path, "%s/batch_end.h5", snap_dir);
  loom_runner_destroy(resume_from(path, p->trace_at, &s));
  for (int i = 0; i < 2; i++) {
    assert_true(resumed[i].taken);
    snprintf(again, sizeof again, "%s/%s", dir, resumed[i].file);
    loom_runner_destroy(resume_from(again, p->trace_at, NULL));
  }
  test_rm_rf(dir);
  free(dir);
}

/* --- a callback ordered after the snapshotting one --- */

/* Counts a loader's samples: resets at on_loader_start, counts at
 * on_batch_start, reports at on_loader_end; the count is saved state. */
typedef struct sample_counter {
  int64_t count;
  text trace;
} sample_counter;

static int sc_loader_start(loom_callback *cb, loom_runner *r) {
  (void)r;
  ((sample_counter *)loom_callback_data(cb))->count = 0;
  return 0;
}

static int sc_batch_start(loom_callback *cb, loom_runner *r) {
  ((sample_counter *)loom_callback_data(cb))->count += loom_runner_batch_size(r);
  return 0;
}

static int sc_loader_end(loom_callback *cb, loom_runner *r) {
  sample_counter *c = loom_callback_data(cb);
  appendf(&c->trace, "%d %s %lld\n", loom_runner_global_epoch(r), loom_runner_loader_name(r), (long long)c->count);
  return 0;
}

static int sc_save(loom_callback *cb, loom_runner *r, loom_state *s) {
  (void)r;
  return loom_state_set_i64(s, "count", ((sample_counter *)loom_callback_data(cb))->count);
}

static int sc_load(loom_callback *cb, loom_runner *r, const loom_state *s) {
  (void)r;
  return loom_state_get_i64(s, "count", &((sample_counter *)loom_callback_data(cb))->count);
}

static const loom_callback_ops sample_counter_ops = {.type = "sample_counter",
                                                     .on_loader_start = sc_loader_start,
                                                     .on_batch_start = sc_batch_start,
                                                     .on_loader_end = sc_loader_end,
                                                     .save = sc_save,
                                                     .load = sc_load};

/* One stage of 2 epochs in `dir`: an MLP 8-16-3 with SGD, train 40
 * samples (16+16+8), valid 24 (16+8). */
static loom_experiment *small_experiment(const char *name, const char *dir) {
  loom_experiment *exp = loom_experiment_create(name);
  loom_experiment_set_logdir(exp, dir);
  const int64_t sizes[] = {8, 16, 3};
  loom_sgd_options sgd = {.lr = 0.05};
  loom_stage *st = loom_experiment_add_stage(exp, "train", 2);
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(40, 8, 3, 16, true)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(24, 8, 3, 16, false)), 0);
  return exp;
}

/* Train 40 samples, valid 24, 2 epochs; the counter at order 400. */
static char *count_samples(const char *resume, snapper *snapshots) {
  char *dir = test_tmpdir();
  loom_experiment *exp = small_experiment("late", dir);
  static sample_counter c;
  c = (sample_counter){0};
  appendf(&c.trace, "%s", "");
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&sample_counter_ops, &c, 400)), 0);
  if (snapshots)
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&snapper_ops, snapshots, 300)), 0);
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, resume), 0);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
  return c.trace.s;
}

/* At a start event the callbacks after the snapshotting one have not yet
 * started the unit: on resume they start it, from the saved state, and a
 * count reset at on_loader_start carries nothing of the loader before. */
static void test_later_callback_starts_afresh(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  point late[] = {
      {"loader_start.h5", LOOM_EVENT_LOADER_START, 0, 2, "valid", 0, 0, false},
      {"epoch_start.h5", LOOM_EVENT_EPOCH_START, 0, 2, NULL, 0, 0, false},
  };
  snapper s = {.dir = dir, .points = late, .n = 2};
  char *whole = count_samples(NULL, &s);
  assert_string_equal(whole, "1 train 40\n1 valid 24\n2 train 40\n2 valid 24\n");
  const char *want[] = {"2 valid 24\n", "2 train 40\n2 valid 24\n"};
  for (int i = 0; i < 2; i++) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, late[i].file);
    char *got = count_samples(path, NULL);
    assert_string_equal(got, want[i]);
    free(got);
  }
  free(whole);
  test_rm_rf(dir);
  free(dir);
}

/* --- counters at each event --- */

static int count_event(loom_callback *cb, loom_runner *r, const char *event) {
  text *t = loom_callback_data(cb);
  if (loom_runner_global_epoch(r) != 2)
    return 0;
  bool batch = strncmp(event, "batch", 5) == 0;
  appendf(t, "%s", event);
  if (loom_runner_loader_name(r))
    appendf(t, " %s b%lld lss%lld", loom_runner_loader_name(r), (long long)loom_runner_loader_batch_step(r),
            (long long)loom_runner_loader_sample_step(r));
  if (batch)
    appendf(t, " bs%lld skipped%d", (long long)loom_runner_batch_size(r), loom_runner_batch_skipped(r));
  appendf(t, " gbs%lld gss%lld opt%lld\n", (long long)loom_runner_global_batch_step(r),
          (long long)loom_runner_global_sample_step(r), (long long)loom_runner_optimizer_step_count(r));
  return 0;
}

#define COUNT(fn, ev) \
  static int fn(loom_callback *cb, loom_runner *r) { return count_event(cb, r, ev); }
COUNT(count_epoch_start, "epoch_start")
COUNT(count_loader_start, "loader_start")
COUNT(count_batch_start, "batch_start")
COUNT(count_batch_end, "batch_end")
COUNT(count_loader_end, "loader_end")
COUNT(count_epoch_end, "epoch_end")

static const loom_callback_ops counter_ops = {.type = "counters",
                                              .on_epoch_start = count_epoch_start,
                                              .on_loader_start = count_loader_start,
                                              .on_batch_start = count_batch_start,
                                              .on_batch_end = count_batch_end,
                                              .on_loader_end = count_loader_end,
                                              .on_epoch_end = count_epoch_end};

/* The supervised batch, except that train batch `skip` (global) has a
 * non-finite loss, which the SKIP policy drops. */
static int64_t skip_at;
static int skipping_batch(loom_runner *r, void *user) {
  (void)user;
  if (loom_runner_is_train_loader(r) && loom_runner_global_batch_step(r) == skip_at) {
    int rc = loom_runner_check_loss(r, NAN);
    return rc < 0 ? rc : 0;
  }
  return loom_supervised_handle_batch(r, NULL);
}

/* Train 40 samples (16+16+8), valid 24 (16+8), 2 epochs; the trace of
 * epoch 2. */
static char *count_run(int64_t skip, loom_runner **keep) {
  char *dir = test_tmpdir();
  loom_experiment *exp = small_experiment("counters", dir);
  static text t;
  t = (text){0};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&counter_ops, &t, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.nonfinite = LOOM_NONFINITE_SKIP;
  o.nonfinite_budget = 10;
  loom_runner_set_options(r, &o);
  skip_at = skip;
  loom_runner_set_handle_batch(r, skipping_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  *keep = r;
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
  return t.s;
}

/* Batch counters number the current batch: from on_batch_start they
 * include it, so both events of a batch read the same numbers (Catalyst's
 * rule). The optimizer step count is Lightning's global_step: steps done,
 * so on_batch_start does not count the current batch's step yet. */
static void test_counters_at_each_event(void **state) {
  (void)state;
  loom_runner *r;
  char *got = count_run(0, &r);
  assert_string_equal(got, "epoch_start gbs3 gss40 opt3\n"
                           "loader_start train b0 lss0 gbs3 gss40 opt3\n"
                           "batch_start train b1 lss16 bs16 skipped0 gbs4 gss56 opt3\n"
                           "batch_end train b1 lss16 bs16 skipped0 gbs4 gss56 opt4\n"
                           "batch_start train b2 lss32 bs16 skipped0 gbs5 gss72 opt4\n"
                           "batch_end train b2 lss32 bs16 skipped0 gbs5 gss72 opt5\n"
                           "batch_start train b3 lss40 bs8 skipped0 gbs6 gss80 opt5\n"
                           "batch_end train b3 lss40 bs8 skipped0 gbs6 gss80 opt6\n"
                           "loader_end train b3 lss40 gbs6 gss80 opt6\n"
                           "loader_start valid b0 lss0 gbs6 gss80 opt6\n"
                           "batch_start valid b1 lss16 bs16 skipped0 gbs6 gss80 opt6\n"
                           "batch_end valid b1 lss16 bs16 skipped0 gbs6 gss80 opt6\n"
                           "batch_start valid b2 lss24 bs8 skipped0 gbs6 gss80 opt6\n"
                           "batch_end valid b2 lss24 bs8 skipped0 gbs6 gss80 opt6\n"
                           "loader_end valid b2 lss24 gbs6 gss80 opt6\n"
                           "epoch_end gbs6 gss80 opt6\n");
  free(got);
  loom_runner_destroy(r);
}

/* A skipped batch was served and seen: it counts in the batch and sample
 * steps (global and loader), but it takes no optimizer step and adds no
 * metrics. */
static void test_skipped_batch_counts_as_a_batch(void **state) {
  (void)state;
  loom_runner *r;
  char *got = count_run(5, &r); /* epoch 2, train batch 2 */
  assert_string_equal(got, "epoch_start gbs3 gss40 opt3\n"
                           "loader_start train b0 lss0 gbs3 gss40 opt3\n"
                           "batch_start train b1 lss16 bs16 skipped0 gbs4 gss56 opt3\n"
                           "batch_end train b1 lss16 bs16 skipped0 gbs4 gss56 opt4\n"
                           "batch_start train b2 lss32 bs16 skipped0 gbs5 gss72 opt4\n"
                           "batch_end train b2 lss32 bs16 skipped1 gbs5 gss72 opt4\n"
                           "batch_start train b3 lss40 bs8 skipped0 gbs6 gss80 opt4\n"
                           "batch_end train b3 lss40 bs8 skipped0 gbs6 gss80 opt5\n"
                           "loader_end train b3 lss40 gbs6 gss80 opt5\n"
                           "loader_start valid b0 lss0 gbs6 gss80 opt5\n"
                           "batch_start valid b1 lss16 bs16 skipped0 gbs6 gss80 opt5\n"
                           "batch_end valid b1 lss16 bs16 skipped0 gbs6 gss80 opt5\n"
                           "batch_start valid b2 lss24 bs8 skipped0 gbs6 gss80 opt5\n"
                           "batch_end valid b2 lss24 bs8 skipped0 gbs6 gss80 opt5\n"
                           "loader_end valid b2 lss24 gbs6 gss80 opt5\n"
                           "epoch_end gbs6 gss80 opt5\n");
  free(got);
  loom_runner_destroy(r);
}

/* The skipped batch's loss is in no loader metric: the train loss is the
 * mean of the other two batches', weighted by their sizes. */
typedef struct losses {
  double batch[3], loader;
} losses;

static int loss_batch_end(loom_callback *cb, loom_runner *r) {
  losses *l = loom_callback_data(cb);
  double v = NAN;
  if (loom_runner_global_epoch(r) == 1 && loom_runner_is_train_loader(r))
    loom_metrics_get(loom_runner_batch_metrics(r), "loss", &v), l->batch[loom_runner_loader_batch_step(r) - 1] = v;
  return 0;
}

static int loss_loader_end(loom_callback *cb, loom_runner *r) {
  losses *l = loom_callback_data(cb);
  if (loom_runner_global_epoch(r) == 1 && loom_runner_is_train_loader(r))
    assert_true(loom_metrics_get(loom_runner_loader_metrics(r), "loss", &l->loader));
  return 0;
}

static void test_skipped_batch_adds_no_metrics(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_experiment *exp = loom_experiment_create("skip");
  loom_experiment_set_logdir(exp, dir);
  const int64_t sizes[] = {8, 16, 3};
  loom_sgd_options sgd = {.lr = 0.05};
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(40, 8, 3, 16, true)), 0);
  static losses l;
  l = (losses){{0, 0, 0}, 0};
  static const loom_callback_ops ops = {.type = "losses", .on_batch_end = loss_batch_end,
                                        .on_loader_end = loss_loader_end};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&ops, &l, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.nonfinite = LOOM_NONFINITE_SKIP;
  o.nonfinite_budget = 10;
  loom_runner_set_options(r, &o);
  skip_at = 2;
  loom_runner_set_handle_batch(r, skipping_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(isnan(l.batch[1])); /* no loss metric for the skipped batch */
  assert_true(l.loader == (l.batch[0] * 16 + l.batch[2] * 8) / 24);
  assert_int_equal(loom_runner_global_batch_step(r), 3);
  assert_int_equal(loom_runner_global_sample_step(r), 40);
  assert_int_equal(loom_runner_optimizer_step_count(r), 2);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resume_at_experiment_start),
      cmocka_unit_test(test_resume_at_first_stage_start),
      cmocka_unit_test(test_resume_at_stage_start),
      cmocka_unit_test(test_resume_at_epoch_start),
      cmocka_unit_test(test_resume_at_loader_start),
      cmocka_unit_test(test_resume_at_train_batch_start),
      cmocka_unit_test(test_resume_at_valid_batch_start),
      cmocka_unit_test(test_resume_at_batch_end),
      cmocka_unit_test(test_resume_at_loader_end),
      cmocka_unit_test(test_resume_at_last_loader_end),
      cmocka_unit_test(test_resume_at_epoch_end),
      cmocka_unit_test(test_resume_at_first_stage_end),
      cmocka_unit_test(test_resume_at_stage_end),
      cmocka_unit_test(test_resume_at_experiment_end),
      cmocka_unit_test(test_snapshot_while_resuming),
      cmocka_unit_test(test_later_callback_starts_afresh),
      cmocka_unit_test(test_counters_at_each_event),
      cmocka_unit_test(test_skipped_batch_counts_as_a_batch),
      cmocka_unit_test(test_skipped_batch_adds_no_metrics),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
