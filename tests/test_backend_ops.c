/* Every op of every backend against double-precision references, forward
 * and backward, over several shapes (ggml's test-backend-ops is the
 * pattern). A backend joins by adding itself to backends(); an op joins by
 * adding a case below. Inputs go through the backend's own memory and copy
 * calls, so a device backend is checked as it runs. Also: the support
 * listing, the error for a missing op, and the checks of loom_backend_create. */
#include "helpers.h"

#include <math.h>

#include <loom/backend.h>
#include <loom/backend_cpu.h>

#define MAX_BACKENDS 4

static size_t backends(loom_backend **out) {
  size_t n = 0;
  out[n++] = loom_backend_cpu();
  return n;
}

/* Deterministic values in [-1, 1), with exact zeros and both signs. */
static void fill(float *x, int64_t n, uint32_t seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
    if (i % 7 == 3)
      x[i] = 0.0f;
  }
}

/* Host array -> backend memory, and back. */
static float *upload(loom_backend *b, const float *host, int64_t n) {
  float *d = loom_backend_alloc(b, (size_t)n * sizeof *d);
  assert_non_null(d);
  assert_int_equal(loom_backend_from_host(b, d, host, (size_t)n * sizeof *d), 0);
  return d;
}

static void download(loom_backend *b, float *host, const float *d, int64_t n) {
  assert_int_equal(loom_backend_to_host(b, host, d, (size_t)n * sizeof *host), 0);
}

/* |got - want| <= tol (|want| + scale): float rounding relative to the
 * size of the terms that were summed. */
static void close_all(const char *what, const float *got, const double *want, const double *scale, int64_t n,
                      double tol) {
  for (int64_t i = 0; i < n; i++) {
    double bound = tol * (fabs(want[i]) + (scale ? scale[i] : 1.0));
    if (!(fabs((double)got[i] - want[i]) <= bound) && !(isnan(got[i]) && isnan(want[i])))
      fail_msg("%s: element %lld is %.9g, want %.9g (bound %.3g)", what, (long long)i, (double)got[i], want[i],
               bound);
  }
}

/* --- gemm --- */

static double at(const float *m, int64_t ld, bool trans, int64_t r, int64_t c) {
  return trans ? m[c * ld + r] : m[r * ld + c];
}

static void check_gemm(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, float beta,
                       int64_t pad) {
  const int64_t lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
  const int64_t na = (ta ? K : M) * lda, nb = (tb ? N : K) * ldb, nc = M * ldc;
  float *A = malloc((size_t)na * sizeof *A), *B = malloc((size_t)nb * sizeof *B), *C = malloc((size_t)nc * sizeof *C);
  double *want = malloc((size_t)nc * sizeof *want), *scale = malloc((size_t)nc * sizeof *scale);
  fill(A, na, 1), fill(B, nb, 2), fill(C, nc, 3);
  for (int64_t i = 0; i < M; i++)
    for (int64_t j = 0; j < ldc; j++) {
      double s = 0, abs_sum = 0;
      for (int64_t k = 0; j < N && k < K; k++) {
        double t = at(A, lda, ta, i, k) * at(B, ldb, tb, k, j);
        s += t, abs_sum += fabs(t);
      }
      /* padding past N must not be written */
      want[i * ldc + j] = j < N ? alpha * s + beta * (double)C[i * ldc + j] : C[i * ldc + j];
      scale[i * ldc + j] = fabs(alpha) * abs_sum + fabs(beta * (double)C[i * ldc + j]);
    }
  float *dA = upload(b, A, na), *dB = upload(b, B, nb), *dC = upload(b, C, nc);
  assert_int_equal(loom_backend_gemm(b, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc), 0);
  download(b, C, dC, nc);
  char what[128];
  snprintf(what, sizeof what, "%s gemm ta=%d tb=%d %lldx%lldx%lld", loom_backend_name(b), ta, tb, (long long)M,
           (long long)N, (long long)K);
  close_all(what, C, want, scale, nc, (double)(K + 2) * 0x1p-24);
  loom_backend_free(b, dA), loom_backend_free(b, dB), loom_backend_free(b, dC);
  free(A), free(B), free(C), free(want), free(scale);
}

