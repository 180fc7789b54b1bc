/* Finite-difference gradient checks: loom's float gradients against central
 * differences of an independent double-precision forward pass. */
#include <math.h>

#include "helpers.h"

#define H 1e-6

static void fill(float *a, int n, loom_rng *rng, float scale) {
  for (int i = 0; i < n; i++)
    a[i] = (2.0f * loom_rng_uniform(rng) - 1.0f) * scale;
}

static void assert_close(double got, double want, const char *what, int i) {
  double tol = 2e-3 * fmax(1.0, fabs(want));
  if (fabs(got - want) > tol)
    fail_msg("%s[%d]: loom %.8g, finite differences %.8g", what, i, got, want);
}

/* --- reference forward passes in double --- */

static double ref_linear_loss(const double *x, const double *w, const double *b, const double *r, int n, int in,
                              int out) {
  double loss = 0;
  for (int i = 0; i < n; i++)
    for (int o = 0; o < out; o++) {
      double y = b ? b[o] : 0;
      for (int k = 0; k < in; k++)
        y += x[i * in + k] * w[o * in + k];
      loss += y * r[i * out + o];
    }
  return loss;
}

static double ref_ce(const double *logits, const float *target, int n, int c) {
  double loss = 0;
  for (int i = 0; i < n; i++) {
    double max = logits[i * c];
    for (int j = 1; j < c; j++)
      max = fmax(max, logits[i * c + j]);
    double s = 0;
    for (int j = 0; j < c; j++)
      s += exp(logits[i * c + j] - max);
    loss += log(s) + max - logits[i * c + (int)target[i]];
  }
  return loss / n;
}

/* Checks grad[i] against central differences of f(p) for every i. */
typedef double (*loss_fn)(const double *p, const void *ctx);

static void check_fd(const float *grad, double *p, int n, loss_fn f, const void *ctx, const char *what) {
  for (int i = 0; i < n; i++) {
    double keep = p[i];
    p[i] = keep + H;
    double up = f(p, ctx);
    p[i] = keep - H;
    double down = f(p, ctx);
    p[i] = keep;
    assert_close(grad[i], (up - down) / (2 * H), what, i);
  }
}

static void to_double(double *d, const float *f, int n) {
  for (int i = 0; i < n; i++)
    d[i] = f[i];
}

typedef struct linear_ctx {
  const double *x, *r;
  int n, in, out;
} linear_ctx;

static double linear_params_loss(const double *p, const void *ctx) {
  const linear_ctx *c = ctx;
  return ref_linear_loss(c->x, p, p + c->in * c->out, c->r, c->n, c->in, c->out);
}

/* d(sum(y * R))/dy = R, so backward gets R as dout. */
static void test_linear(void **state) {
  (void)state;
  enum { N = 3, IN = 5, OUT = 4 };
  loom_rng rng;
  loom_rng_seed(&rng, 1, 0, 0);
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(IN, OUT, true)), 0);
  int64_t in = IN;
  assert_int_equal(loom_model_build(m, 1, &in, 7), 0);
  assert_int_equal(loom_model_num_params(m), IN * OUT + OUT);
  /* A second layer makes the first one's input gradient observable. */
  float x[N * IN], r[N * OUT];
  fill(x, N * IN, &rng, 1.0f);
  fill(r, N * OUT, &rng, 1.0f);
  int64_t xs[2] = {N, IN}, rs[2] = {N, OUT};
  loom_tensor *xt = loom_tensor_view(x, 2, xs), *rt = loom_tensor_view(r, 2, rs);
  const loom_tensor *y;
  assert_int_equal(loom_model_forward(m, xt, &y), 0);
  loom_model_zero_grad(m);
  assert_int_equal(loom_model_backward(m, rt), 0);

  double xd[N * IN], rd[N * OUT], p[IN * OUT + OUT];
  to_double(xd, x, N * IN);
  to_double(rd, r, N * OUT);
  to_double(p, loom_model_params(m), IN * OUT + OUT);
  /* The forward output matches the reference too. */
  const float *yv = loom_tensor_data(y);
  for (int i = 0; i < N; i++)
    for (int o = 0; o < OUT; o++) {
      double want = p[IN * OUT + o];
      for (int k = 0; k < IN; k++)
        want += xd[i * IN + k] * p[o * IN + k];
      assert_close(yv[i * OUT + o], want, "y", i * OUT + o);
    }
  const float *g = loom_model_grads(m);
  const linear_ctx ctx = {xd, rd, N, IN, OUT};
  check_fd(g, p, IN * OUT + OUT, linear_params_loss, &ctx, "dparams");
  /* Gradients accumulate until zero_grad, as in PyTorch. */
  float first = g[0];
  assert_int_equal(loom_model_backward(m, rt), 0);
  assert_true(fabsf(g[0] - 2 * first) <= 1e-5f * fmaxf(1.0f, fabsf(first)));
  loom_tensor_destroy(xt);
  loom_tensor_destroy(rt);
  loom_model_destroy(m);
}

