/* The backend wrapper: checks what a backend has, and says so when it
 * lacks an op, so that layers call ops without looking at the backend. */
#include "loom/backend.h"

#include <stdlib.h>

#include "core/backend_internal.h"
#include "core/autocast.h"
#include "core/error_internal.h"
#include "core/op_log.h"

struct loom_backend {
  loom_backend_ops ops;
  void *ctx;
  const int *gate; /* loom_backend_set_update_gate's */
  struct loom_log_cache *logs; /* core/op_log.c's */
};

struct loom_log_cache **loom_backend_log_cache(loom_backend *b) { return &b->logs; }

void *loom_backend_context(const loom_backend *b, const loom_backend_ops **ops) {
  if (ops)
    *ops = &b->ops;
  return b->ctx;
}

static const char *const op_names[LOOM_OP_COUNT] = {
    "gemm",          "fill_rows",    "sum_rows",        "act_forward", "act_backward", "xent_forward",
    "xent_backward", "loss_forward", "loss_backward", "dropout_forward", "mul", "add", "conv_forward", "conv_backward",
    "pool_forward", "pool_backward", "batchnorm_forward", "batchnorm_backward", "block", "sgd_update",
    "adam_update", "rmsprop_update", "sum_squares", "scale", "clamp", "all_finite", "gemm_checked", "topk_hits", "round",
    "flag_nonfinite", "update_ranges", "set_if"};

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
  const bool upload[] = {ops->host_alloc, ops->host_free, ops->upload_create, ops->upload_destroy,
                         ops->upload_start, ops->upload_wait, ops->upload_release};
  int have = 0;
  for (size_t i = 0; i < sizeof upload / sizeof *upload; i++)
    have += upload[i];
  if (have != 0 && have != (int)(sizeof upload / sizeof *upload)) {
    loom_error_set(LOOM_EINVAL, "loom_backend_create: backend \"%s\" fills %d of the 7 asynchronous upload slots "
                                "(host_alloc, host_free, upload_create, upload_destroy, upload_start, upload_wait, "
                                "upload_release): fill all or none",
                   ops->name ? ops->name : "?", have);
    if (ops->destroy)
      ops->destroy(ctx);
    return NULL;
  }
  if (!ops->graph_begin != !ops->graph_end || !ops->graph_begin != !ops->graph_launch ||
      !ops->graph_begin != !ops->graph_destroy) {
    loom_error_set(LOOM_EINVAL, "loom_backend_create: backend \"%s\" fills some of the 4 step graph slots "
                                "(graph_begin, graph_end, graph_launch, graph_destroy): fill all or none",
                   ops->name ? ops->name : "?");
    if (ops->destroy)
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
  loom_op_log_backend_free(b);
  if (b->ops.destroy)
    b->ops.destroy(b->ctx);
  free(b);
}

const char *loom_backend_name(const loom_backend *b) { return b->ops.name ? b->ops.name : "custom"; }
loom_device_kind loom_backend_device(const loom_backend *b) { return b->ops.device; }
bool loom_backend_can_graph(const loom_backend *b) { return b->ops.graph_begin != NULL; }

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
  case LOOM_OP_ADD: return o->add != NULL;
  case LOOM_OP_CONV_FORWARD: return o->conv_plan && o->conv_forward && o->plan_destroy;
  case LOOM_OP_CONV_BACKWARD: return o->conv_plan && o->conv_backward && o->plan_destroy;
  case LOOM_OP_POOL_FORWARD: return o->pool_plan && o->pool_forward && o->plan_destroy;
  case LOOM_OP_POOL_BACKWARD: return o->pool_plan && o->pool_backward && o->plan_destroy;
  case LOOM_OP_BATCHNORM_FORWARD: return o->batchnorm_plan && o->batchnorm_forward && o->plan_destroy;
  case LOOM_OP_BATCHNORM_BACKWARD: return o->batchnorm_plan && o->batchnorm_backward && o->plan_destroy;
  case LOOM_OP_BLOCK: return o->plan_block && o->block_forward && o->block_backward && o->plan_destroy;
  case LOOM_OP_SGD_UPDATE: return o->sgd_update != NULL;
  case LOOM_OP_ADAM_UPDATE: return o->adam_update != NULL;
  case LOOM_OP_RMSPROP_UPDATE: return o->rmsprop_update != NULL;
  case LOOM_OP_SUM_SQUARES: return o->sum_squares != NULL;
  case LOOM_OP_SCALE: return o->scale != NULL;
  case LOOM_OP_CLAMP: return o->clamp != NULL;
  case LOOM_OP_ALL_FINITE: return o->all_finite != NULL;
  case LOOM_OP_FLAG_NONFINITE: return o->flag_nonfinite != NULL;
  case LOOM_OP_SET_IF: return o->set_if != NULL;
  case LOOM_OP_UPDATE_RANGES: /* else range by range */
    return o->update_ranges || (o->sgd_update && o->adam_update && o->rmsprop_update);
  case LOOM_OP_GEMM_CHECKED: return o->gemm_checked || (o->gemm && o->all_finite);
  case LOOM_OP_TOPK_HITS: return o->topk_hits != NULL;
  case LOOM_OP_ROUND: return o->round != NULL;
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
void loom_backend_free(loom_backend *b, void *ptr) {
  if (!loom_op_log_defer_free(b, ptr, false))
    b->ops.free(b->ctx, ptr);
}

