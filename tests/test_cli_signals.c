/* The hold a distributed rank of `loom run` puts on late signals
 * (cli/late_signals.c): the first SIGINT or SIGTERM outside the runner's
 * watch is ignored, the next ends the process by its default action; inside
 * a run the runner takes the first and hands the hold back. Each case runs
 * in a child, whose end is the expectation. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "cli/late_signals.h"

/* Runs body in a child and returns its wait status. */
static int in_child(void (*body)(void)) {
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    body();
    _exit(0);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static void one_of_each(void) {
  loom_cli_hold_late_signals();
  raise(SIGTERM); /* ignored */
  _exit(loom_cli_late_signals() == 1 ? 7 : 8);
}

static void two_sigterms(void) {
  loom_cli_hold_late_signals();
  raise(SIGTERM);
  raise(SIGTERM); /* ends it */
  _exit(9);
}

static void sigint_then_sigterm(void) {
  loom_cli_hold_late_signals();
  raise(SIGINT);
  raise(SIGTERM); /* a second signal of either kind ends it */
  _exit(9);
}

static void test_first_ignored(void **state) {
  (void)state;
  int status = in_child(one_of_each);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 7);
}

static void test_second_ends(void **state) {
  (void)state;
  int status = in_child(two_sigterms);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGTERM);
  status = in_child(sigint_then_sigterm);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGTERM);
}

/* Without the hold, a late SIGTERM ends the process at once (the default
 * action the runner put back): what killed rank 1 of test_mpi_sigint. */
static void no_hold(void) {
  raise(SIGTERM);
  _exit(9);
}

static void test_without_hold(void **state) {
  (void)state;
  int status = in_child(no_hold);
  assert_true(WIFSIGNALED(status));
  assert_int_equal(WTERMSIG(status), SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_first_ignored),
      cmocka_unit_test(test_second_ends),
      cmocka_unit_test(test_without_hold),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
