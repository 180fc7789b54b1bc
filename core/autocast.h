/* The gemm wrappers' autocast (core/backend.c): the operands rounded into
 * packed copies on the backend while the thread's precision asks for it. */
#ifndef LOOM_CORE_AUTOCAST_H
#define LOOM_CORE_AUTOCAST_H

#include "loom/backend.h"

/* Whether products on `b` are to round their operands now: an autocast
 * precision other than FP32, and a backend with the ROUND op. */
bool loom_autocast_applies(loom_backend *b);

typedef struct loom_autocast_gemm {
  const float *A, *B; /* in: the operands; out: their rounded copies */
  int64_t lda, ldb;   /* in and out alike */
  float *a, *b;       /* the copies, for loom_autocast_release */
} loom_autocast_gemm;

/* Rounds op(A) M x K and op(B) K x N (stored as cblas_sgemm reads them)
 * into packed copies, and points g at them. */
int loom_autocast_operands(loom_backend *b, loom_autocast_gemm *g, bool ta, bool tb, int64_t M, int64_t N, int64_t K);
void loom_autocast_release(loom_backend *b, loom_autocast_gemm *g);

#endif
