/* The CUDA backend's elementwise ops, losses, reductions and checks: each
 * the launch of its kernel of kernels.cu on the backend's stream. */
#include <string.h>

#include "backends/cuda/context.h"
#include "backends/cuda/kernels.h"

int loom_cuda_op_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_fill_rows(c->stream, y, row, rows, cols), "fill_rows");
}

int loom_cuda_op_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_sum_rows(c->stream, sum, x, rows, cols), "sum_rows");
}

int loom_cuda_op_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_act_forward(c->stream, act, param, x, y, n), "act_forward");
}

int loom_cuda_op_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                              const float *dy, float *dx, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_act_backward(c->stream, act, param, x, y, dy, dx, n), "act_backward");
}

/* Under a capture the key is the graph's, in device memory, rewritten
 * before each launch (graph.c): a batch's mask is its own key's. */
int loom_cuda_op_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0 || !c->capture)
    return rc < 0 ? rc : launched(c, loom_cuda_dropout_forward(c->stream, key, p, x, y, mask, n), "dropout_forward");
  void *device;
  if ((rc = loom_cuda_capture_value(c, GRAPH_KEY, &key, sizeof key, false, &device)) < 0)
    return rc;
  return launched(c, loom_cuda_dropout_forward_at(c->stream, device, p, x, y, mask, n), "dropout_forward");
}

int loom_cuda_op_mul(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_mul(c->stream, a, b, y, n), "mul");
}

int loom_cuda_op_add(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_add(c->stream, a, b, y, n), "add");
}

/* A small device result to the host: the one wait of a reduction. */
static int read_back(cuda_ctx *c, void *host, const void *dev, size_t bytes) {
  int rc = launched(c, cudaMemcpyAsync(c->host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "cudaMemcpyAsync");
  if (rc == 0)
    rc = launched(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
  if (rc == 0)
    memcpy(host, c->host, bytes);
  return rc;
}

/* In double, in a fixed tree order for each n (the CPU's sums in index
 * order: the two differ by double rounding, about 1e-16 relative). */
int loom_cuda_op_sum_squares(void *ctx, const float *x, int64_t n, double *sum) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, loom_cuda_sum_squares(c->stream, x, n, c->partials, c->partials + LOOM_CUDA_REDUCE_BLOCKS),
                  "sum_squares");
  return rc < 0 ? rc : read_back(c, sum, c->partials + LOOM_CUDA_REDUCE_BLOCKS, sizeof *sum);
}

/* The criteria: the sums in double in a fixed tree (see sum_squares). */
int loom_cuda_op_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                              float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  cuda_ctx *cc = ctx;
  int rc = enter(cc);
  return rc < 0 ? rc
                : launched(cc, loom_cuda_xent_forward(cc->stream, logits, targets, weights, smoothing, n, c, probs,
                                                      cc->partials, sums),
                           "xent_forward");
}

int loom_cuda_op_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                               float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  cuda_ctx *cc = ctx;
  int rc = enter(cc);
  return rc < 0 ? rc
                : launched(cc, loom_cuda_xent_backward(cc->stream, probs, targets, weights, smoothing, scale, n, c,
                                                       dlogits),
                           "xent_backward");
}

int loom_cuda_op_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                              int64_t n, double *sum) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc
                : launched(c, loom_cuda_loss_forward(c->stream, loss, param, out, target, n, c->partials, sum),
                           "loss_forward");
}

int loom_cuda_op_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                               float scale, int64_t n, float *dout) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc
                : launched(c, loom_cuda_loss_backward(c->stream, loss, param, out, target, scale, n, dout),
                           "loss_backward");
}

/* The counts written where they are asked for (the backend's memory): no
 * wait. The first bad sample is an atomic minimum from all ones, which
 * reads as -1 when every target is a class. */
int loom_cuda_op_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                           int nk, int64_t *hits, int64_t *bad) {
  cuda_ctx *cc = ctx;
  loom_cuda_topk k = {.nk = nk};
  memcpy(k.ks, ks, (size_t)nk * sizeof *ks);
  int rc = enter(cc);
  if (rc == 0)
    rc = launched(cc, cudaMemsetAsync(hits, 0, (size_t)nk * sizeof *hits, cc->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(cc, cudaMemsetAsync(bad, 0xff, sizeof *bad, cc->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(cc,
                  loom_cuda_topk_hits(cc->stream, scores, targets, n, c, k, (unsigned long long *)(void *)hits,
                                      (unsigned long long *)(void *)bad),
                  "topk_hits");
  return rc;
}

int loom_cuda_op_scale(void *ctx, float *x, float a, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_scale(c->stream, x, a, n), "scale");
}

int loom_cuda_op_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_round(c->stream, p, x, y, n), "round");
}

int loom_cuda_op_clamp(void *ctx, float *x, float limit, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_clamp(c->stream, x, limit, n), "clamp");
}

int loom_cuda_op_all_finite(void *ctx, const float *x, int64_t n, bool *finite) {
  cuda_ctx *c = ctx;
  int bad = 0;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaMemsetAsync(c->flag, 0, sizeof *c->flag, c->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(c, loom_cuda_any_nonfinite(c->stream, x, n, c->flag), "all_finite");
  if (rc == 0)
    rc = read_back(c, &bad, c->flag, sizeof bad);
  *finite = rc == 0 && !bad;
  return rc;
}

int loom_cuda_op_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0 && n > 0)
    rc = launched(c, loom_cuda_any_nonfinite(c->stream, x, n, flag), "flag_nonfinite");
  if (rc == 0 && nd > 0)
    rc = launched(c, loom_cuda_any_nonfinite_f64(c->stream, d, nd, flag), "flag_nonfinite (doubles)");
  return rc;
}

int loom_cuda_op_set_if(void *ctx, const int *flag, float *x, float value) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_set_if(c->stream, flag, x, value), "set_if");
}