/* Linear -> ReLU -> Linear, to see ReLU's and Linear's input gradients. */
static double ref_two_layer(const double *x, const double *p, const double *r, int n, int in, int hid, int out) {
  double *h = calloc((size_t)(n * hid), sizeof *h);
  for (int i = 0; i < n; i++)
    for (int j = 0; j < hid; j++) {
      double v = p[hid * in + j];
      for (int k = 0; k < in; k++)
        v += x[i * in + k] * p[j * in + k];
      h[i * hid + j] = v > 0 ? v : 0;
    }
  const double *w2 = p + hid * in + hid;
  double loss = ref_linear_loss(h, w2, w2 + out * hid, r, n, hid, out);
  free(h);
  return loss;
}

typedef struct two_layer_ctx {
  const double *x, *r;
  int n, in, hid, out;
} two_layer_ctx;

static double two_layer_loss(const double *p, const void *ctx) {
  const two_layer_ctx *c = ctx;
  return ref_two_layer(c->x, p, c->r, c->n, c->in, c->hid, c->out);
}

static void test_relu_and_input_gradient(void **state) {
  (void)state;
  enum { N = 4, IN = 3, HID = 6, OUT = 2 };
  loom_rng rng;
  loom_rng_seed(&rng, 2, 0, 0);
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(IN, HID, true)), 0);
  assert_int_equal(loom_model_add(m, "act", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(HID, OUT, true)), 0);
  int64_t in = IN;
  assert_int_equal(loom_model_build(m, 1, &in, 3), 0);
  const int np = (int)loom_model_num_params(m);
  assert_int_equal(np, IN * HID + HID + HID * OUT + OUT);
  float x[N * IN], r[N * OUT];
  fill(x, N * IN, &rng, 1.0f);
  fill(r, N * OUT, &rng, 1.0f);
  int64_t xs[2] = {N, IN}, rs[2] = {N, OUT};
  loom_tensor *xt = loom_tensor_view(x, 2, xs), *rt = loom_tensor_view(r, 2, rs);
  const loom_tensor *y;
  assert_int_equal(loom_model_forward(m, xt, &y), 0);
  loom_model_zero_grad(m);
  assert_int_equal(loom_model_backward(m, rt), 0);
  double xd[N * IN], rd[N * OUT], *p = malloc((size_t)np * sizeof *p);
  to_double(xd, x, N * IN);
  to_double(rd, r, N * OUT);
  to_double(p, loom_model_params(m), np);
  /* Keep every pre-activation away from ReLU's kink, where FD is invalid. */
  int active = 0;
  for (int i = 0; i < N; i++)
    for (int j = 0; j < HID; j++) {
      double v = p[HID * IN + j];
      for (int k = 0; k < IN; k++)
        v += xd[i * IN + k] * p[j * IN + k];
      assert_true(fabs(v) > 1e-4);
      active += v > 0;
    }
  assert_true(active > 0 && active < N * HID); /* both branches of ReLU seen */
  const two_layer_ctx ctx = {xd, rd, N, IN, HID, OUT};
  check_fd(loom_model_grads(m), p, np, two_layer_loss, &ctx, "dparams");
  free(p);
  loom_tensor_destroy(xt);
  loom_tensor_destroy(rt);
  loom_model_destroy(m);
}

