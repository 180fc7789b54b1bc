/* The backend wrapper: checks what a backend has, and says so when it
 * lacks an op, so that layers call ops without looking at the backend. */
#include "loom/backend.h"

#include <stdlib.h>

#include "core/error_internal.h"

struct loom_backend {
  loom_backend_ops ops;
  void *ctx;
};

static const char *const op_names[LOOM_OP_COUNT] = {
    "gemm",          "fill_rows",    "sum_rows",        "act_forward", "act_backward", "xent_forward",
    "xent_backward", "loss_forward", "loss_backward", "dropout_forward", "mul"};

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
  const loom_backend_ops *o = &b->ops;
  switch (op) {
  case LOOM_OP_GEMM: return o->gemm != NULL;
  case LOOM_OP_FILL_ROWS: return o->fill_rows != NULL;
  case LOOM_OP_SUM_ROWS: return o->sum_rows != NULL;
  case LOOM_OP_ACT_FORWARD: return o->act_forward != NULL;
  case LOOM_OP_ACT_BACKWARD: return o->act_backward != NULL;
  case LOOM_OP_XENT_FORWARD: return o->xent_forward != NULL;
  case LOOM_OP_XENT_BACKWARD: return o->xent_backward != NULL;
  case LOOM_OP_LOSS_FORWARD: return o->loss_forward != NULL;
  case LOOM_OP_LOSS_BACKWARD: return o->loss_backward != NULL;
  case LOOM_OP_DROPOUT_FORWARD: return o->dropout_forward != NULL;
  case LOOM_OP_MUL: return o->mul != NULL;
  case LOOM_OP_COUNT: break;
  }
  return false;
}

/* 0 if `b` can run `op`, else the error that says why not. A layer's
 * backend is NULL only when the CPU backend could not be made. */
static int ready(const loom_backend *b, loom_op op) {
  if (!b)
    return loom_error_set(LOOM_ENOMEM, "no backend to run %s on: the CPU backend could not be created (out of "
                                       "memory)",
                          loom_op_name(op));
  if (!loom_backend_supports(b, op))
    return loom_error_set(LOOM_ENOTSUP, "backend \"%s\" has no %s op; run this model on a backend that has it "
                                        "(the CPU backend has every op)",
                          loom_backend_name(b), loom_op_name(op));
  return 0;
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
  int rc = ready(b, LOOM_OP_GEMM);
  return rc < 0 ? rc : b->ops.gemm(b->ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

int loom_backend_fill_rows(loom_backend *b, float *y, const float *row, int64_t rows, int64_t cols) {
  int rc = ready(b, LOOM_OP_FILL_ROWS);
  return rc < 0 ? rc : b->ops.fill_rows(b->ctx, y, row, rows, cols);
}

int loom_backend_sum_rows(loom_backend *b, float *sum, const float *x, int64_t rows, int64_t cols) {
  int rc = ready(b, LOOM_OP_SUM_ROWS);
  return rc < 0 ? rc : b->ops.sum_rows(b->ctx, sum, x, rows, cols);
}

int loom_backend_act_forward(loom_backend *b, loom_activation act, float param, const float *x, float *y, int64_t n) {
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_forward: unknown activation %d", (int)act);
  int rc = ready(b, LOOM_OP_ACT_FORWARD);
  return rc < 0 ? rc : b->ops.act_forward(b->ctx, act, param, x, y, n);
}

int loom_backend_act_backward(loom_backend *b, loom_activation act, float param, const float *x, const float *y,
                              const float *dy, float *dx, int64_t n) {
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_backward: unknown activation %d", (int)act);
  int rc = ready(b, LOOM_OP_ACT_BACKWARD);
  return rc < 0 ? rc : b->ops.act_backward(b->ctx, act, param, x, y, dy, dx, n);
}

int loom_backend_xent_forward(loom_backend *b, const float *logits, const float *targets, const float *weights,
                              float smoothing, int64_t n, int64_t c, float *probs, double *loss_sum,
                              double *weight_sum) {
  int rc = ready(b, LOOM_OP_XENT_FORWARD);
  return rc < 0 ? rc
                : b->ops.xent_forward(b->ctx, logits, targets, weights, smoothing, n, c, probs, loss_sum, weight_sum);
}

int loom_backend_xent_backward(loom_backend *b, const float *probs, const float *targets, const float *weights,
                               float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  int rc = ready(b, LOOM_OP_XENT_BACKWARD);
  return rc < 0 ? rc : b->ops.xent_backward(b->ctx, probs, targets, weights, smoothing, scale, n, c, dlogits);
}

int loom_backend_loss_forward(loom_backend *b, loom_pointwise_loss loss, float param, const float *out,
                              const float *target, int64_t n, double *sum) {
  if (loss >= LOOM_LOSS_COUNT)
    return loom_error_set(LOOM_EINVAL, "loss_forward: unknown loss %d", (int)loss);
  int rc = ready(b, LOOM_OP_LOSS_FORWARD);
  return rc < 0 ? rc : b->ops.loss_forward(b->ctx, loss, param, out, target, n, sum);
}

int loom_backend_loss_backward(loom_backend *b, loom_pointwise_loss loss, float param, const float *out,
                               const float *target, float scale, int64_t n, float *dout) {
  if (loss >= LOOM_LOSS_COUNT)
    return loom_error_set(LOOM_EINVAL, "loss_backward: unknown loss %d", (int)loss);
  int rc = ready(b, LOOM_OP_LOSS_BACKWARD);
  return rc < 0 ? rc : b->ops.loss_backward(b->ctx, loss, param, out, target, scale, n, dout);
}

int loom_backend_dropout_forward(loom_backend *b, uint64_t key, float p, const float *x, float *y, float *mask,
                                 int64_t n) {
  int rc = ready(b, LOOM_OP_DROPOUT_FORWARD);
  return rc < 0 ? rc : b->ops.dropout_forward(b->ctx, key, p, x, y, mask, n);
}

int loom_backend_mul(loom_backend *b, const float *a, const float *c, float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_MUL);
  return rc < 0 ? rc : b->ops.mul(b->ctx, a, c, y, n);
}
