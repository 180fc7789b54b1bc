/* Resume is exact: a run continued from a checkpoint taken at an epoch end,
 * in the middle of a train loader, in the middle of a valid loader, or at a
 * SIGINT, ends with the same parameters bit for bit and the same
 * metrics.jsonl as the run that was never stopped. Also: best-K survives a
 * resume, a damaged last.h5 falls back, kill -9 never breaks last.h5. */
#include <math.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* Saves explicit snapshots or raises SIGINT at chosen points. */
typedef struct snapper {
  const char *dir;
  int at_epoch;                /* on_epoch_end of this global epoch -> ep.h5 */
  int mid_epoch;               /* on_batch_end of this global epoch ... */
  int64_t mid_train, mid_valid; /* ... at these loader batches -> mid_<loader>.h5 */
  int raise_epoch;
  int64_t raise_batch;         /* raise(SIGINT) at this train batch */
  bool raise_again;            /* and again in on_exception */
} snapper;

static int snap_epoch_end(loom_callback *cb, loom_runner *r) {
  snapper *s = loom_callback_data(cb);
  char path[512];
  if (s->at_epoch && loom_runner_global_epoch(r) == s->at_epoch) {
    snprintf(path, sizeof path, "%s/ep.h5", s->dir);
    return loom_runner_save_checkpoint(r, path);
  }
  return 0;
}

static int snap_batch_end(loom_callback *cb, loom_runner *r) {
  snapper *s = loom_callback_data(cb);
  int64_t b = loom_runner_loader_batch_step(r);
  bool train = loom_runner_is_train_loader(r);
  if (s->mid_epoch && loom_runner_global_epoch(r) == s->mid_epoch && b == (train ? s->mid_train : s->mid_valid)) {
    char path[512];
    snprintf(path, sizeof path, "%s/mid_%s.h5", s->dir, loom_runner_loader_name(r));
    return loom_runner_save_checkpoint(r, path);
  }
  if (s->raise_epoch && loom_runner_global_epoch(r) == s->raise_epoch && train && b == s->raise_batch)
    raise(SIGINT);
  return 0;
}

static int snap_exception(loom_callback *cb, loom_runner *r) {
  (void)r;
  snapper *s = loom_callback_data(cb);
  if (s->raise_again)
    raise(SIGINT); /* the default action is back: this ends the process */
  return 0;
}

static const loom_callback_ops snapper_ops = {.type = "snapper",
                                              .on_epoch_end = snap_epoch_end,
                                              .on_batch_end = snap_batch_end,
                                              .on_exception = snap_exception};

/* The MLP 8-16-3 with dropout after its ReLU: masks drawn from the runner's
 * stream, which a resume must continue where it was. */
static bool with_dropout;
static loom_model *dropout_mlp(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(8, 16, true)), 0);
  assert_int_equal(loom_model_add(m, "relu1", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "drop1", loom_dropout_create(0.5f)), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(16, 3, true)), 0);
  return m;
}

static loom_experiment *build(const char *logdir, int epochs, snapper *snap, const loom_checkpoint_options *ck) {
  loom_experiment *exp = loom_experiment_create("resume");
  loom_experiment_set_seed(exp, 11);
  loom_experiment_set_logdir(exp, logdir);
  const int64_t sizes[] = {8, 16, 3};
  loom_adam_options adam = loom_adam_defaults();
  adam.lr = 0.01;
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs);
  assert_int_equal(loom_stage_set_model(st, with_dropout ? dropout_mlp() : loom_mlp_create(sizes, 3, 11)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(200, 8, 3, 16, true)), 0); /* 13 batches */
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(60, 8, 3, 16, false)), 0);  /* 4 batches */
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  loom_checkpoint_options d = loom_checkpoint_defaults();
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(ck ? ck : &d)), 0);
  if (snap)
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&snapper_ops, snap, 300)), 0);
  return exp;
}

typedef struct outcome {
  float *params;
  size_t n;
  char *jsonl;
} outcome;

static int run_and_keep(loom_experiment *exp, const char *resume, outcome *out, loom_runner **keep) {
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, resume), 0);
  int rc = loom_run_experiment(r, exp);
  loom_model *m = loom_runner_model(r);
  if (out && m) {
    out->n = loom_model_num_params(m);
    out->params = malloc(out->n * sizeof(float));
    memcpy(out->params, loom_model_params(m), out->n * sizeof(float));
    out->jsonl = jsonl_without_time(loom_experiment_logdir(exp));
  }
  if (keep)
    *keep = r;
  else
    loom_runner_destroy(r);
  return rc;
}

