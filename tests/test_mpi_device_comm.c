/* The reducer's device path, under mpirun on 2 and 3 ranks, without a
 * GPU: each rank's model on its own fake device (tests/fake_device.h), its
 * gradients summed by a device-aware communicator (tests/device_comm.h,
 * which plays NCCL's part and checks that every pointer it is handed is
 * the fake device's). Against the host-staged path of the same run: the
 * same bits on 2 ranks (dividing by 2 and multiplying by 1/2 agree), within
 * rounding on 3; the same buckets, one sum each per step; and the host
 * copies of the gradients (one out and one back per bucket and step) gone.
 * Also the NCCL communicator's bootstrap where NCCL cannot serve: every
 * rank says LOOM_ENOTSUP, and the runner averages through the host. */
#include <math.h>
#include <mpi.h>

#include "helpers.h"

#include "device_comm.h"
#include "fake_device.h"
#include "loom/comm_nccl.h"

static int world_rank, world_size;

/* >= 0: that sample gets a NaN feature (a non-finite loss on whichever
 * rank draws it). */
static int64_t nan_sample = -1;

/* Step graphs: ALL_RANKS or a rank that runs with no_graphs, or refuses
 * its first capture (NO_RANK: none). */
#define NO_RANK -2
#define ALL_RANKS -1
static int no_graphs_rank = NO_RANK, refuse_rank = NO_RANK;
/* fp16 autocast with dynamic loss scaling: the waiting path, whose loss is
 * read on the host at forward (a flush of every training step's log). */
static bool fp16_scaled;
static bool on_rank(int which) { return which == ALL_RANKS || which == world_rank; }

static loom_loader *features_loader(int64_t n, int64_t features, int classes, int64_t batch) {
  float *x = malloc((size_t)(n * features) * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    y[i] = (float)(i % classes);
    for (int64_t j = 0; j < features; j++)
      x[i * features + j] = (float)((i * 37 + j * 11) % 19) / 19.0f - 0.5f + 0.4f * (float)(i % classes == j % classes);
  }
  if (nan_sample >= 0)
    x[nan_sample * features + 1] = NAN;
  loom_dataset *ds = loom_memory_dataset_create(x, y, n, 1, &features, 0, NULL);
  free(x), free(y);
  loom_loader_options o = {.batch_size = batch, .shuffle = true};
  return loom_loader_create(ds, &o);
}

/* Every rank's hash against rank 0's: the ranks that differ. */
static int ranks_differing(loom_comm *c, uint64_t h) {
  uint64_t master = h;
  assert_int_equal(loom_comm_broadcast(c, &master, sizeof master, 0), 0);
  double differ = master != h;
  assert_int_equal(loom_comm_allreduce_sum_f64(c, &differ, 1), 0);
  return (int)differ;
}

typedef struct outcome {
  uint64_t hash;
  float params[2048];
  size_t n;
  int64_t steps, to_host, from_host, host_results, captures, launches, logs;
  device_comm_counts sums; /* the device communicator's, if it ran */
  char comm[32];
  int rc;
  char message[1024];
} outcome;

/* MLP 5-32-32-3: fc1 192 floats, fc2 1056, fc3 99. */
#define PARAMS 1347

/* Two epochs with Adam on `backend` (NULL: the CPU), the gradients'
 * mean in buckets of bucket_bytes, through a device-aware communicator if
 * device_sums, else MPI's. */