static void test_gemm(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t shapes[][3] = {{1, 1, 1}, {3, 5, 7}, {128, 10, 784}, {33, 65, 17}, {256, 128, 64}};
  for (size_t i = 0, n = backends(b); i < n; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int t = 0; t < 4; t++) {
        check_gemm(b[i], t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 0.0f, 0);
        check_gemm(b[i], t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], -0.5f, 1.0f, 3);
      }
}

/* --- fill_rows, sum_rows --- */

static void test_rows(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t shapes[][2] = {{1, 1}, {4, 10}, {128, 256}, {7, 3}};
  for (size_t i = 0, n = backends(b); i < n; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      const int64_t rows = shapes[s][0], cols = shapes[s][1];
      float *x = malloc((size_t)(rows * cols) * sizeof *x), *row = malloc((size_t)cols * sizeof *row),
            *sum = malloc((size_t)cols * sizeof *sum);
      double *want = malloc((size_t)(rows * cols) * sizeof *want), *scale = malloc((size_t)cols * sizeof *scale);
      fill(x, rows * cols, 4), fill(row, cols, 5), fill(sum, cols, 6);

      float *d_y = upload(b[i], x, rows * cols), *d_row = upload(b[i], row, cols);
      assert_int_equal(loom_backend_fill_rows(b[i], d_y, d_row, rows, cols), 0);
      download(b[i], x, d_y, rows * cols);
      for (int64_t k = 0; k < rows * cols; k++)
        want[k] = row[k % cols];
      close_all("fill_rows", x, want, NULL, rows * cols, 0.0);

      fill(x, rows * cols, 7);
      float *d_x = upload(b[i], x, rows * cols), *d_sum = upload(b[i], sum, cols);
      assert_int_equal(loom_backend_sum_rows(b[i], d_sum, d_x, rows, cols), 0);
      for (int64_t j = 0; j < cols; j++) {
        want[j] = sum[j], scale[j] = fabs(sum[j]);
        for (int64_t r = 0; r < rows; r++)
          want[j] += x[r * cols + j], scale[j] += fabs(x[r * cols + j]);
      }
      download(b[i], sum, d_sum, cols);
      close_all("sum_rows", sum, want, scale, cols, (double)(rows + 1) * 0x1p-24);
      loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_row), loom_backend_free(b[i], d_x),
          loom_backend_free(b[i], d_sum);
      free(x), free(row), free(sum), free(want), free(scale);
    }
}

/* --- activations --- */

static double act_ref(loom_activation act, double param, double x) {
  switch (act) {
  case LOOM_ACT_RELU: return isnan(x) ? x : x > 0 ? x : 0;
  case LOOM_ACT_LEAKY_RELU: return x > 0 ? x : param * x;
  case LOOM_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  case LOOM_ACT_TANH: return tanh(x);
  case LOOM_ACT_SIGMOID: return 1 / (1 + exp(-x));
  case LOOM_ACT_COUNT: break;
  }
  return NAN;
}

