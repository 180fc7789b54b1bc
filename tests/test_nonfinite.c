/* The non-finite policy end to end: a NaN in the data (issue 16: it used to
 * reach the weights through ReLU while every epoch looked fine) and a NaN
 * that appears in the gradients mid-run with a finite loss, on the
 * supervised step, through the optimizer callback (with and without
 * clipping) and through the all-reduce; under STOP and SKIP. Expectations
 * come from clean runs over the same batches without the bad one. */
#include <math.h>

#include "helpers.h"

#include "fake_device.h"

#define N 8
#define F 4

/* 8 samples of 4 features, labels i % 2; nan_sample >= 0 gets a NaN feature. */
static loom_loader *data(const int *samples, int n, int nan_sample) {
  float x[N * F], y[N];
  for (int k = 0; k < n; k++) {
    int i = samples[k];
    for (int j = 0; j < F; j++)
      x[k * F + j] = (float)((i * 5 + j * 3) % 7) / 7.0f - 0.4f + 0.5f * (float)(i % 2 == j % 2);
    y[k] = (float)(i % 2);
  }
  if (nan_sample >= 0)
    x[nan_sample * F + 2] = NAN;
  int64_t f = F;
  loom_loader_options o = {.batch_size = 2};
  return loom_loader_create(loom_memory_dataset_create(x, y, n, 1, &f, 0, NULL), &o);
}

static const int all8[N] = {0, 1, 2, 3, 4, 5, 6, 7};
static const int clean6[6] = {0, 1, 2, 3, 6, 7}; /* all8 without batch 3 */

/* --- a layer whose backward writes a NaN on its poison_at-th call --- */

static int64_t backward_calls, poison_at;

static int same_shape(void *d, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)d;
  *out_ndim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *in);
  return 0;
}

/* Through the tensors' backend, so that it runs on a device too. */
static loom_backend *backend_of(const loom_tensor *t) {
  return loom_tensor_backend(t) ? loom_tensor_backend(t) : loom_backend_cpu();
}

static int poison_forward(void *d, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)d, (void)train, (void)rng;
  return loom_backend_copy(backend_of(x), loom_tensor_data(y), loom_tensor_data(x),
                           (size_t)loom_tensor_numel(x) * sizeof(float));
}

static int poison_backward(void *d, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                           loom_tensor *dx, bool param_grads) {
  (void)d, (void)x, (void)y, (void)param_grads;
  loom_backend *b = backend_of(dy);
  int rc = loom_backend_copy(b, loom_tensor_data(dx), loom_tensor_data(dy), (size_t)loom_tensor_numel(dy) * sizeof(float));
  const float nan = NAN;
  if (rc == 0 && ++backward_calls == poison_at)
    rc = loom_backend_from_host(b, loom_tensor_data(dx), &nan, sizeof nan);
  return rc;
}

static const loom_layer_ops poison_ops = {
    .type = "Poison", .output_shape = same_shape, .forward = poison_forward, .backward = poison_backward};

/* fc1 4->8, [poison], relu1, fc2 8->2: the MLP 4-8-2 of the issue. */
static loom_model *model(bool poison) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(F, 8, true)), 0);
  if (poison)
    assert_int_equal(loom_model_add(m, "poison", loom_layer_create(&poison_ops, NULL)), 0);
  assert_int_equal(loom_model_add(m, "relu1", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(8, 2, true)), 0);
  assert_int_equal(loom_model_build(m, 1, (int64_t[]){F}, 11), 0);
  return m;
}

/* --- runs --- */

typedef struct run_spec {
  loom_loader *train;
  int epochs;
  bool poison;
  loom_nonfinite_policy policy;
  int64_t budget, limit_batches;
  loom_callback *extra; /* e.g. an optimizer callback */
  loom_comm *comm;
  double loss_scale; /* > 0: dynamic loss scaling from this scale */
  loom_backend *backend; /* NULL: the CPU */
} run_spec;

/* What a run leaves: its code and message, the weights, steps, the last
 * epoch's train loss and the batch losses of every train batch. */
typedef struct result {
  int rc;
  char message[1024];
  float params[128];
  size_t num_params;
  int64_t steps;
  double train_loss;
  double batch_loss[16][4]; /* [global epoch][batch] */
} result;

