/* Matrix products for the layers, split over the in-layer pool. */
#ifndef LOOM_BACKENDS_CPU_GEMM_H
#define LOOM_BACKENDS_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C = alpha op(A) op(B) + beta C, row-major, op(A) M x K, op(B) K x N, as
 * cblas_sgemm. C is cut along its longer side into one block per part of
 * backends/cpu/parallel.h, each a loom_gemm_here product on its part's thread:
 * with OpenBLAS, each part then packs only its own share of the operand it
 * cuts, and all of the shorter one. Small products run on the calling
 * thread; with the pool off (one part), larger ones go to OpenBLAS's own
 * threads. */
void loom_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
               const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* loom_gemm, and whether C's M x N block is all finite: each part checks
 * the block it has just written while it is in its cache. */
bool loom_gemm_checked(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                       int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* The same product on the calling thread alone: on a libxsmm kernel made for
 * its shape (backends/cpu/xsmm_gemm.h) when there is one, which needs no packing of
 * the operands, else OpenBLAS's sgemm. */
void loom_gemm_here(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* Records a notice (loom_notice) if OpenBLAS chose kernels without AVX2 on a
 * CPU that has AVX2 or AVX-512. */
void loom_gemm_check_kernels(void);

#endif
