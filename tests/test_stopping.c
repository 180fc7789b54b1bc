/* Early stopping, exceptions, time limits and the non-finite loss policy. */
#include <math.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* handle_batch that reports scripted valid metrics per global epoch and
 * marks the model's first weight with the epoch number. */
typedef struct script {
  const double *loss, *acc;
  int n;
} script;

static int scripted(loom_runner *r, void *u) {
  const script *s = u;
  int e = loom_runner_global_epoch(r);
  loom_model *m = loom_runner_model(r);
  if (m)
    loom_model_params(m)[0] = (float)e;
  loom_metrics *bm = loom_runner_batch_metrics(r);
  if (loom_runner_is_train_loader(r))
    return loom_metrics_set(bm, "loss", 1.0);
  int rc = loom_metrics_set(bm, "loss", s->loss[e - 1]);
  return (rc == 0 && s->acc) ? loom_metrics_set(bm, "accuracy", s->acc[e - 1]) : rc;
}

static float last_first_weight;
static char last_reason[512];

/* Runs a stage of n epochs with `cb`; returns the epochs that ran. The
 * runner kept in *keep must not touch the (destroyed) experiment. */
static int epochs_run(const script *s, loom_callback *cb, loom_runner **keep, const char *logdir, const char *resume,
                      int epochs, loom_callback *extra) {
  loom_experiment *exp = loom_experiment_create("stop");
  if (logdir)
    loom_experiment_set_logdir(exp, logdir);
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs ? epochs : s->n);
  const int64_t sizes[] = {2, 2};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 1)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_add_callback(st, cb), 0);
  if (extra)
    assert_int_equal(loom_stage_add_callback(st, extra), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, scripted, (void *)s);
  if (resume)
    loom_runner_set_resume(r, resume);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  int ran = loom_runner_global_epoch(r);
  /* Read before the experiment (model, callbacks) goes. */
  last_first_weight = loom_model_params(loom_runner_model(r))[0];
  last_reason[0] = '\0';
  if (strcmp(loom_callback_type(cb), "early_stopping") == 0)
    snprintf(last_reason, sizeof last_reason, "%s", loom_early_stopping_reason(cb));
  if (keep)
    *keep = r;
  else
    loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return ran;
}

static loom_callback *es(loom_early_stopping_options o) {
  loom_callback *cb = loom_early_stopping_callback_create(&o);
  assert_non_null(cb);
  return cb;
}

/* How many times `text` occurs in `s`. */
static int count_in(const char *s, const char *text) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, text)); p++)
    n++;
  return n;
}

static void test_patience(void **state) {
  (void)state;
  /* Improves at epochs 1, 2; epochs 3, 4 do not beat 4.0: stop after 4. */
  const double loss[] = {5, 4, 4.5, 4.2, 3, 2};
  script s = {loss, NULL, 6};
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  loom_callback *cb = es(o);
  loom_runner *r;
  char *dir = test_tmpdir();
  assert_int_equal(epochs_run(&s, cb, &r, dir, NULL, 0, loom_metrics_logger_create()), 4);
  assert_true(loom_runner_need_early_stop(r));
  loom_runner_destroy(r);
  /* Why, once: in the reason and in the last epoch's row of metrics.jsonl. */
  const char *why = "valid/loss did not improve by 0 for 2 epochs; best 4.0000 at epoch 2";
  assert_string_equal(last_reason, why);
  char path[600], want[200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  snprintf(want, sizeof want, "\"epoch\":4,\"global_epoch\":4,\"loader\":null,");
  char *text = test_read_file(path), *row = strstr(text, want);
  assert_non_null(row);
  snprintf(want, sizeof want, "\"stopped\":\"early stopping: %s\"}\n", why);
  assert_non_null(strstr(row, want));
  int n = 0;
  for (char *p = text; (p = strstr(p, "\"stopped\"")); p++)
    n++;
  assert_int_equal(n, 1);
  free(text);
  /* metrics.csv: a last column "stopped", set in epoch 4's row only. */
  snprintf(path, sizeof path, "%s/metrics.csv", dir);
  text = test_read_file(path);
  assert_non_null(strstr(text, ",stopped\n"));
  snprintf(want, sizeof want, ",early stopping: %s\n", why);
  assert_non_null((row = strstr(text, "\ntrain,4,4,,")));
  assert_true(strstr(text, want) > row);
  assert_int_equal(count_in(text, "early stopping:"), 1);
  free(text);
  test_rm_rf(dir);
  free(dir);
}

static void test_min_delta_absolute_and_relative(void **state) {
  (void)state;
  /* min_delta 0.5: 4.8 and 4.6 do not beat 5 - 0.5; stop after epoch 3. */
  const double loss[] = {5, 4.8, 4.6, 4.0, 3};
  script s = {loss, NULL, 5};
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  o.num_monitors = 1;
  o.monitors[0] = loom_monitor_defaults();
  o.monitors[0].min_delta = 0.5;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 3);
  /* Relative 0.05 of 5 = 0.25: 4.8 beats 4.75? no; 4.6 beats it: goes on. */
  o.monitors[0].min_delta = 0.05;
  o.monitors[0].relative = true;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 5);
}

