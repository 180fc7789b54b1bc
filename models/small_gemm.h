/* Small matrix products on libxsmm's JIT kernels, when loom has libxsmm. */
#ifndef LOOM_MODELS_SMALL_GEMM_H
#define LOOM_MODELS_SMALL_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C = alpha op(A) op(B) + beta C, row-major, as loom_gemm, on the calling
 * thread with a libxsmm kernel made for this shape. Returns false, having
 * touched nothing, when there is none: loom built without libxsmm, alpha
 * other than 1, beta other than 0 or 1, or a transposed op(B) too large to
 * copy straight on the stack. Which products are small is the caller's
 * choice (models/gemm.c): libxsmm makes a kernel for any size. */
bool loom_small_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

#endif