static int record_batch(loom_callback *cb, loom_runner *r) {
  result *res = loom_callback_data(cb);
  if (loom_runner_is_train_loader(r))
    res->batch_loss[loom_runner_global_epoch(r)][loom_runner_loader_batch_step(r) - 1] = loom_runner_batch_loss(r);
  return 0;
}

static void run(const run_spec *s, result *res) {
  static const loom_callback_ops recorder_ops = {.type = "recorder", .on_batch_end = record_batch};
  memset(res, 0, sizeof *res);
  backward_calls = 0;
  loom_experiment *exp = loom_experiment_create("nonfinite");
  loom_experiment_set_backend(exp, s->backend);
  loom_stage *st = loom_experiment_add_stage(exp, "train", s->epochs);
  if (s->loss_scale > 0) {
    loom_loss_scaling ls = loom_loss_scaling_defaults(LOOM_PRECISION_FP16);
    ls.init_scale = s->loss_scale;
    assert_int_equal(loom_experiment_set_loss_scaling(exp, &ls), 0);
  }
  loom_sgd_options so = {.lr = 0.5};
  assert_int_equal(loom_stage_set_model(st, model(s->poison)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&so)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", s->train), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", data(all8, N, -1)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&recorder_ops, res, LOOM_ORDER_LOGGING)), 0);
  if (s->extra)
    assert_int_equal(loom_stage_add_callback(st, s->extra), 0);
  loom_runner *r = loom_runner_create();
  if (s->comm)
    loom_runner_set_comm(r, s->comm);
  loom_run_options o = loom_run_options_defaults();
  o.nonfinite = s->policy, o.nonfinite_budget = s->budget, o.limit_batches = s->limit_batches;
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  res->rc = loom_run_experiment(r, exp);
  snprintf(res->message, sizeof res->message, "%s", loom_runner_error_message(r));
  loom_model *m = loom_runner_model(r);
  res->num_params = loom_model_num_params(m);
  assert_true(res->num_params <= 128);
  assert_int_equal(loom_model_params_to_host(m, res->params), 0);
  res->steps = loom_runner_optimizer_step_count(r);
  res->train_loss = NAN;
  loom_metrics_get(loom_runner_epoch_metrics(r), "train/loss", &res->train_loss);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void all_finite(const result *res) {
  for (size_t i = 0; i < res->num_params; i++)
    assert_true(isfinite(res->params[i]));
}

static void near(double got, double want) {
  if (!(fabs(got - want) <= 1e-12 * fabs(want)))
    fail_msg("%.17g is not %.17g", got, want);
}

static void has(const char *message, const char *part) {
  if (!strstr(message, part))
    fail_msg("\"%s\" lacks \"%s\"", message, part);
}

/* --- the check itself --- */

/* loom_model_grads_finite finds one Inf or NaN wherever it is: the 8-lane
 * body and the tail of each part of the pool; extreme finite values
 * (FLT_MAX, denormals, -0) pass. Clipping by norm leaves non-finite
 * gradients as they were. */
static void test_grads_finite(void **state) {
  (void)state;
  const int64_t sizes[] = {300, 301, 3}; /* 91504 parameters: over the pool's cut, an odd tail */
  loom_model *m = loom_mlp_create(sizes, 3, 1);
  const size_t n = loom_model_num_params(m);
  float *g = loom_model_grads(m);
  for (size_t i = 0; i < n; i++)
    g[i] = i % 3 == 0 ? 3.4e38f : i % 3 == 1 ? 1e-45f : -0.0f;
  assert_true(loom_model_grads_finite(m));
  const size_t at[] = {0, 17, n / 2 - 1, n / 2 + 5, n - 9, n - 1};
  const float bad[] = {NAN, INFINITY, -INFINITY, -NAN};
  for (size_t a = 0; a < sizeof at / sizeof at[0]; a++)
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
      float keep = g[at[a]];
      g[at[a]] = bad[b];
      assert_false(loom_model_grads_finite(m));
      assert_false(isfinite(loom_model_clip_grad_norm(m, 1.0)));
      assert_true(isnan(bad[b]) ? isnan(g[at[a]]) : g[at[a]] == bad[b]); /* not scaled */
      assert_true(g[(at[a] + 1) % n] == ((at[a] + 1) % n % 3 == 0 ? 3.4e38f : (at[a] + 1) % n % 3 == 1 ? 1e-45f : 0.0f));
      g[at[a]] = keep;
    }
  loom_model_destroy(m);
}