static void check_activation(loom_backend *b, loom_activation act, float param, int64_t n) {
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *dy = malloc((size_t)n * sizeof *dy),
        *dx = malloc((size_t)n * sizeof *dx);
  double *want = malloc((size_t)n * sizeof *want), *dwant = malloc((size_t)n * sizeof *dwant);
  fill(x, n, 8), fill(dy, n, 9);
  for (int64_t i = 0; i < n; i++)
    x[i] *= 3.0f; /* the curved parts of tanh, sigmoid and GELU */
  x[n - 1] = NAN; /* NaN in, NaN out */
  const double h = 1e-4;
  for (int64_t i = 0; i < n; i++) {
    want[i] = act_ref(act, param, x[i]);
    /* ReLU's and LeakyReLU's slopes are exact (0 counts as negative, as
     * PyTorch's); the smooth ones' by central differences of the double
     * reference. */
    double slope = act == LOOM_ACT_RELU         ? (x[i] > 0 ? 1.0 : 0.0)
                   : act == LOOM_ACT_LEAKY_RELU ? (x[i] > 0 ? 1.0 : param)
                                                : (act_ref(act, param, x[i] + h) - act_ref(act, param, x[i] - h)) / (2 * h);
    /* At a NaN, as PyTorch: ReLU's threshold_backward passes dy (its
     * output is NaN, not <= 0), LeakyReLU's scales it, the rest are NaN. */
    if (isnan(x[i]))
      slope = act == LOOM_ACT_RELU ? 1.0 : act == LOOM_ACT_LEAKY_RELU ? param : NAN;
    dwant[i] = dy[i] * slope;
  }
  float *d_x = upload(b, x, n), *d_y = upload(b, y, n), *d_dy = upload(b, dy, n), *d_dx = upload(b, dx, n);
  assert_int_equal(loom_backend_act_forward(b, act, param, d_x, d_y, n), 0);
  assert_int_equal(loom_backend_act_backward(b, act, param, d_x, d_y, d_dy, d_dx, n), 0);
  download(b, y, d_y, n), download(b, dx, d_dx, n);
  char what[96];
  snprintf(what, sizeof what, "%s activation %d forward, n=%lld", loom_backend_name(b), (int)act, (long long)n);
  close_all(what, y, want, NULL, n, 4 * 0x1p-24);
  snprintf(what, sizeof what, "%s activation %d backward, n=%lld", loom_backend_name(b), (int)act, (long long)n);
  close_all(what, dx, dwant, NULL, n, 2e-6); /* the differences' own error is ~h^2 */
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

static void test_activations(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* 70000 elements: ReLU's pooled path */
  static const int64_t sizes[] = {1, 9, 1000, 70000};
  for (size_t i = 0, n = backends(b); i < n; i++)
    for (int act = 0; act < LOOM_ACT_COUNT; act++)
      for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        check_activation(b[i], (loom_activation)act, act == LOOM_ACT_LEAKY_RELU ? 0.01f : 0.0f, sizes[s]);
}

/* --- criteria --- */

/* Softmax cross-entropy in double: the loss sum, the weight sum and the
 * gradient (dL/dz of loss_sum * scale), checked also by central
 * differences of the double loss. */
static double xent_ref(const float *z, const float *t, const float *w, double e, int64_t n, int64_t c, double *wsum) {
  double total = 0, ws = 0;
  for (int64_t i = 0; i < n; i++) {
    double max = z[i * c], lse = 0;
    for (int64_t j = 1; j < c; j++)
      max = fmax(max, z[i * c + j]);
    for (int64_t j = 0; j < c; j++)
      lse += exp(z[i * c + j] - max);
    lse = log(lse) + max;
    int64_t y = (int64_t)t[i];
    for (int64_t j = 0; j < c; j++) {
      double q = (j == y ? 1 - e : 0) + e / (double)c;
      total += (w ? w[j] : 1.0) * q * (lse - z[i * c + j]);
    }
    ws += w ? w[y] : 1.0;
  }
  *wsum = ws;
  return total;
}

static void check_xent(loom_backend *b, int64_t n, int64_t c, bool weighted, float smoothing) {
  float *z = malloc((size_t)(n * c) * sizeof *z), *t = malloc((size_t)n * sizeof *t), *w = malloc((size_t)c * sizeof *w),
        *probs = malloc((size_t)(n * c) * sizeof *probs), *dz = malloc((size_t)(n * c) * sizeof *dz);
  double *want = malloc((size_t)(n * c) * sizeof *want);
  fill(z, n * c, 10);
  for (int64_t i = 0; i < n * c; i++)
    z[i] *= 4.0f;
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 7) % c);
  fill(w, c, 11);
  for (int64_t j = 0; j < c; j++)
    w[j] = 0.5f + fabsf(w[j]);
  const float *wp = weighted ? w : NULL;
  double wsum_ref, loss_ref = xent_ref(z, t, wp, smoothing, n, c, &wsum_ref);

  float *d_z = upload(b, z, n * c), *d_t = upload(b, t, n), *d_w = upload(b, w, c), *d_p = upload(b, probs, n * c),
        *d_dz = upload(b, dz, n * c);
  double loss = 0, wsum = 0;
  assert_int_equal(loom_backend_xent_forward(b, d_z, d_t, weighted ? d_w : NULL, smoothing, n, c, d_p, &loss, &wsum), 0);
  if (!(fabs(loss - loss_ref) <= 1e-5 * (fabs(loss_ref) + (double)n)) || !(fabs(wsum - wsum_ref) <= 1e-9 * wsum_ref))
    fail_msg("%s xent_forward %lldx%lld: loss %.9g want %.9g, weights %.9g want %.9g", loom_backend_name(b),
             (long long)n, (long long)c, loss, loss_ref, wsum, wsum_ref);
  const float scale = (float)(1.0 / wsum_ref);
  assert_int_equal(loom_backend_xent_backward(b, d_p, d_t, weighted ? d_w : NULL, smoothing, scale, n, c, d_dz), 0);
  download(b, dz, d_dz, n * c);
  const double h = 1e-3;
  for (int64_t k = 0; k < n * c; k++) {
    float keep = z[k];
    double up, down, ws;
    z[k] = keep + (float)h, up = xent_ref(z, t, wp, smoothing, n, c, &ws);
    z[k] = keep - (float)h, down = xent_ref(z, t, wp, smoothing, n, c, &ws);
    z[k] = keep;
    want[k] = (up - down) / (2 * h) * scale;
  }
  char what[96];
  snprintf(what, sizeof what, "%s xent_backward %lldx%lld w=%d e=%g", loom_backend_name(b), (long long)n, (long long)c,
           weighted, (double)smoothing);
  close_all(what, dz, want, NULL, n * c, 1e-3);
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_w), loom_backend_free(b, d_p),
      loom_backend_free(b, d_dz);
  free(z), free(t), free(w), free(probs), free(dz), free(want);
}

