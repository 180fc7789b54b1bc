/* Every op of every backend against double-precision references, forward
 * and backward, over several shapes (ggml's test-backend-ops is the
 * pattern). Each op's test runs once per backend row (rows[] below: the CPU,
 * and CUDA's device 0 when loom has the CUDA backend); an op joins by
 * adding a case below. Inputs go through the backend's own memory and copy
 * calls, so a device backend is checked as it runs. A row whose backend
 * cannot be made here (no CUDA device) or lacks one of the test's ops
 * prints why and is skipped: CMocka lists it as skipped, never passed.
 * Also: the support listing, the error for a missing op, and the checks of
 * loom_backend_create.
 *
 * usage: test_backend_ops [cpu|cuda|fake]: the rows of that backend (with
 * the backend-free tests under cpu), or all; `cuda` exits 77 (CTest's
 * skip) when it had no CUDA device. */
#include "helpers.h"
#include "reference.h"

#include <math.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <loom/backend.h>
#include <loom/backend_cpu.h>
#include <loom/backend_cuda.h>

#include "fake_device.h"

#define MAX_BACKENDS 1

/* A backend row: its backend, or why there is none here. */
typedef struct row {
  const char *name;
  loom_backend *backend;
  char missing[512];
} row;

/* The fake device (tests/fake_device.h: tagged device pointers, every
 * operand's extent checked, the CPU's ops behind them) holds the device
 * path's memory handling to the same references on any machine. */
static row cpu = {.name = "cpu"}, cuda = {.name = "cuda"}, fake = {.name = "fake"};

static void open_rows(void) {
  cpu.backend = loom_backend_cpu();
  fake.backend = fake_device_create((size_t)256 << 20, NULL);
  if (loom_backend_cuda_create(0, NULL, &cuda.backend) < 0)
    snprintf(cuda.missing, sizeof cuda.missing, "%s", loom_last_error());
}

/* The test's row's backend in out[0] (1), if it has every op up to
 * LOOM_OP_COUNT; else the test is skipped, saying why. */
static size_t backends(void **state, loom_backend **out, ...) {
  const row *r = *state;
  if (!r->backend) {
    print_message("skipped: no CUDA device (%s)\n", r->missing);
    skip();
  }
  va_list ops;
  va_start(ops, out);
  for (int op; (op = va_arg(ops, int)) != LOOM_OP_COUNT;)
    if (!loom_backend_supports(r->backend, (loom_op)op)) {
      va_end(ops);
      print_message("skipped: backend \"%s\" has no %s op\n", r->name, loom_op_name((loom_op)op));
      skip();
    }
  va_end(ops);
  out[0] = r->backend;
  return 1;
}
#define BACKENDS(b, ...) backends(state, b, __VA_ARGS__, LOOM_OP_COUNT)

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

/* The losses' sums are left in the backend's memory: read back here. */
static void xent_sums(loom_backend *b, const float *z, const float *t, const float *w, float smoothing, int64_t n,
                      int64_t c, float *probs, double *loss, double *wsum) {
  double *d = loom_backend_alloc(b, 2 * sizeof *d), host[2];
  assert_non_null(d);
  assert_int_equal(loom_backend_xent_forward(b, z, t, w, smoothing, n, c, probs, d), 0);
  assert_int_equal(loom_backend_to_host(b, host, d, sizeof host), 0);
  loom_backend_free(b, d);
  *loss = host[0], *wsum = host[1];
}

static double pointwise_sum(loom_backend *b, loom_pointwise_loss loss, float beta, const float *z, const float *t,
                            int64_t n) {
  double *d = loom_backend_alloc(b, sizeof *d), sum;
  assert_non_null(d);
  assert_int_equal(loom_backend_loss_forward(b, loss, beta, z, t, n, d), 0);
  assert_int_equal(loom_backend_to_host(b, &sum, d, sizeof sum), 0);
  loom_backend_free(b, d);
  return sum;
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
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_GEMM); i < n; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int t = 0; t < 4; t++) {
        check_gemm(b[i], t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], 1.0f, 0.0f, 0);
        check_gemm(b[i], t & 1, t & 2, shapes[s][0], shapes[s][1], shapes[s][2], -0.5f, 1.0f, 3);
      }
}

/* gemm_checked writes what gemm writes, bit for bit, and finds one Inf or
 * NaN wherever it lands in C's M x N block (beta = 1 keeps a bad value of C
 * where it is): at the corners of every part's block, cut by rows or by
 * columns; a NaN in the padding past N is not C's and is not reported. */
static void check_gemm_checked(loom_backend *b, int64_t M, int64_t N, int64_t K) {
  const int64_t ldc = N + 3, nc = M * ldc;
  float *A = malloc((size_t)(M * K) * sizeof *A), *B = malloc((size_t)(K * N) * sizeof *B);
  float *C = malloc((size_t)nc * sizeof *C), *want = malloc((size_t)nc * sizeof *want);
  fill(A, M * K, 1), fill(B, K * N, 2);
  float *dA = upload(b, A, M * K), *dB = upload(b, B, K * N);
  const int64_t rows[] = {0, M / 2 - 1, M / 2, M - 1}, cols[] = {0, N / 2 - 1, N / 2, N - 1};
  for (int bad = -1; bad < 16; bad++) {
    fill(C, nc, 3);
    for (int64_t i = 0; i < M; i++)
      C[i * ldc + N + 1] = NAN; /* padding */
    if (bad >= 0)
      C[rows[bad / 4] * ldc + cols[bad % 4]] = bad % 2 ? INFINITY : NAN;
    float *dC = upload(b, C, nc), *dW = upload(b, C, nc);
    bool finite = !(bad < 0);
    assert_int_equal(loom_backend_gemm_checked(b, false, false, M, N, K, 1.0f, dA, K, dB, N, 1.0f, dC, ldc, &finite),
                     0);
    assert_int_equal(loom_backend_gemm(b, false, false, M, N, K, 1.0f, dA, K, dB, N, 1.0f, dW, ldc), 0);
    if (finite != (bad < 0))
      fail_msg("%s gemm_checked %lldx%lldx%lld: bad value at %d reported finite=%d", loom_backend_name(b),
               (long long)M, (long long)N, (long long)K, bad, finite);
    download(b, C, dC, nc), download(b, want, dW, nc);
    assert_memory_equal(C, want, (size_t)nc * sizeof *C);
    loom_backend_free(b, dC), loom_backend_free(b, dW);
  }
  loom_backend_free(b, dA), loom_backend_free(b, dB);
  free(A), free(B), free(C), free(want);
}

/* A backend with gemm and all_finite but no gemm_checked: the wrapper's
 * row-by-row check stands in (the CPU's ops behind it). */
static int cpu_gemm_op(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  (void)ctx;
  return loom_backend_gemm(loom_backend_cpu(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static int cpu_all_finite_op(void *ctx, const float *x, int64_t n, bool *finite) {
  (void)ctx;
  return loom_backend_all_finite(loom_backend_cpu(), x, n, finite);
}
static void *plain_alloc(void *ctx, size_t bytes) { return (void)ctx, malloc(bytes); }
static void plain_free(void *ctx, void *p) { (void)ctx, free(p); }
static int plain_copy(void *ctx, void *dst, const void *src, size_t bytes) { return (void)ctx, memcpy(dst, src, bytes), 0; }
static int plain_zero(void *ctx, void *p, size_t bytes) { return (void)ctx, memset(p, 0, bytes), 0; }

static const int64_t checked_shapes[][3] = {{7, 5, 3}, {200, 96, 64}, {96, 200, 64}, {256, 784, 128}};

static void test_gemm_checked(void **state) {
  loom_backend *b[MAX_BACKENDS];
  for (size_t s = 0; s < sizeof checked_shapes / sizeof checked_shapes[0]; s++)
    for (size_t i = 0, n = BACKENDS(b, LOOM_OP_GEMM, LOOM_OP_GEMM_CHECKED); i < n; i++)
      check_gemm_checked(b[i], checked_shapes[s][0], checked_shapes[s][1], checked_shapes[s][2]);
}

static void test_gemm_checked_fallback(void **state) {
  (void)state;
  const loom_backend_ops ops = {.name = "gemm_only", .alloc = plain_alloc, .free = plain_free,
                                .to_host = plain_copy, .from_host = plain_copy, .copy = plain_copy,
                                .zero = plain_zero, .gemm = cpu_gemm_op, .all_finite = cpu_all_finite_op};
  loom_backend *fallback = loom_backend_create(&ops, NULL);
  assert_true(loom_backend_supports(fallback, LOOM_OP_GEMM_CHECKED));
  for (size_t s = 0; s < sizeof checked_shapes / sizeof checked_shapes[0]; s++)
    check_gemm_checked(fallback, checked_shapes[s][0], checked_shapes[s][1], checked_shapes[s][2]);
  loom_backend_destroy(fallback);
}

/* --- fill_rows, sum_rows --- */

static void test_rows(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t shapes[][2] = {{1, 1}, {4, 10}, {128, 256}, {7, 3}};
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_FILL_ROWS, LOOM_OP_SUM_ROWS); i < n; i++)
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
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_ACT_FORWARD, LOOM_OP_ACT_BACKWARD); i < n; i++)
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
  xent_sums(b, d_z, d_t, weighted ? d_w : NULL, smoothing, n, c, d_p, &loss, &wsum);
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

/* Many rows (several blocks of a device's reduction), forward only; then
 * one target at `bad` (< n) made no class: both sums NaN, as
 * loom/backend.h promises, nothing read out of range. */
