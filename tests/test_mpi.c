/* The MPI communicator and a distributed run, on every rank mpirun started
 * (CTest runs it on 2 and on 3 ranks): the collectives against hand-computed
 * values, the train shards covering every sample, evaluation counted once
 * whatever the world size, one model on every rank whatever their seeds, a
 * model on a (fake) device giving the CPU's bits, and a master's stop
 * reaching every rank. A failed assertion on one rank may
 * leave the others waiting in a collective: CTest's timeout ends them. */
#include <math.h>
#include <mpi.h>

#include "helpers.h"

#include "fake_device.h"

static int world_rank, world_size;

/* n samples of `features` values; feature 0 is the sample's index, so a
 * handle_batch can tell which samples it got. Labels i % classes. */
static loom_dataset *indexed_dataset(int64_t n, int64_t features, int classes) {
  float *x = malloc((size_t)(n * features) * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    y[i] = (float)(i % classes);
    x[i * features] = (float)i;
    for (int64_t j = 1; j < features; j++)
      x[i * features + j] = (float)((i * 37 + j * 11) % 19) / 19.0f - 0.5f + 0.4f * (float)(i % classes == j % classes);
  }
  loom_dataset *ds = loom_memory_dataset_create(x, y, n, 1, &features, 0, NULL);
  free(x);
  free(y);
  return ds;
}

static loom_loader *indexed_loader(int64_t n, int64_t features, int classes, int64_t batch, bool shuffle) {
  loom_loader_options o = {.batch_size = batch, .shuffle = shuffle};
  return loom_loader_create(indexed_dataset(n, features, classes), &o);
}

static loom_runner *mpi_runner(void) {
  loom_runner *r = loom_runner_create();
  assert_non_null(r);
  loom_comm *c = loom_comm_mpi_create(NULL);
  assert_non_null(c);
  loom_runner_set_comm(r, c);
  return r;
}

/* --- the collectives --- */

static void test_collectives(void **state) {
  (void)state;
  loom_comm *c = loom_comm_mpi_create(NULL);
  assert_non_null(c);
  int r = loom_comm_rank(c), w = loom_comm_size(c);
  assert_int_equal(r, world_rank);
  assert_int_equal(w, world_size);
  assert_string_equal(loom_comm_name(c), "mpi");
  assert_true(loom_comm_is_master(c) == (r == 0));

  double d[3] = {r + 1, 0.5 * r, -1};
  assert_int_equal(loom_comm_allreduce_sum_f64(c, d, 3), 0);
  assert_true(d[0] == w * (w + 1) / 2.0); /* 1 + 2 + ... + w */
  assert_true(d[1] == 0.25 * w * (w - 1)); /* 0.5 (0 + 1 + ... + w-1) */
  assert_true(d[2] == -w);

  float f[2] = {(float)(2 * r + 1), r == 0 ? 3.0f : 0.0f};
  assert_int_equal(loom_comm_allreduce_mean_f32(c, f, 2), 0);
  assert_true(f[0] == (float)w); /* (1 + 3 + ... + 2w-1) / w = w */
  assert_true(f[1] == 3.0f / (float)w);

  char text[32] = {0};
  if (r == w - 1)
    snprintf(text, sizeof text, "from rank %d", w - 1);
  assert_int_equal(loom_comm_broadcast(c, text, sizeof text, w - 1), 0);
  char want[32] = {0};
  snprintf(want, sizeof want, "from rank %d", w - 1);
  assert_memory_equal(text, want, sizeof text);
  assert_int_equal(loom_comm_barrier(c), 0);
  loom_comm_destroy(c);
}

