/* Drives examples/fashion_mnist_mlp as a user would: resume with more
 * epochs appends to metrics.jsonl; Ctrl-C (SIGINT) exits with 130 and leaves
 * a checkpoint to resume from; its JSON twin run by loom gives the same
 * metrics. Usage: test_example_cli EXAMPLE DATA_DIR LOOM CONFIG */
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static const char *example, *data, *loom, *config;

static pid_t start(const char *logdir, const char *epochs, const char *resume) {
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout))
      _exit(127);
    if (resume)
      execl(example, example, "--epochs", epochs, "--logdir", logdir, "--data", data, "--resume", resume, (char *)NULL);
    else
      execl(example, example, "--epochs", epochs, "--logdir", logdir, "--data", data, (char *)NULL);
    _exit(127);
  }
  return pid;
}

static int finish(pid_t pid) {
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  return WEXITSTATUS(status);
}

static int count_lines(const char *path) {
  char *text = test_read_file(path);
  int n = 0;
  for (char *p = text; p && *p; p++)
    n += *p == '\n';
  free(text);
  return n;
}

/* The example with `args` (NULL-terminated, after the program's name), its
 * stderr into `err`; the exit code. */
static int run_args(const char *const *args, char *err, size_t size) {
  char path[] = "/tmp/loom-example-stderr-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout) || dup2(fd, 2) < 0)
      _exit(127);
    const char *argv[16] = {example};
    for (int i = 0; args[i] && i < 14; i++)
      argv[i + 1] = args[i];
    execv(example, (char *const *)argv);
    _exit(127);
  }
  int code = finish(pid);
  close(fd);
  char *text = test_read_file(path);
  snprintf(err, size, "%s", text ? text : "");
  free(text);
  unlink(path);
  return code;
}

/* A wrong device or missing data: a message and a failing exit code,
 * before anything trains (missing data once exited 0). */
static void test_bad_input_fails(void **state) {
  (void)state;
  char *dir = test_tmpdir(), err[4096];
  const char *bad_device[] = {"--logdir", dir, "--data", data, "--device", "cuda:x", NULL};
  assert_int_equal(run_args(bad_device, err, sizeof err), 2);
  assert_non_null(strstr(err, "--device cuda:x: device: expected a device such as"));
  const char *no_data[] = {"--logdir", dir, "--data", "/nonexistent", NULL};
  assert_int_equal(run_args(no_data, err, sizeof err), 1);
  assert_non_null(strstr(err, "Fashion-MNIST not found in /nonexistent"));
  test_rm_rf(dir);
  free(dir);
}

static void test_resume_with_more_epochs(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(finish(start(dir, "1", NULL)), 0);
  assert_int_equal(finish(start(dir, "2", "last")), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  assert_int_equal(count_lines(path), 6); /* per epoch: train, valid, the epoch's row */
  char *text = test_read_file(path);
  assert_non_null(strstr(text, "\"epoch\":2,\"global_epoch\":2,\"loader\":\"valid\""));
  free(text);
  test_rm_rf(dir);
  free(dir);
}

static void test_ctrl_c_exits_130_with_checkpoint(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  pid_t pid = start(dir, "20", NULL);
  /* Once the first epoch is logged, training is well under way. */
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  struct timespec poll = {0, 20000000};
  for (int i = 0; i < 3000 && count_lines(path) < 2; i++)
    nanosleep(&poll, NULL);
  kill(pid, SIGINT);
  assert_int_equal(finish(pid), 130);
  char used[512], notice[256];
  loom_checkpoint *c = loom_checkpoint_open_logdir(dir, "last", used, sizeof used, notice, sizeof notice);
  assert_non_null(c);
  int64_t cursor[6];
  assert_int_equal(loom_state_get_i64_array(loom_checkpoint_find(c, "runner"), "cursor", cursor, 6), 0);
  assert_true(cursor[5] >= 1); /* past epoch 1 */
  loom_checkpoint_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* The C program and examples/configs/fashion_mnist_mlp.json describe one
 * experiment: two epochs of each give identical metrics.jsonl. */
static void test_config_twin_matches(void **state) {
  (void)state;
  char *a = test_tmpdir(), *b = test_tmpdir();
  assert_int_equal(finish(start(a, "2", NULL)), 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    if (!freopen("/dev/null", "w", stdout))
      _exit(127);
    execl(loom, loom, "run", config, "--logdir", b, "--set", "stages.train.num_epochs=2", (char *)NULL);
    _exit(127);
  }
  assert_int_equal(finish(pid), 0);
  char *ja = jsonl_without_time(a), *jb = jsonl_without_time(b);
  assert_string_equal(ja, jb);
  free(ja), free(jb);
  test_rm_rf(a), test_rm_rf(b);
  free(a), free(b);
}

int main(int argc, char **argv) {
  if (argc < 5)
    return 2;
  example = argv[1];
  data = argv[2];
  loom = argv[3];
  config = argv[4];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bad_input_fails),
      cmocka_unit_test(test_resume_with_more_epochs),
      cmocka_unit_test(test_ctrl_c_exits_130_with_checkpoint),
      cmocka_unit_test(test_config_twin_matches),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
