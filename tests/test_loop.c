/* The loop's event semantics, checked against traces written out by hand
 * (or by nested loops that restate DESIGN.md's pseudo-code). */
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

typedef struct trace {
  char lines[4096][48];
  int n;
} trace;

static void record(trace *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void record(trace *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  if (t->n < 4096)
    vsnprintf(t->lines[t->n++], sizeof t->lines[0], fmt, ap);
  va_end(ap);
}

/* The recorder notes every event, tagged with its name when `tagged`. */
typedef struct recorder {
  trace *t;
  const char *tag;
  int fail_event;     /* -1: never */
  int fail_at_batch;  /* with BATCH events: the loader batch step */
  int stop_what;      /* request this stop ... */
  int stop_event;     /* ... at this event ... */
  int stop_at;        /* ... at this batch step (batch events) or epoch */
  bool handle;        /* mark errors handled */
} recorder;

static void note(loom_callback *cb, loom_runner *r, loom_event e) {
  recorder *rec = loom_callback_data(cb);
  char where[40] = "";
  switch (e) {
  case LOOM_EVENT_STAGE_START:
  case LOOM_EVENT_STAGE_END: snprintf(where, sizeof where, ":%s", loom_runner_stage_name(r)); break;
  case LOOM_EVENT_EPOCH_START:
  case LOOM_EVENT_EPOCH_END: snprintf(where, sizeof where, ":%d", loom_runner_epoch(r)); break;
  case LOOM_EVENT_LOADER_START:
  case LOOM_EVENT_LOADER_END: snprintf(where, sizeof where, ":%s", loom_runner_loader_name(r)); break;
  case LOOM_EVENT_BATCH_START:
  case LOOM_EVENT_BATCH_END: snprintf(where, sizeof where, ":%lld", (long long)loom_runner_loader_batch_step(r)); break;
  default: break;
  }
  if (rec->tag)
    record(rec->t, "%s %s%s", rec->tag, loom_event_name(e), where);
  else
    record(rec->t, "%s%s", loom_event_name(e), where);
}

static bool at(const recorder *rec, loom_runner *r, loom_event e, int wanted_event) {
  if ((int)e != wanted_event)
    return false;
  if (e == LOOM_EVENT_BATCH_START || e == LOOM_EVENT_BATCH_END)
    return loom_runner_loader_batch_step(r) == rec->stop_at || loom_runner_loader_batch_step(r) == rec->fail_at_batch;
  return true;
}

static int on_event(loom_callback *cb, loom_runner *r, loom_event e) {
  recorder *rec = loom_callback_data(cb);
  note(cb, r, e);
  if (rec->stop_what && (int)e == rec->stop_event &&
      ((e == LOOM_EVENT_BATCH_END && loom_runner_loader_batch_step(r) == rec->stop_at &&
        loom_runner_is_train_loader(r)) ||
       (e == LOOM_EVENT_EPOCH_END && loom_runner_epoch(r) == rec->stop_at)))
    loom_runner_request_stop(r, (loom_stop)rec->stop_what);
  if (at(rec, r, e, rec->fail_event) &&
      (e != LOOM_EVENT_BATCH_END || loom_runner_loader_batch_step(r) == rec->fail_at_batch))
    return loom_error_set(LOOM_EINVAL, "injected failure");
  if (e == LOOM_EVENT_EXCEPTION && rec->handle)
    loom_runner_mark_error_handled(r);
  return 0;
}

#define HANDLER(fn, ev) \
  static int fn(loom_callback *cb, loom_runner *r) { return on_event(cb, r, ev); }
HANDLER(h_exp_start, LOOM_EVENT_EXPERIMENT_START)
HANDLER(h_stage_start, LOOM_EVENT_STAGE_START)
HANDLER(h_epoch_start, LOOM_EVENT_EPOCH_START)
HANDLER(h_loader_start, LOOM_EVENT_LOADER_START)
HANDLER(h_batch_start, LOOM_EVENT_BATCH_START)
HANDLER(h_batch_end, LOOM_EVENT_BATCH_END)
HANDLER(h_loader_end, LOOM_EVENT_LOADER_END)
HANDLER(h_epoch_end, LOOM_EVENT_EPOCH_END)
HANDLER(h_stage_end, LOOM_EVENT_STAGE_END)
HANDLER(h_exp_end, LOOM_EVENT_EXPERIMENT_END)
HANDLER(h_exception, LOOM_EVENT_EXCEPTION)

static const loom_callback_ops recorder_ops = {
    .type = "recorder",
    .on_experiment_start = h_exp_start,
    .on_stage_start = h_stage_start,
    .on_epoch_start = h_epoch_start,
    .on_loader_start = h_loader_start,
    .on_batch_start = h_batch_start,
    .on_batch_end = h_batch_end,
    .on_loader_end = h_loader_end,
    .on_epoch_end = h_epoch_end,
    .on_stage_end = h_stage_end,
    .on_experiment_end = h_exp_end,
    .on_exception = h_exception,
    .destroy = free,
};

/* Only on_epoch_start: for order tests. */
static const loom_callback_ops epoch_only_ops = {.type = "epoch_only", .on_epoch_start = h_epoch_start, .destroy = free};

static loom_callback *recorder_new(trace *t, const char *tag, int order) {
  recorder *rec = calloc(1, sizeof *rec);
  rec->t = t;
  rec->tag = tag;
  rec->fail_event = -1;
  loom_callback *cb = loom_callback_create(&recorder_ops, rec, order);
  assert_non_null(cb);
  return cb;
}

static recorder *rec_of(loom_callback *cb) { return loom_callback_data(cb); }

/* handle_batch that does no work: the loop alone is under test. */
static int noop_batch(loom_runner *r, void *user) {
  (void)user;
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", 1.0);
}

/* Two stages of `epochs` epochs, loaders train and valid of 3 batches each. */
static loom_experiment *two_stages(int epochs) {
  loom_experiment *exp = loom_experiment_create("trace");
  const char *names[2] = {"pretrain", "train"};
  for (int s = 0; s < 2; s++) {
    loom_stage *st = loom_experiment_add_stage(exp, names[s], epochs);
    assert_non_null(st);
    assert_int_equal(loom_stage_add_loader(st, "train", test_loader(6, 2, 2, 2, false)), 0);
    assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(6, 2, 2, 2, false)), 0);
  }
  return exp;
}

static int run(loom_experiment *exp, loom_runner **out) {
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, noop_batch, NULL);
  int rc = loom_run_experiment(r, exp);
  if (out)
    *out = r;
  else
    loom_runner_destroy(r);
  return rc;
}

static void expect_trace(const trace *got, const trace *want) {
  for (int i = 0; i < got->n && i < want->n; i++)
    if (strcmp(got->lines[i], want->lines[i]) != 0)
      fail_msg("event %d: got \"%s\", expected \"%s\"", i, got->lines[i], want->lines[i]);
  assert_int_equal(got->n, want->n);
}