/* A communicator the program made: even and odd world ranks apart. */
static void test_given_communicator(void **state) {
  (void)state;
  MPI_Comm half;
  assert_int_equal(MPI_Comm_split(MPI_COMM_WORLD, world_rank % 2, world_rank, &half), MPI_SUCCESS);
  loom_comm *c = loom_comm_mpi_create(&half);
  assert_non_null(c);
  int evens = (world_size + 1) / 2;
  assert_int_equal(loom_comm_size(c), world_rank % 2 ? world_size - evens : evens);
  assert_int_equal(loom_comm_rank(c), world_rank / 2);
  double sum = world_rank;
  assert_int_equal(loom_comm_allreduce_sum_f64(c, &sum, 1), 0);
  double want = 0;
  for (int i = world_rank % 2; i < world_size; i += 2)
    want += i;
  assert_true(sum == want);
  loom_comm_destroy(c);
  MPI_Comm_free(&half);
}

static void test_dist_choice(void **state) {
  (void)state;
  assert_true(loom_comm_mpi_available());
  assert_true(loom_comm_mpi_launched()); /* mpirun started us */
  loom_dist d;
  assert_int_equal(loom_dist_parse("mpi", &d), 0);
  assert_int_equal(d, LOOM_DIST_MPI);
  assert_int_equal(loom_dist_parse("MPI", &d), LOOM_EINVAL);
  loom_comm *c = loom_comm_for_dist(LOOM_DIST_AUTO);
  assert_non_null(c);
  assert_string_equal(loom_comm_name(c), "mpi");
  assert_int_equal(loom_comm_size(c), world_size);
  loom_comm_destroy(c);
  c = loom_comm_for_dist(LOOM_DIST_LOCAL);
  assert_int_equal(loom_comm_size(c), 1);
  loom_comm_destroy(c);
}

/* --- train shards --- */

#define MAX_SAMPLES 64
#define EPOCHS 3
static double seen[EPOCHS][MAX_SAMPLES];

static int record_samples(loom_runner *r, void *user) {
  (void)user;
  const loom_tensor *x = loom_runner_input(r);
  const float *v = loom_tensor_host_data(x);
  int64_t n = loom_tensor_dim(x, 0), f = loom_tensor_numel(x) / n;
  for (int64_t i = 0; i < n; i++)
    seen[loom_runner_epoch(r) - 1][(int)v[i * f]] += 1;
  return 0;
}

static void check_train_shards(int64_t n, int64_t batch) {
  memset(seen, 0, sizeof seen);
  loom_experiment *exp = loom_experiment_create("shards");
  loom_experiment_set_seed(exp, 5 + (uint64_t)world_rank); /* the master's orders the epochs */
  loom_stage *s = loom_experiment_add_stage(exp, "train", EPOCHS);
  assert_int_equal(loom_stage_add_loader(s, "train", indexed_loader(n, 2, 2, batch, true)), 0);
  loom_runner *r = mpi_runner();
  loom_runner_set_handle_batch(r, record_samples, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_comm_allreduce_sum_f64(loom_runner_comm(r), &seen[0][0], EPOCHS * MAX_SAMPLES), 0);
  /* Every rank takes ceil(n / world) samples; the last ranks' shortfall
   * wraps around to the epoch's first samples. */
  int64_t per = (n + world_size - 1) / world_size, extra = per * world_size - n;
  for (int e = 0; e < EPOCHS; e++) {
    double total = 0, twice = 0;
    for (int64_t i = 0; i < n; i++) {
      assert_true(seen[e][i] == 1 || seen[e][i] == 2);
      total += seen[e][i];
      twice += seen[e][i] == 2;
    }
    assert_true(total == (double)(per * world_size));
    assert_true(twice == (double)extra);
  }
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_train_shards_cover_every_sample(void **state) {
  (void)state;
  check_train_shards(12, 2); /* 12 = 2 x 6 = 3 x 4: each sample exactly once */
  check_train_shards(10, 3); /* uneven on 3 ranks */
}

/* --- evaluation counted once --- */

/* The eval metrics of one fixed model over a "valid" loader of 100 samples
 * (batches of 16) and an "infer" loader of 10 (batches of 4). */
static void evaluate(loom_runner *r, double out[6]) {
  loom_experiment *exp = loom_experiment_create("eval");
  loom_experiment_set_seed(exp, 9);
  const int64_t sizes[] = {6, 7, 3};
  loom_stage *s = loom_experiment_add_stage(exp, "eval", 1);
  assert_int_equal(loom_stage_set_model(s, loom_mlp_create(sizes, 3, 11)), 0);
  assert_int_equal(loom_stage_set_criterion(s, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_add_loader(s, "valid", indexed_loader(100, 6, 3, 16, false)), 0);
  assert_int_equal(loom_stage_add_loader(s, "infer", indexed_loader(10, 6, 3, 4, false)), 0);
  const int topk[] = {1, 2};
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(topk, 2)), 0);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  const char *names[6] = {"valid/accuracy", "valid/accuracy@2", "valid/loss",
                          "infer/accuracy", "infer/accuracy@2", "infer/loss"};
  for (int i = 0; i < 6; i++)
    assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), names[i], &out[i]));
  loom_experiment_destroy(exp);
}