static outcome train(loom_backend *backend, fake_device *dev, bool device_sums, size_t bucket_bytes, bool no_overlap,
                     bool host_staged) {
  outcome out = {0};
  loom_experiment *exp = loom_experiment_create("device_comm");
  loom_experiment_set_seed(exp, 11);
  loom_experiment_set_backend(exp, backend);
  if (fp16_scaled) {
    assert_int_equal(loom_experiment_set_precision(exp, LOOM_PRECISION_FP16), 0);
    const loom_loss_scaling ls = loom_loss_scaling_defaults(LOOM_PRECISION_FP16);
    assert_int_equal(loom_experiment_set_loss_scaling(exp, &ls), 0);
  }
  const int64_t sizes[] = {5, 32, 32, 3};
  loom_stage *s = loom_experiment_add_stage(exp, "train", 2);
  loom_adam_options adam = loom_adam_defaults();
  assert_int_equal(loom_stage_set_model(s, loom_mlp_create(sizes, 4, 11)), 0);
  assert_int_equal(loom_stage_set_criterion(s, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(s, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(s, "train", features_loader(36, 5, 3, 4)), 0);
  loom_runner *r = loom_runner_create();
  loom_comm *mpi = loom_comm_mpi_create(NULL);
  assert_non_null(mpi);
  device_comm_counts *counts = NULL;
  loom_runner_set_comm(r, device_sums ? device_comm_create(mpi, backend, dev, &counts) : mpi);
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false, o.bucket_bytes = bucket_bytes, o.no_overlap = no_overlap;
  o.host_staged_grads = host_staged;
  o.no_graphs = on_rank(no_graphs_rank);
  loom_runner_set_options(r, &o);
  if (dev) {
    fake_device_reset_counts(dev);
    fake_device_refuse_capture(dev, on_rank(refuse_rank));
  }
  out.rc = loom_run_experiment(r, exp);
  snprintf(out.message, sizeof out.message, "%s", out.rc < 0 ? loom_last_error() : "");
  if (out.rc < 0 && nan_sample < 0)
    fail_msg("rank %d: %s", world_rank, out.message);
  if (dev) {
    fake_device_counts c = fake_device_counts_of(dev);
    out.to_host = c.to_host, out.from_host = c.from_host, out.host_results = c.host_results;
    out.captures = c.captures, out.launches = c.launches;
    out.logs = loom_backend_graph_counts(backend).logs;
    fake_device_refuse_capture(dev, 0);
  }
  if (counts)
    out.sums = *counts;
  out.steps = loom_runner_optimizer_step_count(r);
  loom_model *m = loom_runner_model(r);
  out.n = loom_model_num_params(m);
  assert_int_equal(out.n, PARAMS);
  assert_int_equal(loom_model_params_to_host(m, out.params), 0);
  out.hash = test_params_hash(m);
  snprintf(out.comm, sizeof out.comm, "%s", loom_comm_name(loom_runner_comm(r)));
  if (out.rc == 0) /* (after a failure the runner's communicator is left alone) */
    assert_int_equal(ranks_differing(loom_runner_comm(r), out.hash), 0); /* every rank the same bits */
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return out;
}

/* The largest difference between two runs' weights, relative to the
 * weight's size (at least 1). */
static double max_rel_diff(const outcome *a, const outcome *b) {
  double worst = 0;
  for (size_t i = 0; i < a->n; i++) {
    double d = fabs((double)a->params[i] - b->params[i]) / fmax(1.0, fabs((double)a->params[i]));
    worst = fmax(worst, d);
  }
  return worst;
}

static loom_backend *fake;
static fake_device *dev;

static int setup(void **state) {
  (void)state;
  fake = fake_device_create((size_t)16 << 20, &dev);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(fake);
  return 0;
}

/* Buckets of 1 KiB: fc3 (396 bytes), fc2 (4224), fc1 (768): 3 per step. */
static void device_sums_equal_staged(void **state) {
  (void)state;
  outcome cpu = train(NULL, NULL, false, 1024, false, false);
  outcome staged = train(fake, dev, false, 1024, false, false);
  outcome device = train(fake, dev, true, 1024, false, false);
  assert_true(staged.hash == cpu.hash); /* the host-staged path is the CPU's */
  assert_string_equal(staged.comm, "mpi");
  assert_true(device.steps > 0 && device.steps == staged.steps);
  /* One sum per bucket and step, of every gradient, each waited for. */
  assert_int_equal(device.sums.requests, 3);
  assert_int_equal(device.sums.starts, 3 * device.steps);
  assert_int_equal(device.sums.waits, 3 * device.steps);
  assert_int_equal(device.sums.floats, PARAMS * device.steps);
  /* The host copies of the gradients are gone: one out and one back per
   * bucket and step on the host-staged path, none on the device's. Both
   * read the loss back once a step: the waiting path's criterion, the
   * device path's deferred batch (runner_deferred.c) with its gate; the
   * criterion's sums moved to the device once on the waiting path only. */
  assert_int_equal(staged.to_host - device.to_host, 3 * device.steps);
  assert_int_equal(staged.from_host - device.from_host, 3 * device.steps + 1);
  /* The device path's batches are deferred: no op result waited on (the
   * gate decides the step on the device); the waiting path's check of the
   * gradients after their mean is one a step. */
  assert_int_equal(device.host_results, 0);
  assert_int_equal(staged.host_results, device.steps);
  if (world_size == 2) { /* x / 2 == x * 0.5: the same bits */
    assert_true(device.hash == staged.hash);
  } else { /* x / 3 and x * (1/3) may differ in the last bit */
    double d = max_rel_diff(&device, &staged);
    print_message("rank %d: device sums vs host-staged on %d ranks: weights within %.3g\n", world_rank, world_size, d);
    assert_true(d < 1e-4);
  }
}

/* Overlapped or not, one bucket or three: the device path's own bits do
 * not change with when the buckets start; one bucket is one sum a step. */
static void device_overlap_and_one_bucket(void **state) {
  (void)state;
  outcome overlapped = train(fake, dev, true, 1024, false, false);
  outcome after = train(fake, dev, true, 1024, true, false);
  assert_true(overlapped.hash == after.hash);
  outcome one = train(fake, dev, true, SIZE_MAX, true, false);
  assert_int_equal(one.sums.requests, 1);
  assert_int_equal(one.sums.starts, one.steps);
  if (world_size == 2)
    assert_true(one.hash == train(fake, dev, false, SIZE_MAX, true, false).hash);
}

/* A NaN feature in one sample: the rank that draws it has a non-finite
 * loss, which reaches every rank as a NaN in the gradients' sum. On the
 * device path the batch is deferred (that NaN put there by set_if, the
 * step held back by the gate on every rank); on the host-staged path the
 * host poisons the gradients and checks them. Both stop alike: the same
 * code and message on each rank, the same steps and weights. */
static void nan_loss_on_one_rank(void **state) {
  (void)state;
  nan_sample = 13;
  outcome staged = train(fake, dev, false, 1024, false, false);
  outcome device = train(fake, dev, true, 1024, false, false);
  nan_sample = -1;
  assert_int_equal(staged.rc, LOOM_ENONFINITE);
  assert_int_equal(device.rc, staged.rc);
  assert_string_equal(device.message, staged.message);
  assert_non_null(strstr(device.message, "the gradient norm is not finite before optimizer step"));
  assert_int_equal(device.steps, staged.steps);
  assert_true(device.hash == staged.hash || world_size == 3);
  if (world_size == 3)
    assert_true(max_rel_diff(&device, &staged) < 1e-4);
  assert_int_equal(device.host_results, 0);
}

/* host_staged_grads: a device-aware communicator is not asked. */
static void host_staged_option(void **state) {
  (void)state;
  outcome staged = train(fake, dev, false, 1024, false, false);
  outcome forced = train(fake, dev, true, 1024, false, true);
  assert_int_equal(forced.sums.requests, 0);
  assert_int_equal(forced.sums.starts, 0);
  assert_true(forced.hash == staged.hash);
  assert_int_equal(forced.to_host, staged.to_host);
}

/* The NCCL communicator where it cannot serve (the fake device and the
 * CPU are not CUDA backends): every rank returns LOOM_ENOTSUP, none hangs. */
static void nccl_refused_everywhere(void **state) {
  (void)state;
  loom_comm *mpi = loom_comm_mpi_create(NULL);
  assert_non_null(mpi);
  assert_false(loom_comm_nccl_applies(mpi, fake));
  loom_comm *out = (loom_comm *)1;
  assert_int_equal(loom_comm_nccl_create(mpi, fake, &out), LOOM_ENOTSUP);
  assert_null(out);
  assert_non_null(strstr(loom_last_error(), loom_comm_nccl_available() ? "not loom's CUDA backend" : "without"));
  loom_backend *cpu = loom_backend_cpu();
  assert_int_equal(loom_comm_nccl_create(mpi, cpu, &out), LOOM_ENOTSUP);
  assert_false(loom_comm_failed(mpi)); /* MPI still serves */
  double one = 1;
  assert_int_equal(loom_comm_allreduce_sum_f64(mpi, &one, 1), 0);
  assert_true(one == world_size);
  loom_comm_destroy(mpi);
}

/* train on a fake device of its own: no graph of an earlier run, made
 * from memory at the same addresses, launches in this one. */
static outcome train_fresh(bool device_sums, size_t bucket_bytes, bool no_overlap, bool host_staged) {
  fake_device *own;
  loom_backend *b = fake_device_create((size_t)16 << 20, &own);
  outcome out = train(b, own, device_sums, bucket_bytes, no_overlap, host_staged);
  assert_int_equal(fake_device_counts_of(own).live, 0);
  loom_backend_destroy(b);
  return out;
}

/* The step graphs over several ranks: the gradients' sums are logged with
 * the step's ops and replayed in its graph. 36 samples in batches of 4
 * for 2 epochs: on 2 ranks each has 4 full batches and one of 2 an epoch,
 * on 3 ranks 3 full ones. The first batch runs op by op (its criterion
 * moves its buffers to the device, a host call), a shape's first log too,
 * its second is captured and launched, every later one launched: on 2
 * ranks 2 captures (the full and the partial batch) and 7 launches, on 3
 * ranks 1 and 4. The weights are the op by op run's bits; the sums were
 * recorded once per bucket and capture, and run once per bucket and step. */
static void graphs_over_ranks(void **state) {
  (void)state;
  no_graphs_rank = ALL_RANKS;
  outcome plain = train_fresh(true, 1024, false, false);
  no_graphs_rank = NO_RANK;
  outcome graphs = train_fresh(true, 1024, false, false);
  assert_int_equal(plain.captures + plain.launches, 0);
  assert_int_equal(graphs.captures, world_size == 2 ? 2 : 1);
  assert_int_equal(graphs.launches, world_size == 2 ? 7 : 4);
  assert_int_equal(graphs.steps, world_size == 2 ? 10 : 6);
  assert_int_equal(graphs.logs, graphs.steps); /* every training step, on every rank */
  assert_true(graphs.hash == plain.hash);
  assert_int_equal(graphs.sums.captured, 3 * graphs.captures);
  assert_int_equal(graphs.sums.starts, 3 * graphs.steps);
  assert_int_equal(graphs.sums.waits, 3 * graphs.steps);
  assert_int_equal(graphs.to_host, plain.to_host);
  /* Overlapped with backward or not, one bucket or three: the same. */
  outcome after = train_fresh(true, SIZE_MAX, true, false);
  assert_int_equal(after.launches, graphs.launches);
  assert_int_equal(after.sums.captured, after.captures);
  if (world_size == 2)
    assert_true(after.hash == plain.hash);
}

/* A collective captured on one rank must be on all. One rank refuses its
 * first capture: every rank runs that shape's steps op by op from then on
 * (the other rank's graph destroyed); one rank with no_graphs: no rank
 * logs. Either way the bits of the run without graphs. */
static void graphs_agreed_over_ranks(void **state) {
  (void)state;
  no_graphs_rank = ALL_RANKS;
  outcome plain = train_fresh(true, 1024, false, false);
  no_graphs_rank = NO_RANK;
  refuse_rank = world_size - 1;
  outcome refused = train_fresh(true, 1024, false, false);
  refuse_rank = NO_RANK;
  assert_int_equal(refused.rc, 0);
  assert_true(refused.hash == plain.hash);
  /* 3 ranks: the only shape refused, nothing launched; 2 ranks: the full
   * batches refused, the partial one captured in epoch 2 and launched once. */
  assert_int_equal(refused.launches, world_size == 2 ? 1 : 0);
  no_graphs_rank = 0;
  outcome one = train_fresh(true, 1024, false, false);
  no_graphs_rank = NO_RANK;
  assert_int_equal(one.captures + one.launches, 0);
  assert_true(one.hash == plain.hash);
}

/* Every rank's log flushed by the same host read in every step: the
 * ranks still agree at each log's end (all op by op), the sums started
 * after the flush run at once, nothing is captured; the bits of the run
 * without graphs. */
static void graphs_flushed_steps_over_ranks(void **state) {
  (void)state;
  fp16_scaled = true;
  no_graphs_rank = ALL_RANKS;
  outcome plain = train_fresh(true, 1024, false, false);
  no_graphs_rank = NO_RANK;
  outcome flushed = train_fresh(true, 1024, false, false);
  fp16_scaled = false;
  assert_true(flushed.hash == plain.hash);
  assert_int_equal(flushed.captures + flushed.launches, 0);
  assert_true(flushed.logs > 0 && plain.logs == 0); /* logged, and agreed on, all the same */
  assert_int_equal(flushed.sums.starts, 3 * flushed.steps);
  assert_int_equal(flushed.sums.captured, 0);
}

/* Ranks whose caches differ (rank 0 already has a graph of the step, the
 * others have never seen it: memory reused at the same addresses can do
 * that) agree to run it op by op, and rank 0 drops its graph, so that
 * all capture at the next sight and launch from then on: 1 capture and 2
 * launches in 3 steps on every rank, each step's ops run once. */
static void graphs_converge_over_ranks(void **state) {
  (void)state;
  loom_comm *mpi = loom_comm_mpi_create(NULL);
  assert_non_null(mpi);
  float *x = loom_backend_alloc(fake, 4 * sizeof *x);
  assert_non_null(x);
  const float one[4] = {1, 1, 1, 1};
  assert_int_equal(loom_backend_from_host(fake, x, one, sizeof one), 0);
  for (int i = 0; world_rank == 0 && i < 2; i++) { /* seen, then captured and launched */
    assert_int_equal(loom_backend_log_begin(fake), 0);
    assert_int_equal(loom_backend_scale(fake, x, 2.0f, 4), 0);
    assert_int_equal(loom_backend_log_end(fake, true), 0);
  }
  fake_device_reset_counts(dev);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(loom_backend_log_begin_over(fake, mpi), 0);
    assert_int_equal(loom_backend_scale(fake, x, 2.0f, 4), 0);
    assert_int_equal(loom_backend_log_end(fake, true), 0);
  }
  fake_device_counts c = fake_device_counts_of(dev);
  assert_int_equal(c.captures, 1);
  assert_int_equal(c.launches, 2);
  float got[4];
  assert_int_equal(loom_backend_to_host(fake, got, x, sizeof got), 0);
  assert_true(got[3] == (world_rank == 0 ? 32.0f : 8.0f));
  loom_backend_free(fake, x);
  loom_comm_destroy(mpi);
}

/* The gradients' requests go at the run's end (with the reducer, and an
 * NCCL communicator made for it), and the graphs whose all-reduce they
 * hold go with them: a later run on the same backend, its requests and
 * memory at the same addresses, would make an equal log and launch a
 * graph of the old communicator. */
static void graphs_go_with_their_requests(void **state) {
  (void)state;
  fake_device *own;
  loom_backend *b = fake_device_create((size_t)16 << 20, &own);
  outcome out = train(b, own, true, 1024, false, false);
  assert_int_equal(out.captures, world_size == 2 ? 2 : 1);
  assert_int_equal(fake_device_counts_of(own).graphs, 0); /* 2 (1 on 3 ranks) were left */
  loom_backend_destroy(b);
}

int main(void) {
  if (!test_mpi_world("test_mpi_device_comm", &world_rank, &world_size))
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(device_sums_equal_staged),
      cmocka_unit_test(device_overlap_and_one_bucket),
      cmocka_unit_test(nan_loss_on_one_rank),
      cmocka_unit_test(host_staged_option),
      cmocka_unit_test(nccl_refused_everywhere),
      cmocka_unit_test(graphs_over_ranks),
      cmocka_unit_test(graphs_agreed_over_ranks),
      cmocka_unit_test(graphs_converge_over_ranks),
      cmocka_unit_test(graphs_flushed_steps_over_ranks),
      cmocka_unit_test(graphs_go_with_their_requests),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