/* DESIGN.md's loop, restated: the trace the runner must produce. */
static void expected_run(trace *w, int epochs, int train_batches_stop_at, int stop_stage_after_epoch) {
  const char *stages[2] = {"pretrain", "train"};
  record(w, "on_experiment_start");
  for (int s = 0; s < 2; s++) {
    record(w, "on_stage_start:%s", stages[s]);
    for (int e = 1; e <= epochs; e++) {
      record(w, "on_epoch_start:%d", e);
      const char *loaders[2] = {"train", "valid"};
      for (int l = 0; l < 2; l++) {
        record(w, "on_loader_start:%s", loaders[l]);
        int nb = (l == 0 && train_batches_stop_at) ? train_batches_stop_at : 3;
        for (int b = 1; b <= nb; b++) {
          record(w, "on_batch_start:%d", b);
          record(w, "on_batch_end:%d", b);
        }
        record(w, "on_loader_end:%s", loaders[l]);
      }
      record(w, "on_epoch_end:%d", e);
      if (s == 0 && e == stop_stage_after_epoch)
        break;
    }
    record(w, "on_stage_end:%s", stages[s]);
  }
  record(w, "on_experiment_end");
}

static void test_full_trace(void **state) {
  (void)state;
  static trace got, want;
  memset(&got, 0, sizeof got);
  memset(&want, 0, sizeof want);
  loom_experiment *exp = two_stages(2);
  assert_int_equal(loom_experiment_add_callback(exp, recorder_new(&got, NULL, 0)), 0);
  assert_int_equal(run(exp, NULL), 0);
  expected_run(&want, 2, 0, 0);
  assert_int_equal(want.n, 1 + 2 * (2 + 2 * (2 + 2 * (2 + 3 * 2))) + 1);
  expect_trace(&got, &want);
  loom_experiment_destroy(exp);
}

static void test_order_bands_and_ties(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = loom_experiment_create("order");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(2, 2, 2, 2, false)), 0);
  /* Registered out of order; equal orders must keep registration order. */
  const struct { const char *tag; int order; } cbs[] = {
      {"logger", LOOM_ORDER_LOGGING}, {"metric-a", LOOM_ORDER_METRIC}, {"external", LOOM_ORDER_EXTERNAL},
      {"metric-b", LOOM_ORDER_METRIC}, {"internal", LOOM_ORDER_INTERNAL}, {"metric-c", LOOM_ORDER_METRIC},
      {"scheduler", LOOM_ORDER_SCHEDULER}};
  for (size_t i = 0; i < sizeof cbs / sizeof cbs[0]; i++) {
    recorder *rec = calloc(1, sizeof *rec);
    rec->t = &got, rec->tag = cbs[i].tag, rec->fail_event = -1;
    assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&epoch_only_ops, rec, cbs[i].order)), 0);
  }
  assert_int_equal(run(exp, NULL), 0);
  const char *want[] = {"internal", "metric-a", "metric-b", "metric-c", "scheduler", "logger", "external"};
  assert_int_equal(got.n, 7);
  for (int i = 0; i < 7; i++) {
    char line[64];
    snprintf(line, sizeof line, "%s on_epoch_start:1", want[i]);
    assert_string_equal(got.lines[i], line);
  }
  /* The order is printable, in the same sequence. */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_int_equal(loom_experiment_print_callbacks(exp, 0, 1, f), 0);
  fclose(f);
  const char *internal = strstr(buf, "   0  epoch_only"), *external = strstr(buf, " 200  epoch_only");
  assert_non_null(internal);
  assert_non_null(external);
  assert_true(internal < external);
  free(buf);
  loom_experiment_destroy(exp);
}