static double pointwise_ref(loom_pointwise_loss loss, double beta, double z, double t) {
  double d = z - t;
  switch (loss) {
  case LOOM_LOSS_BCE_WITH_LOGITS: return -(t * log(1 / (1 + exp(-z))) + (1 - t) * log(1 - 1 / (1 + exp(-z))));
  case LOOM_LOSS_MSE: return d * d;
  case LOOM_LOSS_L1: return fabs(d);
  case LOOM_LOSS_SMOOTH_L1: return fabs(d) < beta ? 0.5 * d * d / beta : fabs(d) - 0.5 * beta;
  case LOOM_LOSS_COUNT: break;
  }
  return NAN;
}

static void check_pointwise(loom_backend *b, loom_pointwise_loss loss, float beta, int64_t n) {
  float *z = malloc((size_t)n * sizeof *z), *t = malloc((size_t)n * sizeof *t), *dz = malloc((size_t)n * sizeof *dz);
  double *want = malloc((size_t)n * sizeof *want);
  fill(z, n, 12), fill(t, n, 13);
  double sum_ref = 0;
  const double h = 1e-4;
  for (int64_t i = 0; i < n; i++) {
    z[i] *= 3.0f;
    if (loss == LOOM_LOSS_BCE_WITH_LOGITS)
      t[i] = fabsf(t[i]); /* probabilities */
    else if (fabsf(z[i] - t[i]) < 1e-3f || fabsf(fabsf(z[i] - t[i]) - beta) < 1e-3f)
      t[i] += 0.01f; /* away from the kinks, where the difference quotient straddles */
    sum_ref += pointwise_ref(loss, beta, z[i], t[i]);
    want[i] = (pointwise_ref(loss, beta, z[i] + h, t[i]) - pointwise_ref(loss, beta, z[i] - h, t[i])) / (2 * h) * 0.5;
  }
  float *d_z = upload(b, z, n), *d_t = upload(b, t, n), *d_dz = upload(b, dz, n);
  double sum = 0;
  assert_int_equal(loom_backend_loss_forward(b, loss, beta, d_z, d_t, n, &sum), 0);
  if (!(fabs(sum - sum_ref) <= 1e-5 * (fabs(sum_ref) + 1)))
    fail_msg("%s loss %d forward n=%lld: %.9g want %.9g", loom_backend_name(b), (int)loss, (long long)n, sum, sum_ref);
  assert_int_equal(loom_backend_loss_backward(b, loss, beta, d_z, d_t, 0.5f, n, d_dz), 0);
  download(b, dz, d_dz, n);
  char what[96];
  snprintf(what, sizeof what, "%s loss %d backward n=%lld", loom_backend_name(b), (int)loss, (long long)n);
  close_all(what, dz, want, NULL, n, 1e-5);
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_dz);
  free(z), free(t), free(dz), free(want);
}