static void check_xent_rows(loom_backend *b, int64_t n, int64_t c, int64_t bad) {
  float *z = malloc((size_t)(n * c) * sizeof *z), *t = malloc((size_t)n * sizeof *t);
  fill(z, n * c, 12);
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 3) % c);
  double wsum_ref, loss_ref = xent_ref(z, t, NULL, 0.0, n, c, &wsum_ref), loss, wsum;
  float *d_z = upload(b, z, n * c), *d_t = upload(b, t, n), *d_p = upload(b, z, n * c);
  xent_sums(b, d_z, d_t, NULL, 0.0f, n, c, d_p, &loss, &wsum);
  if (!(fabs(loss - loss_ref) <= 1e-6 * fabs(loss_ref)) || wsum != wsum_ref)
    fail_msg("%s xent_forward %lldx%lld: loss %.12g want %.12g, weights %.9g want %.9g", loom_backend_name(b),
             (long long)n, (long long)c, loss, loss_ref, wsum, wsum_ref);
  const float not_classes[] = {(float)c, -1.0f, 0.5f, NAN, 1e30f};
  for (size_t k = 0; k < sizeof not_classes / sizeof not_classes[0]; k++) {
    const float keep = t[bad];
    t[bad] = not_classes[k];
    assert_int_equal(loom_backend_from_host(b, d_t, t, (size_t)n * sizeof *t), 0);
    xent_sums(b, d_z, d_t, NULL, 0.0f, n, c, d_p, &loss, &wsum);
    if (!isnan(loss) || !isnan(wsum))
      fail_msg("%s xent_forward with target %g at %lld: loss %g, weights %g; expected NaN", loom_backend_name(b),
               (double)not_classes[k], (long long)bad, loss, wsum);
    t[bad] = keep;
  }
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_p);
  free(z), free(t);
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
  double sum = pointwise_sum(b, loss, beta, d_z, d_t, n);
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
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_XENT_FORWARD, LOOM_OP_XENT_BACKWARD, LOOM_OP_LOSS_FORWARD,
                                  LOOM_OP_LOSS_BACKWARD);
       i < n; i++) {
    check_xent(b[i], 1, 2, false, 0.0f);
    check_xent(b[i], 16, 10, false, 0.0f);
    check_xent(b[i], 16, 10, true, 0.0f);
    check_xent(b[i], 7, 5, true, 0.1f);
    check_xent(b[i], 5, 3, false, 0.2f);
    check_xent_rows(b[i], 3000, 10, 2999);
    check_xent_rows(b[i], 5, 4, 0);
    for (int loss = 0; loss < LOOM_LOSS_COUNT; loss++)
      for (int64_t n = 1; n <= 1000; n *= 10)
        check_pointwise(b[i], (loom_pointwise_loss)loss, loss == LOOM_LOSS_SMOOTH_L1 ? 0.5f : 0.0f, n);
  }
}

/* --- the accuracy's hits --- */

/* Sample i's target's place in its row sorted by score, highest first,
 * ties by class index: an insertion sort of the classes. */
static int64_t sorted_place(const float *x, int64_t c, int64_t y) {
  int64_t order[64];
  for (int64_t j = 0; j < c; j++) {
    int64_t k = j;
    for (; k > 0 && x[order[k - 1]] < x[j]; k--)
      order[k] = order[k - 1];
    order[k] = j;
  }
  for (int64_t k = 0; k < c; k++)
    if (order[k] == y)
      return k;
  return c;
}

static void check_topk(loom_backend *b, int64_t n, int64_t c, int64_t bad) {
  float *x = malloc((size_t)(n * c) * sizeof *x), *t = malloc((size_t)n * sizeof *t);
  fill(x, n * c, 21); /* every 7th a zero: ties */
  for (int64_t i = 0; i < n * c; i++)
    x[i] = roundf(x[i] * 4.0f) / 4.0f; /* more ties */
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 5) % c);
  if (bad >= 0)
    t[bad] = bad % 2 ? (float)c : 0.5f;
  const int ks[] = {1, 3, 5, 1};
  int64_t want[4] = {0}, got[4], got_bad;
  for (int64_t i = 0; i < n; i++)
    for (int k = 0; k < 4 && i != bad; k++)
      want[k] += sorted_place(x + i * c, c, (int64_t)t[i]) < ks[k];
  float *d_x = upload(b, x, n * c), *d_t = upload(b, t, n);
  /* The counts land in the backend's memory, written over what was there. */
  int64_t counts[5], junk[5] = {7, -3, 1000, 2, 5};
  int64_t *d_counts = loom_backend_alloc(b, sizeof counts);
  assert_non_null(d_counts);
  assert_int_equal(loom_backend_from_host(b, d_counts, junk, sizeof junk), 0);
  assert_int_equal(loom_backend_topk_hits(b, d_x, d_t, n, c, ks, 4, d_counts, d_counts + 4), 0);
  assert_int_equal(loom_backend_to_host(b, counts, d_counts, sizeof counts), 0);
  memcpy(got, counts, sizeof got);
  got_bad = counts[4];
  assert_int_equal(got_bad, bad);
  for (int k = 0; k < 4; k++)
    if (got[k] != want[k])
      fail_msg("%s topk_hits %lldx%lld k=%d: %lld hits, want %lld", loom_backend_name(b), (long long)n, (long long)c,
               ks[k], (long long)got[k], (long long)want[k]);
  assert_int_equal(loom_backend_topk_hits(b, d_x, d_t, n, c, ks, 0, d_counts, d_counts + 4), LOOM_EINVAL);
  loom_backend_free(b, d_x), loom_backend_free(b, d_t), loom_backend_free(b, d_counts);
  free(x), free(t);
}

static void test_topk_hits(void **state) {
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_TOPK_HITS); i < n; i++) {
    check_topk(b[i], 1, 1, -1);
    check_topk(b[i], 128, 10, -1);
    check_topk(b[i], 3000, 7, 2998);
    check_topk(b[i], 50, 64, 0);
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
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_DROPOUT_FORWARD, LOOM_OP_MUL); i < nb; i++)
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

/* --- add --- */

/* y = a + b into a third array and in place over either operand (a
 * residual block's sum, and its input's gradient from both branches):
 * one float sum per element. */
static void test_add(void **state) {
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 40000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_ADD); i < nb; i++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      const int64_t n = sizes[s];
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *got = malloc((size_t)n * sizeof *got);
      double *want = malloc((size_t)n * sizeof *want);
      fill(x, n, 21), fill(y, n, 22);
      x[0] = NAN; /* NaN in, NaN out */
      for (int64_t k = 0; k < n; k++)
        want[k] = (double)(x[k] + y[k]);
      float *d_x = upload(b[i], x, n), *d_y = upload(b[i], y, n), *d_out = upload(b[i], y, n);
      assert_int_equal(loom_backend_add(b[i], d_x, d_y, d_out, n), 0);
      download(b[i], got, d_out, n);
      close_all("add", got, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_add(b[i], d_x, d_y, d_y, n), 0); /* in place over b */
      download(b[i], got, d_y, n);
      close_all("add into b", got, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_add(b[i], d_x, d_x, d_x, n), 0); /* a + a into a */
      download(b[i], got, d_x, n);
      for (int64_t k = 0; k < n; k++)
        want[k] = (double)(x[k] + x[k]);
      close_all("add into a", got, want, NULL, n, 0.0);
      loom_backend_free(b[i], d_x), loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_out);
      free(x), free(y), free(got), free(want);
    }
}

/* --- autocast --- */

/* ROUND gives the CPU's bits (test_precision checks those against
 * independent references); under autocast a gemm is the product of the
 * rounded operands, accumulated in fp32 (on a GPU, TF32 Tensor Cores on
 * the rounded values, which they hold exactly). */
static void test_autocast(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  const loom_precision ps[] = {LOOM_PRECISION_BF16, LOOM_PRECISION_FP16};
  enum { N = 5000 };
  float x[N], want[N], got[N];
  fill(x, N, 31);
  for (int64_t k = 0; k < N; k++) /* magnitudes from fp16's subnormals to past its range */
    x[k] = ldexpf(x[k], (int)(k % 48) - 30);
  x[0] = NAN, x[1] = INFINITY, x[2] = -0.0f, x[3] = 65520.0f, x[4] = 1.0f + 0x1p-8f;
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_ROUND); i < nb; i++)
    for (int pi = 0; pi < 2; pi++) {
      assert_int_equal(loom_backend_round(loom_backend_cpu(), ps[pi], x, want, N), 0);
      float *d = upload(b[i], x, N);
      assert_int_equal(loom_backend_round(b[i], ps[pi], d, d, N), 0);
      download(b[i], got, d, N);
      loom_backend_free(b[i], d);
      for (int64_t k = 0; k < N; k++)
        if (memcmp(&got[k], &want[k], sizeof got[k]) != 0 && !(isnan(got[k]) && isnan(want[k])))
          fail_msg("%s round to %s of %a: %a, the CPU's %a", loom_backend_name(b[i]), loom_precision_name(ps[pi]),
                   (double)x[k], (double)got[k], (double)want[k]);
      /* Each shape with op(A) and op(B) transposed or not (a device's
       * product in the format swaps and transposes its operands). */
      static const int64_t shapes[][3] = {{33, 65, 17}, {128, 10, 784}};
      for (size_t st = 0; st < 2 * 4; st++) {
        const size_t s = st / 4;
        const bool ta = st & 1, tb = st & 2;
        const int64_t M = shapes[s][0], Nc = shapes[s][1], K = shapes[s][2];
        float *A = malloc((size_t)(M * K) * sizeof *A), *B = malloc((size_t)(K * Nc) * sizeof *B);
        float *C = malloc((size_t)(M * Nc) * sizeof *C);
        double *ref = malloc((size_t)(M * Nc) * sizeof *ref), *scale = malloc((size_t)(M * Nc) * sizeof *scale);
        fill(A, M * K, 41), fill(B, K * Nc, 42);
        float *dA = upload(b[i], A, M * K), *dB = upload(b[i], B, K * Nc), *dC = upload(b[i], C, M * Nc);
        assert_int_equal(loom_backend_round(loom_backend_cpu(), ps[pi], A, A, M * K), 0);
        assert_int_equal(loom_backend_round(loom_backend_cpu(), ps[pi], B, B, K * Nc), 0);
        for (int64_t r = 0; r < M; r++)
          for (int64_t c = 0; c < Nc; c++) {
            double sum = 0, abs_sum = 0;
            for (int64_t k = 0; k < K; k++)
            {
              const double t = (double)A[ta ? k * M + r : r * K + k] * B[tb ? c * K + k : k * Nc + c];
              sum += t, abs_sum += fabs(t);
            }
            ref[r * Nc + c] = sum, scale[r * Nc + c] = abs_sum;
          }
        loom_precision before = loom_backend_set_autocast(ps[pi]);
        int rc = loom_backend_gemm(b[i], ta, tb, M, Nc, K, 1.0f, dA, ta ? M : K, dB, tb ? K : Nc, 0.0f, dC, Nc);
        loom_backend_set_autocast(before);
        assert_int_equal(rc, 0);
        download(b[i], C, dC, M * Nc);
        char what[96];
        snprintf(what, sizeof what, "%s %s gemm %lldx%lldx%lld (ta %d, tb %d)", loom_backend_name(b[i]),
                 loom_precision_name(ps[pi]), (long long)M, (long long)Nc, (long long)K, ta, tb);
        close_all(what, C, ref, scale, M * Nc, (double)(K + 2) * 0x1p-24);
        loom_backend_free(b[i], dA), loom_backend_free(b[i], dB), loom_backend_free(b[i], dC);
        free(A), free(B), free(C), free(ref), free(scale);
      }
    }
}

/* --- convolution --- */