/* A world of two where this process is `rank`; collectives are identities. */
static int id_sum(void *c, double *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int id_mean(void *c, float *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int id_bcast(void *c, void *b, size_t n, int root) { (void)c, (void)b, (void)n, (void)root; return 0; }
static int id_barrier(void *c) { (void)c; return 0; }
static const loom_comm_ops fake_ops = {
    .name = "fake", .allreduce_sum_f64 = id_sum, .allreduce_mean_f32 = id_mean, .broadcast = id_bcast, .barrier = id_barrier};

static void node_filter_on_rank(int rank) {
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = loom_experiment_create("nodes");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(2, 2, 2, 2, false)), 0);
  const char *tags[3] = {"all", "master", "workers"};
  loom_node nodes[3] = {LOOM_NODE_ALL, LOOM_NODE_MASTER, LOOM_NODE_WORKERS};
  for (int i = 0; i < 3; i++) {
    recorder *rec = calloc(1, sizeof *rec);
    rec->t = &got, rec->tag = tags[i], rec->fail_event = -1;
    loom_callback *cb = loom_callback_create(&epoch_only_ops, rec, 0);
    loom_callback_set_node(cb, nodes[i]);
    assert_int_equal(loom_stage_add_callback(st, cb), 0);
  }
  loom_runner *r = loom_runner_create();
  loom_runner_set_comm(r, loom_comm_create(&fake_ops, NULL, rank, 2));
  loom_runner_set_handle_batch(r, noop_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_rank(r), rank);
  assert_int_equal(got.n, 2);
  assert_string_equal(got.lines[0], "all on_epoch_start:1");
  assert_string_equal(got.lines[1], rank == 0 ? "master on_epoch_start:1" : "workers on_epoch_start:1");
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_node_filter(void **state) {
  (void)state;
  node_filter_on_rank(0);
  node_filter_on_rank(1);
}

static int count_prefix(const trace *t, const char *prefix) {
  int k = 0;
  for (int i = 0; i < t->n; i++)
    k += strncmp(t->lines[i], prefix, strlen(prefix)) == 0;
  return k;
}

static void test_scope(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = two_stages(1);
  loom_stage *first = loom_experiment_stage(exp, 0), *second = loom_experiment_stage(exp, 1);
  loom_callback *stage_cb = recorder_new(&got, "S1", 0);
  loom_callback *carried = recorder_new(&got, "E1", 0);
  loom_callback_set_scope(carried, LOOM_SCOPE_EXPERIMENT);
  assert_int_equal(loom_stage_add_callback(first, stage_cb), 0);
  assert_int_equal(loom_stage_add_callback(first, carried), 0);
  assert_int_equal(loom_stage_add_callback(second, recorder_new(&got, "S2", 0)), 0);
  assert_int_equal(run(exp, NULL), 0);
  /* Stage-scope callbacks see their own stage only; experiment-scope ones
   * carry over; both hear the experiment's start and end. */
  assert_int_equal(count_prefix(&got, "S1 on_stage_start"), 1);
  assert_int_equal(count_prefix(&got, "E1 on_stage_start"), 2);
  assert_int_equal(count_prefix(&got, "S2 on_stage_start"), 1);
  assert_int_equal(count_prefix(&got, "S1 on_epoch_start"), 1);
  assert_int_equal(count_prefix(&got, "E1 on_epoch_start"), 2);
  assert_int_equal(count_prefix(&got, "S1 on_stage_start:pretrain"), 1);
  assert_int_equal(count_prefix(&got, "S2 on_stage_start:train"), 1);
  assert_int_equal(count_prefix(&got, "S1 on_experiment_end"), 1);
  assert_int_equal(count_prefix(&got, "S2 on_experiment_start"), 1);
  /* In the second stage the carried callback runs before the stage's own
   * (equal order: carried callbacks come before the stage's own). */
  int e1 = -1, s2 = -1;
  for (int i = 0; i < got.n; i++) {
    if (e1 < 0 && strcmp(got.lines[i], "E1 on_stage_start:train") == 0)
      e1 = i;
    if (s2 < 0 && strcmp(got.lines[i], "S2 on_stage_start:train") == 0)
      s2 = i;
  }
  assert_true(e1 >= 0 && s2 == e1 + 1);
  loom_experiment_destroy(exp);
}

/* The resolved table, as data: equal orders run the experiment's callbacks,
 * then those carried from earlier stages, then the stage's own, each group
 * in registration order, whatever the order of registration across groups. */
typedef struct want_row {
  const char *name;
  int order;
  loom_node node;
  loom_scope scope;
  loom_callback_source source;
  int stage;
} want_row;

static void expect_rows(const loom_callback_info *rows, size_t n, const want_row *want, size_t wn) {
  for (size_t i = 0; i < n && i < wn; i++) {
    if (strcmp(rows[i].name, want[i].name) != 0)
      fail_msg("row %zu: got \"%s\", expected \"%s\"", i, rows[i].name, want[i].name);
    assert_string_equal(rows[i].type, "epoch_only");
    assert_int_equal(rows[i].order, want[i].order);
    assert_int_equal(rows[i].node, want[i].node);
    assert_int_equal(rows[i].scope, want[i].scope);
    assert_int_equal(rows[i].source, want[i].source);
    assert_int_equal(rows[i].stage, want[i].stage);
    assert_int_equal(rows[i].events, 1u << LOOM_EVENT_EPOCH_START);
    assert_string_equal(loom_callback_name(rows[i].callback), want[i].name);
  }
  assert_int_equal(n, wn);
}

static void expect_table(const loom_experiment *exp, int stage, int rank, const want_row *want, size_t wn) {
  loom_callback_info *rows;
  size_t n;
  assert_int_equal(loom_experiment_callback_table(exp, stage, rank, 2, &rows, &n), 0);
  expect_rows(rows, n, want, wn);
  free(rows);
}

static void test_callback_table_groups(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = two_stages(1);
  loom_stage *pre = loom_experiment_stage(exp, 0), *train = loom_experiment_stage(exp, 1);
  /* Registered interleaved across the groups: -1 the experiment, 0 and 1
   * the stages. */
  const struct { const char *tag; int where; int order; loom_scope scope; loom_node node; } reg[] = {
      {"b1", 1, 20, LOOM_SCOPE_STAGE, LOOM_NODE_ALL},       {"a_carried", 0, 20, LOOM_SCOPE_EXPERIMENT, LOOM_NODE_ALL},
      {"x1", -1, 20, LOOM_SCOPE_EXPERIMENT, LOOM_NODE_ALL}, {"a_stage", 0, 20, LOOM_SCOPE_STAGE, LOOM_NODE_ALL},
      {"w", 1, 20, LOOM_SCOPE_STAGE, LOOM_NODE_WORKERS},    {"x2", -1, 20, LOOM_SCOPE_EXPERIMENT, LOOM_NODE_ALL},
      {"early", 1, 0, LOOM_SCOPE_STAGE, LOOM_NODE_ALL},     {"b3", 1, 20, LOOM_SCOPE_STAGE, LOOM_NODE_ALL}};
  for (size_t i = 0; i < sizeof reg / sizeof reg[0]; i++) {
    recorder *rec = calloc(1, sizeof *rec);
    rec->t = &got, rec->tag = reg[i].tag, rec->fail_event = -1;
    loom_callback *cb = loom_callback_create(&epoch_only_ops, rec, reg[i].order);
    assert_int_equal(loom_callback_set_name(cb, reg[i].tag), 0);
    loom_callback_set_scope(cb, reg[i].scope);
    loom_callback_set_node(cb, reg[i].node);
    int rc = reg[i].where < 0   ? loom_experiment_add_callback(exp, cb)
             : reg[i].where == 0 ? loom_stage_add_callback(pre, cb)
                                 : loom_stage_add_callback(train, cb);
    assert_int_equal(rc, 0);
  }
  const loom_scope S = LOOM_SCOPE_STAGE, E = LOOM_SCOPE_EXPERIMENT;
  const loom_node ALL = LOOM_NODE_ALL;
  const want_row pretrain[] = {{"x1", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                               {"x2", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                               {"a_carried", 20, ALL, E, LOOM_SOURCE_STAGE, 0},
                               {"a_stage", 20, ALL, S, LOOM_SOURCE_STAGE, 0}};
  const want_row train_rank0[] = {{"early", 0, ALL, S, LOOM_SOURCE_STAGE, 1},
                                  {"x1", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                  {"x2", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                  {"a_carried", 20, ALL, E, LOOM_SOURCE_CARRIED, 0},
                                  {"b1", 20, ALL, S, LOOM_SOURCE_STAGE, 1},
                                  {"b3", 20, ALL, S, LOOM_SOURCE_STAGE, 1}};
  const want_row train_rank1[] = {{"early", 0, ALL, S, LOOM_SOURCE_STAGE, 1},
                                  {"x1", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                  {"x2", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                  {"a_carried", 20, ALL, E, LOOM_SOURCE_CARRIED, 0},
                                  {"b1", 20, ALL, S, LOOM_SOURCE_STAGE, 1},
                                  {"w", 20, LOOM_NODE_WORKERS, S, LOOM_SOURCE_STAGE, 1},
                                  {"b3", 20, ALL, S, LOOM_SOURCE_STAGE, 1}};
  const want_row experiment_events[] = {{"early", 0, ALL, S, LOOM_SOURCE_STAGE, 1},
                                        {"x1", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                        {"x2", 20, ALL, E, LOOM_SOURCE_EXPERIMENT, -1},
                                        {"a_carried", 20, ALL, E, LOOM_SOURCE_STAGE, 0},
                                        {"a_stage", 20, ALL, S, LOOM_SOURCE_STAGE, 0},
                                        {"b1", 20, ALL, S, LOOM_SOURCE_STAGE, 1},
                                        {"b3", 20, ALL, S, LOOM_SOURCE_STAGE, 1}};
#define N_ROWS(a) (sizeof(a) / sizeof((a)[0]))
  expect_table(exp, 0, 0, pretrain, N_ROWS(pretrain));
  expect_table(exp, 1, 0, train_rank0, N_ROWS(train_rank0));
  expect_table(exp, 1, 1, train_rank1, N_ROWS(train_rank1));
  expect_table(exp, LOOM_EXPERIMENT_EVENTS, 0, experiment_events, N_ROWS(experiment_events));
  loom_callback_info *rows = NULL;
  size_t n = 1;
  assert_int_equal(loom_experiment_callback_table(exp, 2, 0, 1, &rows, &n), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "no stage 2"));
  assert_int_equal(loom_experiment_callback_table(exp, 0, 1, 1, &rows, &n), LOOM_EINVAL);
  assert_null(rows);
  assert_int_equal(n, 0);

  /* The runner dispatches in exactly that order ... */
  loom_runner *r;
  assert_int_equal(run(exp, &r), 0);
  const want_row *stages[2] = {pretrain, train_rank0};
  size_t counts[2] = {N_ROWS(pretrain), N_ROWS(train_rank0)};
  int line = 0;
  for (int s = 0; s < 2; s++)
    for (size_t i = 0; i < counts[s]; i++, line++) {
      char want[64];
      snprintf(want, sizeof want, "%s on_epoch_start:1", stages[s][i].name);
      assert_true(line < got.n);
      assert_string_equal(got.lines[line], want);
    }
  assert_int_equal(got.n, line);
  /* ... its table after the run is the last stage's ... */
  assert_int_equal(loom_runner_callback_table(r, &rows, &n), 0);
  expect_rows(rows, n, train_rank0, N_ROWS(train_rank0));
  free(rows);
  /* ... and the printed tables list the same rows in the same order. */
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  assert_int_equal(loom_experiment_print_callbacks(exp, 0, 1, f), 0);
  loom_runner_print_callbacks(r, f);
  fclose(f);
  const char *p = buf;
  const want_row *printed[3] = {pretrain, train_rank0, train_rank0};
  size_t printed_n[3] = {N_ROWS(pretrain), N_ROWS(train_rank0), N_ROWS(train_rank0)};
  for (int t = 0; t < 3; t++)
    for (size_t i = 0; i < printed_n[t]; i++) {
      char want[64];
      snprintf(want, sizeof want, "  %4d  %-24s epoch_only", printed[t][i].order, printed[t][i].name);
      const char *at = strstr(p, want);
      if (!at)
        fail_msg("table %d: \"%s\" not printed after row %zu:\n%s", t, printed[t][i].name, i, buf);
      p = at + strlen(want);
    }
#undef N_ROWS
  free(buf);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* What a run leaves readable (loom/runner.h, loom_run_experiment). */
typedef struct end_probe {
  float params_at_start[64], params_at_end[64];
  size_t num_params;
  double last_train_loss;  /* "train/loss" at the last on_epoch_end */
  int64_t interrupt_at;    /* loom_runner_interrupt after this train batch (0: never) */
} end_probe;

static int probe_start(loom_callback *cb, loom_runner *r) {
  end_probe *p = loom_callback_data(cb);
  p->num_params = loom_model_num_params(loom_runner_model(r));
  assert_true(p->num_params <= 64);
  memcpy(p->params_at_start, loom_model_params(loom_runner_model(r)), p->num_params * sizeof(float));
  return 0;
}

static int probe_batch_end(loom_callback *cb, loom_runner *r) {
  end_probe *p = loom_callback_data(cb);
  if (p->interrupt_at && loom_runner_is_train_loader(r) && loom_runner_loader_batch_step(r) == p->interrupt_at)
    loom_runner_interrupt(r, "stopped by the test");
  return 0;
}

static int probe_epoch_end(loom_callback *cb, loom_runner *r) {
  end_probe *p = loom_callback_data(cb);
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/loss", &p->last_train_loss));
  return 0;
}

static int probe_end(loom_callback *cb, loom_runner *r) {
  end_probe *p = loom_callback_data(cb);
  memcpy(p->params_at_end, loom_model_params(loom_runner_model(r)), p->num_params * sizeof(float));
  return 0;
}

static const loom_callback_ops end_probe_ops = {.type = "end_probe",
                                                .on_stage_start = probe_start,
                                                .on_batch_end = probe_batch_end,
                                                .on_epoch_end = probe_epoch_end,
                                                .on_experiment_end = probe_end};

/* pretrain sets every component; train inherits them all. */
static loom_experiment *trained_two_stages(end_probe *p, loom_model **model, loom_optimizer **opt) {
  loom_experiment *exp = loom_experiment_create("after");
  loom_stage *pre = loom_experiment_add_stage(exp, "pretrain", 1);
  assert_non_null(loom_experiment_add_stage(exp, "train", 2));
  int64_t sizes[3] = {2, 4, 2};
  *model = loom_mlp_create(sizes, 3, 7);
  *opt = loom_sgd_create(&(loom_sgd_options){.lr = 0.5});
  assert_int_equal(loom_stage_set_model(pre, *model), 0);
  assert_int_equal(loom_stage_set_criterion(pre, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(pre, *opt), 0);
  assert_int_equal(loom_stage_add_loader(pre, "train", test_loader(8, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_add_loader(pre, "valid", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&end_probe_ops, p, 0)), 0);
  return exp;
}

static void test_state_after_run(void **state) {
  (void)state;
  static end_probe p;
  memset(&p, 0, sizeof p);
  loom_model *model;
  loom_optimizer *opt;
  loom_experiment *exp = trained_two_stages(&p, &model, &opt);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  /* While the experiment lives: the last stage's components, the model
   * holding the trained parameters the run ended with. */
  assert_ptr_equal(loom_runner_model(r), model);
  assert_ptr_equal(loom_runner_optimizer(r), opt);
  assert_non_null(loom_runner_criterion(r));
  assert_memory_equal(loom_model_params(loom_runner_model(r)), p.params_at_end, p.num_params * sizeof(float));
  assert_memory_not_equal(p.params_at_start, p.params_at_end, p.num_params * sizeof(float));
  assert_string_equal(loom_runner_stage_name(r), "train");
  assert_string_equal(loom_runner_main_metric(r), "loss");
  assert_null(loom_runner_loader(r));
  assert_null(loom_runner_loader_name(r));
  assert_null(loom_runner_input(r));
  assert_null(loom_runner_output(r));
  /* The runner's own state outlives the experiment: 3 epochs of 4 train
   * batches of 2, 12 SGD steps, the last epoch's metrics. */
  loom_experiment_destroy(exp);
  assert_int_equal(loom_runner_stage_index(r), 1);
  assert_int_equal(loom_runner_epoch(r), 2);
  assert_int_equal(loom_runner_global_epoch(r), 3);
  assert_int_equal(loom_runner_global_batch_step(r), 12);
  assert_int_equal(loom_runner_global_sample_step(r), 24);
  assert_int_equal(loom_runner_optimizer_step_count(r), 12);
  double loss;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/loss", &loss));
  assert_true(loss == p.last_train_loss);
  assert_int_equal(loom_runner_error(r), 0);
  loom_runner_destroy(r);
}

/* A run stopped inside a loader: the batch is not current any more, the
 * error and the place it stopped are. */
static void test_state_after_failed_run(void **state) {
  (void)state;
  static end_probe p;
  memset(&p, 0, sizeof p);
  p.interrupt_at = 2;
  loom_model *model;
  loom_optimizer *opt;
  loom_experiment *exp = trained_two_stages(&p, &model, &opt);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), LOOM_EINTERRUPTED);
  assert_null(loom_runner_input(r));
  assert_null(loom_runner_target(r));
  assert_null(loom_runner_output(r));
  assert_ptr_equal(loom_runner_model(r), model);
  assert_memory_equal(loom_model_params(model), p.params_at_end, p.num_params * sizeof(float));
  assert_string_equal(loom_runner_loader_name(r), "train");
  loom_experiment_destroy(exp);
  assert_int_equal(loom_runner_error(r), LOOM_EINTERRUPTED);
  assert_non_null(strstr(loom_runner_error_message(r), "stopped by the test"));
  assert_int_equal(loom_runner_stage_index(r), 0);
  assert_int_equal(loom_runner_loader_batch_step(r), 2);
  assert_int_equal(loom_runner_global_batch_step(r), 2);
  loom_runner_destroy(r);
}

static void test_early_stop_loader_and_stage(void **state) {
  (void)state;
  static trace got, want;
  memset(&got, 0, sizeof got);
  memset(&want, 0, sizeof want);
  loom_experiment *exp = two_stages(3);
  loom_callback *cb = recorder_new(&got, NULL, 0);
  assert_int_equal(loom_experiment_add_callback(exp, cb), 0);
  /* Stop the train loader after its 2nd batch, every epoch. */
  rec_of(cb)->stop_what = LOOM_STOP_LOADER;
  rec_of(cb)->stop_event = LOOM_EVENT_BATCH_END;
  rec_of(cb)->stop_at = 2;
  loom_runner *r;
  assert_int_equal(run(exp, &r), 0);
  expected_run(&want, 3, 2, 0);
  expect_trace(&got, &want);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);

  /* need_early_stop at the end of epoch 2, from an experiment-scope
   * callback: each stage of 3 epochs ends after its 2nd. */
  memset(&got, 0, sizeof got);
  memset(&want, 0, sizeof want);
  exp = two_stages(3);
  cb = recorder_new(&got, NULL, 0);
  loom_callback_set_scope(cb, LOOM_SCOPE_EXPERIMENT);
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 0), cb), 0);
  rec_of(cb)->stop_what = LOOM_STOP_STAGE;
  rec_of(cb)->stop_event = LOOM_EVENT_EPOCH_END;
  rec_of(cb)->stop_at = 2;
  assert_int_equal(run(exp, &r), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  int epochs_pretrain = 0, epochs_train = 0;
  bool in_train = false;
  for (int i = 0; i < got.n; i++) {
    if (strcmp(got.lines[i], "on_stage_start:train") == 0)
      in_train = true;
    if (strncmp(got.lines[i], "on_epoch_end", 12) == 0)
      (*(in_train ? &epochs_train : &epochs_pretrain))++;
  }
  assert_int_equal(epochs_pretrain, 2);
  assert_int_equal(epochs_train, 2);
}

static void test_stage_stop_exact_trace(void **state) {
  (void)state;
  static trace got, want;
  memset(&got, 0, sizeof got);
  memset(&want, 0, sizeof want);
  loom_experiment *exp = two_stages(3);
  /* A stage-scope callback in the first stage asks to stop after epoch 1. */
  loom_callback *stopper = recorder_new(&got, "x", 0);
  rec_of(stopper)->stop_what = LOOM_STOP_STAGE;
  rec_of(stopper)->stop_event = LOOM_EVENT_EPOCH_END;
  rec_of(stopper)->stop_at = 1;
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 0), stopper), 0);
  static trace plain;
  memset(&plain, 0, sizeof plain);
  assert_int_equal(loom_experiment_add_callback(exp, recorder_new(&plain, NULL, 1)), 0);
  assert_int_equal(run(exp, NULL), 0);
  expected_run(&want, 3, 0, 1);
  expect_trace(&plain, &want);
  loom_experiment_destroy(exp);
}

static void test_error_unwinds(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = two_stages(2);
  loom_callback *cb = recorder_new(&got, NULL, 0);
  loom_callback_set_name(cb, "failing");
  rec_of(cb)->fail_event = LOOM_EVENT_BATCH_END;
  rec_of(cb)->fail_at_batch = 2;
  assert_int_equal(loom_experiment_add_callback(exp, cb), 0);
  loom_runner *r;
  int rc = run(exp, &r);
  assert_int_equal(rc, LOOM_EINVAL);
  /* The trace stops at the failing event, then on_exception, then
   * on_experiment_end; no other end event fires. */
  const char *tail[] = {"on_loader_start:train", "on_batch_start:1", "on_batch_end:1", "on_batch_start:2",
                        "on_batch_end:2", "on_exception", "on_experiment_end"};
  assert_int_equal(got.n, 3 + 7);
  assert_string_equal(got.lines[0], "on_experiment_start");
  assert_string_equal(got.lines[1], "on_stage_start:pretrain");
  assert_string_equal(got.lines[2], "on_epoch_start:1");
  for (int i = 0; i < 7; i++)
    assert_string_equal(got.lines[3 + i], tail[i]);
  assert_int_equal(loom_runner_error(r), LOOM_EINVAL);
  assert_non_null(strstr(loom_runner_error_message(r), "callback \"failing\" failed in on_batch_end"));
  assert_non_null(strstr(loom_runner_error_message(r), "injected failure"));
  assert_false(loom_runner_error_handled(r));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_error_handled(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = two_stages(2);
  loom_callback *failing = recorder_new(&got, "f", 0);
  rec_of(failing)->fail_event = LOOM_EVENT_EPOCH_START;
  loom_callback *handler = recorder_new(&got, "h", 200);
  rec_of(handler)->handle = true;
  assert_int_equal(loom_experiment_add_callback(exp, failing), 0);
  assert_int_equal(loom_experiment_add_callback(exp, handler), 0);
  loom_runner *r;
  assert_int_equal(run(exp, &r), 0);
  assert_int_equal(loom_runner_error(r), LOOM_EINVAL);
  assert_true(loom_runner_error_handled(r));
  assert_int_equal(count_prefix(&got, "f on_exception"), 1);
  assert_int_equal(count_prefix(&got, "h on_exception"), 1);
  assert_int_equal(count_prefix(&got, "h on_experiment_end"), 1);
  assert_int_equal(count_prefix(&got, "h on_epoch_start"), 0); /* the failure came first */
  assert_int_equal(count_prefix(&got, "h on_epoch_end"), 0);
  assert_int_equal(count_prefix(&got, "h on_stage_end"), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static int failing_batch(loom_runner *r, void *user) {
  (void)r, (void)user;
  return loom_error_set(LOOM_EIO, "disk gone");
}

static void test_handle_batch_error(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = two_stages(1);
  assert_int_equal(loom_experiment_add_callback(exp, recorder_new(&got, NULL, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, failing_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), LOOM_EIO);
  assert_string_equal(got.lines[got.n - 3], "on_batch_start:1");
  assert_string_equal(got.lines[got.n - 2], "on_exception");
  assert_string_equal(got.lines[got.n - 1], "on_experiment_end");
  assert_non_null(strstr(loom_runner_error_message(r), "disk gone"));
  assert_non_null(strstr(loom_runner_error_message(r), "loader \"train\""));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* A model added unbuilt is built at stage start for the first loader's
 * samples with the experiment's seed: the same parameters as a twin built
 * by hand (lr 0 keeps them as initialised). */
static loom_model *unbuilt_mlp(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(0, 5, true)), 0);
  assert_int_equal(loom_model_add(m, "relu", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(0, 3, true)), 0);
  return m;
}

static void test_model_built_at_stage_start(void **state) {
  (void)state;
  loom_experiment *exp = loom_experiment_create("lazy");
  loom_experiment_set_seed(exp, 7);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  loom_model *m = unbuilt_mlp();
  loom_sgd_options sgd = {.lr = 0.0};
  assert_int_equal(loom_stage_set_model(st, m), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(32, 8, 3, 8, false)), 0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(loom_model_is_built(m));
  assert_int_equal(loom_model_num_params(m), 8 * 5 + 5 + 5 * 3 + 3);
  loom_model *twin = unbuilt_mlp();
  const int64_t features = 8;
  assert_int_equal(loom_model_build(twin, 1, &features, 7), 0);
  assert_memory_equal(loom_model_params(m), loom_model_params(twin), loom_model_num_params(m) * sizeof(float));
  loom_model_destroy(twin);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* A model that does not fit the first loader's samples fails the stage
 * with a message naming the stage, the loader and the layer. */
static void test_model_build_error_at_stage_start(void **state) {
  (void)state;
  loom_experiment *exp = loom_experiment_create("lazy_bad");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  loom_model *m = loom_model_create();
  loom_conv2d_options c = {.out_channels = 2, .kernel = {3, 3}};
  assert_int_equal(loom_model_add(m, "conv", loom_conv2d_create(&c)), 0);
  loom_sgd_options sgd = {.lr = 0.1};
  assert_int_equal(loom_stage_set_model(st, m), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 8, 2, 4, false)), 0); /* flat samples */
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), LOOM_ESHAPE);
  const char *msg = loom_runner_error_message(r);
  assert_non_null(strstr(msg, "stage \"train\""));
  assert_non_null(strstr(msg, "loader \"train\""));
  assert_non_null(strstr(msg, "\"conv\""));
  assert_false(loom_model_is_built(m));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_bad_loader_name(void **state) {
  (void)state;
  loom_experiment *exp = loom_experiment_create("bad");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "test", test_loader(2, 2, 2, 2, false)), 0);
  loom_runner *r;
  assert_int_equal(run(exp, &r), LOOM_EINVAL);
  assert_non_null(strstr(loom_runner_error_message(r), "must start with \"train\""));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* Two runs into one logdir: while the first runs (its epoch start runs the
 * second), the second refuses at its experiment start, naming the first's
 * pid; once the first has ended, the same run succeeds. */
typedef struct second_run {
  const char *logdir;
  int rc;
  char message[1024];
} second_run;

static loom_experiment *logging_run(const char *logdir) {
  loom_experiment *exp = loom_experiment_create("locked");
  loom_experiment_set_logdir(exp, logdir);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_metrics_logger_create()), 0);
  return exp;
}

