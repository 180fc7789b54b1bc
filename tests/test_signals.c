/* The runner watches SIGINT and SIGTERM during a run and gives the host
 * program back exactly the dispositions it found (handler, mask, flags),
 * whether or not a signal arrived; other signals are never touched. */
#include <signal.h>

#include "helpers.h"

static volatile sig_atomic_t host_int, host_term, host_usr1;

static void on_host_int(int sig, siginfo_t *info, void *ctx) {
  (void)sig, (void)info, (void)ctx;
  host_int++;
}
static void on_host_term(int sig) {
  (void)sig;
  host_term++;
}
static void on_host_usr1(int sig) {
  (void)sig;
  host_usr1++;
}

static void set_action(int sig, struct sigaction *sa, int flags, int mask1, int mask2) {
  sa->sa_flags = flags;
  sigemptyset(&sa->sa_mask);
  if (mask1)
    sigaddset(&sa->sa_mask, mask1);
  if (mask2)
    sigaddset(&sa->sa_mask, mask2);
  assert_int_equal(sigaction(sig, sa, NULL), 0);
}

/* The host's handlers, each with its own flags and mask. */
static void install_host_handlers(void) {
  struct sigaction sa = {.sa_sigaction = on_host_int};
  set_action(SIGINT, &sa, SA_SIGINFO | SA_RESTART, SIGUSR2, 0);
  sa = (struct sigaction){.sa_handler = on_host_term};
  set_action(SIGTERM, &sa, SA_NODEFER, SIGHUP, SIGQUIT);
  sa = (struct sigaction){.sa_handler = on_host_usr1};
  set_action(SIGUSR1, &sa, SA_RESTART, SIGALRM, 0);
  host_int = host_term = host_usr1 = 0;
}

static int reset_defaults(void **state) {
  (void)state;
  int sigs[] = {SIGINT, SIGTERM, SIGUSR1};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    signal(sigs[i], SIG_DFL);
  return 0;
}

static struct sigaction action_of(int sig) {
  struct sigaction sa;
  assert_int_equal(sigaction(sig, NULL, &sa), 0);
  return sa;
}

/* Field by field: handler, flags, and every signal of the mask. */
static void expect_same_action(int sig, const struct sigaction *want) {
  struct sigaction got = action_of(sig);
  if (want->sa_flags & SA_SIGINFO)
    assert_ptr_equal((void *)got.sa_sigaction, (void *)want->sa_sigaction);
  else
    assert_ptr_equal((void *)got.sa_handler, (void *)want->sa_handler);
  assert_int_equal(got.sa_flags, want->sa_flags);
  for (int s = 1; s < SIGRTMAX; s++)
    if (sigismember(&got.sa_mask, s) != sigismember(&want->sa_mask, s))
      fail_msg("signal %d: mask differs at signal %d", sig, s);
}

/* Raises `raise_sig` after train batch `raise_at` (0: never); in
 * on_exception, raises it again. */
typedef struct raiser {
  int raise_sig;
  int raise_at;
  bool again;
} raiser;

static int raise_at_batch(loom_callback *cb, loom_runner *r) {
  raiser *x = loom_callback_data(cb);
  if (x->raise_at && loom_runner_loader_batch_step(r) == x->raise_at)
    raise(x->raise_sig);
  return 0;
}

static int raise_again(loom_callback *cb, loom_runner *r) {
  (void)r;
  raiser *x = loom_callback_data(cb);
  if (x->again)
    raise(x->raise_sig);
  return 0;
}

static const loom_callback_ops raiser_ops = {.type = "raiser", .on_batch_end = raise_at_batch,
                                             .on_exception = raise_again};

static int no_work(loom_runner *r, void *user) {
  (void)r, (void)user;
  return 0;
}

static char last_message[1024];

/* One stage, one epoch, a train loader of 3 batches. */
static int run_tiny(raiser *x) {
  loom_experiment *exp = loom_experiment_create("signals");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(6, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&raiser_ops, x, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, no_work, NULL);
  int rc = loom_run_experiment(r, exp);
  snprintf(last_message, sizeof last_message, "%s", loom_last_error());
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return rc;
}

static void expect_host_handlers(const struct sigaction before[3]) {
  expect_same_action(SIGINT, &before[0]);
  expect_same_action(SIGTERM, &before[1]);
  expect_same_action(SIGUSR1, &before[2]);
  /* ... and they are still the host's own. */
  assert_ptr_equal((void *)action_of(SIGINT).sa_sigaction, (void *)on_host_int);
  assert_ptr_equal((void *)action_of(SIGTERM).sa_handler, (void *)on_host_term);
  assert_ptr_equal((void *)action_of(SIGUSR1).sa_handler, (void *)on_host_usr1);
}

static void test_handlers_kept_after_a_quiet_run(void **state) {
  (void)state;
  install_host_handlers();
  struct sigaction before[3] = {action_of(SIGINT), action_of(SIGTERM), action_of(SIGUSR1)};
  raiser x = {0};
  assert_int_equal(run_tiny(&x), 0);
  expect_host_handlers(before);
  assert_int_equal(host_int + host_term + host_usr1, 0);
}

/* The first SIGINT interrupts the run (the host's handler does not see it);
 * from then on the host's handler is back, so a second one reaches it
 * instead of killing the process. */
static void interrupted_by(int sig) {
  install_host_handlers();
  struct sigaction before[3] = {action_of(SIGINT), action_of(SIGTERM), action_of(SIGUSR1)};
  raiser x = {.raise_sig = sig, .raise_at = 2, .again = true};
  assert_int_equal(run_tiny(&x), LOOM_EINTERRUPTED);
  assert_non_null(strstr(last_message, sig == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM"));
  assert_non_null(strstr(last_message, "after batch 2"));
  assert_int_equal(sig == SIGINT ? host_int : host_term, 1); /* the second signal only */
  assert_int_equal(sig == SIGINT ? host_term : host_int, 0);
  assert_int_equal(host_usr1, 0);
  expect_host_handlers(before);
}

static void test_handlers_kept_after_sigint(void **state) {
  (void)state;
  interrupted_by(SIGINT);
}

static void test_handlers_kept_after_sigterm(void **state) {
  (void)state;
  interrupted_by(SIGTERM);
}

/* An ignored signal stays ignored after the run. */
static void test_ignored_stays_ignored(void **state) {
  (void)state;
  struct sigaction ign = {.sa_handler = SIG_IGN};
  set_action(SIGINT, &ign, 0, 0, 0);
  struct sigaction before = action_of(SIGINT);
  raiser x = {0};
  assert_int_equal(run_tiny(&x), 0);
  expect_same_action(SIGINT, &before);
  assert_ptr_equal((void *)action_of(SIGINT).sa_handler, (void *)SIG_IGN);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_handlers_kept_after_a_quiet_run, reset_defaults),
      cmocka_unit_test_teardown(test_handlers_kept_after_sigint, reset_defaults),
      cmocka_unit_test_teardown(test_handlers_kept_after_sigterm, reset_defaults),
      cmocka_unit_test_teardown(test_ignored_stays_ignored, reset_defaults),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