static double *to_double(const float *x, int64_t n) {
  double *d = malloc((size_t)n * sizeof *d);
  for (int64_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

static conv_ctx conv_shape(const loom_conv_desc *d) {
  return (conv_ctx){d->cin, d->h, d->w, d->cout, d->kh, d->kw, d->sh, d->sw, d->ph, d->pw, d->dh, d->dw, d->oh, d->ow};
}

/* The input position that kernel tap (ki, kj) of output (oy, ox) reads;
 * false in the padding. */
static bool tap(const conv_ctx *k, int64_t oy, int64_t ox, int64_t ki, int64_t kj, int64_t *iy, int64_t *ix) {
  *iy = oy * k->sh - k->ph + ki * k->dh, *ix = ox * k->sw - k->pw + kj * k->dw;
  return *iy >= 0 && *iy < k->h && *ix >= 0 && *ix < k->w;
}

/* The exact gradients of conv_ref in double, with the absolute sums of
 * their terms: dx, dw (added to dw0) and db (added to db0). */
static void conv_grads_ref(const conv_ctx *k, const float *x, const float *w, const float *dy, int64_t n,
                           const float *dw0, const float *db0, double *dx, double *sdx, double *dw, double *sdw,
                           double *db, double *sdb) {
  const int64_t nx = n * k->c * k->h * k->w, nw = k->o * k->c * k->kh * k->kw;
  for (int64_t i = 0; i < nx; i++)
    dx[i] = sdx[i] = 0;
  for (int64_t i = 0; i < nw; i++)
    dw[i] = dw0[i], sdw[i] = fabs(dw0[i]);
  for (int64_t o = 0; o < k->o; o++)
    db[o] = db0[o], sdb[o] = fabs(db0[o]);
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < k->o; o++)
      for (int64_t oy = 0; oy < k->oh; oy++)
        for (int64_t ox = 0; ox < k->ow; ox++) {
          const double g = dy[((i * k->o + o) * k->oh + oy) * k->ow + ox];
          db[o] += g, sdb[o] += fabs(g);
          for (int64_t c = 0; c < k->c; c++)
            for (int64_t ki = 0; ki < k->kh; ki++)
              for (int64_t kj = 0; kj < k->kw; kj++) {
                int64_t iy, ix;
                if (!tap(k, oy, ox, ki, kj, &iy, &ix))
                  continue;
                const int64_t wi = ((o * k->c + c) * k->kh + ki) * k->kw + kj,
                              xi = ((i * k->c + c) * k->h + iy) * k->w + ix;
                dx[xi] += w[wi] * g, sdx[xi] += fabs(w[wi] * g);
                dw[wi] += x[xi] * g, sdw[wi] += fabs(x[xi] * g);
              }
        }
}

/* One layer's passes through `plan` (NULL: a plan of its own, made and
 * destroyed here) for n samples, against conv_ref's. */
static void check_conv(loom_backend *b, loom_conv_desc d, loom_plan *given, int64_t n) {
  d.oh = (d.h + 2 * d.ph - d.dh * (d.kh - 1) - 1) / d.sh + 1;
  d.ow = (d.w + 2 * d.pw - d.dw * (d.kw - 1) - 1) / d.sw + 1;
  const conv_ctx k = conv_shape(&d);
  const int64_t nx = n * d.cin * d.h * d.w, nw = d.cout * d.cin * d.kh * d.kw, ny = n * d.cout * d.oh * d.ow;
  float *x = malloc((size_t)nx * sizeof *x), *p = malloc((size_t)(nw + d.cout) * sizeof *p),
        *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx), *g = malloc((size_t)(nw + d.cout) * sizeof *g);
  fill(x, nx, 15), fill(p, nw + d.cout, 16), fill(dy, ny, 17), fill(g, nw + d.cout, 18);
  if (!d.bias)
    for (int64_t o = 0; o < d.cout; o++)
      p[nw + o] = 0; /* conv_ref's bias */
  /* The forward, and the scale of its terms. */
  double *xd = to_double(x, nx), *pd = to_double(p, nw + d.cout), *want = malloc((size_t)ny * sizeof *want),
         *scale = malloc((size_t)ny * sizeof *scale);
  conv_ref(&k, xd, pd, want, n);
  for (int64_t i = 0; i < nx; i++)
    xd[i] = fabs(xd[i]);
  for (int64_t i = 0; i < nw + d.cout; i++)
    pd[i] = fabs(pd[i]);
  conv_ref(&k, xd, pd, scale, n);
  double *dxw = malloc((size_t)nx * sizeof *dxw), *sdx = malloc((size_t)nx * sizeof *sdx),
         *dww = malloc((size_t)nw * sizeof *dww), *sdw = malloc((size_t)nw * sizeof *sdw),
         *dbw = malloc((size_t)d.cout * sizeof *dbw), *sdb = malloc((size_t)d.cout * sizeof *sdb);
  conv_grads_ref(&k, x, p, dy, n, g, g + nw, dxw, sdx, dww, sdw, dbw, sdb);

  loom_plan *plan = given;
  if (!given)
    assert_int_equal(loom_backend_conv_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_p = upload(b, p, nw + d.cout), *d_y = upload(b, y, ny), *d_dy = upload(b, dy, ny),
        *d_dx = upload(b, dx, nx), *d_g = upload(b, g, nw + d.cout);
  assert_int_equal(loom_backend_conv_forward(b, plan, d_x, d_p, d.bias ? d_p + nw : NULL, d_y, n), 0);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, d_g, d.bias ? d_g + nw : NULL, d_dx, n), 0);
  download(b, y, d_y, ny), download(b, dx, d_dx, nx), download(b, g, d_g, nw + d.cout);
  /* Winograd's transforms round more than a dot product does, and in
   * proportion to a whole tile's values, not to one output's terms: its
   * scale is floored at the largest. */
  const double tol = (double)(d.cin * d.kh * d.kw + 8) * (d.algorithm == LOOM_CONV_IM2COL ? 1 : 8) * 0x1p-24;
  if (d.algorithm != LOOM_CONV_IM2COL) {
    double *scales[] = {scale, sdx, sdw}, top[3] = {0};
    const int64_t len[] = {ny, nx, nw};
    for (int s = 0; s < 3; s++) {
      for (int64_t i = 0; i < len[s]; i++)
        top[s] = fmax(top[s], scales[s][i]);
      for (int64_t i = 0; i < len[s]; i++)
        scales[s][i] += top[s];
    }
  }
  char what[160];
  snprintf(what, sizeof what,
           "%s conv c%lld %lldx%lld o%lld k%lldx%lld s%lldx%lld p%lldx%lld d%lldx%lld alg %d bias %d n %lld",
           loom_backend_name(b), (long long)d.cin, (long long)d.h, (long long)d.w, (long long)d.cout, (long long)d.kh,
           (long long)d.kw, (long long)d.sh, (long long)d.sw, (long long)d.ph, (long long)d.pw, (long long)d.dh,
           (long long)d.dw, (int)d.algorithm, d.bias, (long long)n);
  print_message("%s\n", what);
  close_all("conv forward", y, want, scale, ny, tol);
  close_all("conv backward dx", dx, dxw, sdx, nx, tol);
  close_all("conv backward dw", g, dww, sdw, nw, (double)(n * d.oh * d.ow + 8) * 8 * 0x1p-24);
  if (d.bias)
    close_all("conv backward dbias", g + nw, dbw, sdb, d.cout, (double)(n * d.oh * d.ow + 8) * 0x1p-24);
  /* Without parameter gradients and without dx: nothing written. */
  float *g2 = malloc((size_t)(nw + d.cout) * sizeof *g2);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, NULL, NULL, NULL, n), 0);
  download(b, g2, d_g, nw + d.cout);
  assert_memory_equal(g, g2, (size_t)(nw + d.cout) * sizeof *g);
  /* Frozen weights: dx alone, overwriting what was there (NaN). */
  for (int64_t i = 0; i < nx; i++)
    dx[i] = NAN;
  float *d_dx2 = upload(b, dx, nx);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, NULL, NULL, d_dx2, n), 0);
  download(b, dx, d_dx2, nx), download(b, g2, d_g, nw + d.cout);
  close_all("conv backward dx alone", dx, dxw, sdx, nx, tol);
  assert_memory_equal(g, g2, (size_t)(nw + d.cout) * sizeof *g);
  /* No input gradient (a first layer): the parameters' alone, added to
   * what the first backward left. */
  conv_grads_ref(&k, x, p, dy, n, g, g + nw, dxw, sdx, dww, sdw, dbw, sdb);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, d_g, d.bias ? d_g + nw : NULL, NULL, n), 0);
  download(b, g, d_g, nw + d.cout);
  close_all("conv backward dw alone", g, dww, sdw, nw, (double)(n * d.oh * d.ow + 8) * 8 * 0x1p-24);
  if (d.bias)
    close_all("conv backward dbias alone", g + nw, dbw, sdb, d.cout, (double)(n * d.oh * d.ow + 8) * 0x1p-24);
  loom_backend_free(b, d_dx2);
  if (!given)
    loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_p), loom_backend_free(b, d_y), loom_backend_free(b, d_dy),
      loom_backend_free(b, d_dx), loom_backend_free(b, d_g);
  free(x), free(p), free(y), free(dy), free(dx), free(g), free(g2), free(xd), free(pd), free(want), free(scale);
  free(dxw), free(sdx), free(dww), free(sdw), free(dbw), free(sdb);
}

static void test_conv(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* cin, h, w, cout, kernel, stride, padding, dilation; im2col and, where
   * it applies, Winograd (odd sizes: partial tiles), and AUTO between 8
   * and 8 channels (Winograd on the CPU). */
  static const loom_conv_desc shapes[] = {
      {.cin = 3, .h = 7, .w = 6, .cout = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1},
      {.cin = 2, .h = 9, .w = 8, .cout = 3, .kh = 3, .kw = 2, .sh = 2, .sw = 1, .ph = 1, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 3, .h = 10, .w = 11, .cout = 2, .kh = 3, .kw = 3, .sh = 1, .sw = 2, .ph = 2, .pw = 2, .dh = 2, .dw = 2},
      {.cin = 1, .h = 5, .w = 5, .cout = 2, .kh = 5, .kw = 5, .sh = 1, .sw = 1, .ph = 0, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 3, .h = 5, .w = 7, .cout = 2, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 0, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 8, .h = 6, .w = 7, .cout = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1},
  };
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int alg = LOOM_CONV_AUTO; alg <= LOOM_CONV_WINOGRAD; alg++) {
        loom_conv_desc d = shapes[s];
        const bool wino_applies = d.kh == 3 && d.kw == 3 && d.sh == 1 && d.sw == 1 && d.dh == 1 && d.dw == 1;
        if (alg == LOOM_CONV_WINOGRAD && !wino_applies)
          continue;
        d.algorithm = (loom_conv_algorithm)alg;
        d.bias = s % 2 == 0;
        check_conv(b[i], d, NULL, s % 2 ? 5 : 3); /* 5 samples: parts of uneven size, Winograd's chunk and a remainder */
      }
  /* A plan the backend cannot run is refused with a reason. */
  loom_conv_desc bad = shapes[1];
  bad.algorithm = LOOM_CONV_WINOGRAD;
  bad.oh = 5, bad.ow = 7;
  loom_plan *plan = (loom_plan *)&bad;
  assert_int_equal(loom_backend_conv_plan(loom_backend_cpu(), &bad, &plan), LOOM_EINVAL);
  assert_null(plan);
  assert_non_null(strstr(loom_last_error(), "Winograd"));
}