static int start_second(loom_callback *cb, loom_runner *r) {
  (void)r;
  second_run *s = loom_callback_data(cb);
  loom_experiment *exp = logging_run(s->logdir);
  loom_runner *second;
  s->rc = run(exp, &second);
  snprintf(s->message, sizeof s->message, "%s", loom_runner_error_message(second));
  loom_runner_destroy(second);
  loom_experiment_destroy(exp);
  return 0;
}

static void test_logdir_lock(void **state) {
  (void)state;
  char *dir = test_tmpdir(), want[1200], lock[1100];
  second_run s = {.logdir = dir, .rc = 1};
  static const loom_callback_ops ops = {.type = "start_second", .on_epoch_start = start_second};
  loom_experiment *first = logging_run(dir);
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(first, 0), loom_callback_create(&ops, &s, 0)), 0);
  assert_int_equal(run(first, NULL), 0);
  loom_experiment_destroy(first);
  assert_true(s.rc < 0);
  snprintf(want, sizeof want, "the logdir %s is in use by another run (pid %ld, lock %s/.lock); wait for it to end "
                              "or give this run another logdir", dir, (long)getpid(), dir);
  assert_non_null(strstr(s.message, want));
  /* Released at the end: the file stays, empty. */
  snprintf(lock, sizeof lock, "%s/.lock", dir);
  char *held = test_read_file(lock);
  assert_non_null(held);
  assert_string_equal(held, "");
  free(held);
  /* A crashed run's lock (a pid that no longer runs) is taken over with a notice. */
  pid_t gone = fork();
  if (gone == 0)
    _exit(0);
  waitpid(gone, NULL, 0);
  FILE *f = fopen(lock, "w");
  fprintf(f, "%ld\n", (long)gone);
  fclose(f);
  loom_experiment *again = logging_run(dir);
  loom_runner *r2 = loom_runner_create();
  loom_runner_set_handle_batch(r2, noop_batch, NULL);
  loom_run_options o = loom_run_options_defaults();
  o.overwrite = true; /* the first run's files are there */
  loom_runner_set_options(r2, &o);
  assert_int_equal(loom_run_experiment(r2, again), 0);
  loom_runner_destroy(r2);
  loom_experiment_destroy(again);
  snprintf(want, sizeof want, "took over the lock of %s/.lock from pid %ld, which no longer runs", dir, (long)gone);
  bool noticed = false;
  for (size_t i = 0; i < loom_notice_count(); i++)
    noticed = noticed || strcmp(loom_notice(i), want) == 0;
  assert_true(noticed);
  test_rm_rf(dir);
  free(dir);
}

