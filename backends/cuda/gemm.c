/* The CUDA backend's products on cuBLAS: gemm, and autocast's gemm_lowp
 * on operands rounded to bf16 or fp16. */
#include <limits.h>
#include <stdint.h>

#include "backends/cuda/context.h"
#include "backends/cuda/kernels.h"

/* The sizes cuBLAS's int arguments hold. */
static int gemm_sizes(const char *op, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
    return libloom->error_set(LOOM_EINVAL,
                              "CUDA backend: %s of %lldx%lldx%lld (or its leading dimensions) is past cuBLAS's "
                              "int sizes",
                              op, (long long)M, (long long)N, (long long)K);
  return 0;
}

/* Row-major C = alpha op(A) op(B) + beta C is column-major
 * C^T = alpha op(B)^T op(A)^T + beta C^T, and a row-major matrix read
 * column-major is its transpose: cuBLAS gets B first, then A, unchanged. */
int loom_cuda_op_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  cuda_ctx *c = ctx;
  int rc = gemm_sizes("gemm", M, N, K, lda, ldb, ldc);
  if (rc < 0 || M == 0 || N == 0 || (rc = enter(c)) < 0)
    return rc;
  /* (Under autocast the core calls loom_cuda_op_gemm_lowp instead.) */
  cublasStatus_t st =
      cublasSgemm(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K,
                  &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
  return st == CUBLAS_STATUS_SUCCESS ? 0 : loom_cuda_blas_error(st, c->device, "cublasSgemm");
}

/* A rows x cols block of x (stride ld) as packed bf16 or fp16 of the
 * device's memory (*out; loom_cuda_put when done). */
static int lowp_copy(cuda_ctx *c, loom_precision p, const float *x, int64_t rows, int64_t cols, int64_t ld,
                     uint16_t **out) {
  if (!(*out = libloom->alloc_get(c->alloc, (size_t)(rows * cols) * sizeof **out, c->stream)))
    return libloom->last_error_code();
  return launched(c, loom_cuda_to_lowp(c->stream, p, x, rows, cols, ld, *out), "to_lowp (autocast's operands)");
}

/* Autocast's product with operands stored as p: each rounded into a
 * packed copy of half fp32's bytes, then cublasGemmEx on them (the
 * Tensor Cores' bf16 or fp16 rate) accumulating in fp32, into C's fp32.
 * Operands swapped as in loom_cuda_op_gemm. */
int loom_cuda_op_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                           int64_t ldc) {
  cuda_ctx *c = ctx;
  int rc = gemm_sizes("gemm_lowp", M, N, K, lda, ldb, ldc);
  if (rc < 0 || M == 0 || N == 0 || (rc = enter(c)) < 0)
    return rc;
  uint16_t *a = NULL, *b = NULL;
  const int64_t acols = ta ? M : K, bcols = tb ? K : N;
  rc = lowp_copy(c, p, A, ta ? K : M, acols, lda, &a);
  if (rc == 0)
    rc = lowp_copy(c, p, B, tb ? N : K, bcols, ldb, &b);
  const cudaDataType type = p == LOOM_PRECISION_BF16 ? CUDA_R_16BF : CUDA_R_16F;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  if (rc == 0)
    st = cublasGemmEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K,
                      &alpha, b, type, (int)bcols, a, type, (int)acols, &beta, C, CUDA_R_32F, (int)ldc,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (rc == 0 && st != CUBLAS_STATUS_SUCCESS)
    rc = loom_cuda_blas_error(st, c->device, "cublasGemmEx (autocast)");
  loom_cuda_put(c, a); /* stream-ordered: the product's reads come first (a capture's graph keeps them) */
  loom_cuda_put(c, b);
  return rc;
}