/* --- what backward checked (loom_model_grads_checked) --- */

/* A user layer y = x + b over 8 features whose backward accumulates db and
 * then writes `shift_bad` into db[5] when it is not 0: it does not report,
 * so the model checks its gradients after its backward. */
static float shift_bad;
static float *shift_grads;
static size_t shift_params(void *d) { return (void)d, 8; }
static void shift_bind(void *d, float *p, float *g, float *b) { (void)d, (void)p, (void)b, shift_grads = g; }
static int shift_backward(void *d, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                          loom_tensor *dx, bool param_grads) {
  (void)d, (void)x, (void)y;
  const float *g = loom_tensor_data(dy);
  for (int64_t i = 0; param_grads && i < loom_tensor_numel(dy); i++)
    shift_grads[i % 8] += g[i];
  if (param_grads && shift_bad != 0)
    shift_grads[5] = shift_bad;
  if (dx)
    memcpy(loom_tensor_data(dx), g, (size_t)loom_tensor_numel(dy) * sizeof(float));
  return 0;
}
static const loom_layer_ops shift_ops = {.type = "Shift", .num_params = shift_params, .output_shape = same_shape,
                                         .bind = shift_bind, .forward = poison_forward, .backward = shift_backward};

/* One batch of 2 through fc1 (Linear 4-8), shift, fc2 (Linear 8-2), with
 * the output gradient dout (fc2's checked in its product) and shift's bad
 * value; then what the model knows. */
static bool checked_after(loom_model *m, float dout0, float bad, bool *finite) {
  const int64_t xs[2] = {2, F}, ys[2] = {2, 2};
  loom_tensor *x = loom_tensor_create(2, xs), *d = loom_tensor_create(2, ys);
  for (int i = 0; i < 2 * F; i++)
    loom_tensor_data(x)[i] = 0.25f * (float)(i % 5) - 0.5f;
  for (int i = 0; i < 4; i++)
    loom_tensor_data(d)[i] = i ? 0.5f - 0.25f * (float)i : dout0;
  const loom_tensor *y;
  loom_model_zero_grad(m);
  shift_bad = bad;
  assert_int_equal(loom_model_forward(m, x, &y), 0);
  assert_int_equal(loom_model_backward(m, d), 0);
  loom_tensor_destroy(x), loom_tensor_destroy(d);
  bool known = loom_model_grads_checked(m, finite);
  /* Whatever it knows agrees with reading them all. */
  if (known)
    assert_true(*finite == loom_model_grads_finite(m));
  return known;
}

