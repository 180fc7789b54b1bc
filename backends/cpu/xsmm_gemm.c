#include "backends/cpu/xsmm_gemm.h"

#if LOOM_HAVE_LIBXSMM

#include <libxsmm.h>

/* Only libxsmm's AVX-512 kernels beat OpenBLAS on loom's products. Its AVX2
 * ones took twice as long as OpenBLAS's Haswell kernels on some shapes (a
 * 784 -> 10 forward product: 44 against 22 us; docs/performance.md). */
bool loom_xsmm_active(void) { return libxsmm_get_target_archid() >= LIBXSMM_X86_AVX512_CORE; }

/* The kernels return with the upper halves of the vector registers in use;
 * every SSE instruction after them (loom's baseline code, libm) then pays
 * for merging them, which made linear32's epoch 2-3x slower. */
static void clear_upper_halves(void) {
#if defined(__x86_64__)
  __asm__ volatile("vzeroupper");
#endif
}

/* A transposed op(B) up to this many floats is straightened on the stack
 * (64 KiB: linear32's 784 x 10 weights, a Winograd chunk's inputs); larger
 * ones in libxsmm's pooled scratch memory. */
#define STACK_MAX 16384

bool loom_xsmm_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (M <= 0 || N <= 0 || K <= 0 || alpha != 1.0f || (beta != 0.0f && beta != 1.0f) || !loom_xsmm_active())
    return false;
  /* libxsmm is column-major, so it computes C^T = op(B)^T op(A)^T: B's rows
   * are its first operand's columns unless trans_b. Its kernels can take
   * their second operand transposed (trans_a here) but not their first, so
   * a transposed B is copied straight first. */
  libxsmm_blasint m = (libxsmm_blasint)N, n = (libxsmm_blasint)M, k = (libxsmm_blasint)K;
  libxsmm_blasint ld_first = trans_b ? m : (libxsmm_blasint)ldb, ld_second = (libxsmm_blasint)lda,
                  ld_c = (libxsmm_blasint)ldc;
  int flags = trans_a ? LIBXSMM_GEMM_FLAG_TRANS_B : 0;
  libxsmm_smmfunction kernel = libxsmm_smmdispatch(m, n, k, &ld_first, &ld_second, &ld_c, &alpha, &beta, &flags, NULL);
  if (kernel == NULL)
    return false;
  float on_stack[STACK_MAX], *straight = NULL;
  if (trans_b) {
    straight = N * K <= STACK_MAX ? on_stack : libxsmm_aligned_scratch((size_t)(N * K) * sizeof(float), 64);
    if (straight == NULL)
      return false;
    libxsmm_otrans(straight, B, sizeof(float), k, m, (libxsmm_blasint)ldb, m);
  }
  kernel(trans_b ? straight : B, A, C);
  clear_upper_halves();
  if (straight != NULL && straight != on_stack)
    libxsmm_free(straight);
  return true;
}

#else

bool loom_xsmm_active(void) { return false; }

bool loom_xsmm_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  (void)trans_a, (void)trans_b, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B, (void)ldb;
  (void)beta, (void)C, (void)ldc;
  return false;
}

#endif