typedef struct ce_ctx {
  const float *target;
  int n, c;
} ce_ctx;

static double ce_loss(const double *logits, const void *ctx) {
  const ce_ctx *c = ctx;
  return ref_ce(logits, c->target, c->n, c->c);
}

static void test_cross_entropy(void **state) {
  (void)state;
  enum { N = 5, C = 4 };
  loom_rng rng;
  loom_rng_seed(&rng, 3, 0, 0);
  float logits[N * C], target[N] = {0, 3, 1, 2, 3};
  fill(logits, N * C, &rng, 3.0f);
  int64_t ls[2] = {N, C}, ts = N;
  loom_tensor *lt = loom_tensor_view(logits, 2, ls), *tt = loom_tensor_view(target, 1, &ts);
  loom_criterion *ce = loom_cross_entropy_create();
  double loss;
  assert_int_equal(loom_criterion_forward(ce, lt, tt, &loss), 0);
  double ld[N * C];
  to_double(ld, logits, N * C);
  assert_close(loss, ref_ce(ld, target, N, C), "loss", 0);
  const loom_tensor *d;
  assert_int_equal(loom_criterion_backward(ce, lt, tt, &d), 0);
  const ce_ctx ctx = {target, N, C};
  check_fd(loom_tensor_data(d), ld, N * C, ce_loss, &ctx, "dlogits");
  /* A hand-computed value: uniform logits over 4 classes give log(4). */
  float flat[C] = {0.5f, 0.5f, 0.5f, 0.5f}, t1[1] = {2};
  int64_t fs[2] = {1, C}, one = 1;
  loom_tensor *ft = loom_tensor_view(flat, 2, fs), *t1t = loom_tensor_view(t1, 1, &one);
  assert_int_equal(loom_criterion_forward(ce, ft, t1t, &loss), 0);
  assert_true(fabs(loss - log(4.0)) < 1e-6);
  /* A target outside the classes is an error, not a read out of bounds. */
  t1[0] = 4;
  assert_int_equal(loom_criterion_forward(ce, ft, t1t, &loss), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "not a class"));
  loom_tensor_destroy(ft);
  loom_tensor_destroy(t1t);
  loom_tensor_destroy(lt);
  loom_tensor_destroy(tt);
  loom_criterion_destroy(ce);
}

/* A whole MLP with cross-entropy, every parameter checked. */
static double ref_mlp_loss(const double *p, const double *x, const float *t, int n, const int64_t *sizes, int layers) {
  double *cur = malloc((size_t)(n * sizes[0]) * sizeof *cur);
  memcpy(cur, x, (size_t)(n * sizes[0]) * sizeof *cur);
  const double *w = p;
  for (int l = 0; l < layers; l++) {
    int in = (int)sizes[l], out = (int)sizes[l + 1];
    const double *b = w + in * out;
    double *next = malloc((size_t)(n * out) * sizeof *next);
    for (int i = 0; i < n; i++)
      for (int o = 0; o < out; o++) {
        double v = b[o];
        for (int k = 0; k < in; k++)
          v += cur[i * in + k] * w[o * in + k];
        next[i * out + o] = (l < layers - 1 && v < 0) ? 0 : v;
      }
    free(cur);
    cur = next;
    w = b + out;
  }
  double loss = ref_ce(cur, t, n, (int)sizes[layers]);
  free(cur);
  return loss;
}

typedef struct mlp_ctx {
  const double *x;
  const float *t;
  int n;
  const int64_t *sizes;
  int layers;
} mlp_ctx;