static void outcome_free(outcome *o) {
  free(o->params);
  free(o->jsonl);
}

static void expect_same(const outcome *want, const outcome *got) {
  assert_int_equal(want->n, got->n);
  assert_memory_equal(want->params, got->params, want->n * sizeof(float));
  assert_string_equal(want->jsonl, got->jsonl);
}

static void copy_file(const char *from, const char *to) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp '%s' '%s'", from, to);
  assert_int_equal(system(cmd), 0);
}

static char *ref_dir, *snap_dir;
static outcome reference;

/* The uninterrupted 3-epoch run, with snapshots taken along the way. */
static int setup(void **state) {
  (void)state;
  ref_dir = test_tmpdir();
  snap_dir = test_tmpdir();
  static snapper s;
  s = (snapper){.dir = snap_dir, .at_epoch = 1, .mid_epoch = 2, .mid_train = 7, .mid_valid = 2};
  loom_experiment *exp = build(ref_dir, 3, &s, NULL);
  int rc = run_and_keep(exp, NULL, &reference, NULL);
  loom_experiment_destroy(exp);
  return rc;
}

static int teardown(void **state) {
  (void)state;
  outcome_free(&reference);
  test_rm_rf(ref_dir);
  test_rm_rf(snap_dir);
  free(ref_dir);
  free(snap_dir);
  return 0;
}

/* Resumes from `file` into a fresh logdir that holds the whole reference
 * metrics.jsonl, as a killed run would have left it: the logger must trim
 * what came after the checkpoint and append the rest again. */