/* A run that is not a resume refuses a logdir an earlier run wrote
 * (LOOM_EEXIST), before writing anything; loom_run_options.overwrite
 * removes that run's files and runs. */
static void test_logdir_of_an_earlier_run(void **state) {
  (void)state;
  char *dir = test_tmpdir(), path[1100];
  loom_experiment *exp = logging_run(dir);
  assert_int_equal(run(exp, NULL), 0);
  loom_experiment_destroy(exp);
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *first = test_read_file(path);
  assert_non_null(first);
  FILE *f = fopen(path, "a"); /* marks the first run's file */
  fputs("first\n", f);
  fclose(f);
  exp = logging_run(dir);
  loom_runner *r;
  assert_int_equal(run(exp, &r), LOOM_EEXIST);
  char want[1300];
  snprintf(want, sizeof want, "the logdir %s already holds a run's files (metrics.", dir);
  assert_non_null(strstr(loom_runner_error_message(r), want));
  char *kept = test_read_file(path);
  assert_non_null(strstr(kept, "first\n"));
  free(kept);
  loom_run_options o = loom_run_options_defaults();
  o.overwrite = true;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  char *second = test_read_file(path);
  assert_null(strstr(second, "first\n"));
  free(first), free(second);
  test_rm_rf(dir);
  free(dir);
}

