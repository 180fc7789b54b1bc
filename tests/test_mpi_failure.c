/* A failure on one rank of a distributed run, under mpirun (CTest runs each
 * group as its own job on 2 ranks, since a failed run leaves its
 * communicator unusable): every rank leaves loom_run_experiment at the same
 * optimizer step, with on_exception fired once on each, the failing rank
 * with its own error and the others with LOOM_ECOMM naming it and its
 * message. The groups: a callback's error before the step's all-reduce, an
 * error in handle_batch after it, a NaN loss on one rank only (STOP: every
 * rank stops; SKIP: every rank skips that batch and the run goes on), and a
 * rank late to a collective past the time limit. Outcomes are compared
 * across ranks on a fresh communicator. */
#include <math.h>
#include <mpi.h>
#include <time.h>

#include "helpers.h"

static int world_rank, world_size;
static const char *group;

#define FEATURES 4

/* 24 samples, labels i % 2; sample `nan_at` (if >= 0) gets a NaN feature. */
static loom_loader *loader(int nan_at) {
  float x[24 * FEATURES], y[24];
  for (int i = 0; i < 24; i++) {
    y[i] = (float)(i % 2);
    for (int j = 0; j < FEATURES; j++)
      x[i * FEATURES + j] = (float)((i * 7 + j * 3) % 11) / 11.0f - 0.5f + 0.4f * (float)(i % 2 == j % 2);
  }
  if (nan_at >= 0)
    x[nan_at * FEATURES + 1] = NAN;
  int64_t f = FEATURES;
  loom_loader_options o = {.batch_size = 2};
  return loom_loader_create(loom_memory_dataset_create(x, y, 24, 1, &f, 0, NULL), &o);
}

/* What each rank saw of the run. */
static int exceptions;
static int64_t fail_epoch, fail_batch; /* where rank 1 fails: epoch, loader batch */
static unsigned sleep_s;               /* the "late" group: rank 1 sleeps this long there */

static bool at_failure_point(loom_runner *r) {
  return world_rank == 1 && loom_runner_is_train_loader(r) && loom_runner_epoch(r) == fail_epoch &&
         loom_runner_loader_batch_step(r) == fail_batch;
}

static int fail_before_step(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (at_failure_point(r))
    return loom_error_set(LOOM_EINVAL, "injected failure on rank 1 at batch start");
  return 0;
}

/* Rank 1 sleeps there; rank 0 gives the next collective 1 s (only that
 * one: a slow sanitizer build may take longer anywhere else). */
static int late_at_batch_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  bool here = loom_runner_is_train_loader(r) && loom_runner_epoch(r) == fail_epoch &&
              loom_runner_loader_batch_step(r) == fail_batch;
  if (here && world_rank == 0)
    loom_comm_set_timeout(loom_runner_comm(r), 1.0);
  if (at_failure_point(r))
    nanosleep(&(struct timespec){(time_t)sleep_s, 0}, NULL);
  return 0;
}

static int count_exception(loom_callback *cb, loom_runner *r) {
  (void)cb, (void)r;
  exceptions++;
  return 0;
}

/* handle_batch: the supervised one, then a failure on rank 1 after its step. */
static int fail_after_step(loom_runner *r, void *user) {
  (void)user;
  int rc = loom_supervised_handle_batch(r, NULL);
  if (rc == 0 && at_failure_point(r))
    rc = loom_error_set(LOOM_EIO, "injected failure on rank 1 after the step");
  return rc;
}

typedef struct outcome {
  int rc;
  char message[2048];
  int64_t steps;
  uint64_t hash;
} outcome;

typedef struct spec {
  int nan_at; /* rank 1's NaN sample, or -1 */
  loom_nonfinite_policy policy;
  loom_callback_fn before_step, at_batch_end;
  loom_handle_batch_fn handle_batch;
} spec;

static void run(const spec *s, outcome *out) {
  exceptions = 0;
  loom_experiment *exp = loom_experiment_create("failure");
  loom_experiment_set_seed(exp, 7);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 3);
  const int64_t sizes[] = {FEATURES, 6, 2};
  loom_sgd_options sgd = {.lr = 0.2};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 7)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", loader(world_rank == 1 ? s->nan_at : -1)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", loader(-1)), 0);
  const loom_callback_ops ops = {.type = "inject", .on_batch_start = s->before_step,
                                 .on_batch_end = s->at_batch_end, .on_exception = count_exception};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&ops, NULL, LOOM_ORDER_EXTERNAL)), 0);
  loom_runner *r = loom_runner_create();
  loom_comm *c = loom_comm_mpi_create(NULL);
  assert_non_null(c);
  loom_runner_set_comm(r, c);
  if (s->handle_batch)
    loom_runner_set_handle_batch(r, s->handle_batch, NULL);
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  o.nonfinite = s->policy, o.nonfinite_budget = 5;
  loom_runner_set_options(r, &o);
  out->rc = loom_run_experiment(r, exp);
  snprintf(out->message, sizeof out->message, "%s", out->rc ? loom_runner_error_message(r) : "");
  out->steps = loom_runner_optimizer_step_count(r);
  out->hash = test_params_hash(loom_runner_model(r));
  print_message("rank %d: rc %d, %lld steps, %d on_exception: %s\n", world_rank, out->rc, (long long)out->steps,
                exceptions, out->message);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* The ranks' step counts and weights, gathered on a fresh communicator. */