static void resume_matches(const char *file) {
  char path[512], jsonl[512], ref_jsonl[512];
  snprintf(path, sizeof path, "%s/%s", snap_dir, file);
  char *dir = test_tmpdir();
  snprintf(jsonl, sizeof jsonl, "%s/metrics.jsonl", dir);
  snprintf(ref_jsonl, sizeof ref_jsonl, "%s/metrics.jsonl", ref_dir);
  copy_file(ref_jsonl, jsonl);
  loom_experiment *exp = build(dir, 3, NULL, NULL);
  outcome got = {0};
  loom_runner *r;
  assert_int_equal(run_and_keep(exp, path, &got, &r), 0);
  assert_true(loom_runner_is_resumed(r));
  expect_same(&reference, &got);
  loom_runner_destroy(r);
  outcome_free(&got);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

/* Every value a resume reads is checked against the experiment first: a
 * checkpoint rewritten value by value with a fresh checksum (as a fuzzer
 * or a careless tool would) is refused with a clean error, never read
 * past an array or run for 2^63 steps. */
static void tamper(const char *from, const char *to, const char *group, const char *key, int64_t at, int64_t value) {
  loom_checkpoint *c = loom_checkpoint_read(from);
  assert_non_null(c);
  loom_state *s = loom_checkpoint_group(c, group);
  if (at < 0) {
    assert_int_equal(loom_state_set_i64(s, key, value), 0);
  } else {
    int64_t v[8];
    size_t n = loom_state_array_length(s, key);
    assert_true(n <= 8 && (size_t)at < n);
    assert_int_equal(loom_state_get_i64_array(s, key, v, n), 0);
    v[at] = value;
    assert_int_equal(loom_state_set_i64_array(s, key, v, n), 0);
  }
  assert_int_equal(loom_checkpoint_write(c, to), 0);
  loom_checkpoint_destroy(c);
}

static void test_tampered_values_are_refused(void **state) {
  (void)state;
  char from[512], to[512];
  snprintf(from, sizeof from, "%s/mid_train.h5", snap_dir);
  snprintf(to, sizeof to, "%s/tampered.h5", snap_dir);
  struct {
    const char *group, *key;
    int64_t at, value;
    const char *says;
  } cases[] = {
      {"runner", "cursor", 3, 5, "lies outside stage"},          /* loader 5 of 2 */
      {"runner", "cursor", 3, -1, "not one this version writes"}, /* before the loader array */
      {"runner", "cursor", 1, -1000000000, "not one this version writes"},
      {"runner", "cursor", 5, -3, "lies outside stage"},          /* global epoch */
      {"runner", "counters", 0, -5, "runner counter 0 is -5"},
      {"optimizer", "steps", -1, INT64_MAX, "out of range"},      /* the next step would overflow */
      {"optimizer", "nparams", -1, 7, "holds"},                    /* the state array is another model's */
      {"callbacks/metrics_logger", "jsonl_bytes", -1, -1, "wrote -1 bytes"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    tamper(from, to, cases[i].group, cases[i].key, cases[i].at, cases[i].value);
    char *dir = test_tmpdir();
    loom_experiment *exp = build(dir, 3, NULL, NULL);
    int rc = run_and_keep(exp, to, NULL, NULL);
    assert_true(rc == LOOM_EFORMAT || rc == LOOM_EINVAL);
    if (!strstr(loom_last_error(), cases[i].says))
      fail_msg("case %zu: \"%s\" does not say \"%s\"", i, loom_last_error(), cases[i].says);
    loom_experiment_destroy(exp);
    test_rm_rf(dir);
    free(dir);
  }
  /* A saved length past the end of the logdir's metrics.jsonl (here: a
   * fresh logdir) trims nothing and extends nothing: the run goes on and
   * the file holds only what this run wrote (was: extended to 1 TB of zeros,
   * then read back as one line). */
  tamper(from, to, "callbacks/metrics_logger", "jsonl_bytes", -1, INT64_C(1) << 40);
  char *dir = test_tmpdir(), jsonl[600];
  loom_experiment *exp = build(dir, 3, NULL, NULL);
  assert_int_equal(run_and_keep(exp, to, NULL, NULL), 0);
  snprintf(jsonl, sizeof jsonl, "%s/metrics.jsonl", dir);
  struct stat st;
  assert_int_equal(stat(jsonl, &st), 0);
  assert_true(st.st_size > 0 && st.st_size < 100000);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

static void test_resume_from_epoch_end(void **state) {
  (void)state;
  resume_matches("ep.h5");
}

static void test_resume_mid_train_loader(void **state) {
  (void)state;
  resume_matches("mid_train.h5");
}

static void test_resume_mid_valid_loader(void **state) {
  (void)state;
  resume_matches("mid_valid.h5");
}

/* With dropout: resumed in the middle of a train loader, the masks go on
 * from where the checkpoint's stream was, so the weights and metrics are
 * those of the run never stopped. */
static void test_resume_continues_dropout_stream(void **state) {
  (void)state;
  char *ref = test_tmpdir(), *snaps = test_tmpdir(), *dir = test_tmpdir();
  snapper s = {.dir = snaps, .mid_epoch = 2, .mid_train = 7};
  with_dropout = true;
  loom_experiment *exp = build(ref, 3, &s, NULL);
  with_dropout = false;
  outcome want = {0}, got = {0};
  assert_int_equal(run_and_keep(exp, NULL, &want, NULL), 0);
  loom_experiment_destroy(exp);
  char from[512], to[512], ckpt[512];
  snprintf(from, sizeof from, "%s/metrics.jsonl", ref);
  snprintf(to, sizeof to, "%s/metrics.jsonl", dir);
  snprintf(ckpt, sizeof ckpt, "%s/mid_train.h5", snaps);
  copy_file(from, to);
  with_dropout = true;
  exp = build(dir, 3, NULL, NULL);
  with_dropout = false;
  assert_int_equal(run_and_keep(exp, ckpt, &got, NULL), 0);
  expect_same(&want, &got);
  loom_experiment_destroy(exp);
  outcome_free(&want);
  outcome_free(&got);
  test_rm_rf(ref), test_rm_rf(snaps), test_rm_rf(dir);
  free(ref), free(snaps), free(dir);
}

/* A loader resumed mid-way reports the time and rate of the batches the
 * resumed run did, and says so: from mid_train.h5 (after train batch 7 of
 * 13 in epoch 2) this run does batches 8..13, 5 x 16 + 8 = 88 samples. */
static void test_resumed_epoch_reports_what_ran(void **state) {
  (void)state;
  char path[512], jsonl[512], console[512];
  snprintf(path, sizeof path, "%s/mid_train.h5", snap_dir);
  char *dir = test_tmpdir();
  snprintf(console, sizeof console, "%s/console.txt", dir);
  FILE *out = fopen(console, "w");
  loom_experiment *exp = build(dir, 3, NULL, NULL);
  loom_console_logger_options co = {.out = out, .progress = LOOM_PROGRESS_OFF};
  assert_int_equal(loom_experiment_add_callback(exp, loom_timer_callback_create()), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_console_logger_create(&co)), 0);
  assert_int_equal(run_and_keep(exp, path, NULL, NULL), 0);
  fclose(out);
  snprintf(jsonl, sizeof jsonl, "%s/metrics.jsonl", dir);
  char *text = test_read_file(jsonl);
  int rows = 0, epoch_rows = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), rows++) {
    json_t *row = json_loads(line, 0, NULL);
    if (json_is_null(json_object_get(row, "loader"))) { /* the epoch's row: its loaders' summed time */
      epoch_rows++, rows--;
      assert_true(json_is_true(json_object_get(row, "resumed")) == (json_integer_value(json_object_get(row, "global_epoch")) == 2));
      json_decref(row);
      continue;
    }
    bool resumed = json_integer_value(json_object_get(row, "global_epoch")) == 2 &&
                   strcmp(json_string_value(json_object_get(row, "loader")), "train") == 0;
    double time_s = json_real_value(json_object_get(row, "time_s"));
    double rate = json_real_value(json_object_get(json_object_get(row, "metrics"), "time/samples_per_s"));
    double samples = resumed ? 88 : strcmp(json_string_value(json_object_get(row, "loader")), "train") == 0 ? 200 : 60;
    assert_true(json_is_true(json_object_get(row, "resumed")) == resumed);
    assert_true(time_s > 0);
    assert_true(fabs(rate * time_s - samples) <= 1e-9 * samples);
    json_decref(row);
  }
  assert_int_equal(rows, 4); /* epoch 2's train and valid, epoch 3's */
  assert_int_equal(epoch_rows, 2);
  free(text);
  /* metrics.csv says it too: a last column "resumed", "true" in epoch 2's
   * train row and epoch row, empty in the others. */
  char csv[512];
  snprintf(csv, sizeof csv, "%s/metrics.csv", dir);
  text = test_read_file(csv);
  char *save, *header = strtok_r(text, "\n", &save);
  assert_true(strlen(header) > 8 && strcmp(header + strlen(header) - 8, ",resumed") == 0);
  int marked = 0;
  for (char *line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    bool is_marked = strcmp(line + strlen(line) - 5, ",true") == 0;
    marked += is_marked;
    assert_true(is_marked == (strncmp(line, "train,2,2,train,", 16) == 0 || strncmp(line, "train,2,2,,", 11) == 0));
  }
  assert_int_equal(marked, 2);
  free(text);
  text = test_read_file(console);
  assert_non_null(strstr(text, "samples/s) | resumed after batch 7: time and rate of the 6 batches since\n"));
  assert_non_null(strstr(text, "\ntrain 3/3 | ")); /* the next epoch is not marked */
  assert_null(strstr(strstr(text, "\ntrain 3/3 | "), "resumed after"));
  free(text);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

/* Resumes the 3-epoch run from "last" in dir; it must equal the reference. */
static void resume_last_matches(char *dir) {
  loom_experiment *exp = build(dir, 3, NULL, NULL);
  outcome got = {0};
  assert_int_equal(run_and_keep(exp, "last", &got, NULL), 0);
  expect_same(&reference, &got);
  outcome_free(&got);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

/* A 2-epoch run resumed from "last" with 3 epochs equals the 3-epoch run. */
static void test_resume_last_with_more_epochs(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_experiment *exp = build(dir, 2, NULL, NULL);
  assert_int_equal(run_and_keep(exp, NULL, NULL, NULL), 0);
  loom_experiment_destroy(exp);
  resume_last_matches(dir);
}

static void test_sigint_saves_and_resumes_exactly(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  static snapper s;
  s = (snapper){.raise_epoch = 2, .raise_batch = 5};
  loom_experiment *exp = build(dir, 3, &s, NULL);
  loom_runner *r;
  assert_int_equal(run_and_keep(exp, NULL, NULL, &r), LOOM_EINTERRUPTED);
  assert_non_null(strstr(loom_runner_error_message(r), "interrupted by SIGINT"));
  assert_non_null(strstr(loom_runner_error_message(r), "after batch 5"));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  /* last.h5 holds the state after batch 5 of epoch 2. */
  char path[512];
  snprintf(path, sizeof path, "%s/checkpoints/manifest.json", dir);
  json_error_t err;
  json_t *m = json_load_file(path, 0, &err);
  json_t *last = json_object_get(json_object_get(m, "files"), "last.h5");
  assert_int_equal(json_integer_value(json_object_get(last, "batch")), 5);
  assert_int_equal(json_integer_value(json_object_get(last, "global_epoch")), 2);
  json_decref(m);
  resume_last_matches(dir);
}

/* After the first signal the host's disposition is back, here the default
 * action: a second SIGINT ends the process at once (tests/test_signals.c
 * covers a host with its own handlers). */
static void test_second_signal_stops_at_once(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    static snapper s;
    s = (snapper){.raise_epoch = 1, .raise_batch = 3, .raise_again = true};
    loom_experiment *exp = build(dir, 3, &s, NULL);
    loom_runner *r = loom_runner_create();
    loom_run_experiment(r, exp);
    _exit(0); /* not reached */
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGINT);
  /* The checkpoint callback (order 250) saved before the second signal. */
  char path[512], notice[256];
  loom_checkpoint *c = loom_checkpoint_open_logdir(dir, "last", path, sizeof path, notice, sizeof notice);
  assert_non_null(c);
  loom_checkpoint_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* SIGINT (and SIGTERM) sent to a training child: it stops after the batch,
 * saves last.h5, and exits with the interrupt code. */
static void signal_child(int sig) {
  char *dir = test_tmpdir();
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    loom_checkpoint_options ck = loom_checkpoint_defaults();
    ck.every_n_batches = 5;
    loom_experiment *exp = build(dir, 100000, NULL, &ck);
    loom_runner *r = loom_runner_create();
    int rc = loom_run_experiment(r, exp);
    /* Freed, for the leak check of a child under valgrind (tests/checkers.cmake). */
    loom_runner_destroy(r);
    loom_experiment_destroy(exp);
    free(dir);
    _exit(rc == LOOM_EINTERRUPTED ? 130 : 1);
  }
  char last[512];
  snprintf(last, sizeof last, "%s/checkpoints/last.h5", dir);
  struct timespec poll = {0, 10000000};
  for (int i = 0; i < 2000 && access(last, F_OK) < 0; i++)
    nanosleep(&poll, NULL);
  kill(pid, sig);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 130);
  char path[512], notice[256];
  loom_checkpoint *c = loom_checkpoint_open_logdir(dir, "last", path, sizeof path, notice, sizeof notice);
  assert_non_null(c);
  assert_string_equal(notice, "");
  loom_checkpoint_destroy(c);
  /* ... and the run continues from it. */
  loom_experiment *exp = build(dir, 1, NULL, NULL);
  loom_runner *r = loom_runner_create();
  loom_runner_set_resume(r, "last");
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(loom_runner_is_resumed(r));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

static void test_sigint_to_child(void **state) {
  (void)state;
  signal_child(SIGINT);
}

static void test_sigterm_to_child(void **state) {
  (void)state;
  signal_child(SIGTERM);
}

/* kill -9 at random moments of a run that checkpoints after every batch:
 * last.h5 (or its predecessor) always loads. */
static void test_kill9_never_breaks_last(void **state) {
  (void)state;
  srand((unsigned)time(NULL));
  for (int round = 0; round < 20; round++) {
    char *dir = test_tmpdir();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
      loom_checkpoint_options ck = loom_checkpoint_defaults();
      ck.every_n_batches = 1;
      loom_experiment *exp = build(dir, 1000, NULL, &ck);
      loom_runner *r = loom_runner_create();
      loom_run_experiment(r, exp);
      _exit(0);
    }
    char last[512];
    snprintf(last, sizeof last, "%s/checkpoints/last.h5", dir);
    struct timespec poll = {0, 10000000}, pause = {0, (rand() % 40) * 1000000L};
    for (int i = 0; i < 2000 && access(last, F_OK) < 0; i++)
      nanosleep(&poll, NULL);
    nanosleep(&pause, NULL);
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
    char path[512], notice[1024];
    loom_checkpoint *c = loom_checkpoint_open_logdir(dir, "last", path, sizeof path, notice, sizeof notice);
    if (!c)
      fail_msg("round %d: no usable checkpoint after kill -9: %s", round, loom_last_error());
    assert_non_null(loom_checkpoint_find(c, "model"));
    loom_checkpoint_destroy(c);
    test_rm_rf(dir);
    free(dir);
  }
}

