/* The layers' matrix products (models/gemm.h) against a double-precision
 * reference: every transpose pair, padded leading dimensions, the alpha and
 * beta the layers use and others, small products (on the calling thread)
 * and a large one (cut over the pool), on libxsmm's kernels where loom uses
 * them and on OpenBLAS (ctest runs this file with LIBXSMM_TARGET=hsw too). */
#include <float.h>
#include <math.h>

#include "helpers.h"
#include "backends/cpu/gemm.h"
#include "backends/cpu/xsmm_gemm.h"

typedef struct shape {
  int64_t M, N, K;
} shape;

/* Stored sizes of op(X) (rows x cols) with a leading dimension 3 past its
 * row, so a product that ignores ld or writes past a row shows. */
#define PAD 3

typedef struct operands {
  bool ta, tb;
  shape s;
  int64_t lda, ldb, ldc;
  float *A, *B, *C, *C0; /* C0: C before the product */
} operands;

static float value(int64_t i, int salt) { return (float)(((i * 37 + salt * 11) % 41) - 20) / 20.0f; }

static void operands_init(operands *o, bool ta, bool tb, shape s) {
  *o = (operands){.ta = ta, .tb = tb, .s = s};
  int64_t a_rows = ta ? s.K : s.M, a_cols = ta ? s.M : s.K, b_rows = tb ? s.N : s.K, b_cols = tb ? s.K : s.N;
  o->lda = a_cols + PAD, o->ldb = b_cols + PAD, o->ldc = s.N + PAD;
  o->A = malloc((size_t)(a_rows * o->lda) * sizeof(float));
  o->B = malloc((size_t)(b_rows * o->ldb) * sizeof(float));
  o->C = malloc((size_t)(s.M * o->ldc) * sizeof(float));
  o->C0 = malloc((size_t)(s.M * o->ldc) * sizeof(float));
  for (int64_t i = 0; i < a_rows * o->lda; i++)
    o->A[i] = value(i, 1);
  for (int64_t i = 0; i < b_rows * o->ldb; i++)
    o->B[i] = value(i, 2);
  for (int64_t i = 0; i < s.M * o->ldc; i++)
    o->C[i] = o->C0[i] = value(i, 3);
}

static void operands_free(operands *o) { free(o->A), free(o->B), free(o->C), free(o->C0); }

static double a_at(const operands *o, int64_t m, int64_t k) {
  return o->ta ? o->A[k * o->lda + m] : o->A[m * o->lda + k];
}
static double b_at(const operands *o, int64_t k, int64_t n) {
  return o->tb ? o->B[n * o->ldb + k] : o->B[k * o->ldb + n];
}

/* C against alpha op(A) op(B) + beta C0 within the worst-case rounding of a
 * float sum of K + 1 terms (K + 2 roundings of unit u, times the sum of the
 * terms' magnitudes); the padding past each row of C left as it was. */
static void check(const operands *o, float alpha, float beta, const char *what) {
  for (int64_t m = 0; m < o->s.M; m++)
    for (int64_t n = 0; n < o->ldc; n++) {
      int64_t at = m * o->ldc + n;
      if (n >= o->s.N) {
        if (o->C[at] != o->C0[at])
          fail_msg("%s: C[%lld][%lld] past the row was written", what, (long long)m, (long long)n);
        continue;
      }
      double want = beta * (double)o->C0[at], size = fabs(want);
      for (int64_t k = 0; k < o->s.K; k++) {
        double t = alpha * a_at(o, m, k) * b_at(o, k, n);
        want += t, size += fabs(t);
      }
      if (!(fabs(o->C[at] - want) <= (double)(o->s.K + 2) * (FLT_EPSILON / 2) * size))
        fail_msg("%s: C[%lld][%lld] = %.8g, reference %.8g", what, (long long)m, (long long)n, o->C[at], want);
    }
}

/* linear32's forward and weight gradient, odd small ones, and one over the
 * small-product limit, cut over the pool. */
static const shape shapes[] = {{32, 10, 784}, {10, 784, 32}, {3, 7, 5}, {1, 1, 1}, {17, 9, 33}, {96, 80, 70}};

static void test_products_match_reference(void **state) {
  (void)state;
  const float alphas[] = {1.0f, 0.5f}, betas[] = {0.0f, 1.0f, 0.5f};
  char what[160];
  for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++)
    for (int t = 0; t < 4; t++)
      for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++) {
          operands o;
          operands_init(&o, t & 1, t & 2, shapes[i]);
          snprintf(what, sizeof what, "%lldx%lldx%lld ta=%d tb=%d alpha=%g beta=%g", (long long)o.s.M, (long long)o.s.N,
                   (long long)o.s.K, o.ta, o.tb, alphas[a], betas[b]);
          loom_gemm(o.ta, o.tb, o.s.M, o.s.N, o.s.K, alphas[a], o.A, o.lda, o.B, o.ldb, betas[b], o.C, o.ldc);
          check(&o, alphas[a], betas[b], what);
          operands_free(&o);
        }
}

/* Which products libxsmm takes: when active, those with alpha 1 and beta 0
 * or 1 (the layers'), any transposes; the others must come back untouched
 * for OpenBLAS. When not, none. */
static void test_xsmm_products_taken(void **state) {
  (void)state;
  /* On an AVX-512 machine, a loom built with libxsmm uses it unless told
   * otherwise (LIBXSMM_TARGET=hsw); without libxsmm, never. */
  if (!LOOM_HAVE_LIBXSMM)
    assert_false(loom_xsmm_active());
  else if (getenv("LIBXSMM_TARGET") != NULL && strcmp(getenv("LIBXSMM_TARGET"), "hsw") == 0)
    assert_false(loom_xsmm_active()); /* AVX2 kernels: OpenBLAS instead */
  else if (__builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") && getenv("LIBXSMM_TARGET") == NULL)
    assert_true(loom_xsmm_active());
  struct {
    shape s;
    bool tb;
    float alpha, beta;
    bool taken;
  } cases[] = {
      {{32, 10, 784}, true, 1.0f, 1.0f, true}, {{10, 784, 32}, false, 1.0f, 1.0f, true},
      {{17, 9, 33}, false, 1.0f, 0.0f, true},  {{17, 9, 33}, true, 1.0f, 0.0f, true},
      {{17, 9, 33}, false, 0.5f, 0.0f, false}, {{17, 9, 33}, false, 1.0f, 0.5f, false},
      {{4, 20, 1000}, true, 1.0f, 0.0f, true}, /* op(B) straightened off the stack */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    for (int ta = 0; ta < 2; ta++) {
      operands o;
      operands_init(&o, ta, cases[i].tb, cases[i].s);
      bool taken = loom_xsmm_gemm(o.ta, o.tb, o.s.M, o.s.N, o.s.K, cases[i].alpha, o.A, o.lda, o.B, o.ldb,
                                  cases[i].beta, o.C, o.ldc);
      assert_int_equal(taken, loom_xsmm_active() && cases[i].taken);
      if (taken)
        check(&o, cases[i].alpha, cases[i].beta, "libxsmm product");
      else
        assert_memory_equal(o.C, o.C0, (size_t)(o.s.M * o.ldc) * sizeof(float));
      operands_free(&o);
    }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_products_match_reference),
      cmocka_unit_test(test_xsmm_products_taken),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