/* Against this process alone (a world of one): the accuracies to the last
 * bit (counts sum exactly), the mean losses to float's precision (each
 * rank sums its own samples' losses, in another order). */
static void test_evaluation_counted_once(void **state) {
  (void)state;
  double alone[6], together[6];
  loom_runner *r = loom_runner_create();
  evaluate(r, alone);
  loom_runner_destroy(r);
  r = mpi_runner();
  evaluate(r, together);
  loom_runner_destroy(r);
  for (int i = 0; i < 6; i++) {
    if (i % 3 == 2)
      assert_true(fabs(together[i] - alone[i]) <= 1e-6 * fabs(alone[i]));
    else
      assert_memory_equal(&together[i], &alone[i], sizeof(double));
  }
  /* Fractions of 100 and of 10 samples: nothing counted twice or missed. */
  assert_true(alone[0] * 100 == nearbyint(alone[0] * 100));
  assert_true(alone[3] * 10 == nearbyint(alone[3] * 10));
}

/* The accuracy callback over an oracle's scores that are right for the
 * samples whose index is below 13 modulo 23: one process's batches of 23
 * score 13 / 23 each, and (13 / 23) x 23 is not 13 in doubles. The ranks'
 * batches hold other samples; the counts must still add up exactly. */
static loom_tensor *oracle_out;

static int oracle(loom_runner *r, void *user) {
  (void)user;
  const loom_tensor *x = loom_runner_input(r);
  const float *v = loom_tensor_host_data(x), *y = loom_tensor_host_data(loom_runner_target(r));
  int64_t n = loom_tensor_dim(x, 0), f = loom_tensor_numel(x) / n, shape[2] = {n, 2};
  assert_int_equal(loom_tensor_resize(oracle_out, 2, shape), 0);
  float *out = loom_tensor_data(oracle_out);
  for (int64_t i = 0; i < n; i++) {
    int right = (int64_t)v[i * f] % 23 < 13, label = (int)y[i];
    out[2 * i + label] = right ? 1.0f : 0.0f;
    out[2 * i + 1 - label] = right ? 0.0f : 1.0f;
  }
  loom_runner_set_output(r, oracle_out);
  return 0;
}

static double oracle_accuracy(loom_runner *r) {
  int64_t shape[2] = {1, 2};
  oracle_out = loom_tensor_create(2, shape);
  loom_experiment *exp = loom_experiment_create("oracle");
  loom_stage *s = loom_experiment_add_stage(exp, "eval", 1);
  assert_int_equal(loom_stage_add_loader(s, "valid", indexed_loader(23 * 41 + 5, 2, 2, 23, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create((const int[]){1}, 1)), 0);
  loom_runner_set_handle_batch(r, oracle, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  double acc;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "valid/accuracy", &acc));
  loom_experiment_destroy(exp);
  loom_tensor_destroy(oracle_out);
  return acc;
}