/* --- best-K over a fixed sequence of valid losses --- */

static const double valid_loss_by_epoch[] = {5, 3, 4, 1, 2, 6};

static int scripted_batch(loom_runner *r, void *u) {
  (void)u;
  double loss = loom_runner_is_train_loader(r) ? 1.0 : valid_loss_by_epoch[loom_runner_global_epoch(r) - 1];
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", loss);
}

static loom_experiment *scripted(const char *dir, int epochs) {
  loom_experiment *exp = loom_experiment_create("bestk");
  loom_experiment_set_logdir(exp, dir);
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(4, 2, 2, 2, true)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(4, 2, 2, 2, false)), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  ck.save_top_k = 2;
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  return exp;
}

static int run_scripted(const char *dir, int epochs, const char *resume) {
  loom_experiment *exp = scripted(dir, epochs);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, scripted_batch, NULL);
  if (resume)
    loom_runner_set_resume(r, resume);
  int rc = loom_run_experiment(r, exp);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return rc;
}

static char *ranking_of(const char *dir) {
  char path[512];
  snprintf(path, sizeof path, "%s/checkpoints/manifest.json", dir);
  json_error_t err;
  json_t *m = json_load_file(path, 0, &err);
  assert_non_null(m);
  char *s = json_dumps(json_object_get(m, "ranking"), JSON_COMPACT);
  json_decref(m);
  return s;
}