/* A batch larger than the dataset is one smaller batch (as in PyTorch);
 * with drop_last the loader has no batch, and the stage refuses it at its
 * start, naming it, rather than training on nothing. */
static void test_batch_larger_than_dataset(void **state) {
  (void)state;
  for (int drop = 0; drop < 2; drop++) {
    float x[3] = {0, 1, 2}, y[3] = {0, 1, 0};
    int64_t one = 1;
    loom_loader_options o = {.batch_size = 8, .drop_last = drop};
    loom_loader *l = loom_loader_create(loom_memory_dataset_create(x, y, 3, 1, &one, 0, NULL), &o);
    loom_experiment *exp = loom_experiment_create("big_batch");
    loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
    assert_int_equal(loom_stage_add_loader(st, "train", l), 0);
    trace got = {0};
    assert_int_equal(loom_stage_add_callback(st, recorder_new(&got, NULL, LOOM_ORDER_METRIC)), 0);
    loom_runner *r;
    assert_int_equal(run(exp, &r), drop ? LOOM_EINVAL : 0);
    if (drop) {
      assert_string_equal(loom_runner_error_message(r), "stage \"train\": loader \"train\" has no batches: 3 samples, "
                                                        "batch_size 8 and drop_last; lower batch_size or turn "
                                                        "drop_last off");
    } else {
      int batches = 0;
      for (int i = 0; i < got.n; i++)
        batches += strstr(got.lines[i], "batch_end") != NULL;
      assert_int_equal(batches, 1);
      assert_int_equal(loom_runner_loader_samples_run(r), 3);
    }
    loom_runner_destroy(r);
    loom_experiment_destroy(exp);
  }
}