static void same_on_every_rank(const outcome *o) {
  loom_comm *c = loom_comm_mpi_create(NULL);
  assert_non_null(c);
  double v[2] = {(double)o->steps, (double)(o->hash >> 11)}, sum[2] = {v[0], v[1]};
  assert_int_equal(loom_comm_allreduce_sum_f64(c, sum, 2), 0);
  assert_true(sum[0] == v[0] * world_size);
  assert_true(sum[1] == v[1] * world_size);
  loom_comm_destroy(c);
}

static void has(const char *message, const char *part) {
  if (!strstr(message, part))
    fail_msg("rank %d: \"%s\" lacks \"%s\"", world_rank, message, part);
}

/* The failing rank keeps its error; the others name it and its message. */
static void failed_everywhere(const outcome *o, int own_rc, const char *own_message) {
  assert_int_equal(exceptions, 1);
  if (world_rank == 1) {
    assert_int_equal(o->rc, own_rc);
  } else {
    assert_int_equal(o->rc, LOOM_ECOMM);
    has(o->message, "rank 1 failed: ");
  }
  has(o->message, own_message);
  same_on_every_rank(o);
}

static void test_callback_error_before_the_step(void **state) {
  (void)state;
  fail_epoch = 2, fail_batch = 3;
  outcome o;
  run(&(spec){.nan_at = -1, .before_step = fail_before_step}, &o);
  failed_everywhere(&o, LOOM_EINVAL, "injected failure on rank 1 at batch start");
  assert_int_equal(o.steps, 6 + 2); /* epoch 1's 6 steps, then batches 1-2 of epoch 2 */
}

static void test_handle_batch_error_after_the_step(void **state) {
  (void)state;
  fail_epoch = 3, fail_batch = 1;
  outcome o;
  run(&(spec){.nan_at = -1, .handle_batch = fail_after_step}, &o);
  failed_everywhere(&o, LOOM_EIO, "injected failure on rank 1 after the step");
  assert_int_equal(o.steps, 12 + 1); /* its step was taken on every rank */
}

/* Rank 1's sample 9 has a NaN feature. Unshuffled, the shards interleave
 * (rank 1 takes samples 1, 3, 5, ...), so 9 is in rank 1's 3rd batch of
 * every epoch and in none of rank 0's: a NaN loss on one rank only. */
static void test_nan_loss_on_one_rank_stops_every_rank(void **state) {
  (void)state;
  outcome o;
  run(&(spec){.nan_at = 9, .policy = LOOM_NONFINITE_STOP}, &o);
  assert_int_equal(o.rc, LOOM_ENONFINITE);
  has(o.message, "the gradient norm is not finite before optimizer step");
  has(o.message, world_rank == 1 ? "averaged over 2 ranks; this rank's loss was nan" : "(averaged over 2 ranks)");
  assert_int_equal(exceptions, 1);
  same_on_every_rank(&o);
}

static void test_nan_loss_on_one_rank_skips_on_every_rank(void **state) {
  (void)state;
  outcome o;
  run(&(spec){.nan_at = 9, .policy = LOOM_NONFINITE_SKIP}, &o);
  assert_int_equal(o.rc, 0);
  assert_int_equal(o.steps, 3 * 5); /* one batch of 6 skipped in each of 3 epochs */
  assert_int_equal(exceptions, 0);
  same_on_every_rank(&o);
}

/* Rank 1 is 5 s late to the batch sync with a limit of 1 s (and 2 s more
 * for the others to say where they are): rank 0's collective ends naming
 * rank 1 as the one that did not arrive, and rank 1 hears of it at its next
 * collective. */
static void test_late_rank_times_out(void **state) {
  (void)state;
  fail_epoch = 1, fail_batch = 2, sleep_s = 5;
  outcome o;
  run(&(spec){.nan_at = -1, .at_batch_end = late_at_batch_end}, &o);
  assert_int_equal(o.rc, LOOM_ECOMM);
  has(o.message, "did not complete within 1 s: rank 1 did not arrive");
  if (world_rank == 1)
    has(o.message, "rank 0 failed: ");
  assert_int_equal(exceptions, 1);
  same_on_every_rank(&o);
}

int main(int argc, char **argv) {
  if (!test_mpi_world("test_mpi_failure", &world_rank, &world_size))
    return 1;
  group = argc > 1 ? argv[1] : "";
  const struct CMUnitTest errors[] = {
      cmocka_unit_test(test_callback_error_before_the_step),
  };
  const struct CMUnitTest after[] = {
      cmocka_unit_test(test_handle_batch_error_after_the_step),
  };
  const struct CMUnitTest nan_stop[] = {
      cmocka_unit_test(test_nan_loss_on_one_rank_stops_every_rank),
  };
  const struct CMUnitTest nan_skip[] = {
      cmocka_unit_test(test_nan_loss_on_one_rank_skips_on_every_rank),
  };
  const struct CMUnitTest late[] = {
      cmocka_unit_test(test_late_rank_times_out),
  };
  if (strcmp(group, "callback") == 0)
    return cmocka_run_group_tests(errors, NULL, NULL);
  if (strcmp(group, "handle_batch") == 0)
    return cmocka_run_group_tests(after, NULL, NULL);
  if (strcmp(group, "nan_stop") == 0)
    return cmocka_run_group_tests(nan_stop, NULL, NULL);
  if (strcmp(group, "nan_skip") == 0)
    return cmocka_run_group_tests(nan_skip, NULL, NULL);
  if (strcmp(group, "late") == 0)
    return cmocka_run_group_tests(late, NULL, NULL);
  fprintf(stderr, "test_mpi_failure: name a group: callback, handle_batch, nan_stop, nan_skip or late\n");
  return 2;
}
