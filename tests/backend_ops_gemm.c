/* test_backend_ops: the products (gemm, gemm_checked and its fallback) and
 * autocast's rounding and products. */
#include "backend_ops.h"

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

void test_gemm(void **state) {
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

void test_gemm_checked(void **state) {
  loom_backend *b[MAX_BACKENDS];
  for (size_t s = 0; s < sizeof checked_shapes / sizeof checked_shapes[0]; s++)
    for (size_t i = 0, n = BACKENDS(b, LOOM_OP_GEMM, LOOM_OP_GEMM_CHECKED); i < n; i++)
      check_gemm_checked(b[i], checked_shapes[s][0], checked_shapes[s][1], checked_shapes[s][2]);
}

void test_gemm_checked_fallback(void **state) {
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

/* --- autocast --- */

/* ROUND gives the CPU's bits (test_precision checks those against
 * independent references); under autocast a gemm is the product of the
 * rounded operands, accumulated in fp32 (on a GPU, TF32 Tensor Cores on
 * the rounded values, which they hold exactly). */
void test_autocast(void **state) {
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