static void test_grads_checked(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(F, 8, true)), 0);
  assert_int_equal(loom_model_add(m, "shift", loom_layer_create(&shift_ops, NULL)), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(8, 2, true)), 0);
  assert_int_equal(loom_model_build(m, 1, (int64_t[]){F}, 11), 0);
  bool finite = false;
  assert_true(loom_model_grads_checked(m, &finite) && finite); /* zeroed at build */
  assert_true(checked_after(m, 0.25f, 0, &finite) && finite);
  assert_true(checked_after(m, NAN, 0, &finite) && !finite);      /* every Linear's product */
  assert_true(checked_after(m, INFINITY, 0, &finite) && !finite); /* Inf * 0 in dW: NaN */
  assert_true(checked_after(m, 0.25f, INFINITY, &finite) && !finite); /* the user layer, checked after it */
  assert_true(checked_after(m, 0.25f, -NAN, &finite) && !finite);
  /* A second backward accumulates: a bad first stays bad. */
  const int64_t xs[2] = {1, F};
  loom_tensor *x = loom_tensor_create(2, xs), *d = loom_tensor_create(2, (int64_t[]){1, 2});
  const loom_tensor *y;
  assert_int_equal(loom_model_forward(m, x, &y), 0);
  shift_bad = 0;
  assert_int_equal(loom_model_backward(m, d), 0);
  assert_true(loom_model_grads_checked(m, &finite) && !finite);
  loom_tensor_destroy(x), loom_tensor_destroy(d);

  /* What others write is not known; scaling by at most 1 keeps it known. */
  assert_true(checked_after(m, 0.25f, 0, &finite) && finite);
  loom_model_scale_grads(m, 0.5f);
  assert_true(loom_model_grads_checked(m, &finite) && finite);
  loom_model_clip_grad_norm(m, 1e-3);
  assert_true(loom_model_grads_checked(m, &finite) && finite);
  loom_model_scale_grads(m, 2.0f);
  assert_false(loom_model_grads_checked(m, &finite));
  loom_model_zero_grad(m);
  assert_true(loom_model_grads_checked(m, &finite) && finite);
  loom_model_grads(m)[0] = NAN;
  assert_false(loom_model_grads_checked(m, &finite));
  /* Unknown stays unknown through a backward of checked layers. */
  loom_model_zero_grad(m);
  loom_model_grads(m);
  x = loom_tensor_create(2, xs), d = loom_tensor_create(2, (int64_t[]){1, 2});
  assert_int_equal(loom_model_forward(m, x, &y), 0);
  assert_int_equal(loom_model_backward(m, d), 0);
  assert_false(loom_model_grads_checked(m, &finite));
  loom_tensor_destroy(x), loom_tensor_destroy(d);
  /* A clamp can make an Inf finite: known-bad becomes unknown. */
  assert_true(checked_after(m, 0.25f, INFINITY, &finite) && !finite);
  loom_model_clip_grad_value(m, 1.0f);
  assert_false(loom_model_grads_checked(m, &finite));
  /* Loaded gradients (a saved accumulation window) were never checked. */
  assert_true(checked_after(m, 0.25f, 0, &finite) && finite);
  loom_state *st = loom_state_create();
  assert_int_equal(loom_model_save(m, st, true), 0);
  loom_model_zero_grad(m);
  assert_int_equal(loom_model_load(m, st, true), 0);
  assert_false(loom_model_grads_checked(m, &finite));
  loom_state_destroy(st);
  loom_model_destroy(m);
}

/* --- a NaN feature (the issue's case) --- */

/* STOP (the default): the run fails at batch 3, saying the loss is NaN,
 * with the weights of the two steps before it, as a clean run of two
 * batches leaves them. */
static void test_nan_feature_stop(void **state) {
  (void)state;
  result got, want;
  run(&(run_spec){.train = data(all8, N, 5), .epochs = 3}, &got);
  run(&(run_spec){.train = data(clean6, 6, -1), .epochs = 1, .limit_batches = 2}, &want);
  assert_int_equal(got.rc, LOOM_ENONFINITE);
  has(got.message, "batch 3");
  has(got.message, "the loss is ");
  has(got.message, "nan");
  has(got.message, "SKIP non-finite policy");
  assert_int_equal(got.steps, 2);
  all_finite(&got);
  assert_memory_equal(got.params, want.params, got.num_params * sizeof(float));
}

/* SKIP: batch 3 is dropped every epoch, so the run is the clean run over
 * the other six samples, bit for bit: weights and train loss. Once the
 * budget is spent, an error that says so. */
static void test_nan_feature_skip(void **state) {
  (void)state;
  result got, want;
  run(&(run_spec){.train = data(all8, N, 5), .epochs = 3, .policy = LOOM_NONFINITE_SKIP, .budget = 3}, &got);
  run(&(run_spec){.train = data(clean6, 6, -1), .epochs = 3}, &want);
  assert_int_equal(got.rc, 0);
  assert_int_equal(got.steps, 9);
  all_finite(&got);
  assert_memory_equal(got.params, want.params, got.num_params * sizeof(float));
  assert_true(got.train_loss == want.train_loss);

  run(&(run_spec){.train = data(all8, N, 5), .epochs = 3, .policy = LOOM_NONFINITE_SKIP, .budget = 2}, &got);
  assert_int_equal(got.rc, LOOM_ENONFINITE);
  has(got.message, "epoch 3");
  has(got.message, "budget of 2 skipped batches is spent");
  assert_int_equal(got.steps, 8);
  all_finite(&got);
}

/* SKIP under gradient accumulation (windows of 2): the skipped batch 3 is
 * no part of a window, so batch 4 ends the epoch in a window of its own,
 * as in the clean run over the other six samples. */