/* The calls whose results the host needs run what was logged first. */
int loom_backend_to_host(loom_backend *b, void *host, const void *src, size_t bytes) {
  int rc = loom_op_log_flush(b);
  return rc < 0 ? rc : b->ops.to_host(b->ctx, host, src, bytes);
}

int loom_backend_from_host(loom_backend *b, void *dst, const void *host, size_t bytes) {
  int rc = loom_op_log_flush(b);
  return rc < 0 ? rc : b->ops.from_host(b->ctx, dst, host, bytes);
}

int loom_backend_copy(loom_backend *b, void *dst, const void *src, size_t bytes) { LOOM_RUN_OP(b, copy); }

int loom_backend_zero(loom_backend *b, void *ptr, size_t bytes) { LOOM_RUN_OP(b, zero); }

int loom_backend_synchronize(loom_backend *b) {
  int rc = loom_op_log_flush(b);
  return rc < 0 || !b->ops.synchronize ? rc : b->ops.synchronize(b->ctx);
}

/* --- asynchronous uploads (all seven slots or none: loom_backend_create) --- */

bool loom_backend_can_upload_async(const loom_backend *b) { return b->ops.upload_start != NULL; }

static int no_upload(const loom_backend *b, const char *call) {
  return loom_error_set(LOOM_ENOTSUP, "%s: backend \"%s\" has no asynchronous uploads (pinned host memory and a "
                                      "copy stream); copy with loom_backend_from_host",
                        call, loom_backend_name(b));
}

void *loom_backend_host_alloc(loom_backend *b, size_t bytes) {
  if (!loom_backend_can_upload_async(b)) {
    no_upload(b, "loom_backend_host_alloc");
    return NULL;
  }
  return b->ops.host_alloc(b->ctx, bytes);
}

void loom_backend_host_free(loom_backend *b, void *ptr) {
  if (ptr && b->ops.host_free)
    b->ops.host_free(b->ctx, ptr);
}

int loom_backend_upload_create(loom_backend *b, loom_upload **upload) {
  *upload = NULL;
  int rc = loom_op_log_flush(b);
  if (rc < 0)
    return rc;
  return loom_backend_can_upload_async(b) ? b->ops.upload_create(b->ctx, upload)
                                          : no_upload(b, "loom_backend_upload_create");
}

void loom_backend_upload_destroy(loom_backend *b, loom_upload *upload) {
  if (!upload || !b->ops.upload_destroy)
    return;
  loom_op_log_flush(b); /* its memory's last readers first (an op's error cannot be returned here) */
  b->ops.upload_destroy(b->ctx, upload);
}

int loom_backend_upload_start(loom_backend *b, loom_upload *upload, const loom_upload_copy *copies, int count) {
  if (!loom_backend_can_upload_async(b))
    return no_upload(b, "loom_backend_upload_start");
  if (!upload || count < 0 || (count > 0 && !copies))
    return loom_error_set(LOOM_EINVAL, "loom_backend_upload_start: need an upload slot and %d copies", count);
  return b->ops.upload_start(b->ctx, upload, copies, count);
}