/* The console agrees with the monitor: with min_delta 0.5, 4.8 and 4.6
 * after 5 are no "new best" (the runner's best stays epoch 1), and the
 * reason to stop is printed once, after the last epoch. */
static void test_console_new_best_and_reason(void **state) {
  (void)state;
  const double loss[] = {5, 4.8, 4.6, 4.0, 3};
  script s = {loss, NULL, 5};
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  o.num_monitors = 1;
  o.monitors[0] = loom_monitor_defaults();
  o.monitors[0].min_delta = 0.5;
  char *dir = test_tmpdir(), path[1100];
  snprintf(path, sizeof path, "%s/console.txt", dir);
  FILE *out = fopen(path, "w");
  assert_non_null(out);
  loom_console_logger_options c = {.out = out, .progress = LOOM_PROGRESS_OFF};
  loom_runner *r;
  assert_int_equal(epochs_run(&s, es(o), &r, NULL, NULL, 0, loom_console_logger_create(&c)), 3);
  assert_int_equal(loom_runner_best_epoch(r), 1);
  loom_runner_destroy(r);
  fclose(out);
  char *text = test_read_file(path);
  assert_int_equal(count_in(text, "new best"), 1);
  assert_non_null(strstr(text, "epoch 1/5\n  * new best valid/loss 5.0000\n"));
  const char *why = "  stopping: early stopping: valid/loss did not improve by 0.5 for 2 epochs; best 5.0000 at epoch 1\n";
  assert_int_equal(count_in(text, why), 1);
  assert_non_null(strstr(text, "epoch 3/5\n"));
  assert_true(strstr(text, why) > strstr(text, "epoch 3/5\n"));
  assert_non_null(strstr(text, "stage \"train\" best (epoch 1): valid/loss 5.0000\n"));
  free(text);
  test_rm_rf(dir);
  free(dir);
}

static void test_finite_thresholds(void **state) {
  (void)state;
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 10;
  const double nan_loss[] = {5, NAN, 4, 3};
  script s = {nan_loss, NULL, 4};
  loom_callback *cb = es(o);
  loom_runner *r;
  assert_int_equal(epochs_run(&s, cb, &r, NULL, NULL, 0, NULL), 2);
  assert_non_null(strstr(last_reason, "valid/loss is nan"));
  loom_runner_destroy(r);

  o.num_monitors = 1;
  o.monitors[0] = loom_monitor_defaults();
  o.monitors[0].stopping_threshold = 4.5;
  const double good[] = {5, 4.4, 4, 3};
  s = (script){good, NULL, 4};
  cb = es(o);
  assert_int_equal(epochs_run(&s, cb, &r, NULL, NULL, 0, NULL), 2);
  assert_non_null(strstr(last_reason, "stopping threshold"));
  loom_runner_destroy(r);

  o.monitors[0] = loom_monitor_defaults();
  o.monitors[0].divergence_threshold = 10;
  const double diverge[] = {5, 11, 4, 3};
  s = (script){diverge, NULL, 4};
  cb = es(o);
  assert_int_equal(epochs_run(&s, cb, &r, NULL, NULL, 0, NULL), 2);
  assert_non_null(strstr(last_reason, "diverged past 10"));
  loom_runner_destroy(r);
}