static void test_nan_feature_skip_accumulation(void **state) {
  (void)state;
  loom_optimizer_callback_options oc = {.accumulation_steps = 2};
  result got, want;
  run(&(run_spec){.train = data(all8, N, 5), .epochs = 3, .policy = LOOM_NONFINITE_SKIP, .budget = 3,
                  .extra = loom_optimizer_callback_create(&oc)},
      &got);
  run(&(run_spec){.train = data(clean6, 6, -1), .epochs = 3, .extra = loom_optimizer_callback_create(&oc)}, &want);
  assert_int_equal(got.rc, 0);
  assert_int_equal(got.steps, 6);
  assert_int_equal(want.steps, 6);
  all_finite(&got);
  assert_memory_equal(got.params, want.params, got.num_params * sizeof(float));
}

/* --- a NaN in the gradients mid-run, with a finite loss --- */

/* A clean run's weights after `steps` optimizer steps. */
static int64_t snapshot_at;
static float snapshot[128];
static int take_snapshot(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_is_train_loader(r) && loom_runner_optimizer_step_count(r) == snapshot_at &&
      !loom_runner_batch_skipped(r))
    memcpy(snapshot, loom_model_params(loom_runner_model(r)), loom_model_num_params(loom_runner_model(r)) * sizeof(float));
  return 0;
}

/* STOP: the supervised step refuses the NaN gradient of batch 2 of epoch 3
 * (the 10th), names the gradient norm and the layer, and the weights are
 * those after the 9 good steps. */
static void test_gradient_nan_stop(void **state) {
  (void)state;
  static const loom_callback_ops snap_ops = {.type = "snapshot", .on_batch_end = take_snapshot};
  result got, want;
  poison_at = 10;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true}, &got);
  assert_int_equal(got.rc, LOOM_ENONFINITE);
  assert_true(isfinite(got.batch_loss[3][1])); /* the loss said nothing */
  has(got.message, "handle_batch (stage \"train\", epoch 3, loader \"train\", batch 2)");
  has(got.message, "the gradient norm is not finite before optimizer step 10, first in layer \"fc1\"");
  has(got.message, "SKIP non-finite policy");
  assert_int_equal(got.steps, 9);
  all_finite(&got);
  poison_at = 0, snapshot_at = 9;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true,
                  .extra = loom_callback_create(&snap_ops, NULL, LOOM_ORDER_LOGGING)},
      &want);
  assert_int_equal(want.rc, 0);
  assert_memory_equal(got.params, snapshot, got.num_params * sizeof(float));
}

/* SKIP: that batch takes no step and is not in the metrics: the last
 * epoch's train loss is the mean of its other three batches' losses. */
static void test_gradient_nan_skip(void **state) {
  (void)state;
  result got;
  poison_at = 10;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true, .policy = LOOM_NONFINITE_SKIP,
                  .budget = 1},
      &got);
  assert_int_equal(got.rc, 0);
  assert_int_equal(got.steps, 11);
  all_finite(&got);
  const double *l = got.batch_loss[3];
  assert_true(isfinite(l[1]));
  near(got.train_loss, (l[0] + l[2] + l[3]) / 3);
}

/* Dynamic loss scaling takes a non-finite gradient for an overflow while
 * the scale is above 1: the step is skipped (the SKIP policy's weights,
 * bit for bit: a power-of-two scale is exact), the batch stays in the
 * metrics, and STOP does not stop; from a scale of 1 the policy decides. */
static void test_gradient_nan_loss_scaling(void **state) {
  (void)state;
  result scaled, skipped, at_one;
  poison_at = 10;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true, .loss_scale = 4}, &scaled);
  assert_int_equal(scaled.rc, 0);
  assert_int_equal(scaled.steps, 11);
  all_finite(&scaled);
  const double *l = scaled.batch_loss[3];
  near(scaled.train_loss, (l[0] + l[1] + l[2] + l[3]) / 4);
  poison_at = 10;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true, .policy = LOOM_NONFINITE_SKIP,
                  .budget = 1},
      &skipped);
  assert_memory_equal(scaled.params, skipped.params, scaled.num_params * sizeof(float));
  poison_at = 10;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true, .loss_scale = 1}, &at_one);
  assert_int_equal(at_one.rc, LOOM_ENONFINITE);
  assert_int_equal(at_one.steps, 9);
}

/* Through the optimizer callback (windows of 2 batches), with clipping by
 * norm (the norm computed anyway) and without: the window that holds the
 * NaN (batches 1-2 of epoch 3, the 5th step) is refused (STOP) or dropped
 * (SKIP: no step, its gradients zeroed, its last batch not in the
 * metrics; batch 1 was counted when it ended). */