static void test_accuracy_counts_exactly(void **state) {
  (void)state;
  loom_runner *r = loom_runner_create();
  double alone = oracle_accuracy(r);
  loom_runner_destroy(r);
  r = mpi_runner();
  double together = oracle_accuracy(r);
  loom_runner_destroy(r);
  /* 41 x 13 + 5 right of 41 x 23 + 5, as the double nearest that fraction. */
  double want = (41.0 * 13 + 5) / (41.0 * 23 + 5);
  assert_memory_equal(&alone, &want, sizeof want);
  assert_memory_equal(&together, &want, sizeof want);
}

/* --- one model on every rank --- */

/* Every rank's hash against rank 0's; the count of ranks that differ. */
static int ranks_differing(loom_comm *c, uint64_t h) {
  uint64_t master = h;
  assert_int_equal(loom_comm_broadcast(c, &master, sizeof master, 0), 0);
  double differ = master != h;
  assert_int_equal(loom_comm_allreduce_sum_f64(c, &differ, 1), 0);
  return (int)differ;
}

static int checks, mismatches;

/* Every second train batch: the parameters hashed on each rank. */
static int compare_params(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (!loom_runner_is_train_loader(r) || loom_runner_loader_batch_step(r) % 2)
    return 0;
  checks++;
  mismatches += ranks_differing(loom_runner_comm(r), test_params_hash(loom_runner_model(r))) > 0;
  return 0;
}