static double mlp_loss(const double *p, const void *ctx) {
  const mlp_ctx *c = ctx;
  return ref_mlp_loss(p, c->x, c->t, c->n, c->sizes, c->layers);
}

static void test_mlp(void **state) {
  (void)state;
  enum { N = 6 };
  const int64_t sizes[] = {7, 9, 8, 5};
  loom_model *m = loom_mlp_create(sizes, 4, 11);
  assert_non_null(m);
  const int np = (int)loom_model_num_params(m);
  assert_int_equal(np, 7 * 9 + 9 + 9 * 8 + 8 + 8 * 5 + 5);
  loom_rng rng;
  loom_rng_seed(&rng, 4, 0, 0);
  float x[N * 7], t[N] = {0, 4, 2, 1, 3, 4};
  fill(x, N * 7, &rng, 2.0f);
  int64_t xs[2] = {N, 7}, ts = N;
  loom_tensor *xt = loom_tensor_view(x, 2, xs), *tt = loom_tensor_view(t, 1, &ts);
  loom_criterion *ce = loom_cross_entropy_create();
  const loom_tensor *out, *dout;
  double loss;
  assert_int_equal(loom_model_forward(m, xt, &out), 0);
  assert_int_equal(loom_criterion_forward(ce, out, tt, &loss), 0);
  loom_model_zero_grad(m);
  assert_int_equal(loom_criterion_backward(ce, out, tt, &dout), 0);
  assert_int_equal(loom_model_backward(m, dout), 0);
  double xd[N * 7], *p = calloc((size_t)np, sizeof *p);
  to_double(xd, x, N * 7);
  to_double(p, loom_model_params(m), np);
  assert_close(loss, ref_mlp_loss(p, xd, t, N, sizes, 3), "loss", 0);
  const mlp_ctx ctx = {xd, t, N, sizes, 3};
  check_fd(loom_model_grads(m), p, np, mlp_loss, &ctx, "dparams");
  free(p);
  loom_tensor_destroy(xt);
  loom_tensor_destroy(tt);
  loom_criterion_destroy(ce);
  loom_model_destroy(m);
}

/* PyTorch's Linear initialisation: every weight and bias inside
 * [-1/sqrt(in), 1/sqrt(in)], spread over the interval, and seeded. */
static void test_init(void **state) {
  (void)state;
  const int64_t sizes[] = {784, 256};
  loom_model *a = loom_mlp_create(sizes, 2, 5), *b = loom_mlp_create(sizes, 2, 5), *c = loom_mlp_create(sizes, 2, 6);
  size_t n = loom_model_num_params(a);
  const float bound = 1.0f / sqrtf(784.0f);
  double sum2 = 0;
  for (size_t i = 0; i < n; i++) {
    float v = loom_model_params(a)[i];
    assert_true(v >= -bound && v <= bound);
    sum2 += (double)v * v;
  }
  /* U(-b, b) has variance b^2/3. */
  assert_true(fabs(sum2 / (double)n - bound * bound / 3.0) < 0.05 * bound * bound / 3.0);
  assert_memory_equal(loom_model_params(a), loom_model_params(b), n * sizeof(float));
  assert_memory_not_equal(loom_model_params(a), loom_model_params(c), n * sizeof(float));
  loom_model_destroy(a);
  loom_model_destroy(b);
  loom_model_destroy(c);
}

static void test_shape_errors(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(4, 2, true)), 0);
  assert_int_equal(loom_model_add(m, "fc", loom_relu_create()), LOOM_EINVAL);
  int64_t bad = 5;
  assert_int_equal(loom_model_build(m, 1, &bad, 1), LOOM_ESHAPE);
  assert_non_null(strstr(loom_last_error(), "expects 4 input features"));
  loom_model_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_linear),       cmocka_unit_test(test_relu_and_input_gradient),
      cmocka_unit_test(test_cross_entropy), cmocka_unit_test(test_mlp),
      cmocka_unit_test(test_init),         cmocka_unit_test(test_shape_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
