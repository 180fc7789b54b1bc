/* The gradients' mean in buckets, overlapped with backward, in one process:
 * a fake world of two whose non-blocking mean records when each bucket
 * starts and is waited for, and layers that record when their backward
 * runs. The trace must show each bucket starting right after backward has
 * finished its layers and before the layers below run; without overlap,
 * every start after backward. The weights are the same bits whichever way
 * the buckets go, and as with one bucket. (tests/test_mpi.c compares the
 * same over real MPI ranks.) */
#include "helpers.h"

#define LINES 64
static char lines[LINES][48];
static int nlines;

static void note(const char *fmt, size_t n) {
  if (nlines < LINES)
    snprintf(lines[nlines++], sizeof lines[0], fmt, n);
}

/* --- a fake world of two: collectives are identities, requests traced --- */

static int id_sum(void *c, double *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int id_mean(void *c, float *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int id_bcast(void *c, void *b, size_t n, int root) { (void)c, (void)b, (void)n, (void)root; return 0; }
static int id_barrier(void *c) { (void)c; return 0; }

typedef struct fake_request {
  size_t n;
  float *copy;
} fake_request;

static void *req_create(void *c, size_t n) {
  (void)c;
  fake_request *q = calloc(1, sizeof *q);
  q->n = n;
  q->copy = calloc(n, sizeof *q->copy);
  return q;
}
static void req_destroy(void *c, void *q) {
  (void)c;
  free(((fake_request *)q)->copy);
  free(q);
}
/* The mean of two equal ranks is the copy taken at the start. */
static int start(void *c, void *request, const float *buf) {
  (void)c;
  fake_request *q = request;
  memcpy(q->copy, buf, q->n * sizeof *buf);
  note("start %zu", q->n);
  return 0;
}
static int wait(void *c, void *request, float *buf) {
  (void)c;
  fake_request *q = request;
  memcpy(buf, q->copy, q->n * sizeof *buf);
  note("wait %zu", q->n);
  return 0;
}
static int progress(void *c) { return (void)c, 0; }

static const loom_comm_ops fake_ops = {.name = "fake_nonblocking", .allreduce_sum_f64 = id_sum,
                                       .allreduce_mean_f32 = id_mean, .broadcast = id_bcast, .barrier = id_barrier,
                                       .request_create = req_create, .start_mean_f32 = start,
                                       .wait_mean_f32 = wait, .progress = progress, .request_destroy = req_destroy};

/* --- a layer that traces its backward --- */

static int same_shape(void *d, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)d;
  *out_ndim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *in);
  return 0;
}
static int copy_forward(void *d, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)d, (void)train, (void)rng;
  memcpy(loom_tensor_data(y), loom_tensor_data(x), (size_t)loom_tensor_numel(x) * sizeof(float));
  return 0;
}
static int traced_backward(void *d, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                           loom_tensor *dx, bool param_grads) {
  (void)x, (void)y, (void)param_grads;
  if (nlines < LINES)
    snprintf(lines[nlines++], sizeof lines[0], "backward %s", (const char *)d);
  if (dx)
    memcpy(loom_tensor_data(dx), loom_tensor_data(dy), (size_t)loom_tensor_numel(dy) * sizeof(float));
  return 0;
}
static const loom_layer_ops traced_ops = {
    .type = "Traced", .output_shape = same_shape, .forward = copy_forward, .backward = traced_backward};

/* fc1 (4 -> 64: 320 parameters), t1, fc2 (64 -> 64: 4160), t2, fc3 (64 -> 3: 195). */
static loom_model *model(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(4, 64, true)), 0);
  assert_int_equal(loom_model_add(m, "t1", loom_layer_create(&traced_ops, "t1")), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(64, 64, true)), 0);
  assert_int_equal(loom_model_add(m, "t2", loom_layer_create(&traced_ops, "t2")), 0);
  assert_int_equal(loom_model_add(m, "fc3", loom_linear_create(64, 3, true)), 0);
  assert_int_equal(loom_model_build(m, 1, (int64_t[]){4}, 3), 0);
  return m;
}

/* One epoch of 2 batches of 2 on rank 0 of the fake world (8 samples
 * sharded in two); the final weights into params. */
static void train(size_t bucket_bytes, bool no_overlap, float *params, size_t *n) {
  nlines = 0;
  loom_experiment *exp = loom_experiment_create("overlap");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  loom_sgd_options sgd = {.lr = 0.1, .momentum = 0.9};
  assert_int_equal(loom_stage_set_model(st, model()), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 4, 3, 2, false)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_comm(r, loom_comm_create(&fake_ops, NULL, 0, 2));
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false, o.bucket_bytes = bucket_bytes, o.no_overlap = no_overlap;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_model *m = loom_runner_model(r);
  *n = loom_model_num_params(m);
  memcpy(params, loom_model_params(m), *n * sizeof *params);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void expect(const char *const *want, int n) {
  for (int i = 0; i < nlines; i++)
    print_message("  %s\n", lines[i]);
  assert_int_equal(nlines, n);
  for (int i = 0; i < n; i++)
    assert_string_equal(lines[i], want[i]);
}

static float plain[5000], got[5000];

static void test_buckets_start_during_backward(void **state) {
  (void)state;
  size_t n, m;
  train(SIZE_MAX, true, plain, &n); /* one bucket, after backward */
  static const char *const one[] = {"backward t2", "backward t1", "start 4675", "wait 4675",
                                    "backward t2", "backward t1", "start 4675", "wait 4675"};
  expect(one, 8);

  /* 2 KiB buckets: fc3 (195), fc2 (4160), fc1 (320), each started once
   * backward has passed it, waited for at the step in the same order. */
  train(2048, false, got, &m);
  static const char *const overlapped[] = {"start 195", "backward t2", "start 4160", "backward t1", "start 320",
                                           "wait 195",  "wait 4160",   "wait 320"};
  const char *twice[16];
  for (int i = 0; i < 16; i++)
    twice[i] = overlapped[i % 8];
  expect((const char *const *)twice, 16);
  assert_int_equal(m, n);
  assert_memory_equal(got, plain, n * sizeof *got);

  /* The same buckets without overlap: every start after backward. */
  train(2048, true, got, &m);
  static const char *const after[] = {"backward t2", "backward t1", "start 195", "start 4160",
                                      "start 320",   "wait 195",    "wait 4160", "wait 320"};
  for (int i = 0; i < 16; i++)
    twice[i] = after[i % 8];
  expect((const char *const *)twice, 16);
  assert_memory_equal(got, plain, n * sizeof *got);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_buckets_start_during_backward),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
