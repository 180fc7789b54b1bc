/* Matrix products on libxsmm's JIT kernels, when loom has libxsmm. */
#ifndef LOOM_BACKENDS_CPU_XSMM_GEMM_H
#define LOOM_BACKENDS_CPU_XSMM_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* Whether products go to libxsmm on this machine: loom was built with it
 * and its kernels for this CPU are AVX-512 ones (LIBXSMM_TARGET can lower
 * them). */
bool loom_xsmm_active(void);

/* C = alpha op(A) op(B) + beta C, row-major, as cblas_sgemm, on the calling
 * thread with a libxsmm kernel made for this shape. Returns false, having
 * touched nothing, when there is none: loom_xsmm_active false, alpha other
 * than 1, beta other than 0 or 1, or no memory for straightening a
 * transposed op(B). */
bool loom_xsmm_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

#endif