int loom_backend_upload_wait(loom_backend *b, loom_upload *upload) {
  int rc = loom_op_log_flush(b);
  if (rc < 0)
    return rc;
  return loom_backend_can_upload_async(b) ? b->ops.upload_wait(b->ctx, upload)
                                          : no_upload(b, "loom_backend_upload_wait");
}

int loom_backend_upload_release(loom_backend *b, loom_upload *upload) {
  int rc = loom_op_log_flush(b);
  if (rc < 0)
    return rc;
  return loom_backend_can_upload_async(b) ? b->ops.upload_release(b->ctx, upload)
                                          : no_upload(b, "loom_backend_upload_release");
}

static int gemm_op(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                   int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  LOOM_RUN_OP(b, gemm);
}

static int gemm_lowp_op(loom_backend *b, loom_precision prec, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                        float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                        int64_t ldc) {
  LOOM_RUN_OP(b, gemm_lowp);
}

/* *finite = no Inf or NaN in the M x N block of C (ld ldc). */
static int block_finite(loom_backend *b, const float *C, int64_t M, int64_t N, int64_t ldc, bool *finite) {
  int rc = 0;
  *finite = true;
  for (int64_t i = 0; rc == 0 && *finite && i < M; i += ldc == N ? M : 1)
    rc = b->ops.all_finite(b->ctx, C + i * ldc, ldc == N ? M * N : N, finite);
  return rc;
}

static int gemm_checked(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                        const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                        bool *finite) {
  if (b->ops.gemm_checked)
    return b->ops.gemm_checked(b->ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, finite);
  int rc = b->ops.gemm(b->ctx, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return rc < 0 ? rc : block_finite(b, C, M, N, ldc, finite);
}

/* A product under autocast (finite: checked): the backend's own in the
 * format where it has one (gemm_lowp), else gemm on operands rounded into
 * fp32 copies. */
static int autocast_gemm(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                         const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                         bool *finite) {
  int rc;
  if (b->ops.gemm_lowp && (!finite || b->ops.all_finite)) {
    rc = gemm_lowp_op(b, loom_backend_autocast(), ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return rc < 0 || !finite ? rc : block_finite(b, C, M, N, ldc, finite);
  }
  loom_autocast_gemm g = {.A = A, .B = B, .lda = lda, .ldb = ldb};
  if ((rc = loom_autocast_operands(b, &g, ta, tb, M, N, K)) == 0)
    rc = finite ? gemm_checked(b, ta, tb, M, N, K, alpha, g.A, g.lda, g.B, g.ldb, beta, C, ldc, finite)
                : gemm_op(b, ta, tb, M, N, K, alpha, g.A, g.lda, g.B, g.ldb, beta, C, ldc);
  loom_autocast_release(b, &g); /* while a log is open, the copies are freed at its end */
  return rc;
}

int loom_backend_gemm(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  int rc = ready(b, LOOM_OP_GEMM);
  if (rc < 0 || !loom_autocast_applies(b) || M == 0 || N == 0 || K == 0) /* nothing to round */
    return rc < 0 ? rc : gemm_op(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return autocast_gemm(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
}

int loom_backend_gemm_checked(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                              int64_t ldc, bool *finite) {
  int rc = ready(b, LOOM_OP_GEMM_CHECKED);
  if (rc == 0)
    rc = loom_op_log_flush(b);
  if (rc < 0 || !loom_autocast_applies(b) || M == 0 || N == 0 || K == 0) /* nothing to round */
    return rc < 0 ? rc : gemm_checked(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, finite);
  return autocast_gemm(b, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, finite);
}

int loom_backend_fill_rows(loom_backend *b, float *y, const float *row, int64_t rows, int64_t cols) {
  int rc = ready(b, LOOM_OP_FILL_ROWS);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, fill_rows);
}

int loom_backend_sum_rows(loom_backend *b, float *sum, const float *x, int64_t rows, int64_t cols) {
  int rc = ready(b, LOOM_OP_SUM_ROWS);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, sum_rows);
}

int loom_backend_act_forward(loom_backend *b, loom_activation act, float param, const float *x, float *y, int64_t n) {
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_forward: unknown activation %d", (int)act);
  int rc = ready(b, LOOM_OP_ACT_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, act_forward);
}

int loom_backend_act_backward(loom_backend *b, loom_activation act, float param, const float *x, const float *y,
                              const float *dy, float *dx, int64_t n) {
  if (act >= LOOM_ACT_COUNT)
    return loom_error_set(LOOM_EINVAL, "act_backward: unknown activation %d", (int)act);
  int rc = ready(b, LOOM_OP_ACT_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, act_backward);
}

int loom_backend_xent_forward(loom_backend *b, const float *logits, const float *targets, const float *weights,
                              float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  int rc = ready(b, LOOM_OP_XENT_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, xent_forward);
}

int loom_backend_xent_backward(loom_backend *b, const float *probs, const float *targets, const float *weights,
                               float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  int rc = ready(b, LOOM_OP_XENT_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, xent_backward);
}

int loom_backend_loss_forward(loom_backend *b, loom_pointwise_loss loss, float param, const float *out,
                              const float *target, int64_t n, double *sum) {
  if (loss >= LOOM_LOSS_COUNT)
    return loom_error_set(LOOM_EINVAL, "loss_forward: unknown loss %d", (int)loss);
  int rc = ready(b, LOOM_OP_LOSS_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, loss_forward);
}

int loom_backend_loss_backward(loom_backend *b, loom_pointwise_loss loss, float param, const float *out,
                               const float *target, float scale, int64_t n, float *dout) {
  if (loss >= LOOM_LOSS_COUNT)
    return loom_error_set(LOOM_EINVAL, "loss_backward: unknown loss %d", (int)loss);
  int rc = ready(b, LOOM_OP_LOSS_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, loss_backward);
}

int loom_backend_dropout_forward(loom_backend *b, uint64_t key, float p, const float *x, float *y, float *mask,
                                 int64_t n) {
  int rc = ready(b, LOOM_OP_DROPOUT_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, dropout_forward);
}

int loom_backend_mul(loom_backend *b, const float *a, const float *c, float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_MUL);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, mul);
}

