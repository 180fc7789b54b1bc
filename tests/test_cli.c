/* The loom command as a user runs it: exit codes, messages, the resolved
 * config in the logdir, --check, Ctrl-C and --resume.
 * Usage: test_cli LOOM CONFIGS_DIR */
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static const char *loom, *configs;
static char tiny[1024], errfile[1024];

/* Runs loom with the arguments (NULL-terminated); returns the exit code
 * (or 1000 + signal) and leaves stderr in errfile. With `pid_out`, returns
 * at once with the child's pid instead. */
static int run(pid_t *pid_out, const char *arg, ...) {
  const char *argv[32] = {loom};
  int n = 1;
  va_list ap;
  va_start(ap, arg);
  for (const char *a = arg; a && n < 31; a = va_arg(ap, const char *))
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout) || !freopen(errfile, "w", stderr))
      _exit(127);
    execv(loom, (char *const *)argv);
    _exit(127);
  }
  if (pid_out) {
    *pid_out = pid;
    return 0;
  }
  int status;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

static bool stderr_has(const char *text) {
  char *s = test_read_file(errfile);
  bool found = s && strstr(s, text);
  if (!found)
    print_error("stderr was: %s\n", s ? s : "(none)");
  free(s);
  return found;
}

static void test_usage_and_validate(void **state) {
  (void)state;
  assert_int_equal(run(NULL, NULL), 2);
  assert_int_equal(run(NULL, "--help", NULL), 0);
  assert_int_equal(run(NULL, "run", "--help", NULL), 0);
  assert_int_equal(run(NULL, "--version", NULL), 0);
  assert_int_equal(run(NULL, "train", tiny, NULL), 2);
  assert_true(stderr_has("unknown command \"train\""));
  assert_int_equal(run(NULL, "run", NULL), 2);
  assert_int_equal(run(NULL, "run", tiny, "--bogus", NULL), 2);
  assert_int_equal(run(NULL, "validate", tiny, NULL), 0);
  assert_int_equal(run(NULL, "validate", "/nonexistent.json", NULL), 2);
  assert_true(stderr_has("/nonexistent.json: No such file or directory"));
  char bad[1100];
  snprintf(bad, sizeof bad, "%s/invalid/optimizer_unknown_key/config.json", configs);
  assert_int_equal(run(NULL, "validate", bad, NULL), 2);
  assert_true(stderr_has("stages.train.optimizer.lrr: unknown key (did you mean \"lr\"?)"));
  assert_int_equal(run(NULL, "validate", tiny, "--set", "stages.train.num_epochs=x", NULL), 2);
  assert_true(stderr_has("--set stages.train.num_epochs=x: stages.train.num_epochs: expected an integer"));
}

static void test_run_writes_resolved_config(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=2", NULL), 0);
  char path[1100];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_error_t err;
  json_t *c = json_load_file(path, 0, &err);
  assert_non_null(c);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(c, "stages"), "train"), "num_epochs")), 2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(c, "experiment"), "logdir")), dir);
  json_decref(c);
  char *rows = jsonl_without_time(dir);
  int n = 0;
  for (char *p = rows; *p; p++)
    n += *p == '\n';
  assert_int_equal(n, 4); /* 2 epochs x (train, valid) */
  free(rows);
  /* Running the resolved config reproduces the run. */
  char *dir2 = test_tmpdir();
  assert_int_equal(run(NULL, "run", path, "--logdir", dir2, NULL), 0);
  char *a = jsonl_without_time(dir), *b = jsonl_without_time(dir2);
  assert_string_equal(a, b);
  free(a), free(b);
  /* --check: 2 epochs of 2 batches, whatever the config says. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir2, "--check", "--set", "stages.train.num_epochs=50", NULL), 0);
  test_rm_rf(dir), test_rm_rf(dir2);
  free(dir), free(dir2);
}

static void test_ctrl_c_then_resume(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  pid_t pid;
  run(&pid, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=1000000", NULL);
  char last[1100];
  snprintf(last, sizeof last, "%s/checkpoints/last.h5", dir);
  struct timespec poll = {0, 10000000};
  for (int i = 0; i < 3000 && access(last, F_OK) < 0; i++)
    nanosleep(&poll, NULL);
  nanosleep(&poll, NULL);
  kill(pid, SIGINT);
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 130);
  assert_true(stderr_has("interrupted by SIGINT"));
  assert_true(stderr_has("--resume last"));
  /* Resume with a stage short enough to be over: it finishes at once. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--resume", "last", NULL), 0);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--resume", "/nonexistent.h5", NULL), 1);
  assert_true(stderr_has("cannot resume from \"/nonexistent.h5\""));
  test_rm_rf(dir);
  free(dir);
}

int main(int argc, char **argv) {
  if (argc < 3)
    return 2;
  loom = argv[1];
  configs = argv[2];
  snprintf(tiny, sizeof tiny, "%s/tiny.json", configs);
  snprintf(errfile, sizeof errfile, "/tmp/loom-test-cli-stderr.%ld", (long)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_usage_and_validate),
      cmocka_unit_test(test_run_writes_resolved_config),
      cmocka_unit_test(test_ctrl_c_then_resume),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  unlink(errfile);
  return rc;
}