static void test_one_model_from_different_seeds(void **state) {
  (void)state;
  checks = mismatches = 0;
  loom_experiment *exp = loom_experiment_create("seeds");
  /* Each rank its own seed: the master's wins (model, shuffling). */
  loom_experiment_set_seed(exp, 100 + (uint64_t)world_rank);
  const int64_t sizes[] = {5, 8, 3};
  loom_stage *s = loom_experiment_add_stage(exp, "train", 2);
  loom_sgd_options sgd = {.lr = 0.1, .momentum = 0.9};
  assert_int_equal(loom_stage_set_model(s, loom_mlp_create(sizes, 3, 100 + (uint64_t)world_rank)), 0);
  assert_int_equal(loom_stage_set_criterion(s, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(s, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(s, "train", indexed_loader(30, 5, 3, 4, true)), 0);
  assert_int_equal(loom_stage_add_loader(s, "valid", indexed_loader(11, 5, 3, 4, false)), 0);
  static const loom_callback_ops ops = {.type = "compare_params", .on_batch_end = compare_params};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&ops, NULL, LOOM_ORDER_EXTERNAL)), 0);
  loom_runner *r = mpi_runner();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(checks > 0);
  assert_int_equal(mismatches, 0);
  assert_int_equal(ranks_differing(loom_runner_comm(r), test_params_hash(loom_runner_model(r))), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* --- the gradients' mean in buckets, overlapped with backward --- */

/* Two epochs of an MLP 5-32-32-3 with Adam, the mean in buckets of
 * `bucket_bytes` (SIZE_MAX: one), overlapped or not; the weights' hash. */
static uint64_t train_on(loom_backend *backend, size_t bucket_bytes, bool no_overlap) {
  loom_experiment *exp = loom_experiment_create("buckets");
  loom_experiment_set_seed(exp, 11);
  loom_experiment_set_backend(exp, backend);
  const int64_t sizes[] = {5, 32, 32, 3};
  loom_stage *s = loom_experiment_add_stage(exp, "train", 2);
  loom_adam_options adam = loom_adam_defaults();
  assert_int_equal(loom_stage_set_model(s, loom_mlp_create(sizes, 4, 11)), 0);
  assert_int_equal(loom_stage_set_criterion(s, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(s, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(s, "train", indexed_loader(36, 5, 3, 4, true)), 0);
  loom_runner *r = mpi_runner();
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false, o.bucket_bytes = bucket_bytes, o.no_overlap = no_overlap;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  uint64_t h = test_params_hash(loom_runner_model(r));
  assert_int_equal(ranks_differing(loom_runner_comm(r), h), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return h;
}

static uint64_t train_with_buckets(size_t bucket_bytes, bool no_overlap) {
  return train_on(NULL, bucket_bytes, no_overlap);
}

/* Overlapped or not, the same buckets give the same bits (a bucket per
 * layer here: 1 KiB); with two ranks, whose sums commute, also the same
 * bits as one all-reduce of everything. */
static void test_overlapped_mean_equals_plain(void **state) {
  (void)state;
  uint64_t overlapped = train_with_buckets(1024, false), after = train_with_buckets(1024, true);
  assert_true(overlapped == after);
  uint64_t one = train_with_buckets(SIZE_MAX, true);
  if (world_size == 2)
    assert_true(overlapped == one);
  else
    print_message("rank %d: buckets vs one all-reduce on %d ranks: %s\n", world_rank, world_size,
                  overlapped == one ? "same bits" : "differ in rounding (MPI's sum order depends on the size)");
}

/* --- a model on a device --- */

/* Each rank's model on its own fake device (tests/fake_device.h: a host
 * read of device memory faults): the gradients' mean and the broadcasts go
 * through the host, and every rank ends with the CPU run's bits. */
static void test_device_ranks_equal_cpu(void **state) {
  (void)state;
  fake_device *dev;
  loom_backend *fake = fake_device_create((size_t)16 << 20, &dev);
  uint64_t cpu = train_with_buckets(1024, false);
  assert_true(train_on(fake, 1024, false) == cpu);
  assert_true(train_on(fake, SIZE_MAX, true) == train_with_buckets(SIZE_MAX, true));
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(fake);
}

/* --- a master's decision --- */

static int last_epoch;

static int stop_at_2(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_epoch(r) == 2)
    loom_runner_request_stop(r, LOOM_STOP_STAGE);
  return 0;
}

static int note_epoch(loom_callback *cb, loom_runner *r) {
  (void)cb;
  last_epoch = loom_runner_epoch(r);
  return 0;
}

static int nothing(loom_runner *r, void *user) {
  (void)r, (void)user;
  return 0;
}

static void test_master_only_stop_stops_every_rank(void **state) {
  (void)state;
  last_epoch = 0;
  loom_experiment *exp = loom_experiment_create("stop");
  loom_experiment_set_seed(exp, 3);
  loom_stage *s = loom_experiment_add_stage(exp, "train", 5);
  assert_int_equal(loom_stage_add_loader(s, "train", indexed_loader(8, 2, 2, 2, true)), 0);
  static const loom_callback_ops stop_ops = {.type = "stop_at_2", .on_epoch_end = stop_at_2};
  static const loom_callback_ops note_ops = {.type = "note_epoch", .on_epoch_end = note_epoch};
  loom_callback *stop = loom_callback_create(&stop_ops, NULL, LOOM_ORDER_EXTERNAL);
  loom_callback_set_node(stop, LOOM_NODE_MASTER);
  assert_int_equal(loom_experiment_add_callback(exp, stop), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&note_ops, NULL, LOOM_ORDER_EXTERNAL)), 0);
  loom_runner *r = mpi_runner();
  loom_runner_set_handle_batch(r, nothing, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(last_epoch, 2);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

int main(void) {
  /* The communicator initialises MPI; the test reads its world. */
  if (!test_mpi_world("test_mpi", &world_rank, &world_size))
    return 1;
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_collectives),
      cmocka_unit_test(test_given_communicator),
      cmocka_unit_test(test_dist_choice),
      cmocka_unit_test(test_train_shards_cover_every_sample),
      cmocka_unit_test(test_evaluation_counted_once),
      cmocka_unit_test(test_accuracy_counts_exactly),
      cmocka_unit_test(test_one_model_from_different_seeds),
      cmocka_unit_test(test_overlapped_mean_equals_plain),
      cmocka_unit_test(test_device_ranks_equal_cpu),
      cmocka_unit_test(test_master_only_stop_stops_every_rank),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