static bool exists(const char *dir, const char *name) {
  char path[512];
  snprintf(path, sizeof path, "%s/checkpoints/%s", dir, name);
  return access(path, F_OK) == 0;
}

static ino_t inode(const char *dir, const char *name) {
  char path[512];
  struct stat st;
  snprintf(path, sizeof path, "%s/checkpoints/%s", dir, name);
  assert_int_equal(stat(path, &st), 0);
  return st.st_ino;
}

/* Each ranking entry names what it ranks. */
#define RANKED_BY ",\"metric\":\"loss\",\"loader\":\"valid\",\"direction\":\"min\""

static void test_best_k_survives_resume(void **state) {
  (void)state;
  char *a = test_tmpdir(), *b = test_tmpdir();
  assert_int_equal(run_scripted(a, 3, NULL), 0);
  char *three = ranking_of(a);
  assert_string_equal(three, "[{\"file\":\"epoch_0002.h5\",\"value\":3.0,\"global_epoch\":2" RANKED_BY "},"
                             "{\"file\":\"epoch_0003.h5\",\"value\":4.0,\"global_epoch\":3" RANKED_BY "}]");
  assert_false(exists(a, "epoch_0001.h5"));
  assert_int_equal(inode(a, "best.h5"), inode(a, "epoch_0002.h5"));
  assert_int_equal(run_scripted(a, 6, "last"), 0);
  assert_int_equal(run_scripted(b, 6, NULL), 0);
  char *resumed = ranking_of(a), *straight = ranking_of(b);
  assert_string_equal(resumed, straight);
  assert_string_equal(resumed, "[{\"file\":\"epoch_0004.h5\",\"value\":1.0,\"global_epoch\":4" RANKED_BY "},"
                               "{\"file\":\"epoch_0005.h5\",\"value\":2.0,\"global_epoch\":5" RANKED_BY "}]");
  assert_false(exists(a, "epoch_0002.h5"));
  assert_false(exists(a, "epoch_0003.h5"));
  assert_int_equal(inode(a, "best.h5"), inode(a, "epoch_0004.h5"));
  free(three), free(resumed), free(straight);
  test_rm_rf(a), test_rm_rf(b);
  free(a), free(b);
}