static void test_several_monitors_any_all(void **state) {
  (void)state;
  /* The loss keeps improving; the accuracy (maximised) stalls from epoch 1. */
  const double loss[] = {5, 4, 3, 2, 1, 0.5};
  const double acc[] = {0.5, 0.5, 0.5, 0.5, 0.5, 0.5};
  script s = {loss, acc, 6};
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  o.num_monitors = 2;
  o.monitors[0] = loom_monitor_defaults();
  o.monitors[1] = loom_monitor_defaults();
  o.monitors[1].metric = "accuracy";
  o.monitors[1].minimize = 0;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 3); /* any: accuracy stalled twice */
  o.require_all = true;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 6); /* all: the loss never stalls */
}

static void test_restore_best_weights(void **state) {
  (void)state;
  /* Best at epoch 2; stops after 4; the weights marked "2" come back. */
  const double loss[] = {5, 3, 4, 4, 1};
  script s = {loss, NULL, 5};
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  o.restore_best_weights = true;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 4);
  assert_true(last_first_weight == 2.0f);
  /* Without restore, the last epoch's weights stay. */
  o.restore_best_weights = false;
  assert_int_equal(epochs_run(&s, es(o), NULL, NULL, NULL, 0, NULL), 4);
  assert_true(last_first_weight == 4.0f);
}

static void test_state_survives_resume(void **state) {
  (void)state;
  /* 3 epochs leave wait = 1 (epoch 3 did not improve); resuming for more
   * epochs must stop after epoch 4 as the uninterrupted run does. */
  const double loss[] = {5, 4, 4.5, 4.2, 3, 2};
  script s = {loss, NULL, 6};
  char *dir = test_tmpdir();
  loom_early_stopping_options o = loom_early_stopping_defaults();
  o.patience = 2;
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  assert_int_equal(epochs_run(&s, es(o), NULL, dir, NULL, 3, loom_checkpoint_callback_create(&ck)), 3);
  assert_int_equal(epochs_run(&s, es(o), NULL, dir, "last", 6, loom_checkpoint_callback_create(&ck)), 4);
  test_rm_rf(dir);
  free(dir);
}

/* --- exceptions and time limits --- */

static int fail_epoch2(loom_callback *cb, loom_runner *r) {
  (void)cb;
  return loom_runner_global_epoch(r) == 2 ? loom_error_set(LOOM_EIO, "disk on fire") : 0;
}

