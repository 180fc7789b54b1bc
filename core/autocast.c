/* Autocast: the thread's precision for products, and the gemm wrappers'
 * rounding of their operands under it (loom/backend.h). */
#include <string.h>

#include "core/autocast.h"
#include "core/error_internal.h"

static _Thread_local loom_precision autocast;

loom_precision loom_backend_set_autocast(loom_precision p) {
  loom_precision old = autocast;
  autocast = p;
  return old;
}

loom_precision loom_backend_autocast(void) { return autocast; }

static const char *const names[] = {"fp32", "bf16", "fp16"};

const char *loom_precision_name(loom_precision p) {
  return (unsigned)p < sizeof names / sizeof *names ? names[p] : "?";
}

bool loom_precision_parse(const char *name, loom_precision *p) {
  for (size_t i = 0; name && i < sizeof names / sizeof *names; i++)
    if (strcmp(name, names[i]) == 0) {
      *p = (loom_precision)i;
      return true;
    }
  return false;
}

bool loom_autocast_applies(loom_backend *b) {
  return autocast != LOOM_PRECISION_FP32 && loom_backend_supports(b, LOOM_OP_ROUND);
}

/* A rows x cols matrix of stride ld, rounded into a packed copy *y (stride
 * cols) of the backend's memory. */
static int rounded_copy(loom_backend *b, const float *x, int64_t rows, int64_t cols, int64_t ld, float **y) {
  if (!(*y = loom_backend_alloc(b, (size_t)(rows * cols) * sizeof **y)))
    return LOOM_ENOMEM;
  int rc = 0;
  if (ld == cols)
    rc = loom_backend_round(b, autocast, x, *y, rows * cols);
  for (int64_t i = 0; rc == 0 && ld != cols && i < rows; i++)
    rc = loom_backend_round(b, autocast, x + i * ld, *y + i * cols, cols);
  return rc;
}

int loom_autocast_operands(loom_backend *b, loom_autocast_gemm *g, bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  g->a = g->b = NULL;
  int rc = rounded_copy(b, g->A, ta ? K : M, ta ? M : K, g->lda, &g->a);
  if (rc == 0)
    rc = rounded_copy(b, g->B, tb ? N : K, tb ? K : N, g->ldb, &g->b);
  if (rc < 0) {
    loom_autocast_release(b, g);
    return loom_error_wrap(rc, "rounding the operands of a %lld x %lld x %lld product to %s (autocast)", (long long)M,
                           (long long)N, (long long)K, loom_precision_name(autocast));
  }
  g->A = g->a, g->lda = ta ? M : K;
  g->B = g->b, g->ldb = tb ? K : N;
  return 0;
}

void loom_autocast_release(loom_backend *b, loom_autocast_gemm *g) {
  loom_backend_free(b, g->a);
  loom_backend_free(b, g->b);
  g->a = g->b = NULL;
}