static void test_gradient_nan_optimizer_callback(void **state) {
  (void)state;
  for (int clip = 0; clip < 2; clip++) {
    loom_optimizer_callback_options oc = {.accumulation_steps = 2, .clip_norm = clip ? 1.0 : 0.0};
    result got;
    poison_at = 10;
    run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true,
                    .extra = loom_optimizer_callback_create(&oc)},
        &got);
    assert_int_equal(got.rc, LOOM_ENONFINITE);
    has(got.message, "callback \"optimizer\" failed in on_batch_end");
    has(got.message, clip ? "the gradient norm is nan" : "the gradient norm is not finite");
    has(got.message, "before optimizer step 5 (stage \"train\", epoch 3, loader \"train\", batch 2), first in layer "
                     "\"fc1\"");
    assert_int_equal(got.steps, 4);
    all_finite(&got);

    poison_at = 10;
    run(&(run_spec){.train = data(all8, N, -1), .epochs = 3, .poison = true, .policy = LOOM_NONFINITE_SKIP,
                    .budget = 1, .extra = loom_optimizer_callback_create(&oc)},
        &got);
    assert_int_equal(got.rc, 0);
    assert_int_equal(got.steps, 5);
    all_finite(&got);
    const double *l = got.batch_loss[3];
    near(got.train_loss, (l[0] + l[2] + l[3]) / 3);
  }
}

/* A world of two whose other rank sends a NaN gradient on the 3rd
 * all-reduce: this rank's own gradients are finite, the mean is not, and
 * the check after the all-reduce catches it. */
static int mean_calls;
static int id_sum(void *c, double *b, size_t n) { (void)c, (void)b, (void)n; return 0; }
static int nan_mean(void *c, float *b, size_t n) {
  (void)c, (void)n;
  if (++mean_calls == 3)
    b[0] = NAN;
  return 0;
}
static int id_bcast(void *c, void *b, size_t n, int root) { (void)c, (void)b, (void)n, (void)root; return 0; }
static int id_barrier(void *c) { (void)c; return 0; }
static const loom_comm_ops nan_peer_ops = {.name = "nan_peer", .allreduce_sum_f64 = id_sum, .allreduce_mean_f32 = nan_mean,
                                           .broadcast = id_bcast, .barrier = id_barrier};

static void test_gradient_nan_from_allreduce(void **state) {
  (void)state;
  result got;
  mean_calls = 0, poison_at = 0;
  run(&(run_spec){.train = data(all8, N, -1), .epochs = 2, .comm = loom_comm_create(&nan_peer_ops, NULL, 0, 2)},
      &got);
  assert_int_equal(got.rc, LOOM_ENONFINITE);
  has(got.message, "epoch 2, loader \"train\", batch 1)"); /* this rank's shard: 2 batches an epoch */
  has(got.message, "the gradient norm is not finite before optimizer step 3, first in layer \"fc1\"");
  assert_int_equal(got.steps, 2);
  all_finite(&got);
}

/* On a device the supervised batch is deferred (runner_deferred.c): the
 * loss stays there, the step is held back there when the loss or a
 * gradient is not finite, and the policy decides at the batch's end. The
 * outcome must be the host's, bit for bit: code, message, steps, weights,
 * losses; and the device was not waited on for any op's result (no
 * all_finite at the step: the gate decided). */