/* Plans of one shape and one plan over several batch sizes: on CUDA,
 * the algorithms searched once per shape and batch size, found again in
 * the process's cache by a later plan (test_conv has searched the first
 * of these) and by a plan that comes back to a batch size. */
static void test_conv_shapes_again(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  const loom_conv_desc d = {.cin = 8, .h = 6, .w = 7, .cout = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1,
                            .dh = 1, .dw = 1, .oh = 6, .ow = 7, .algorithm = LOOM_CONV_AUTO};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD); i < nb; i++) {
    loom_plan *first, *second;
    assert_int_equal(loom_backend_conv_plan(b[i], &d, &first), 0);
    assert_int_equal(loom_backend_conv_plan(b[i], &d, &second), 0);
    check_conv(b[i], d, first, 5);
    check_conv(b[i], d, first, 2); /* a second batch size */
    check_conv(b[i], d, first, 5); /* back to the first */
    check_conv(b[i], d, second, 2);
    check_conv(b[i], d, second, 5);
    loom_backend_plan_destroy(b[i], first);
    loom_backend_plan_destroy(b[i], second);
  }
}

/* --- pooling --- */

/* Forward and backward in double: a max takes its window's first greatest
 * value, or its last NaN; an average divides by k^2 (padding counted). */
static void pool_ref(const loom_pool_desc *d, int64_t n, const float *x, const float *dy, double *y, double *dx) {
  const int64_t hw = d->h * d->w, ohw = d->oh * d->ow;
  for (int64_t i = 0; i < n * d->c * hw; i++)
    dx[i] = 0;
  for (int64_t q = 0; q < n * d->c; q++) {
    const float *in = x + q * hw;
    if (d->mode == LOOM_POOL_GLOBAL_AVG) {
      double s = 0;
      for (int64_t j = 0; j < hw; j++)
        s += in[j];
      y[q] = s / (double)hw;
      for (int64_t j = 0; j < hw; j++)
        dx[q * hw + j] = dy[q] / (double)hw;
      continue;
    }
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++) {
        double best = -INFINITY, sum = 0;
        int64_t at = -1;
        for (int64_t ky = 0; ky < d->k; ky++)
          for (int64_t kx = 0; kx < d->k; kx++) {
            int64_t iy = oy * d->s - d->p + ky, ix = ox * d->s - d->p + kx;
            if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w)
              continue;
            const double v = in[iy * d->w + ix];
            sum += v;
            if (at < 0 || v > best || isnan(v))
              best = v, at = iy * d->w + ix;
          }
        const int64_t o = q * ohw + oy * d->ow + ox;
        y[o] = d->mode == LOOM_POOL_MAX ? best : sum / (double)(d->k * d->k);
        if (d->mode == LOOM_POOL_MAX) {
          dx[q * hw + at] += dy[o];
          continue;
        }
        for (int64_t ky = 0; ky < d->k; ky++)
          for (int64_t kx = 0; kx < d->k; kx++) {
            int64_t iy = oy * d->s - d->p + ky, ix = ox * d->s - d->p + kx;
            if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
              dx[q * hw + iy * d->w + ix] += dy[o] / (double)(d->k * d->k);
          }
      }
  }
}

static void check_pool(loom_backend *b, loom_pool_desc d, int64_t n) {
  if (d.mode == LOOM_POOL_GLOBAL_AVG)
    d.oh = d.ow = 1;
  else
    d.oh = (d.h + 2 * d.p - d.k) / d.s + 1, d.ow = (d.w + 2 * d.p - d.k) / d.s + 1;
  const int64_t nx = n * d.c * d.h * d.w, ny = n * d.c * d.oh * d.ow;
  float *x = malloc((size_t)nx * sizeof *x), *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx);
  double *want = malloc((size_t)ny * sizeof *want), *dwant = malloc((size_t)nx * sizeof *dwant);
  fill(x, nx, 19), fill(dy, ny, 20);
  if (d.mode == LOOM_POOL_MAX)
    x[nx / 2] = NAN; /* its window's max, and its gradient */
  pool_ref(&d, n, x, dy, want, dwant);
  loom_plan *plan;
  assert_int_equal(loom_backend_pool_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_y = upload(b, y, ny), *d_dy = upload(b, dy, ny), *d_dx = upload(b, dx, nx);
  assert_int_equal(loom_backend_pool_forward(b, plan, d_x, d_y, n), 0);
  assert_int_equal(loom_backend_pool_backward(b, plan, d_dy, d_dx, n), 0);
  download(b, y, d_y, ny), download(b, dx, d_dx, nx);
  char what[96];
  snprintf(what, sizeof what, "%s pool %d c%lld %lldx%lld k%lld s%lld p%lld", loom_backend_name(b), (int)d.mode,
           (long long)d.c, (long long)d.h, (long long)d.w, (long long)d.k, (long long)d.s, (long long)d.p);
  print_message("%s\n", what);
  close_all("pool forward", y, want, NULL, ny, d.mode == LOOM_POOL_MAX ? 0.0 : 1e-6);
  close_all("pool backward", dx, dwant, NULL, nx, 1e-6);
  loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

static void test_pool(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* mode, c, h, w, _, _, k, s, p: 2x2 stride 2 (the CPU's short rows and
   * its 8-wide chunks), overlapping windows with padding, averages, the
   * global average */
  static const loom_pool_desc shapes[] = {
      {LOOM_POOL_MAX, 3, 6, 6, 0, 0, 2, 2, 0},       {LOOM_POOL_MAX, 2, 4, 18, 0, 0, 2, 2, 0},
      {LOOM_POOL_MAX, 2, 7, 5, 0, 0, 3, 2, 1},       {LOOM_POOL_MAX, 1, 5, 5, 0, 0, 3, 1, 1},
      {LOOM_POOL_AVG, 3, 6, 6, 0, 0, 2, 2, 0},       {LOOM_POOL_AVG, 2, 7, 5, 0, 0, 3, 2, 1},
      {LOOM_POOL_GLOBAL_AVG, 4, 5, 3, 0, 0, 1, 1, 0}, {LOOM_POOL_GLOBAL_AVG, 2, 1, 1, 0, 0, 1, 1, 0},
  };
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_POOL_FORWARD, LOOM_OP_POOL_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      check_pool(b[i], shapes[s], 3);
}

/* --- BatchNorm --- */

/* Training or evaluation forward and backward in double: y, the running
 * statistics after, dx (through the batch statistics in training), and
 * dgamma, dbeta added to g0. */
static void batchnorm_ref(const loom_batchnorm_desc *d, bool train, int64_t n, const float *x, const float *p,
                          const float *run, const float *dy, const float *g0, double *y, double *run_after, double *dx,
                          double *g) {
  const int64_t C = d->c, S = d->spatial, M = n * S;
  for (int64_t c = 0; c < C; c++) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++)
        mean += x[(i * C + c) * S + s];
    mean /= (double)M;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++)
        var += (x[(i * C + c) * S + s] - mean) * (x[(i * C + c) * S + s] - mean);
    var /= (double)M;
    run_after[c] = train ? (1 - d->momentum) * run[c] + d->momentum * mean : run[c];
    run_after[C + c] = train ? (1 - d->momentum) * run[C + c] + d->momentum * var * (double)M / (double)(M - 1)
                             : run[C + c];
    if (!train)
      mean = run[c], var = run[C + c];
    const double invstd = 1 / sqrt(var + d->eps), gamma = p[c];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++) {
        const int64_t k = (i * C + c) * S + s;
        const double xhat = (x[k] - mean) * invstd;
        y[k] = gamma * xhat + p[C + c];
        sum_dy += dy[k], sum_dy_xhat += dy[k] * xhat;
      }
    g[c] = g0[c] + sum_dy_xhat, g[C + c] = g0[C + c] + sum_dy;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++) {
        const int64_t k = (i * C + c) * S + s;
        const double xhat = (x[k] - mean) * invstd;
        dx[k] = train ? gamma * invstd * (dy[k] - sum_dy / (double)M - xhat * sum_dy_xhat / (double)M)
                      : gamma * invstd * dy[k];
      }
  }
}

static void check_batchnorm(loom_backend *b, loom_batchnorm_desc d, int64_t n, bool train) {
  const int64_t C = d.c, nx = n * C * d.spatial;
  float *x = malloc((size_t)nx * sizeof *x), *y = malloc((size_t)nx * sizeof *y), *dy = malloc((size_t)nx * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx), p[2 * 8], run[2 * 8], g[2 * 8];
  double *want = malloc((size_t)nx * sizeof *want), *dwant = malloc((size_t)nx * sizeof *dwant), run_want[2 * 8],
         g_want[2 * 8];
  fill(x, nx, 21), fill(dy, nx, 22), fill(p, 2 * C, 23), fill(run, 2 * C, 24), fill(g, 2 * C, 25);
  for (int64_t i = 0; i < nx; i++)
    x[i] = 3.0f * x[i] + (float)(i / d.spatial % C); /* channels of different means */
  for (int64_t c = 0; c < C; c++)
    p[c] += 1.5f, run[C + c] = 0.5f + fabsf(run[C + c]); /* gamma away from 0, a positive variance */
  batchnorm_ref(&d, train, n, x, p, run, dy, g, want, run_want, dwant, g_want);
  loom_plan *plan;
  assert_int_equal(loom_backend_batchnorm_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_y = upload(b, y, nx), *d_dy = upload(b, dy, nx), *d_dx = upload(b, dx, nx),
        *d_p = upload(b, p, 2 * C), *d_run = upload(b, run, 2 * C), *d_g = upload(b, g, 2 * C);
  assert_int_equal(loom_backend_batchnorm_forward(b, plan, train, d_x, d_p, d_p + C, d_run, d_run + C, d_y, n), 0);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, d_g, d_g + C, d_dx, n), 0);
  download(b, y, d_y, nx), download(b, dx, d_dx, nx), download(b, run, d_run, 2 * C), download(b, g, d_g, 2 * C);
  print_message("%s batchnorm c%lld spatial %lld n%lld train %d\n", loom_backend_name(b), (long long)C,
                (long long)d.spatial, (long long)n, train);
  close_all("batchnorm forward", y, want, NULL, nx, 1e-5);
  close_all("batchnorm running statistics", run, run_want, NULL, 2 * C, 1e-6);
  close_all("batchnorm backward dx", dx, dwant, NULL, nx, 1e-4);
  close_all("batchnorm backward dgamma, dbeta", g, g_want, NULL, 2 * C, (double)nx * 1e-6);
  /* Frozen gamma and beta: dx alone, overwriting what was there (NaN). */
  float g_before[2 * 8];
  for (int64_t i = 0; i < nx; i++)
    dx[i] = NAN;
  float *d_dx2 = upload(b, dx, nx);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, NULL, NULL, d_dx2, n), 0);
  download(b, dx, d_dx2, nx), download(b, g_before, d_g, 2 * C);
  close_all("batchnorm backward dx alone", dx, dwant, NULL, nx, 1e-4);
  assert_memory_equal(g, g_before, 2 * (size_t)C * sizeof *g);
  /* No input gradient: dgamma and dbeta alone, added to the first
   * backward's (the reference from those). */
  batchnorm_ref(&d, train, n, x, p, run, dy, g_before, want, run_want, dwant, g_want);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, d_g, d_g + C, NULL, n), 0);
  download(b, g, d_g, 2 * C);
  close_all("batchnorm backward dgamma, dbeta alone", g, g_want, NULL, 2 * C, (double)nx * 1e-6);
  loom_backend_free(b, d_dx2);
  loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx),
      loom_backend_free(b, d_p), loom_backend_free(b, d_run), loom_backend_free(b, d_g);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