int loom_backend_add(loom_backend *b, const float *a, const float *c, float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_ADD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, add);
}

/* A plan is made for its forward; the backward's slot is checked when it runs. */
int loom_backend_conv_plan(loom_backend *b, const loom_conv_desc *desc, loom_plan **plan) {
  *plan = NULL;
  int rc = ready(b, LOOM_OP_CONV_FORWARD);
  return rc < 0 ? rc : b->ops.conv_plan(b->ctx, desc, plan);
}

int loom_backend_conv_forward(loom_backend *b, loom_plan *plan, const float *x, const float *w, const float *bias,
                              float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_CONV_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, conv_forward);
}

int loom_backend_conv_backward(loom_backend *b, loom_plan *plan, const float *x, const float *w, const float *dy,
                               float *dw, float *dbias, float *dx, int64_t n) {
  int rc = ready(b, LOOM_OP_CONV_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, conv_backward);
}

int loom_backend_pool_plan(loom_backend *b, const loom_pool_desc *desc, loom_plan **plan) {
  *plan = NULL;
  int rc = ready(b, LOOM_OP_POOL_FORWARD);
  return rc < 0 ? rc : b->ops.pool_plan(b->ctx, desc, plan);
}

int loom_backend_pool_forward(loom_backend *b, loom_plan *plan, const float *x, float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_POOL_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, pool_forward);
}

int loom_backend_pool_backward(loom_backend *b, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  int rc = ready(b, LOOM_OP_POOL_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, pool_backward);
}

int loom_backend_batchnorm_plan(loom_backend *b, const loom_batchnorm_desc *desc, loom_plan **plan) {
  *plan = NULL;
  int rc = ready(b, LOOM_OP_BATCHNORM_FORWARD);
  return rc < 0 ? rc : b->ops.batchnorm_plan(b->ctx, desc, plan);
}

int loom_backend_batchnorm_forward(loom_backend *b, loom_plan *plan, bool train, const float *x, const float *gamma,
                                   const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  int rc = ready(b, LOOM_OP_BATCHNORM_FORWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, batchnorm_forward);
}

int loom_backend_batchnorm_backward(loom_backend *b, loom_plan *plan, const float *x, const float *gamma,
                                    const float *beta, const float *dy, float *dgamma, float *dbeta, float *dx,
                                    int64_t n) {
  int rc = ready(b, LOOM_OP_BATCHNORM_BACKWARD);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, batchnorm_backward);
}

