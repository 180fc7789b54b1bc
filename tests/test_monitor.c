/* The monitored metric of checkpointing, early stopping and the plateau
 * scheduler: one lookup with one failure rule. A metric the user named that
 * the epoch does not produce is an error naming the callback, the key and
 * the metrics there are; the stage's own metric missing (a stage without a
 * valid loader) only leaves the checkpoint with nothing to rank. */
#include "helpers.h"

/* A one-epoch run of a tiny MLP with a train loader, a valid loader if
 * asked, an accuracy callback and `cb`; returns loom_run_experiment's code. */
static int run_with(loom_callback *cb, bool with_valid, const char *logdir) {
  loom_experiment *exp = loom_experiment_create("monitor");
  assert_int_equal(loom_experiment_set_logdir(exp, logdir), 0);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  int64_t sizes[] = {4, 3};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 1)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  loom_sgd_options sgd = {.lr = 0.1};
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 4, 3, 4, false)), 0);
  if (with_valid)
    assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(8, 4, 3, 4, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, cb), 0);
  loom_runner *r = loom_runner_create();
  int rc = loom_run_experiment(r, exp);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return rc;
}

static void expect_missing(loom_callback *cb, const char *who) {
  char *dir = test_tmpdir();
  assert_int_equal(run_with(cb, true, dir), LOOM_EINVAL);
  char want[256];
  snprintf(want, sizeof want,
           "%s watches \"valid/accuracyy\", which epoch 1 of stage \"train\" did not produce (it has: lr, momentum, "
           "train/loss, train/accuracy, valid/loss, valid/accuracy); check the loader and metric names",
           who);
  assert_non_null(strstr(loom_last_error(), want));
  test_rm_rf(dir);
  free(dir);
}

static void test_a_named_metric_missing_is_the_same_error_everywhere(void **state) {
  (void)state;
  loom_checkpoint_options c = loom_checkpoint_defaults();
  c.metric = "accuracyy";
  expect_missing(loom_checkpoint_callback_create(&c), "checkpoint");

  loom_early_stopping_options e = loom_early_stopping_defaults();
  e.monitors[0] = loom_monitor_defaults();
  e.monitors[0].metric = "accuracyy";
  e.num_monitors = 1;
  expect_missing(loom_early_stopping_callback_create(&e), "early stopping");

  loom_plateau_options p = loom_plateau_defaults();
  expect_missing(loom_scheduler_callback_create(loom_plateau_lr_create(&p), LOOM_SCHEDULE_PER_EPOCH, NULL, "accuracyy"),
                 "scheduler (ReduceLROnPlateau)");
}

static bool exists(const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/checkpoints/%s", dir, name);
  FILE *f = fopen(path, "rb");
  if (f)
    fclose(f);
  return f != NULL;
}

static void test_the_stage_metric_missing_ranks_nothing(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_checkpoint_options c = loom_checkpoint_defaults();
  assert_int_equal(run_with(loom_checkpoint_callback_create(&c), false, dir), 0);
  assert_true(exists(dir, "last.h5"));
  assert_false(exists(dir, "best.h5"));
  assert_false(exists(dir, "epoch_0001.h5"));
  test_rm_rf(dir);
  free(dir);
}

static void test_the_stage_metric_present_is_ranked(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_checkpoint_options c = loom_checkpoint_defaults();
  assert_int_equal(run_with(loom_checkpoint_callback_create(&c), true, dir), 0);
  assert_true(exists(dir, "best.h5"));
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_named_metric_missing_is_the_same_error_everywhere),
      cmocka_unit_test(test_the_stage_metric_missing_ranks_nothing),
      cmocka_unit_test(test_the_stage_metric_present_is_ranked),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