static void test_batchnorm(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* [C] samples (BatchNorm1d), planes shorter and longer than 8 lanes */
  static const loom_batchnorm_desc shapes[] = {{3, 1, 1e-5f, 0.1f}, {2, 5, 1e-5f, 0.1f}, {4, 37, 1e-3f, 0.3f}};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_BATCHNORM_FORWARD, LOOM_OP_BATCHNORM_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int train = 0; train < 2; train++)
        check_batchnorm(b[i], shapes[s], shapes[s].spatial == 1 ? 16 : 4, train);
}

/* --- blocks --- */

/* A block against its layers run one by one through the backend's own ops:
 * outputs, gradients and running statistics bit for bit. Layers: [Conv2d]
 * BatchNorm [ReLU] [pool]. `first`: the block's backward from that layer
 * (1: the convolution frozen and below the lowest trainable layer). */
typedef struct block_case {
  bool conv, relu;
  int pool; /* -1: none, else a loom_pool_mode */
  loom_conv_algorithm algorithm;
  int first;
} block_case;

static void check_block(loom_backend *b, block_case bc, bool train) {
  const int64_t n = 3, cin = 2, C = 3, H = 6, W = 6, S = H * W;
  loom_conv_desc cd = {.cin = cin, .h = H, .w = W, .cout = C, .oh = H, .ow = W, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                       .ph = 1, .pw = 1, .dh = 1, .dw = 1, .bias = true, .algorithm = bc.algorithm};
  loom_pool_desc pd = {.mode = (loom_pool_mode)(bc.pool < 0 ? 0 : bc.pool), .c = C, .h = H, .w = W, .oh = 3, .ow = 3,
                       .k = 2, .s = 2};
  if (pd.mode == LOOM_POOL_GLOBAL_AVG)
    pd.oh = pd.ow = 1;
  loom_layer_desc layers[4];
  int count = 0, conv = -1, relu = -1, pool = -1;
  if (bc.conv)
    layers[conv = count++] = (loom_layer_desc){.kind = LOOM_LAYER_CONV, .conv = cd};
  const int bn = count++;
  layers[bn] = (loom_layer_desc){.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {C, S, 1e-5f, 0.1f}};
  if (bc.relu)
    layers[relu = count++] = (loom_layer_desc){.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}};
  if (bc.pool >= 0)
    layers[pool = count++] = (loom_layer_desc){.kind = LOOM_LAYER_POOL, .pool = pd};
  loom_block block;
  assert_int_equal(loom_backend_plan_block(b, layers, count, &block), 0);
  if (block.count < 2) { /* the backend fuses none of these: nothing to compare */
    assert_null(block.plan);
    return;
  }
  assert_int_equal(block.count, count);
  assert_true(block.kept >> (count - 1) & 1);

  const int64_t in_c = bc.conv ? cin : C, nx = n * in_c * S, nc = n * C * S, ny = n * C * pd.oh * pd.ow;
  const int64_t nw = C * cin * 9, np = bc.conv ? nw + C : 0, nout = bc.pool >= 0 ? ny : nc;
  float *x = malloc((size_t)nx * sizeof *x), *dout = malloc((size_t)nout * sizeof *dout), cp[64], bnp[6], run[6];
  fill(x, nx, 26), fill(dout, nout, 27), fill(cp, np, 28), fill(bnp, 6, 29), fill(run, 6, 30);
  for (int c = 0; c < 3; c++)
    run[3 + c] = 0.5f + fabsf(run[3 + c]);
  /* Both runs: a, the layers apart; b, the block. Buffers: per layer
   * output and its gradient, the parameters' gradients, running stats. */
  float *h_out[2], *h_dx[2], *h_conv_y[2], *h_conv_dy[2], h_cg[2][64], h_bg[2][6], h_run[2][6];
  float *d_x = upload(b, x, nx), *d_dout = upload(b, dout, nout), *d_cp = upload(b, cp, np > 0 ? np : 1),
        *d_bnp = upload(b, bnp, 6);
  for (int run_k = 0; run_k < 2; run_k++) {
    float *zeros = calloc((size_t)(nc > nx ? nc : nx), sizeof *zeros);
    float *d_run = upload(b, run, 6), *d_cg = upload(b, zeros, np > 0 ? np : 1), *d_bg = upload(b, zeros, 6);
    float *d_cy = upload(b, zeros, nc), *d_cdy = upload(b, zeros, nc), *d_bny = upload(b, zeros, nc),
          *d_bndy = upload(b, zeros, nc), *d_ry = upload(b, zeros, nc), *d_rdy = upload(b, zeros, nc),
          *d_py = upload(b, zeros, ny), *d_dx = upload(b, zeros, nx);
    const float *bn_in = bc.conv ? d_cy : d_x;
    float *out = bc.pool >= 0 ? d_py : bc.relu ? d_ry : d_bny;
    float *dx = bc.first == 0 ? d_dx : NULL;
    if (run_k == 0) {
      loom_plan *cplan = NULL, *bplan = NULL, *pplan = NULL;
      if (bc.conv) {
        assert_int_equal(loom_backend_conv_plan(b, &cd, &cplan), 0);
        assert_int_equal(loom_backend_conv_forward(b, cplan, d_x, d_cp, d_cp + nw, d_cy, n), 0);
      }
      assert_int_equal(loom_backend_batchnorm_plan(b, &layers[bn].batchnorm, &bplan), 0);
      assert_int_equal(loom_backend_batchnorm_forward(b, bplan, train, bn_in, d_bnp, d_bnp + 3, d_run, d_run + 3,
                                                      d_bny, n), 0);
      if (bc.relu)
        assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_RELU, 0, d_bny, d_ry, nc), 0);
      if (bc.pool >= 0) {
        assert_int_equal(loom_backend_pool_plan(b, &pd, &pplan), 0);
        assert_int_equal(loom_backend_pool_forward(b, pplan, bc.relu ? d_ry : d_bny, d_py, n), 0);
        assert_int_equal(loom_backend_pool_backward(b, pplan, d_dout, bc.relu ? d_rdy : d_bndy, n), 0);
      }
      const float *g = bc.pool >= 0 ? (bc.relu ? d_rdy : d_bndy) : d_dout;
      if (bc.relu) {
        assert_int_equal(loom_backend_act_backward(b, LOOM_ACT_RELU, 0, d_bny, d_ry, g, d_bndy, nc), 0);
        g = d_bndy;
      }
      assert_int_equal(loom_backend_batchnorm_backward(b, bplan, bn_in, d_bnp, d_bnp + 3, g, d_bg, d_bg + 3,
                                                       bc.conv ? (bc.first == 0 ? d_cdy : NULL) : dx, n), 0);
      if (bc.conv && bc.first == 0)
        assert_int_equal(loom_backend_conv_backward(b, cplan, d_x, d_cp, d_cdy, d_cg, d_cg + nw, dx, n), 0);
      loom_backend_plan_destroy(b, cplan), loom_backend_plan_destroy(b, bplan), loom_backend_plan_destroy(b, pplan);
    } else {
      loom_block_io io[4] = {{0}};
      if (bc.conv)
        io[conv] = (loom_block_io){.params = d_cp, .grads = bc.first == 0 ? d_cg : NULL, .y = d_cy, .dy = d_cdy};
      io[bn] = (loom_block_io){.params = d_bnp, .grads = d_bg, .buffers = d_run};
      if (bc.relu)
        io[relu] = (loom_block_io){0};
      if (bc.pool >= 0)
        io[pool] = (loom_block_io){0};
      for (int k = 0; k < count; k++)
        if (!(block.kept >> k & 1))
          io[k].y = io[k].dy = NULL; /* never touched */
      io[count - 1].y = out, io[count - 1].dy = d_dout;
      assert_int_equal(loom_backend_block_forward(b, block.plan, train, d_x, io, n), 0);
      assert_int_equal(loom_backend_block_backward(b, block.plan, bc.first, d_x, io, dx, n), 0);
    }
    h_out[run_k] = malloc((size_t)nout * sizeof(float)), h_dx[run_k] = malloc((size_t)nx * sizeof(float));
    h_conv_y[run_k] = malloc((size_t)nc * sizeof(float)), h_conv_dy[run_k] = malloc((size_t)nc * sizeof(float));
    download(b, h_out[run_k], out, nout), download(b, h_dx[run_k], d_dx, nx);
    download(b, h_conv_y[run_k], d_cy, nc), download(b, h_conv_dy[run_k], d_cdy, nc);
    if (np)
      download(b, h_cg[run_k], d_cg, np);
    download(b, h_bg[run_k], d_bg, 6), download(b, h_run[run_k], d_run, 6);
    float *all[] = {d_run, d_cg, d_bg, d_cy, d_cdy, d_bny, d_bndy, d_ry, d_rdy, d_py, d_dx};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      loom_backend_free(b, all[k]);
    free(zeros);
  }
  print_message("%s block conv %d (alg %d) relu %d pool %d first %d train %d: %d layers\n", loom_backend_name(b),
                bc.conv, (int)bc.algorithm, bc.relu, bc.pool, bc.first, train, block.count);
  assert_memory_equal(h_out[0], h_out[1], (size_t)nout * sizeof(float));
  assert_memory_equal(h_dx[0], h_dx[1], (size_t)nx * sizeof(float));
  assert_memory_equal(h_conv_y[0], h_conv_y[1], (size_t)nc * sizeof(float));
  assert_memory_equal(h_conv_dy[0], h_conv_dy[1], (size_t)nc * sizeof(float));
  if (np)
    assert_memory_equal(h_cg[0], h_cg[1], (size_t)np * sizeof(float));
  assert_memory_equal(h_bg[0], h_bg[1], sizeof h_bg[0]);
  assert_memory_equal(h_run[0], h_run[1], sizeof h_run[0]);
  loom_backend_plan_destroy(b, block.plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_dout), loom_backend_free(b, d_cp), loom_backend_free(b, d_bnp);
  for (int k = 0; k < 2; k++)
    free(h_out[k]), free(h_dx[k]), free(h_conv_y[k]), free(h_conv_dy[k]);
  free(x), free(dout);
}