static void test_device_defers_like_host(void **state) {
  (void)state;
  fake_device *dev;
  loom_backend *fake = fake_device_create((size_t)16 << 20, &dev);
  const struct {
    int nan_sample;
    int64_t poison;
    loom_nonfinite_policy policy;
    int64_t budget;
  } cases[] = {
      {-1, 0, LOOM_NONFINITE_STOP, 0},  {5, 0, LOOM_NONFINITE_STOP, 0},  {5, 0, LOOM_NONFINITE_SKIP, 3},
      {5, 0, LOOM_NONFINITE_SKIP, 2},   {-1, 10, LOOM_NONFINITE_STOP, 0}, {-1, 10, LOOM_NONFINITE_SKIP, 1},
  };
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    result want, got;
    for (int on_device = 0; on_device < 2; on_device++) {
      poison_at = cases[k].poison;
      fake_device_reset_counts(dev);
      run(&(run_spec){.train = data(all8, N, cases[k].nan_sample), .epochs = 3, .poison = cases[k].poison > 0,
                      .policy = cases[k].policy, .budget = cases[k].budget, .backend = on_device ? fake : NULL},
          on_device ? &got : &want);
    }
    if (got.rc != want.rc || strcmp(got.message, want.message) != 0)
      fail_msg("case %zu: the device's %d \"%s\", the host's %d \"%s\"", k, got.rc, got.message, want.rc,
               want.message);
    assert_int_equal(got.steps, want.steps);
    assert_int_equal(got.num_params, want.num_params);
    assert_memory_equal(got.params, want.params, got.num_params * sizeof(float));
    assert_memory_equal(got.batch_loss, want.batch_loss, sizeof got.batch_loss);
    assert_true(got.train_loss == want.train_loss || (isnan(got.train_loss) && isnan(want.train_loss)));
    assert_int_equal(fake_device_counts_of(dev).host_results, 0);
    assert_true(fake_device_counts_of(dev).to_host > 0);
  }
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(fake);
}

/* A callback's batch result that fails to issue at global train batch 3
 * (the one with sample 5's NaN). */
static int fail_issue(loom_callback *cb, loom_runner *r, loom_backend *b, void *device) {
  (void)cb, (void)b, (void)device;
  return loom_runner_global_batch_step(r) == 3 ? loom_error_set(LOOM_EIO, "the test's issue failed") : 0;
}
static int no_finish(loom_callback *cb, loom_runner *r, const void *host) { return (void)cb, (void)r, (void)host, 0; }
static int no_batch_end(loom_callback *cb, loom_runner *r) { return (void)cb, (void)r, 0; }
static int add_failing_result(loom_callback *cb, loom_runner *r) {
  const loom_batch_result result = {.bytes = sizeof(float), .issue = fail_issue, .finish = no_finish};
  return loom_runner_add_batch_result(r, cb, &result);
}

/* The deferred batch whose step the gate held back (sample 5's NaN, in
 * batch 3), when a callback's result fails to issue there, under `policy`:
 * the run fails with that callback's error, code and message alike, and
 * the step it did not take is not counted (2 steps, as the weights had). */
static void failed_result_run(loom_nonfinite_policy policy, int64_t budget) {
  static const loom_callback_ops ops = {
      .type = "failing_result", .on_stage_start = add_failing_result, .on_batch_end = no_batch_end};
  fake_device *dev;
  loom_backend *fake = fake_device_create((size_t)16 << 20, &dev);
  result got;
  run(&(run_spec){.train = data(all8, N, 5), .epochs = 1, .policy = policy, .budget = budget, .backend = fake,
                  .extra = loom_callback_create(&ops, NULL, 0)},
      &got);
  if (got.rc != LOOM_EIO)
    fail_msg("%d: %s", got.rc, got.message);
  has(got.message, "the test's issue failed");
  assert_int_equal(got.steps, 2);
  all_finite(&got);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(fake);
}

/* SKIP: settling the batch skips it. */
static void test_device_failed_result_keeps_counts(void **state) {
  (void)state;
  failed_result_run(LOOM_NONFINITE_SKIP, 3);
}

/* STOP: settling the batch fails too (its gradients are not finite), and
 * the run's error is still the callback's (the message was the settle's,
 * under EIO). */
static void test_device_failed_result_keeps_its_error(void **state) {
  (void)state;
  failed_result_run(LOOM_NONFINITE_STOP, 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grads_finite),
      cmocka_unit_test(test_grads_checked),
      cmocka_unit_test(test_nan_feature_stop),
      cmocka_unit_test(test_nan_feature_skip),
      cmocka_unit_test(test_nan_feature_skip_accumulation),
      cmocka_unit_test(test_gradient_nan_stop),
      cmocka_unit_test(test_gradient_nan_skip),
      cmocka_unit_test(test_gradient_nan_loss_scaling),
      cmocka_unit_test(test_gradient_nan_optimizer_callback),
      cmocka_unit_test(test_gradient_nan_from_allreduce),
      cmocka_unit_test(test_device_defers_like_host),
      cmocka_unit_test(test_device_failed_result_keeps_counts),
      cmocka_unit_test(test_device_failed_result_keeps_its_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