/* Pretrain ranked on valid accuracy (max), finetune on valid loss (min):
 * finetune's losses (4.6, 4.7) are never compared with pretrain's
 * accuracies (0.104, 0.2). The ranking restarts with finetune, so best.h5
 * and "best" are finetune's epoch 3. */
static int two_metric_batch(loom_runner *r, void *u) {
  (void)u;
  static const double accuracy[] = {0.104, 0.2, 0.3, 0.3}, loss[] = {9, 8, 4.6, 4.7};
  int64_t e = loom_runner_global_epoch(r) - 1;
  int rc = loom_metrics_set(loom_runner_batch_metrics(r), "loss", loss[e]);
  return rc == 0 ? loom_metrics_set(loom_runner_batch_metrics(r), "accuracy", accuracy[e]) : rc;
}

static void test_ranking_restarts_with_another_metric(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_experiment *exp = loom_experiment_create("two_metrics");
  loom_experiment_set_logdir(exp, dir);
  loom_stage *pre = loom_experiment_add_stage(exp, "pretrain", 2), *ft = loom_experiment_add_stage(exp, "finetune", 2);
  assert_int_equal(loom_stage_add_loader(pre, "train", test_loader(4, 2, 2, 2, true)), 0);
  assert_int_equal(loom_stage_add_loader(pre, "valid", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_set_main_metric(pre, "valid", "accuracy", false), 0);
  assert_int_equal(loom_stage_set_main_metric(ft, "valid", "loss", true), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults(); /* the stage's metric, top 1 */
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, two_metric_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  char *ranking = ranking_of(dir);
  assert_string_equal(ranking, "[{\"file\":\"epoch_0003.h5\",\"value\":4.5999999999999996,\"global_epoch\":3"
                               ",\"metric\":\"loss\",\"loader\":\"valid\",\"direction\":\"min\"}]");
  assert_int_equal(inode(dir, "best.h5"), inode(dir, "epoch_0003.h5"));
  /* "best" (load_weights, --resume best) opens finetune's epoch 3. */
  char path[1024], notice[1024];
  loom_checkpoint *best = loom_checkpoint_open_logdir(dir, "best", path, sizeof path, notice, sizeof notice);
  assert_non_null(best);
  const char *stage;
  assert_int_equal(loom_state_get_str(loom_checkpoint_find(best, "runner"), "stage_name", &stage), 0);
  assert_string_equal(stage, "finetune");
  loom_checkpoint_destroy(best);
  free(ranking);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

static void test_damaged_last_falls_back(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(run_scripted(dir, 3, NULL), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/checkpoints/last.h5", dir);
  FILE *f = fopen(path, "r+b");
  fseek(f, 600, SEEK_SET);
  fputs("garbage garbage garbage", f);
  fclose(f);
  loom_experiment *exp = scripted(dir, 3);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, scripted_batch, NULL);
  loom_runner_set_resume(r, "last");
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_non_null(strstr(loom_runner_resume_notice(r), "last.h5 fails its checksum"));
  assert_non_null(strstr(loom_runner_resume_notice(r), "resumed from last.prev.h5"));
  assert_non_null(strstr(loom_runner_resume_path(r), "last.prev.h5"));
  assert_int_equal(loom_runner_global_epoch(r), 3); /* epoch 3 ran again */
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  /* With both damaged, resuming is an error that says why. */
  snprintf(path, sizeof path, "%s/checkpoints/last.prev.h5", dir);
  assert_int_equal(unlink(path), 0);
  snprintf(path, sizeof path, "%s/checkpoints/last.h5", dir);
  f = fopen(path, "r+b");
  fseek(f, 600, SEEK_SET);
  fputs("garbage garbage garbage", f);
  fclose(f);
  assert_int_equal(run_scripted(dir, 3, "last"), LOOM_ENOENT);
  assert_non_null(strstr(loom_last_error(), "cannot resume from \"last\""));
  test_rm_rf(dir);
  free(dir);
}

/* --- load_on_stage_start: a finetune stage starts from the best weights --- */

typedef struct watcher {
  float *best;     /* params at the best epoch of stage "train" */
  float *at_start; /* params when "finetune" starts */
  size_t n;
} watcher;

static int watch_epoch_end(loom_callback *cb, loom_runner *r) {
  watcher *w = loom_callback_data(cb);
  if (strcmp(loom_runner_stage_name(r), "train") == 0 && loom_runner_is_best_valid(r))
    memcpy(w->best, loom_model_params(loom_runner_model(r)), w->n * sizeof(float));
  return 0;
}

static int watch_stage_start(loom_callback *cb, loom_runner *r) {
  watcher *w = loom_callback_data(cb);
  if (strcmp(loom_runner_stage_name(r), "finetune") == 0)
    memcpy(w->at_start, loom_model_params(loom_runner_model(r)), w->n * sizeof(float));
  return 0;
}

static void test_load_best_on_stage_start(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  /* build()'s checkpoint callback loads (two would both write checkpoints/). */
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  ck.load_on_stage_start = "best";
  ck.minimize = 0;
  loom_experiment *exp = build(dir, 3, NULL, &ck);
  loom_stage *train = loom_experiment_stage(exp, 0);
  /* "Best" = highest valid loss, which is epoch 1's: not the last weights. */
  assert_int_equal(loom_stage_set_main_metric(train, "valid", "loss", false), 0);
  loom_stage *ft = loom_experiment_add_stage(exp, "finetune", 1);
  assert_non_null(ft);
  static watcher w;
  const int64_t sizes[] = {8, 16, 3};
  w.n = (size_t)(8 * 16 + 16 + 16 * 3 + 3);
  (void)sizes;
  w.best = calloc(w.n, sizeof(float));
  w.at_start = calloc(w.n, sizeof(float));
  static const loom_callback_ops ops = {.type = "watch", .on_epoch_end = watch_epoch_end,
                                        .on_stage_start = watch_stage_start};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&ops, &w, 300)), 0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_global_epoch(r), 4);
  assert_memory_equal(w.best, w.at_start, w.n * sizeof(float));
  /* And the best epoch was not simply the last one. */
  assert_memory_not_equal(w.best, reference.params, w.n * sizeof(float));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  free(w.best);
  free(w.at_start);
  test_rm_rf(dir);
  free(dir);
}