static void test_block(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const block_case cases[] = {
      {.conv = true, .relu = true, .pool = LOOM_POOL_MAX, .algorithm = LOOM_CONV_IM2COL},
      {.conv = true, .relu = true, .pool = LOOM_POOL_MAX, .algorithm = LOOM_CONV_WINOGRAD},
      {.conv = true, .relu = false, .pool = -1, .algorithm = LOOM_CONV_IM2COL},
      {.conv = true, .relu = true, .pool = -1, .algorithm = LOOM_CONV_WINOGRAD},
      {.conv = true, .relu = true, .pool = LOOM_POOL_AVG, .algorithm = LOOM_CONV_IM2COL, .first = 1},
      {.conv = false, .relu = true, .pool = -1},
      {.conv = false, .relu = false, .pool = LOOM_POOL_MAX},
      {.conv = false, .relu = true, .pool = LOOM_POOL_GLOBAL_AVG},
  };
  /* a block is checked against its layers run one by one */
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_BLOCK, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD, LOOM_OP_POOL_FORWARD,
                                   LOOM_OP_POOL_BACKWARD, LOOM_OP_BATCHNORM_FORWARD, LOOM_OP_BATCHNORM_BACKWARD,
                                   LOOM_OP_ACT_FORWARD, LOOM_OP_ACT_BACKWARD);
       i < nb; i++)
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
      for (int train = 1; train >= 0; train--)
        check_block(b[i], cases[c], train);
  /* What the CPU backend fuses, from the first layer given. */
  loom_layer_desc l[3] = {{.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}},
                          {.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {3, 4, 1e-5f, 0.1f}},
                          {.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_TANH, 0}}};
  loom_block block;
  assert_int_equal(loom_backend_plan_block(loom_backend_cpu(), l, 3, &block), 0);
  assert_int_equal(block.count, 0); /* a ReLU opens no block */
  assert_int_equal(loom_backend_plan_block(loom_backend_cpu(), l + 1, 2, &block), 0);
  assert_int_equal(block.count, 0); /* BatchNorm takes a ReLU, not a Tanh */
  assert_null(block.plan);
}

/* --- the optimizers' updates and the gradients' whole-buffer ops --- */

/* n parameters, gradients and state (zero, or a previous step's) through
 * one update on the backend; the same formulas in double, step by step. */
static void check_updates(loom_backend *b, int64_t n) {
  float *p = malloc((size_t)n * sizeof *p), *g = malloc((size_t)n * sizeof *g),
        *s = malloc((size_t)(3 * n) * sizeof *s), *out = malloc((size_t)n * sizeof *out),
        *sout = malloc((size_t)(3 * n) * sizeof *sout);
  double *want = malloc((size_t)n * sizeof *want), *swant = malloc((size_t)(3 * n) * sizeof *swant);
  fill(p, n, 20), fill(g, n, 21), fill(s, 3 * n, 22);
  for (int64_t i = n; i < 3 * n; i++) /* second moments are squares */
    s[i] = s[i] * s[i];
  char what[96];
  for (int variant = 0; variant < 4; variant++) {
    /* SGD: momentum with dampening (not the first step), and Nesterov on the first */
    loom_sgd_step sg = {0.1, 0.01, 0.9, variant ? 0.0 : 0.25, variant == 1, variant == 1, NULL};
    for (int64_t i = 0; i < n; i++) {
      double d = (double)g[i] + sg.weight_decay * p[i];
      double buf = sg.first ? d : sg.momentum * s[i] + (1 - sg.dampening) * d;
      swant[i] = buf;
      want[i] = p[i] - sg.lr * (sg.nesterov ? d + sg.momentum * buf : buf);
    }
    float *dp = upload(b, p, n), *dg = upload(b, g, n), *ds = upload(b, s, 3 * n);
    assert_int_equal(loom_backend_sgd_update(b, &sg, dp, dg, ds, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s sgd_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-5);
    close_all(what, sout, swant, NULL, n, 1e-5);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);

    /* Adam (variant 0, 2) and AdamW (1, 3), at steps 1 and 7 */
    loom_adam_step ad = {1e-2, 0.1, 0.9, 0.999, 1e-8, variant < 2 ? 1 : 7, variant % 2 == 1, NULL};
    for (int64_t i = 0; i < n; i++) {
      double gi = (double)g[i] + (ad.decoupled ? 0 : ad.weight_decay * p[i]);
      double pi = p[i] * (ad.decoupled ? 1 - ad.lr * ad.weight_decay : 1);
      double m = ad.beta1 * s[i] + (1 - ad.beta1) * gi, v = ad.beta2 * s[n + i] + (1 - ad.beta2) * gi * gi;
      double bc1 = 1 - pow(ad.beta1, (double)ad.step), bc2 = 1 - pow(ad.beta2, (double)ad.step);
      swant[i] = m, swant[n + i] = v;
      want[i] = pi - ad.lr / bc1 * m / (sqrt(v) / sqrt(bc2) + ad.eps);
    }
    dp = upload(b, p, n), dg = upload(b, g, n), ds = upload(b, s, 3 * n);
    assert_int_equal(loom_backend_adam_update(b, &ad, dp, dg, ds, ds + n, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s adam_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-4);
    close_all(what, sout, swant, NULL, 2 * n, 1e-5);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);

    /* RMSprop: plain, centered, with momentum, both; a state [v | b | c]
     * with v - c^2 well away from 0, as a mean square and a mean give */
    loom_rmsprop_step rm = {1e-2, 0.01, 0.99, 1e-8, variant >= 2 ? 0.9 : 0.0, variant % 2 == 1, NULL};
    float *rs = malloc((size_t)(3 * n) * sizeof *rs);
    for (int64_t i = 0; i < n; i++)
      rs[i] = s[n + i] + 0.5f, rs[n + i] = s[i], rs[2 * n + i] = 0.3f * s[2 * n + i];
    for (int64_t i = 0; i < n; i++) {
      double gi = (double)g[i] + rm.weight_decay * p[i];
      double v = rm.alpha * rs[i] + (1 - rm.alpha) * gi * gi, c = rs[2 * n + i], buf = rs[n + i];
      if (rm.centered)
        c = rm.alpha * c + (1 - rm.alpha) * gi;
      double denom = sqrt(rm.centered ? v - c * c : v) + rm.eps;
      if (rm.momentum > 0)
        buf = rm.momentum * buf + gi / denom;
      swant[i] = v, swant[n + i] = buf, swant[2 * n + i] = c;
      want[i] = p[i] - rm.lr * (rm.momentum > 0 ? buf : gi / denom);
    }
    dp = upload(b, p, n), dg = upload(b, g, n), ds = upload(b, rs, 3 * n);
    free(rs);
    assert_int_equal(loom_backend_rmsprop_update(b, &rm, dp, dg, ds, ds + n, ds + 2 * n, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s rmsprop_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-4);
    close_all(what, sout, swant, NULL, 3 * n, 1e-4);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);
  }
  free(p), free(g), free(s), free(out), free(sout), free(want), free(swant);
}

static void test_optimizer_updates(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 33, 40000}; /* 40000: the pooled path */
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE, LOOM_OP_RMSPROP_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_updates(b[i], sizes[k]);
}

/* update_ranges (one launch on a device) against the rule's own op on the
 * CPU, range by range with each range's rate and decay: the same bits;
 * parameters and state between the ranges untouched; a set gate holds
 * the whole step back; ranges out of order refused. */
static void check_update_ranges(loom_backend *b, int64_t total) {
  const loom_update_range ranges[] = {{0, total / 4, 0.1, 0.01},
                                      {total / 4, total / 8, 0.05, 0.0},
                                      {total / 2, total / 4, 0.2, 0.001}, /* a gap before: a frozen layer */
                                      {total - total / 8, total / 8, 0.01, 0.0}};
  const int nr = 4;
  float *p = malloc((size_t)total * sizeof *p), *g = malloc((size_t)total * sizeof *g),
        *st = malloc((size_t)(3 * total) * sizeof *st), *want = malloc((size_t)(4 * total) * sizeof *want),
        *got = malloc((size_t)(4 * total) * sizeof *got);
  fill(p, total, 40), fill(g, total, 41), fill(st, 3 * total, 42);
  for (int64_t i = 0; i < 3 * total; i++)
    st[i] = fabsf(st[i]) + 0.25f; /* second moments, and v - c^2 > 0 */
  for (int rule = 0; rule < 3; rule++) {
    loom_update_step s = {.rule = (loom_update_rule)rule};
    if (rule == LOOM_RULE_SGD)
      s.u.sgd = (loom_sgd_step){0, 0, 0.9, 0.1, false, false, NULL};
    else if (rule == LOOM_RULE_ADAM)
      s.u.adam = (loom_adam_step){0, 0, 0.9, 0.999, 1e-8, 5, true, NULL};
    else
      s.u.rmsprop = (loom_rmsprop_step){0, 0, 0.99, 1e-8, 0.9, true, NULL};
    const int arrays = rule + 1;
    /* the reference: the CPU's own op per range, on host copies */
    memcpy(want, p, (size_t)total * sizeof *p), memcpy(want + total, st, (size_t)(arrays * total) * sizeof *st);
    for (int r = 0; r < nr; r++) {
      const int64_t o = ranges[r].off, n = ranges[r].len;
      float *wp = want + o, *ws = want + total;
      if (rule == LOOM_RULE_SGD) {
        loom_sgd_step k = s.u.sgd;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_sgd_update(loom_backend_cpu(), &k, wp, g + o, ws + o, n), 0);
      } else if (rule == LOOM_RULE_ADAM) {
        loom_adam_step k = s.u.adam;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_adam_update(loom_backend_cpu(), &k, wp, g + o, ws + o, ws + total + o, n), 0);
      } else {
        loom_rmsprop_step k = s.u.rmsprop;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_rmsprop_update(loom_backend_cpu(), &k, wp, g + o, ws + o, ws + total + o,
                                                     ws + 2 * total + o, n),
                         0);
      }
    }
    for (int gated = 0; gated < 2; gated++) {
      float *dp = upload(b, p, total), *dg = upload(b, g, total), *ds = upload(b, st, arrays * total);
      int *gate = loom_backend_alloc(b, sizeof *gate), one = 1;
      assert_non_null(gate);
      assert_int_equal(loom_backend_from_host(b, gate, gated ? &one : &(int){0}, sizeof one), 0);
      loom_backend_set_update_gate(b, gate);
      assert_int_equal(loom_backend_update_ranges(b, &s, ranges, nr, dp, dg, ds, total), 0);
      loom_backend_set_update_gate(b, NULL);
      download(b, got, dp, total), download(b, got + total, ds, arrays * total);
      const size_t bytes = (size_t)((1 + arrays) * total) * sizeof *got;
      if (gated ? memcmp(got, p, (size_t)total * sizeof *p) || memcmp(got + total, st, bytes - (size_t)total * sizeof *p)
                : memcmp(got, want, bytes))
        fail_msg("%s update_ranges rule %d total %lld gated %d: not %s", loom_backend_name(b), rule, (long long)total,
                 gated, gated ? "held back" : "the ops' range by range");
      loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds), loom_backend_free(b, gate);
    }
    assert_true(memcmp(want, p, (size_t)total * sizeof *p) != 0);
  }
  const loom_update_range backwards[] = {{total / 2, 1, 0.1, 0}, {0, 1, 0.1, 0}};
  loom_update_step s = {LOOM_RULE_SGD, .u.sgd = {0, 0, 0, 0, false, false, NULL}};
  float *dp = upload(b, p, total), *dg = upload(b, g, total);
  assert_int_equal(loom_backend_update_ranges(b, &s, backwards, 2, dp, dg, NULL, total), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "not sorted"));
  loom_backend_free(b, dp), loom_backend_free(b, dg);
  free(p), free(g), free(st), free(want), free(got);
}