void loom_backend_plan_destroy(loom_backend *b, loom_plan *plan) {
  if (!b || !plan || !b->ops.plan_destroy || loom_op_log_defer_free(b, plan, true))
    return;
  loom_op_log_forget_block(b, plan);
  loom_op_log_forget_plan(b, plan);
  b->ops.plan_destroy(b->ctx, plan);
}

int loom_backend_plan_block(loom_backend *b, const loom_layer_desc *layers, int count, loom_block *block) {
  *block = (loom_block){0};
  if (!b || !loom_backend_supports(b, LOOM_OP_BLOCK) || count < 2)
    return 0; /* no fusion: the layers run one by one */
  int rc = b->ops.plan_block(b->ctx, layers, count, block);
  if (rc == 0 && block->count < 2 && block->plan) { /* a plan for no block would leak */
    b->ops.plan_destroy(b->ctx, block->plan);
    block->plan = NULL;
  }
  if (rc == 0 && block->count > count) {
    b->ops.plan_destroy(b->ctx, block->plan);
    int got = block->count;
    *block = (loom_block){0};
    return loom_error_set(LOOM_EINVAL, "backend \"%s\" planned a block of %d layers out of %d", loom_backend_name(b),
                          got, count);
  }
  if (rc == 0 && block->plan && (rc = loom_op_log_note_block(b, block->plan, block->count)) < 0) {
    b->ops.plan_destroy(b->ctx, block->plan);
    *block = (loom_block){0};
  }
  return rc;
}

int loom_backend_block_forward(loom_backend *b, loom_plan *plan, bool train, const float *x, const loom_block_io *io,
                               int64_t n) {
  int rc = ready(b, LOOM_OP_BLOCK);
  const int layers = loom_op_log_block_layers(b, plan); /* io's length, for the log */
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, block_forward);
}

int loom_backend_block_backward(loom_backend *b, loom_plan *plan, int first, const float *x, const loom_block_io *io,
                                float *dx, int64_t n) {
  int rc = ready(b, LOOM_OP_BLOCK);
  const int layers = loom_op_log_block_layers(b, plan); /* io's length, for the log */
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, block_backward);
}

void loom_backend_set_update_gate(loom_backend *b, const int *gate) { b->gate = gate; }

/* The updates: the step as given, with the backend's gate if one is set. */
int loom_backend_sgd_update(loom_backend *b, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  loom_sgd_step step = *s;
  step.gate = b->gate ? b->gate : s->gate;
  int rc = ready(b, LOOM_OP_SGD_UPDATE);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, sgd_update);
}

int loom_backend_adam_update(loom_backend *b, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                             int64_t n) {
  loom_adam_step step = *s;
  step.gate = b->gate ? b->gate : s->gate;
  int rc = ready(b, LOOM_OP_ADAM_UPDATE);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, adam_update);
}

int loom_backend_rmsprop_update(loom_backend *b, const loom_rmsprop_step *s, float *p, const float *g, float *sq,
                                float *buf, float *avg, int64_t n) {
  loom_rmsprop_step step = *s;
  step.gate = b->gate ? b->gate : s->gate;
  int rc = ready(b, LOOM_OP_RMSPROP_UPDATE);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, rmsprop_update);
}

/* The rule's own op on one range, with the range's rate and decay. */
static int update_range(loom_backend *b, const loom_update_step *s, const loom_update_range *r, float *p,
                        const float *g, float *state, int64_t total) {
  const int64_t o = r->off;
  switch (s->rule) {
  case LOOM_RULE_SGD: {
    loom_sgd_step k = s->u.sgd;
    k.lr = r->lr, k.weight_decay = r->wd;
    return loom_backend_sgd_update(b, &k, p + o, g + o, state ? state + o : NULL, r->len);
  }
  case LOOM_RULE_ADAM: {
    loom_adam_step k = s->u.adam;
    k.lr = r->lr, k.weight_decay = r->wd;
    return loom_backend_adam_update(b, &k, p + o, g + o, state + o, state + total + o, r->len);
  }
  case LOOM_RULE_RMSPROP: {
    loom_rmsprop_step k = s->u.rmsprop;
    k.lr = r->lr, k.weight_decay = r->wd;
    return loom_backend_rmsprop_update(b, &k, p + o, g + o, state + o, state + total + o, state + 2 * total + o,
                                       r->len);
  }
  }
  return loom_error_set(LOOM_EINVAL, "update_ranges: unknown rule %d", (int)s->rule);
}

