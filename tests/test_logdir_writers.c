/* Two callbacks of one run that write the same logdir file (two metrics
 * loggers: their lines would interleave in metrics.jsonl; two checkpoint
 * callbacks: one ranking over the other's files) are refused when the run
 * starts, naming both and the file, before anything is written. */
#include <dirent.h>
#include <unistd.h>

#include "helpers.h"

static int noop_batch(loom_runner *r, void *user) {
  (void)user;
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", 1.0);
}

/* One stage per name in `stages` (NULL-terminated), each over a tiny loader. */
static loom_experiment *experiment(const char *logdir, const char *const *stages) {
  loom_experiment *exp = loom_experiment_create("writers");
  assert_int_equal(loom_experiment_set_logdir(exp, logdir), 0);
  for (const char *const *s = stages; *s; s++) {
    loom_stage *st = loom_experiment_add_stage(exp, *s, 1);
    assert_int_equal(loom_stage_add_loader(st, "train", test_loader(4, 2, 2, 2, false)), 0);
  }
  return exp;
}

static int run(loom_experiment *exp, char *message, size_t size) {
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, noop_batch, NULL);
  int rc = loom_run_experiment(r, exp);
  snprintf(message, size, "%s", rc < 0 ? loom_runner_error_message(r) : "");
  loom_runner_destroy(r);
  return rc;
}

/* The entries of `dir` other than "." and ".." (-1: it does not exist). */
static int entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return -1;
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
  closedir(d);
  return n;
}

static void expect_refused(loom_experiment *exp, const char *logdir, const char *first, const char *second,
                           const char *file) {
  char message[2048], want[2048];
  assert_int_equal(run(exp, message, sizeof message), LOOM_EINVAL);
  snprintf(want, sizeof want, "callbacks \"%s\" and \"%s\" both write %s/%s", first, second, logdir, file);
  if (!strstr(message, want))
    print_error("expected \"%s\" in\n  \"%s\"\n", want, message);
  assert_non_null(strstr(message, want));
  /* Nothing was written: the logdir was not even made. */
  assert_int_equal(entries(logdir), -1);
}

/* An experiment's logger (every stage) and a stage's own. */
static void test_experiment_and_stage_metrics_loggers(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), logdir[512];
  snprintf(logdir, sizeof logdir, "%s/run", tmp);
  static const char *const stages[] = {"train", NULL};
  loom_experiment *exp = experiment(logdir, stages);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 0), loom_metrics_logger_create()), 0);
  expect_refused(exp, logdir, "metrics_logger", "metrics_logger#2", "metrics.jsonl");
  loom_experiment_destroy(exp);
  test_rm_rf(tmp);
  free(tmp);
}

/* One per stage: every stage's logger opens metrics.jsonl at the
 * experiment's start. */
static void test_a_metrics_logger_per_stage(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), logdir[512];
  snprintf(logdir, sizeof logdir, "%s/run", tmp);
  static const char *const stages[] = {"warmup", "train", NULL};
  loom_experiment *exp = experiment(logdir, stages);
  for (size_t s = 0; s < 2; s++)
    assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, s), loom_metrics_logger_create()), 0);
  expect_refused(exp, logdir, "metrics_logger", "metrics_logger#2", "metrics.jsonl");
  loom_experiment_destroy(exp);
  test_rm_rf(tmp);
  free(tmp);
}

static void test_two_checkpoint_callbacks(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), logdir[512];
  snprintf(logdir, sizeof logdir, "%s/run", tmp);
  static const char *const stages[] = {"train", NULL};
  loom_experiment *exp = experiment(logdir, stages);
  loom_checkpoint_options o = loom_checkpoint_defaults();
  for (int i = 0; i < 2; i++)
    assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 0), loom_checkpoint_callback_create(&o)), 0);
  expect_refused(exp, logdir, "checkpoint", "checkpoint#2", "checkpoints");
  loom_experiment_destroy(exp);
  test_rm_rf(tmp);
  free(tmp);
}

/* One writer of each file runs, and writes. */
static void test_one_writer_each_runs(void **state) {
  (void)state;
  char *tmp = test_tmpdir(), logdir[512], path[600], message[2048];
  snprintf(logdir, sizeof logdir, "%s/run", tmp);
  static const char *const stages[] = {"warmup", "train", NULL};
  loom_experiment *exp = experiment(logdir, stages);
  loom_checkpoint_options o = loom_checkpoint_defaults();
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_tensorboard_logger_create(0)), 0);
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 1), loom_checkpoint_callback_create(&o)), 0);
  assert_int_equal(run(exp, message, sizeof message), 0);
  /* One loader row and one epoch row per stage. */
  snprintf(path, sizeof path, "%s/metrics.jsonl", logdir);
  char *text = test_read_file(path);
  assert_non_null(text);
  int lines = 0;
  for (char *p = text; *p; p++)
    lines += *p == '\n';
  assert_int_equal(lines, 4);
  free(text);
  loom_experiment_destroy(exp);
  test_rm_rf(tmp);
  free(tmp);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_experiment_and_stage_metrics_loggers),
      cmocka_unit_test(test_a_metrics_logger_per_stage),
      cmocka_unit_test(test_two_checkpoint_callbacks),
      cmocka_unit_test(test_one_writer_each_runs),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