static void test_update_ranges(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {8, 1000, 100003};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE, LOOM_OP_RMSPROP_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_update_ranges(b[i], sizes[k]);
}

static void test_gradient_ops(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 100000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SUM_SQUARES, LOOM_OP_ALL_FINITE, LOOM_OP_SCALE, LOOM_OP_CLAMP); i < nb;
       i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      const int64_t n = sizes[k];
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
      double *want = malloc((size_t)n * sizeof *want);
      fill(x, n, 23);
      double sum_ref = 0;
      for (int64_t j = 0; j < n; j++)
        sum_ref += (double)x[j] * x[j];
      float *d = upload(b[i], x, n);
      double sum = 0;
      assert_int_equal(loom_backend_sum_squares(b[i], d, n, &sum), 0);
      assert_true(fabs(sum - sum_ref) <= 1e-12 * (sum_ref + 1));
      bool finite = false;
      assert_int_equal(loom_backend_all_finite(b[i], d, n, &finite), 0);
      assert_true(finite);
      assert_int_equal(loom_backend_scale(b[i], d, -2.5f, n), 0);
      download(b[i], y, d, n);
      for (int64_t j = 0; j < n; j++)
        want[j] = (double)(x[j] * -2.5f);
      close_all("scale", y, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_clamp(b[i], d, 1.0f, n), 0);
      download(b[i], y, d, n);
      for (int64_t j = 0; j < n; j++)
        want[j] = fmin(1.0, fmax(-1.0, (double)(x[j] * -2.5f)));
      close_all("clamp", y, want, NULL, n, 0.0);
      /* one Inf, then one NaN, anywhere: the first element, the middle, the
       * last (the vector loop's and the scalar remainder's) */
      static const float bad[] = {INFINITY, -INFINITY, NAN};
      const int64_t at[] = {0, n / 2, n - 1};
      for (size_t v = 0; v < 3; v++)
        for (size_t w = 0; w < 3; w++) {
          const float kept = x[at[w]];
          x[at[w]] = bad[v];
          float *e = upload(b[i], x, n);
          assert_int_equal(loom_backend_all_finite(b[i], e, n, &finite), 0);
          assert_false(finite);
          loom_backend_free(b[i], e);
          x[at[w]] = kept;
        }
      loom_backend_free(b[i], d);
      free(x), free(y), free(want);
    }
}

/* The deferred step's gate: flag_nonfinite sets it for any non-finite
 * float or double and never clears it; an update with a set gate (in the
 * step, or the backend's) writes nothing, one with a clear gate is the
 * ungated update, bit for bit. */
static void check_gate(loom_backend *b, int64_t n) {
  float *x = malloc((size_t)n * sizeof *x), *s = malloc((size_t)(2 * n) * sizeof *s),
        *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)(2 * n) * sizeof *got);
  fill(x, n, 30), fill(s, 2 * n, 31);
  for (int64_t i = n; i < 2 * n; i++)
    s[i] = s[i] * s[i];
  const double sums_host[2] = {1.5, 4.0};
  float *dx = upload(b, x, n);
  double *dd = loom_backend_alloc(b, 2 * sizeof *dd);
  int *flag = loom_backend_alloc(b, sizeof *flag), host = -1, one = 1;
  assert_non_null(dd), assert_non_null(flag);
  assert_int_equal(loom_backend_from_host(b, dd, sums_host, sizeof sums_host), 0);
  assert_int_equal(loom_backend_zero(b, flag, sizeof *flag), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, n, dd, 2, flag), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, 0, dd, 0, flag), 0);
  assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
  assert_int_equal(host, 0);
  /* the first, middle and last float; then each double */
  const int64_t at[] = {0, n / 2, n - 1};
  for (int k = 0; k < 5; k++) {
    float *e = upload(b, x, n);
    double bad_sums[2] = {sums_host[0], sums_host[1]};
    if (k < 3) {
      const float inf = INFINITY;
      assert_int_equal(loom_backend_from_host(b, e + at[k], &inf, sizeof inf), 0);
    } else {
      bad_sums[k - 3] = NAN;
    }
    assert_int_equal(loom_backend_from_host(b, dd, bad_sums, sizeof bad_sums), 0);
    assert_int_equal(loom_backend_zero(b, flag, sizeof *flag), 0);
    assert_int_equal(loom_backend_flag_nonfinite(b, e, n, dd, 2, flag), 0);
    assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
    if (host != 1)
      fail_msg("%s flag_nonfinite n=%lld: case %d not flagged", loom_backend_name(b), (long long)n, k);
    loom_backend_free(b, e);
  }
  assert_int_equal(loom_backend_from_host(b, dd, sums_host, sizeof sums_host), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, n, dd, 2, flag), 0); /* all finite: stays set */
  assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
  assert_int_equal(host, 1);

  /* Updates: with the gate clear, as without one; set, nothing written. */
  float *p_ref = malloc((size_t)n * sizeof *p_ref);
  const loom_sgd_step sg = {0.1, 0.01, 0.9, 0.0, false, false, NULL};
  const loom_adam_step ad = {1e-2, 0.1, 0.9, 0.999, 1e-8, 3, false, NULL};
  for (int gate = -1; gate <= 1; gate++) { /* -1: no gate */
    for (int rule = 0; rule < 2; rule++) {
      float *dp = upload(b, x, n), *dg = upload(b, s + n, n), *ds = upload(b, s, 2 * n);
      if (gate >= 0)
        assert_int_equal(loom_backend_from_host(b, flag, gate ? &one : &(int){0}, sizeof *flag), 0);
      /* the gate as the step's field for SGD, as the backend's for Adam */
      loom_sgd_step sgs = sg;
      sgs.gate = gate >= 0 ? flag : NULL;
      if (rule == 0) {
        assert_int_equal(loom_backend_sgd_update(b, &sgs, dp, dg, ds, n), 0);
      } else {
        loom_backend_set_update_gate(b, gate >= 0 ? flag : NULL);
        assert_int_equal(loom_backend_adam_update(b, &ad, dp, dg, ds, ds + n, n), 0);
        loom_backend_set_update_gate(b, NULL);
      }
      download(b, got, dp, n), download(b, got + n, ds, n);
      if (gate == -1)
        memcpy(rule ? want : p_ref, got, (size_t)n * sizeof *got);
      const float *expect = gate == 1 ? x : rule ? want : p_ref;
      if (memcmp(got, expect, (size_t)n * sizeof *got) != 0 || (gate == 1 && memcmp(got + n, s, (size_t)n * sizeof *s)))
        fail_msg("%s %s_update n=%lld with gate %d: not %s", loom_backend_name(b), rule ? "adam" : "sgd", (long long)n,
                 gate, gate == 1 ? "held back" : "the ungated update");
      loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);
    }
  }
  assert_false(memcmp(p_ref, x, (size_t)n * sizeof *x) == 0); /* the updates did move p */

  /* set_if: x[0] only, and only while the flag is set */
  for (int set = 0; set < 2; set++) {
    assert_int_equal(loom_backend_from_host(b, flag, set ? &one : &(int){0}, sizeof *flag), 0);
    float *e = upload(b, x, n);
    assert_int_equal(loom_backend_set_if(b, flag, e, NAN), 0);
    download(b, got, e, n);
    assert_true(set ? isnan(got[0]) : got[0] == x[0]);
    assert_memory_equal(got + 1, x + 1, (size_t)(n - 1) * sizeof *x);
    loom_backend_free(b, e);
  }
  loom_backend_free(b, dx), loom_backend_free(b, dd), loom_backend_free(b, flag);
  free(x), free(s), free(want), free(got), free(p_ref);
}

static void test_gate(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 100000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_FLAG_NONFINITE, LOOM_OP_SET_IF, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_gate(b[i], sizes[k]);
}

/* --- asynchronous uploads --- */

/* Two batches through one upload slot, from pinned memory into two device
 * buffers, each read back after the compute stream waited for its copy:
 * the values copied, the second over the first once the slot was released. */
static void test_upload(void **state) {
  loom_backend *b[MAX_BACKENDS];
  backends(state, b, LOOM_OP_COUNT);
  if (!loom_backend_can_upload_async(b[0])) {
    print_message("skipped: backend \"%s\" has no asynchronous uploads\n", loom_backend_name(b[0]));
    skip();
  }
  enum { NX = 1000, NY = 7 };
  float *hx = loom_backend_host_alloc(b[0], NX * sizeof(float)), *hy = loom_backend_host_alloc(b[0], NY * sizeof(float));
  float *dx = loom_backend_alloc(b[0], NX * sizeof(float)), *dy = loom_backend_alloc(b[0], NY * sizeof(float));
  assert_true(hx && hy && dx && dy);
  loom_upload *up;
  assert_int_equal(loom_backend_upload_create(b[0], &up), 0);
  float back[NX];
  for (int round = 0; round < 2; round++) {
    fill(hx, NX, 11u + (uint32_t)round), fill(hy, NY, 23u + (uint32_t)round);
    const loom_upload_copy copies[] = {{dx, hx, NX * sizeof(float)}, {dy, hy, NY * sizeof(float)}, {dy, hy, 0}};
    assert_int_equal(loom_backend_upload_start(b[0], up, copies, 3), 0);
    assert_int_equal(loom_backend_upload_wait(b[0], up), 0);
    assert_int_equal(loom_backend_scale(b[0], dy, 2.0f, NY), 0); /* an op after the wait reads the batch */
    assert_int_equal(loom_backend_to_host(b[0], back, dx, NX * sizeof(float)), 0);
    assert_memory_equal(back, hx, NX * sizeof(float));
    assert_int_equal(loom_backend_to_host(b[0], back, dy, NY * sizeof(float)), 0);
    for (int i = 0; i < NY; i++)
      assert_true(back[i] == 2.0f * hy[i]);
    assert_int_equal(loom_backend_upload_release(b[0], up), 0);
  }
  loom_backend_upload_destroy(b[0], up);
  loom_backend_free(b[0], dx), loom_backend_free(b[0], dy);
  loom_backend_host_free(b[0], hx), loom_backend_host_free(b[0], hy);
}