static void test_criteria(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = backends(b); i < n; i++) {
    check_xent(b[i], 1, 2, false, 0.0f);
    check_xent(b[i], 16, 10, false, 0.0f);
    check_xent(b[i], 16, 10, true, 0.0f);
    check_xent(b[i], 7, 5, true, 0.1f);
    check_xent(b[i], 5, 3, false, 0.2f);
    for (int loss = 0; loss < LOOM_LOSS_COUNT; loss++)
      for (int64_t n = 1; n <= 1000; n *= 10)
        check_pointwise(b[i], (loom_pointwise_loss)loss, loss == LOOM_LOSS_SMOOTH_L1 ? 0.5f : 0.0f, n);
  }
}

/* --- dropout, mul --- */

/* The documented counter rule, written out again here. */
static double counter_uniform_ref(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 40) / 16777216.0;
}

static void test_dropout(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 40000};
  for (size_t i = 0, nb = backends(b); i < nb; i++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      const int64_t n = sizes[s];
      const float p = 0.3f;
      const uint64_t key = 0x1234567890abcdefull + (uint64_t)s;
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *mask = malloc((size_t)n * sizeof *mask),
            *dx = malloc((size_t)n * sizeof *dx);
      double *want = malloc((size_t)n * sizeof *want), *want_mask = malloc((size_t)n * sizeof *want_mask);
      fill(x, n, 14);
      int64_t dropped = 0;
      for (int64_t k = 0; k < n; k++) {
        want_mask[k] = counter_uniform_ref(key, (uint64_t)k) < p ? 0.0 : (double)(1.0f / (1.0f - p));
        want[k] = (double)(x[k] * (float)want_mask[k]); /* one float product */
        dropped += want_mask[k] == 0.0;
      }
      float *d_x = upload(b[i], x, n), *d_y = upload(b[i], y, n), *d_m = upload(b[i], mask, n), *d_dx = upload(b[i], dx, n);
      assert_int_equal(loom_backend_dropout_forward(b[i], key, p, d_x, d_y, d_m, n), 0);
      download(b[i], y, d_y, n), download(b[i], mask, d_m, n);
      close_all("dropout mask", mask, want_mask, NULL, n, 0.0);
      close_all("dropout forward", y, want, NULL, n, 0.0);
      if (n >= 40000) /* the rule drops about p of them */
        assert_true(fabs((double)dropped / (double)n - p) < 0.01);
      assert_int_equal(loom_backend_mul(b[i], d_x, d_m, d_dx, n), 0); /* the backward: dy mask */
      download(b[i], dx, d_dx, n);
      close_all("mul", dx, want, NULL, n, 0.0);
      loom_backend_free(b[i], d_x), loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_m),
          loom_backend_free(b[i], d_dx);
      free(x), free(y), free(mask), free(dx), free(want), free(want_mask);
    }
}

/* --- support, errors, creation --- */

static void test_support_listing(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = backends(b); i < n; i++) {
    print_message("%s:", loom_backend_name(b[i]));
    for (int op = 0; op < LOOM_OP_COUNT; op++)
      print_message(" %s=%s", loom_op_name((loom_op)op), loom_backend_supports(b[i], (loom_op)op) ? "yes" : "no");
    print_message("\n");
  }
  /* The CPU backend has every op: the reference the others are held to. */
  for (int op = 0; op < LOOM_OP_COUNT; op++)
    assert_true(loom_backend_supports(loom_backend_cpu(), (loom_op)op));
  assert_string_equal(loom_op_name(LOOM_OP_COUNT), "?");
}

static void *host_alloc(void *ctx, size_t bytes) { return ctx ? NULL : malloc(bytes); }
static void host_free(void *ctx, void *p) { (void)ctx, free(p); }
static int host_copy(void *ctx, void *dst, const void *src, size_t bytes) { return (void)ctx, memcpy(dst, src, bytes), 0; }
static int host_zero(void *ctx, void *p, size_t bytes) { return (void)ctx, memset(p, 0, bytes), 0; }
static int destroyed;
static void count_destroy(void *ctx) { (void)ctx, destroyed++; }