int loom_backend_update_ranges(loom_backend *b, const loom_update_step *s, const loom_update_range *ranges,
                               int nranges, float *p, const float *g, float *state, int64_t total) {
  if ((unsigned)s->rule > LOOM_RULE_RMSPROP)
    return loom_error_set(LOOM_EINVAL, "update_ranges: unknown rule %d", (int)s->rule);
  if (s->rule != LOOM_RULE_SGD && !state)
    return loom_error_set(LOOM_EINVAL, "update_ranges: the %s rule needs its state", s->rule == LOOM_RULE_ADAM
                                                                                          ? "Adam" : "RMSprop");
  for (int i = 0; i < nranges; i++)
    if (ranges[i].off < (i ? ranges[i - 1].off + ranges[i - 1].len : 0) || ranges[i].len < 0 ||
        ranges[i].off + ranges[i].len > total)
      return loom_error_set(LOOM_EINVAL, "update_ranges: range %d [%lld, +%lld) is not sorted, disjoint and inside "
                                         "the %lld parameters",
                            i, (long long)ranges[i].off, (long long)ranges[i].len, (long long)total);
  if (nranges <= 0) /* nothing to update (every layer frozen): no op, none in a log (whose empty table a graph lacks) */
    return 0;
  if (!b->ops.update_ranges) {
    int rc = 0;
    for (int i = 0; i < nranges && rc == 0; i++)
      rc = update_range(b, s, &ranges[i], p, g, state, total);
    return rc;
  }
  loom_update_step step = *s;
  if (b->gate && s->rule == LOOM_RULE_SGD)
    step.u.sgd.gate = b->gate;
  else if (b->gate && s->rule == LOOM_RULE_ADAM)
    step.u.adam.gate = b->gate;
  else if (b->gate)
    step.u.rmsprop.gate = b->gate;
  LOOM_RUN_OP(b, update_ranges);
}

int loom_backend_sum_squares(loom_backend *b, const float *x, int64_t n, double *sum) {
  int rc = ready(b, LOOM_OP_SUM_SQUARES);
  if (rc == 0)
    rc = loom_op_log_flush(b);
  return rc < 0 ? rc : b->ops.sum_squares(b->ctx, x, n, sum);
}

int loom_backend_scale(loom_backend *b, float *x, float a, int64_t n) {
  int rc = ready(b, LOOM_OP_SCALE);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, scale);
}

int loom_backend_clamp(loom_backend *b, float *x, float limit, int64_t n) {
  int rc = ready(b, LOOM_OP_CLAMP);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, clamp);
}

int loom_backend_topk_hits(loom_backend *b, const float *scores, const float *targets, int64_t n, int64_t c,
                           const int *ks, int nk, int64_t *hits, int64_t *bad) {
  if (nk < 1 || nk > LOOM_TOPK_MAX)
    return loom_error_set(LOOM_EINVAL, "topk_hits: between 1 and %d values of k, got %d", LOOM_TOPK_MAX, nk);
  int rc = ready(b, LOOM_OP_TOPK_HITS);
  if (rc == 0)
    rc = loom_op_log_flush(b);
  return rc < 0 ? rc : b->ops.topk_hits(b->ctx, scores, targets, n, c, ks, nk, hits, bad);
}

int loom_backend_all_finite(loom_backend *b, const float *x, int64_t n, bool *finite) {
  int rc = ready(b, LOOM_OP_ALL_FINITE);
  if (rc == 0)
    rc = loom_op_log_flush(b);
  return rc < 0 ? rc : b->ops.all_finite(b->ctx, x, n, finite);
}

int loom_backend_flag_nonfinite(loom_backend *b, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  int rc = ready(b, LOOM_OP_FLAG_NONFINITE);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, flag_nonfinite);
}

int loom_backend_set_if(loom_backend *b, const int *flag, float *x, float value) {
  int rc = ready(b, LOOM_OP_SET_IF);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, set_if);
}

int loom_backend_round(loom_backend *b, loom_precision prec, const float *x, float *y, int64_t n) {
  if ((unsigned)prec > LOOM_PRECISION_FP16)
    return loom_error_set(LOOM_EINVAL, "round: precision %d is none of loom_precision's", (int)prec);
  int rc = ready(b, LOOM_OP_ROUND);
  if (rc < 0)
    return rc;
  LOOM_RUN_OP(b, round);
}
