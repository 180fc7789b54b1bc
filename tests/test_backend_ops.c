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
      cmocka_unit_test(test_support_listing),
      cmocka_unit_test(test_missing_op_is_reported),
      cmocka_unit_test(test_tensor_on_backend),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
