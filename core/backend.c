/* The backend wrapper: checks what a backend has, and says so when it
 * lacks an op, so that layers call ops without looking at the backend. */
#include "loom/backend.h"

#include <stdlib.h>

#include "core/error_internal.h"

struct loom_backend {
  loom_backend_ops ops;
  void *ctx;
};

static const char *const op_names[LOOM_OP_COUNT] = {"gemm", "fill_rows", "sum_rows", "act_forward",
                                                    "act_backward"};

const char *loom_op_name(loom_op op) { return op < LOOM_OP_COUNT ? op_names[op] : "?"; }

loom_backend *loom_backend_create(const loom_backend_ops *ops, void *ctx) {
  if (!ops || !ops->alloc || !ops->free || !ops->to_host || !ops->from_host || !ops->copy || !ops->zero) {
    loom_error_set(LOOM_EINVAL, "loom_backend_create: backend \"%s\" must implement alloc, free, to_host, "
                                "from_host, copy and zero",
                   ops && ops->name ? ops->name : "?");
    if (ops && ops->destroy)
      ops->destroy(ctx);
    return NULL;
  }
  loom_backend *b = calloc(1, sizeof *b);
  if (!b) {
    if (ops->destroy)
      ops->destroy(ctx);
    loom_error_oom("a backend");
    return NULL;
  }
  b->ops = *ops;
  b->ctx = ctx;
  return b;
}

void loom_backend_destroy(loom_backend *b) {
  if (!b)
    return;
  if (b->ops.destroy)
    b->ops.destroy(b->ctx);
  free(b);
}

const char *loom_backend_name(const loom_backend *b) { return b->ops.name ? b->ops.name : "custom"; }
loom_device_kind loom_backend_device(const loom_backend *b) { return b->ops.device; }

bool loom_backend_supports(const loom_backend *b, loom_op op) {
  switch (op) {
  case LOOM_OP_GEMM: return b->ops.gemm != NULL;
  case LOOM_OP_FILL_ROWS: return b->ops.fill_rows != NULL;
  case LOOM_OP_SUM_ROWS: return b->ops.sum_rows != NULL;
  case LOOM_OP_ACT_FORWARD: return b->ops.act_forward != NULL;
  case LOOM_OP_ACT_BACKWARD: return b->ops.act_backward != NULL;
  case LOOM_OP_COUNT: break;
  }
  return false;
}

/* A layer's backend is NULL only when the CPU backend could not be made. */
static int no_backend(loom_op op) {
  return loom_error_set(LOOM_ENOMEM, "no backend to run %s on: the CPU backend could not be created (out of memory)",
                        loom_op_name(op));
}

static int unsupported(const loom_backend *b, loom_op op) {
  return loom_error_set(LOOM_ENOTSUP, "backend \"%s\" has no %s op; run this model on a backend that has it (the "
                                      "CPU backend has every op)",
                        loom_backend_name(b), loom_op_name(op));
}

void *loom_backend_alloc(loom_backend *b, size_t bytes) { return b->ops.alloc(b->ctx, bytes); }
void loom_backend_free(loom_backend *b, void *ptr) { b->ops.free(b->ctx, ptr); }

int loom_backend_to_host(loom_backend *b, void *host, const void *src, size_t bytes) {
  return b->ops.to_host(b->ctx, host, src, bytes);
}

int loom_backend_from_host(loom_backend *b, void *dst, const void *host, size_t bytes) {
  return b->ops.from_host(b->ctx, dst, host, bytes);
}

int loom_backend_copy(loom_backend *b, void *dst, const void *src, size_t bytes) {
  return b->ops.copy(b->ctx, dst, src, bytes);
}

int loom_backend_zero(loom_backend *b, void *ptr, size_t bytes) { return b->ops.zero(b->ctx, ptr, bytes); }

int loom_backend_synchronize(loom_backend *b) { return b->ops.synchronize ? b->ops.synchronize(b->ctx) : 0; }

int loom_backend_gemm(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  if (!b)
    return no_backend(LOOM_OP_GEMM);
  if (!b->ops.gemm)
    return unsupported(b, LOOM_OP_GEMM);
  return b->ops.gemm(b->ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int loom_backend_fill_rows(loom_backend *b, float *y, const float *row, int64_t rows, int64_t cols) {
  if (!b)
    return no_backend(LOOM_OP_FILL_ROWS);
  return b->ops.fill_rows ? b->ops.fill_rows(b->ctx, y, row, rows, cols) : unsupported(b, LOOM_OP_FILL_ROWS);
}

int loom_backend_sum_rows(loom_backend *b, float *sum, const float *x, int64_t rows, int64_t cols) {
  if (!b)
    return no_backend(LOOM_OP_SUM_ROWS);
  return b->ops.sum_rows ? b->ops.sum_rows(b->ctx, sum, x, rows, cols) : unsupported(b, LOOM_OP_SUM_ROWS);
}

int loom_backend_act_forward(loom_backend *b, loom_activation act, float param, const float *x, float *y, int64_t n) {
  if (!b)
    return no_backend(LOOM_OP_ACT_FORWARD);
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_forward: unknown activation %d", (int)act);
  return b->ops.act_forward ? b->ops.act_forward(b->ctx, act, param, x, y, n) : unsupported(b, LOOM_OP_ACT_FORWARD);
}

int loom_backend_act_backward(loom_backend *b, loom_activation act, float param, const float *x, const float *y,
                              const float *dy, float *dx, int64_t n) {
  if (!b)
    return no_backend(LOOM_OP_ACT_BACKWARD);
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_backward: unknown activation %d", (int)act);
  return b->ops.act_backward ? b->ops.act_backward(b->ctx, act, param, x, y, dy, dx, n)
                             : unsupported(b, LOOM_OP_ACT_BACKWARD);
}