/* load_on_stage_end: the stage ends holding its best weights. */
static void test_load_best_on_stage_end(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  ck.load_on_stage_end = "best";
  ck.minimize = 0; /* best = highest valid loss = epoch 1 */
  loom_experiment *exp = build(dir, 3, NULL, &ck);
  assert_int_equal(loom_stage_set_main_metric(loom_experiment_stage(exp, 0), "valid", "loss", false), 0);
  static watcher w;
  w.n = (size_t)(8 * 16 + 16 + 16 * 3 + 3);
  w.best = calloc(w.n, sizeof(float));
  w.at_start = calloc(w.n, sizeof(float));
  static const loom_callback_ops ops = {.type = "watch", .on_epoch_end = watch_epoch_end};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&ops, &w, 300)), 0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_best_epoch(r), 1);
  assert_memory_equal(loom_model_params(loom_runner_model(r)), w.best, w.n * sizeof(float));
  assert_memory_not_equal(w.best, reference.params, w.n * sizeof(float));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  free(w.best);
  free(w.at_start);
  test_rm_rf(dir);
  free(dir);
}

static void test_weights_only_file_is_not_resumable(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/w.h5", dir);
  const int64_t sizes[] = {8, 16, 3};
  loom_model *m = loom_mlp_create(sizes, 3, 1);
  assert_int_equal(loom_model_save_weights(m, path), 0);
  loom_model_destroy(m);
  loom_experiment *exp = build(dir, 1, NULL, NULL);
  loom_runner *r = loom_runner_create();
  loom_runner_set_resume(r, path);
  assert_int_equal(loom_run_experiment(r, exp), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "weights only"));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resume_from_epoch_end), cmocka_unit_test(test_tampered_values_are_refused),
      cmocka_unit_test(test_resume_mid_train_loader),
      cmocka_unit_test(test_resume_mid_valid_loader),
      cmocka_unit_test(test_resume_continues_dropout_stream),
      cmocka_unit_test(test_resumed_epoch_reports_what_ran),
      cmocka_unit_test(test_resume_last_with_more_epochs),
      cmocka_unit_test(test_sigint_saves_and_resumes_exactly),
      cmocka_unit_test(test_second_signal_stops_at_once),
      cmocka_unit_test(test_sigint_to_child),
      cmocka_unit_test(test_sigterm_to_child),
      cmocka_unit_test(test_kill9_never_breaks_last),
      cmocka_unit_test(test_best_k_survives_resume),
      cmocka_unit_test(test_ranking_restarts_with_another_metric),
      cmocka_unit_test(test_damaged_last_falls_back),
      cmocka_unit_test(test_load_best_on_stage_start),
      cmocka_unit_test(test_load_best_on_stage_end),
      cmocka_unit_test(test_weights_only_file_is_not_resumable),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
