#include "backends/cpu/gemm.h"

#include <cblas.h>

#include "backends/cpu/kernels.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/xsmm_gemm.h"

/* Below this many multiply-adds a product takes a few microseconds, about
 * what handing half of it to another thread costs. */
#define SERIAL_MACS (64 * 64 * 64)
/* Cuts fall on multiples of the sgemm kernels' register blocks. */
#define ALIGN 16

typedef struct gemm {
  bool ta, tb, cut_rows;
  int64_t M, N, K, lda, ldb, ldc, slices;
  float alpha, beta;
  const float *A, *B;
  float *C;
  bool check;                    /* loom_gemm_checked: each part checks the blocks it wrote */
  bool bad[LOOM_MAX_PARTS];
} gemm;

static int64_t cut(int64_t len, int64_t q, int64_t slices) {
  int64_t at = len * q / slices;
  at = (at + ALIGN / 2) / ALIGN * ALIGN;
  return q == 0 ? 0 : q == slices || at > len ? len : at;
}

static void openblas(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N,
              (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

void loom_gemm_here(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (!loom_xsmm_gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
    openblas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Whether the m1 - m0 rows of n columns from c, ldc apart, are all finite. */
static bool block_finite(const float *c, int64_t rows, int64_t n, int64_t ldc) {
  if (ldc == n)
    return loom_cpu_finite_here(c, rows * n);
  bool finite = true;
  for (int64_t i = 0; i < rows; i++)
    finite &= loom_cpu_finite_here(c + i * ldc, n);
  return finite;
}

static void product(gemm *g, int part, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  if (m1 <= m0 || n1 <= n0)
    return;
  /* Row m0 of op(A) and column n0 of op(B), whichever way they are stored. */
  const float *a = g->A + (g->ta ? m0 : m0 * g->lda), *b = g->B + (g->tb ? n0 * g->ldb : n0);
  float *c = g->C + m0 * g->ldc + n0;
  loom_gemm_here(g->ta, g->tb, m1 - m0, n1 - n0, g->K, g->alpha, a, g->lda, b, g->ldb, g->beta, c, g->ldc);
  /* Read back at once, from this core's cache: no pass of its own later. */
  if (g->check && !block_finite(c, m1 - m0, n1 - n0, g->ldc))
    g->bad[part] = true;
}

static void slices(void *ctx, int part, int64_t first, int64_t last) {
  gemm *g = ctx;
  for (int64_t q = first; q < last; q++) {
    if (g->cut_rows)
      product(g, part, cut(g->M, q, g->slices), cut(g->M, q + 1, g->slices), 0, g->N);
    else
      product(g, part, 0, g->M, cut(g->N, q, g->slices), cut(g->N, q + 1, g->slices));
  }
}

static void run(gemm *g) {
  const bool small = g->M * g->N * g->K < SERIAL_MACS;
  g->slices = small ? 1 : loom_parallel_parts();
  if (!small && g->slices == 1) { /* the pool is off (LOOM_NUM_THREADS=1): OpenBLAS's own threads take it */
    openblas(g->ta, g->tb, g->M, g->N, g->K, g->alpha, g->A, g->lda, g->B, g->ldb, g->beta, g->C, g->ldc);
    g->bad[0] = g->check && !block_finite(g->C, g->M, g->N, g->ldc);
    return;
  }
  loom_parallel_for(g->slices, slices, g);
}

void loom_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  gemm g = {.ta = trans_a, .tb = trans_b, .cut_rows = M >= N, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb,
            .ldc = ldc, .alpha = alpha, .beta = beta, .A = A, .B = B, .C = C};
  run(&g);
}

bool loom_gemm_checked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  /* Cut by rows when C's rows are whole: each part's block is then one
   * contiguous span to check, not a row at a time (column blocks of an
   * MLP's dW cost 2-3% of its epoch to check row by row, rows ~1.5%). */
  gemm g = {.ta = trans_a, .tb = trans_b, .cut_rows = M >= N || ldc == N, .M = M, .N = N, .K = K, .lda = lda,
            .ldb = ldb, .ldc = ldc, .alpha = alpha, .beta = beta, .A = A, .B = B, .C = C, .check = true};
  run(&g);
  for (int p = 0; p < LOOM_MAX_PARTS; p++)
    if (g.bad[p])
      return false;
  return true;
}