/* --- support, errors, creation --- */

static void test_support_listing(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = backends(state, b, LOOM_OP_COUNT); i < n; i++) {
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
  loom_plan *plan;
  const loom_conv_desc conv = {1, 3, 3, 1, 1, 1, 3, 3, 1, 1, 0, 0, 1, 1, true, LOOM_CONV_AUTO};
  assert_int_equal(loom_backend_conv_plan(b, &conv, &plan), LOOM_ENOTSUP);
  assert_null(plan);
  assert_string_equal(loom_last_error(), "backend \"bare\" has no conv_forward op; run this model on a backend "
                                         "that has it (the CPU backend has every op)");
  /* Without the block op nothing fuses: the layers run one by one. */
  const loom_layer_desc layers[2] = {{.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {1, 1, 1e-5f, 0.1f}},
                                     {.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}}};
  loom_block block = {.count = 9};
  assert_int_equal(loom_backend_plan_block(b, layers, 2, &block), 0);
  assert_int_equal(block.count, 0);
  assert_null(block.plan);
  /* Nor asynchronous uploads: each call says so. */
  assert_false(loom_backend_can_upload_async(b));
  assert_null(loom_backend_host_alloc(b, 64));
  assert_string_equal(loom_last_error(), "loom_backend_host_alloc: backend \"bare\" has no asynchronous uploads "
                                         "(pinned host memory and a copy stream); copy with loom_backend_from_host");
  loom_upload *up = (loom_upload *)&block;
  assert_int_equal(loom_backend_upload_create(b, &up), LOOM_ENOTSUP);
  assert_null(up);
  loom_backend_destroy(b);
  assert_int_equal(destroyed, 1);

  /* Some of the upload slots without the others: refused. */
  ops.host_alloc = host_alloc;
  assert_null(loom_backend_create(&ops, NULL));
  assert_non_null(strstr(loom_last_error(), "backend \"bare\" fills 1 of the 7 asynchronous upload slots"));
  assert_int_equal(destroyed, 2);
  ops.host_alloc = NULL;

  /* A backend without its memory slots is refused, and its context freed. */
  ops.copy = NULL;
  assert_null(loom_backend_create(&ops, NULL));
  assert_non_null(strstr(loom_last_error(), "backend \"bare\" must implement alloc, free, to_host, from_host, copy "
                                            "and zero"));
  assert_int_equal(destroyed, 3);
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

/* What the fake device is for: a host dereference of its memory faults
 * (ASan reports it), and host memory, or freed device memory, given to one
 * of its ops stops the program with a message naming the op and operand.
 * Each case runs in a child; *err gets its stderr. */
static int in_child(void (*body)(loom_backend *), loom_backend *b, char *err, size_t size) {
  int fd[2];
  assert_int_equal(pipe(fd), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL), signal(SIGBUS, SIG_DFL); /* cmocka's handler would carry on in the child */
    dup2(fd[1], 2);
    close(fd[0]);
    body(b);
    _exit(0);
  }
  close(fd[1]);
  size_t got = 0;
  ssize_t r;
  while (got + 1 < size && (r = read(fd[0], err + got, size - 1 - got)) > 0)
    got += (size_t)r;
  err[got] = '\0';
  close(fd[0]);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static void read_on_host(loom_backend *b) {
  float *p = loom_backend_alloc(b, 64);
  volatile float v = p[3];
  (void)v;
}
static void copy_on_host(loom_backend *b) {
  float *p = loom_backend_alloc(b, 64), host[4];
  memcpy(host, p, sizeof host);
  fprintf(stderr, "copied %g\n", (double)host[0]); /* not reached */
}
static void host_operand(loom_backend *b) {
  float x[4] = {0}, *y = loom_backend_alloc(b, sizeof x);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4);
}
static void freed_operand(loom_backend *b) {
  float *x = loom_backend_alloc(b, 64), *y = loom_backend_alloc(b, 64);
  loom_backend_free(b, x);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4);
}
static void overrun(loom_backend *b) {
  float *x = loom_backend_alloc(b, 64), *y = loom_backend_alloc(b, 64);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 17);
}

/* Misuses of an upload slot, each what a copy stream would race on. */
typedef struct upload_case {
  loom_upload *up;
  float *host, *dev;
  loom_upload_copy copy;
} upload_case;
static upload_case upload_begin(loom_backend *b) {
  upload_case c = {.host = loom_backend_host_alloc(b, 64), .dev = loom_backend_alloc(b, 64)};
  loom_backend_upload_create(b, &c.up);
  c.copy = (loom_upload_copy){c.dev, c.host, 64};
  memset(c.host, 0, 64);
  return c;
}
static void upload_read_before_wait(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_scale(b, c.dev, 2.0f, 16);
}
static void upload_into_unreleased(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_wait(b, c.up);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_again_before_release(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_host_refilled(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_wait(b, c.up);
  c.host[3] = 1.0f;
  loom_backend_upload_release(b, c.up);
}
static void upload_from_pageable(loom_backend *b) {
  upload_case c = upload_begin(b);
  float pageable[16] = {0};
  c.copy.host = pageable;
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_free_before_wait(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_free(b, c.dev);
}

static void test_fake_device_catches_misuse(void **state) {
  (void)state;
  fake_device *dev;
  loom_backend *b = fake_device_create(1 << 20, &dev);
  char err[8192];
  void (*const faults[])(loom_backend *) = {read_on_host, copy_on_host};
  for (size_t i = 0; i < 2; i++) {
    int st = in_child(faults[i], b, err, sizeof err);
    /* SIGSEGV (a non-canonical address is a general protection fault) */
    if (!(WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGBUS)) && !strstr(err, "SEGV"))
      fail_msg("case %zu: a host dereference of device memory did not fault (status %d): %s", i, st, err);
  }
  static const char *const said[] = {
      "act_forward: x is host memory", "act_forward: x: 16 bytes at device offset", "act_forward: x: 68 bytes",
      "scale: x (device offset 0) is being uploaded into by upload slot",
      "is uploaded into while the compute stream may still read its last batch",
      "starts again before upload_release",
      "upload_release: the host memory upload slot",
      "upload_start: copy 0's 64 bytes at",
      "free: the pointer (device offset 0) is being uploaded into"};
  void (*const misuses[])(loom_backend *) = {host_operand,           freed_operand,          overrun,
                                             upload_read_before_wait, upload_into_unreleased, upload_again_before_release,
                                             upload_host_refilled,    upload_from_pageable,   upload_free_before_wait};
  for (size_t i = 0; i < sizeof misuses / sizeof *misuses; i++) {
    int st = in_child(misuses[i], b, err, sizeof err);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    if (!strstr(err, said[i]))
      fail_msg("case %zu: want \"%s\" in: %s", i, said[i], err);
  }
  /* In this process: allocations are counted, and transfers. */
  float h[4] = {1, 2, 3, 4}, back[4];
  float *p = loom_backend_alloc(b, sizeof h);
  assert_true(fake_device_owns(dev, p) && !fake_device_owns(dev, h));
  assert_int_equal(loom_backend_from_host(b, p, h, sizeof h), 0);
  assert_int_equal(loom_backend_to_host(b, back, p, sizeof back), 0);
  assert_memory_equal(back, h, sizeof h);
  fake_device_counts c = fake_device_counts_of(dev);
  assert_int_equal(c.live, 1);
  assert_int_equal(c.to_host, 1);
  assert_int_equal(c.from_host, 1);
  loom_backend_free(b, p);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(b);
}

/* Each op's test for one row. */
#define ROW_TESTS(r)                                                                                     \
  {#r ": test_gemm", test_gemm, NULL, NULL, &r}, {#r ": test_gemm_checked", test_gemm_checked, NULL, NULL, &r}, \
      {#r ": test_rows", test_rows, NULL, NULL, &r}, {#r ": test_activations", test_activations, NULL, NULL, &r}, \
      {#r ": test_criteria", test_criteria, NULL, NULL, &r}, {#r ": test_topk_hits", test_topk_hits, NULL, NULL, &r}, \
      {#r ": test_dropout", test_dropout, NULL, NULL, &r}, {#r ": test_add", test_add, NULL, NULL, &r},         \
      {#r ": test_autocast", test_autocast, NULL, NULL, &r},                                                   \
      {#r ": test_conv", test_conv, NULL, NULL, &r}, {#r ": test_pool", test_pool, NULL, NULL, &r},             \
      {#r ": test_conv_shapes_again", test_conv_shapes_again, NULL, NULL, &r},                                 \
      {#r ": test_batchnorm", test_batchnorm, NULL, NULL, &r}, {#r ": test_block", test_block, NULL, NULL, &r}, \
      {#r ": test_optimizer_updates", test_optimizer_updates, NULL, NULL, &r},                                 \
      {#r ": test_gradient_ops", test_gradient_ops, NULL, NULL, &r},                                           \
      {#r ": test_gate", test_gate, NULL, NULL, &r},                                                           \
      {#r ": test_update_ranges", test_update_ranges, NULL, NULL, &r},                                         \
      {#r ": test_upload", test_upload, NULL, NULL, &r},                                                       \
      {#r ": test_support_listing", test_support_listing, NULL, NULL, &r}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  if (only && strcmp(only, "cpu") != 0 && strcmp(only, "cuda") != 0 && strcmp(only, "fake") != 0) {
    fprintf(stderr, "usage: %s [cpu|cuda|fake]\n", argv[0]);
    return 2;
  }
  open_rows();
  const struct CMUnitTest cpu_tests[] = {
      ROW_TESTS(cpu),
      cmocka_unit_test(test_gemm_checked_fallback),
      cmocka_unit_test(test_missing_op_is_reported),
      cmocka_unit_test(test_tensor_on_backend),
  };
  const struct CMUnitTest cuda_tests[] = {ROW_TESTS(cuda)};
  const struct CMUnitTest fake_tests[] = {ROW_TESTS(fake), cmocka_unit_test(test_fake_device_catches_misuse)};
  int failed = 0;
  if (!only || strcmp(only, "cpu") == 0)
    failed += cmocka_run_group_tests_name("cpu", cpu_tests, NULL, NULL);
  if (!only || strcmp(only, "cuda") == 0)
    failed += cmocka_run_group_tests_name("cuda", cuda_tests, NULL, NULL);
  if (!only || strcmp(only, "fake") == 0)
    failed += cmocka_run_group_tests_name("fake", fake_tests, NULL, NULL);
  const bool no_device = !cuda.backend;
  loom_backend_destroy(cuda.backend);
  loom_backend_destroy(fake.backend);
  return failed ? failed : only && strcmp(only, "cuda") == 0 && no_device ? 77 : 0;
}