/* A backend with memory and no ops: every op says it is missing. */
static void test_missing_op_is_reported(void **state) {
  (void)state;
  loom_backend_ops ops = {.name = "bare", .alloc = host_alloc, .free = host_free, .to_host = host_copy,
                          .from_host = host_copy, .copy = host_copy, .zero = host_zero, .destroy = count_destroy};
  loom_backend *b = loom_backend_create(&ops, NULL);
  assert_non_null(b);
  for (int op = 0; op < LOOM_OP_COUNT; op++)
    assert_false(loom_backend_supports(b, (loom_op)op));
  float x[4] = {0}, y[4];
  assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4), LOOM_ENOTSUP);
  assert_string_equal(loom_last_error(), "backend \"bare\" has no act_forward op; run this model on a backend that "
                                         "has it (the CPU backend has every op)");
  assert_int_equal(loom_backend_gemm(b, false, false, 1, 1, 1, 1, x, 1, x, 1, 0, y, 1), LOOM_ENOTSUP);
  assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_COUNT, 0, x, y, 4), LOOM_EINVAL);
  loom_backend_destroy(b);
  assert_int_equal(destroyed, 1);

  /* A backend without its memory slots is refused, and its context freed. */
  ops.copy = NULL;
  assert_null(loom_backend_create(&ops, NULL));
  assert_non_null(strstr(loom_last_error(), "backend \"bare\" must implement alloc, free, to_host, from_host, copy "
                                            "and zero"));
  assert_int_equal(destroyed, 2);
}

/* Tensors on a backend: created zeroed there, copied across, read on the host. */
static void test_tensor_on_backend(void **state) {
  (void)state;
  loom_backend_ops ops = {.name = "device", .device = LOOM_DEVICE_CUDA, .alloc = host_alloc, .free = host_free,
                          .to_host = host_copy, .from_host = host_copy, .copy = host_copy, .zero = host_zero};
  loom_backend *dev = loom_backend_create(&ops, NULL);
  const int64_t shape[2] = {2, 3};
  loom_tensor *h = loom_tensor_create(2, shape), *d = loom_tensor_create_on(dev, 2, shape);
  assert_ptr_equal(loom_tensor_backend(d), dev);
  assert_null(loom_tensor_backend(h));
  const float *hd = loom_tensor_host_data(d);
  for (int i = 0; i < 6; i++)
    assert_true(hd[i] == 0.0f);
  for (int i = 0; i < 6; i++)
    loom_tensor_data(h)[i] = (float)i + 0.5f;
  assert_int_equal(loom_tensor_copy(d, h), 0); /* host -> device */
  hd = loom_tensor_host_data(d);
  assert_ptr_not_equal(hd, loom_tensor_data(d)); /* a host copy, not the device memory */
  for (int i = 0; i < 6; i++)
    assert_true(hd[i] == (float)i + 0.5f);
  loom_tensor *back = loom_tensor_create(1, shape);
  assert_int_equal(loom_tensor_copy(back, d), 0); /* device -> host, reshaped */
  assert_int_equal(loom_tensor_ndim(back), 2);
  assert_true(loom_tensor_data(back)[5] == 5.5f);
  assert_int_equal(loom_tensor_zero(d), 0);
  assert_true(loom_tensor_host_data(d)[5] == 0.0f);
  /* A host tensor's host data is its data. */
  assert_ptr_equal(loom_tensor_host_data(h), loom_tensor_data(h));
  loom_tensor_destroy(h), loom_tensor_destroy(d), loom_tensor_destroy(back);
  loom_backend_destroy(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gemm),
      cmocka_unit_test(test_rows),
      cmocka_unit_test(test_activations),
      cmocka_unit_test(test_criteria),
      cmocka_unit_test(test_dropout),
      cmocka_unit_test(test_support_listing),
      cmocka_unit_test(test_missing_op_is_reported),
      cmocka_unit_test(test_tensor_on_backend),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