static void test_exception_callback(void **state) {
  (void)state;
  const double loss[] = {5, 4, 3};
  script s = {loss, NULL, 3};
  char *dir = test_tmpdir();
  static const loom_callback_ops failing = {.type = "failing", .on_epoch_start = fail_epoch2};
  loom_exception_options eo = {.handle = true, .save_checkpoint = true};
  /* Handled: the run returns 0 and leaves a report and a checkpoint. */
  loom_runner *r;
  epochs_run(&s, loom_exception_callback_create(&eo), &r, dir, NULL, 3, loom_callback_create(&failing, NULL, 0));
  assert_int_equal(loom_runner_error(r), LOOM_EIO);
  assert_true(loom_runner_error_handled(r));
  loom_runner_destroy(r);
  char path[512];
  snprintf(path, sizeof path, "%s/exception.json", dir);
  json_error_t err;
  json_t *report = json_load_file(path, 0, &err);
  assert_non_null(report);
  assert_string_equal(json_string_value(json_object_get(report, "error")), "LOOM_EIO");
  assert_non_null(strstr(json_string_value(json_object_get(report, "message")), "disk on fire"));
  assert_int_equal(json_integer_value(json_object_get(report, "global_epoch")), 2);
  json_decref(report);
  snprintf(path, sizeof path, "%s/checkpoints/exception.h5", dir);
  loom_checkpoint *c = loom_checkpoint_read(path);
  assert_non_null(c);
  loom_checkpoint_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

static int slow_batch(loom_runner *r, void *u) {
  (void)u;
  struct timespec ts = {0, 5000000};
  nanosleep(&ts, NULL);
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", 1.0);
}

static void test_time_limit(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_experiment *exp = loom_experiment_create("time");
  loom_experiment_set_logdir(exp, dir);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1000);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 2, 2, 2, false)), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  assert_int_equal(loom_stage_add_callback(st, loom_checkpoint_callback_create(&ck)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_time_limit_callback_create(0.1)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, slow_batch, NULL);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  assert_int_equal(loom_run_experiment(r, exp), 0); /* stopped cleanly */
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
  assert_true(took >= 0.1 && took < 2.0);
  assert_int_equal(loom_runner_error(r), LOOM_EINTERRUPTED);
  assert_non_null(strstr(loom_runner_error_message(r), "time limit of 0.1 s"));
  assert_true(loom_runner_global_epoch(r) < 1000);
  loom_runner_destroy(r);
  /* ... with a resumable checkpoint saved at the batch boundary. */
  char path[512], notice[64];
  loom_checkpoint *c = loom_checkpoint_open_logdir(dir, "last", path, sizeof path, notice, sizeof notice);
  assert_non_null(c);
  loom_checkpoint_destroy(c);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

/* --- non-finite losses --- */

/* 8 samples, batches of 2; sample 5 (batch 3) holds a NaN feature. */
static loom_experiment *nan_run(void) {
  float x[16], y[8];
  for (int i = 0; i < 8; i++)
    x[2 * i] = (float)i / 8, x[2 * i + 1] = 1.0f - (float)i / 8, y[i] = (float)(i % 2);
  x[10] = NAN;
  int64_t two = 2;
  loom_loader_options lo = {.batch_size = 2};
  loom_experiment *exp = loom_experiment_create("nan");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  const int64_t sizes[] = {2, 2};
  loom_sgd_options so = {.lr = 0.1};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 1)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&so)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", loom_loader_create(loom_memory_dataset_create(x, y, 8, 1, &two, 0, NULL), &lo)), 0);
  return exp;
}

static bool all_finite(loom_model *m) {
  for (size_t i = 0; i < loom_model_num_params(m); i++)
    if (!isfinite(loom_model_params(m)[i]))
      return false;
  return true;
}

static void test_nonfinite_policy(void **state) {
  (void)state;
  /* Default STOP: an error, and the weights never saw the NaN. */
  loom_experiment *exp = nan_run();
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), LOOM_ENONFINITE);
  assert_non_null(strstr(loom_runner_error_message(r), "batch 3"));
  assert_true(all_finite(loom_runner_model(r)));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  /* SKIP with a budget of 1: the batch is dropped, metrics stay finite. */
  exp = nan_run();
  r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.nonfinite = LOOM_NONFINITE_SKIP;
  o.nonfinite_budget = 1;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(all_finite(loom_runner_model(r)));
  double loss;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "train/loss", &loss));
  assert_true(isfinite(loss));
  assert_int_equal(loom_runner_optimizer_step_count(r), 3); /* 4 batches, one skipped */
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  /* SKIP with the budget spent: an error that says so. */
  exp = nan_run();
  r = loom_runner_create();
  o.nonfinite_budget = 0;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), LOOM_ENONFINITE);
  assert_non_null(strstr(loom_runner_error_message(r), "budget of 0 skipped batches"));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_patience),
      cmocka_unit_test(test_min_delta_absolute_and_relative),
      cmocka_unit_test(test_console_new_best_and_reason),
      cmocka_unit_test(test_finite_thresholds),
      cmocka_unit_test(test_several_monitors_any_all),
      cmocka_unit_test(test_restore_best_weights),
      cmocka_unit_test(test_state_survives_resume),
      cmocka_unit_test(test_exception_callback),
      cmocka_unit_test(test_time_limit),
      cmocka_unit_test(test_nonfinite_policy),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