/* Verbose console logging prints each stage's resolved table. */
static void test_verbose_prints_table(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  char *buf = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&buf, &len);
  loom_experiment *exp = two_stages(1);
  loom_console_logger_options o = {.out = out, .progress = LOOM_PROGRESS_OFF, .verbose = true};
  assert_int_equal(loom_experiment_add_callback(exp, loom_console_logger_create(&o)), 0);
  loom_callback *rec = recorder_new(&got, NULL, LOOM_ORDER_METRIC);
  loom_callback_set_node(rec, LOOM_NODE_WORKERS); /* not on rank 0: not listed */
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 1), rec), 0);
  assert_int_equal(run(exp, NULL), 0);
  fclose(out);
  assert_non_null(strstr(buf, "callbacks of stage \"pretrain\" on rank 0, in dispatch order:"));
  assert_non_null(strstr(buf, "callbacks of stage \"train\" on rank 0"));
  const char *line = strstr(buf, " 120  console_logger ");
  assert_non_null(line);
  assert_non_null(strstr(line, "node=master"));
  assert_non_null(strstr(line, "scope=experiment"));
  assert_non_null(strstr(line, "events=experiment_start,stage_start,loader_start,batch_end,loader_end,epoch_end,"
                               "stage_end,exception\n"));
  assert_null(strstr(buf, "recorder"));
  assert_int_equal(got.n, 0);
  free(buf);
  loom_experiment_destroy(exp);
}

/* Every counter at every batch of a run whose stages have train and valid
 * loaders: valid batches move the loader's steps, never the global ones. */
static int count_batch_end(loom_callback *cb, loom_runner *r) {
  record(loom_callback_data(cb), "%d %d/%d %s %lld:%lld %lld:%lld n=%lld", loom_runner_stage_index(r),
         loom_runner_epoch(r), loom_runner_global_epoch(r), loom_runner_loader_name(r),
         (long long)loom_runner_loader_batch_step(r), (long long)loom_runner_loader_sample_step(r),
         (long long)loom_runner_global_batch_step(r), (long long)loom_runner_global_sample_step(r),
         (long long)loom_runner_batch_size(r));
  return 0;
}

static const loom_callback_ops counter_ops = {.type = "counters", .on_batch_end = count_batch_end};

static void test_counters_with_valid_loaders(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  loom_experiment *exp = loom_experiment_create("counters");
  const char *names[2] = {"pretrain", "train"};
  for (int s = 0; s < 2; s++) {
    loom_stage *st = loom_experiment_add_stage(exp, names[s], 2 - s);
    /* train: 5 samples in batches of 2, 2, 1; valid: 3 in 2, 1 */
    assert_int_equal(loom_stage_add_loader(st, "train", test_loader(5, 2, 2, 2, false)), 0);
    assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(3, 2, 2, 2, false)), 0);
  }
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&counter_ops, &got, 0)), 0);
  loom_runner *r;
  assert_int_equal(run(exp, &r), 0);
  /* stage epoch/global epoch loader  loader batch:sample  global batch:sample */
  static const char *const want[] = {
      "0 1/1 train 1:2 1:2 n=2", "0 1/1 train 2:4 2:4 n=2", "0 1/1 train 3:5 3:5 n=1",
      "0 1/1 valid 1:2 3:5 n=2", "0 1/1 valid 2:3 3:5 n=1",
      "0 2/2 train 1:2 4:7 n=2", "0 2/2 train 2:4 5:9 n=2", "0 2/2 train 3:5 6:10 n=1",
      "0 2/2 valid 1:2 6:10 n=2", "0 2/2 valid 2:3 6:10 n=1",
      "1 1/3 train 1:2 7:12 n=2", "1 1/3 train 2:4 8:14 n=2", "1 1/3 train 3:5 9:15 n=1",
      "1 1/3 valid 1:2 9:15 n=2", "1 1/3 valid 2:3 9:15 n=1",
  };
  for (int i = 0; i < got.n && i < (int)(sizeof want / sizeof *want); i++)
    if (strcmp(got.lines[i], want[i]) != 0)
      fail_msg("batch %d: got \"%s\", expected \"%s\"", i, got.lines[i], want[i]);
  assert_int_equal(got.n, (int)(sizeof want / sizeof *want));
  loom_experiment_destroy(exp);
  assert_int_equal(loom_runner_global_epoch(r), 3);
  assert_int_equal(loom_runner_global_batch_step(r), 9);
  assert_int_equal(loom_runner_global_sample_step(r), 15);
  loom_runner_destroy(r);
}

/* The random streams of a two-stage run: the runner's (dropout draws from
 * it) and the shuffled loader's order, per global epoch. */
enum { STREAM_N = 8, STREAM_EPOCHS = 4 };
typedef struct streams {
  uint64_t draw[STREAM_EPOCHS];            /* the runner RNG's first draw */
  int64_t order[STREAM_EPOCHS][STREAM_N];  /* the train loader's sample order */
  int epochs;
} streams;

static int streams_epoch_start(loom_callback *cb, loom_runner *r) {
  streams *s = loom_callback_data(cb);
  loom_rng copy = *loom_runner_rng(r);
  s->draw[loom_runner_global_epoch(r) - 1] = loom_rng_next(&copy);
  s->epochs++;
  return 0;
}

static int streams_batch_end(loom_callback *cb, loom_runner *r) {
  streams *s = loom_callback_data(cb);
  if (!loom_runner_is_train_loader(r))
    return 0;
  const float *y = loom_tensor_data(loom_runner_target(r)); /* the labels are the sample indices */
  for (int64_t i = 0; i < loom_runner_batch_size(r); i++)
    s->order[loom_runner_global_epoch(r) - 1][loom_runner_loader_sample_step(r) - loom_runner_batch_size(r) + i] =
        (int64_t)y[i];
  return 0;
}

static const loom_callback_ops streams_ops = {
    .type = "streams", .on_epoch_start = streams_epoch_start, .on_batch_end = streams_batch_end};

static void two_stage_streams(streams *s) {
  memset(s, 0, sizeof *s);
  loom_experiment *exp = loom_experiment_create("streams");
  loom_experiment_set_seed(exp, 1234);
  const char *names[2] = {"pretrain", "train"};
  for (int st = 0; st < 2; st++) {
    loom_stage *stage = loom_experiment_add_stage(exp, names[st], 2);
    assert_int_equal(loom_stage_add_loader(stage, "train", test_loader(STREAM_N, 2, STREAM_N, 3, true)), 0);
    assert_int_equal(loom_stage_add_loader(stage, "valid", test_loader(4, 2, 2, 2, false)), 0);
  }
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&streams_ops, s, 0)), 0);
  assert_int_equal(run(exp, NULL), 0);
  loom_experiment_destroy(exp);
}

static void test_streams_differ_between_stages(void **state) {
  (void)state;
  static streams a, b;
  two_stage_streams(&a);
  two_stage_streams(&b);
  assert_int_equal(a.epochs, STREAM_EPOCHS);
  assert_memory_equal(&a, &b, sizeof a); /* reproducible */
  for (int g = 1; g <= STREAM_EPOCHS; g++) {
    /* As docs/architecture.md has it: the runner RNG from (seed, global
     * epoch); the loader's epoch seed from (seed, global epoch, loader
     * name), ordered by Fisher-Yates from the random sampler's stream. */
    loom_rng rng;
    loom_rng_seed(&rng, 1234, (uint64_t)g, 0);
    assert_true(a.draw[g - 1] == loom_rng_next(&rng));
    loom_rng_seed(&rng, 1234, (uint64_t)g, loom_rng_stream_id("train"));
    loom_rng_seed(&rng, loom_rng_next(&rng), 0, loom_rng_stream_id("random_sampler"));
    int64_t want[STREAM_N];
    for (int i = 0; i < STREAM_N; i++)
      want[i] = i;
    for (int i = STREAM_N - 1; i > 0; i--) {
      int j = (int)loom_rng_below(&rng, (uint64_t)i + 1), t = (int)want[i];
      want[i] = want[j], want[j] = t;
    }
    assert_memory_equal(a.order[g - 1], want, sizeof want);
  }
  /* No epoch, in either stage, repeats another's stream. */
  for (int g = 0; g < STREAM_EPOCHS; g++)
    for (int h = g + 1; h < STREAM_EPOCHS; h++) {
      assert_true(a.draw[g] != a.draw[h]);
      assert_memory_not_equal(a.order[g], a.order[h], sizeof a.order[g]);
    }
}

/* "Best" is per stage and strict: a stage starts with no best, a tie with
 * the best is no new best, and the best epoch is a global epoch. The valid
 * loss of global epoch g is losses[g - 1]. */
static int loss_by_epoch(loom_runner *r, void *user) {
  const double *losses = user;
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", losses[loom_runner_global_epoch(r) - 1]);
}

static int best_epoch_end(loom_callback *cb, loom_runner *r) {
  record(loom_callback_data(cb), "%d:%s@%d", loom_runner_global_epoch(r), loom_runner_is_best_valid(r) ? "best" : "-",
         loom_runner_best_epoch(r));
  return 0;
}

static const loom_callback_ops best_ops = {.type = "best", .on_epoch_end = best_epoch_end};

static void test_best_valid_per_stage(void **state) {
  (void)state;
  static trace got;
  memset(&got, 0, sizeof got);
  static const double losses[6] = {1.0, 0.5, 0.5, 2.0, 1.5, 1.5};
  loom_experiment *exp = two_stages(3);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&best_ops, &got, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, loss_by_epoch, (void *)losses);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  static const char *const want[] = {"1:best@1", "2:best@2", "3:-@2", "4:best@4", "5:best@5", "6:-@5"};
  for (int i = 0; i < got.n && i < 6; i++)
    if (strcmp(got.lines[i], want[i]) != 0)
      fail_msg("epoch %d: got \"%s\", expected \"%s\"", i + 1, got.lines[i], want[i]);
  assert_int_equal(got.n, 6);
  double best;
  assert_true(loom_metrics_get(loom_runner_best_valid_metrics(r), "loss", &best));
  assert_true(best == 1.5);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_full_trace),
      cmocka_unit_test(test_order_bands_and_ties),
      cmocka_unit_test(test_node_filter),
      cmocka_unit_test(test_scope),
      cmocka_unit_test(test_callback_table_groups),
      cmocka_unit_test(test_state_after_run),
      cmocka_unit_test(test_state_after_failed_run),
      cmocka_unit_test(test_early_stop_loader_and_stage),
      cmocka_unit_test(test_stage_stop_exact_trace),
      cmocka_unit_test(test_error_unwinds),
      cmocka_unit_test(test_error_handled),
      cmocka_unit_test(test_handle_batch_error),
      cmocka_unit_test(test_bad_loader_name), cmocka_unit_test(test_model_built_at_stage_start),
      cmocka_unit_test(test_model_build_error_at_stage_start),
      cmocka_unit_test(test_verbose_prints_table),
      cmocka_unit_test(test_logdir_lock), cmocka_unit_test(test_logdir_of_an_earlier_run),
      cmocka_unit_test(test_batch_larger_than_dataset),
      cmocka_unit_test(test_counters_with_valid_loaders),
      cmocka_unit_test(test_streams_differ_between_stages),
      cmocka_unit_test(test_best_valid_per_stage),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
