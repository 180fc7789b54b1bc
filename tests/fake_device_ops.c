/* The fake device's ops but the planned ones: the operands checked, then
 * the CPU backend's op on their real addresses (fake_device.h). */
#include "fake_device_impl.h"

#include <stdio.h>
#include <stdlib.h>

#include <loom/backend_cpu.h>

static void count_op(fake_device *d, bool host_result) {
  pthread_mutex_lock(&d->lock);
  d->counts.ops++;
  d->counts.host_results += host_result;
  pthread_mutex_unlock(&d->lock);
}

/* Elements spanned by `rows` rows of `cols` with leading dimension ld. */
static size_t span(int64_t rows, int64_t cols, int64_t ld) { return rows > 0 && cols > 0 ? F((rows - 1) * ld + cols) : 0; }

loom_backend *fake_cpu(fake_device *d, bool host_result) {
  count_op(d, host_result);
  return loom_backend_cpu();
}

/* An optimizer's update op: counted as such too. */
static loom_backend *cpu_update(fake_device *d) {
  pthread_mutex_lock(&d->lock);
  d->counts.updates++;
  pthread_mutex_unlock(&d->lock);
  return fake_cpu(d, false);
}

static void gemm_extents(fake_device *d, const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                         const float **A, int64_t lda, const float **B, int64_t ldb, float **C, int64_t ldc) {
  *A = fake_real(d, op, "A", *A, ta ? span(K, M, lda) : span(M, K, lda));
  *B = fake_real(d, op, "B", *B, tb ? span(N, K, ldb) : span(K, N, ldb));
  *C = fake_real(d, op, "C", *C, span(M, N, ldc));
}

int fake_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  gemm_extents(ctx, "gemm", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  return CPU_OP(ctx, fake_cpu(ctx, false), gemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The product of operands rounded to p, as the CPU computes it under that
 * autocast: the core's fallback's bits (a CUDA backend stores them as p). */
int fake_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                   int64_t ldc) {
  fake_device *d = ctx;
  gemm_extents(d, "gemm_lowp", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  if (p != LOOM_PRECISION_BF16 && p != LOOM_PRECISION_FP16) {
    fprintf(stderr, "fake device: gemm_lowp in precision %d\n", (int)p);
    abort();
  }
  pthread_mutex_lock(&d->lock);
  d->counts.lowp_gemms += !d->capturing;
  pthread_mutex_unlock(&d->lock);
  /* The 16-bit copies of both operands a CUDA backend makes. */
  void *copies = fake_op_scratch(d, (size_t)(M * K + K * N) * 2);
  const loom_precision before = loom_backend_set_autocast(p);
  int rc = CPU_OP(ctx, fake_cpu(ctx, false), gemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  loom_backend_set_autocast(before);
  fake_op_scratch_done(d, copies);
  return rc;
}

int fake_gemm_checked(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc, bool *finite) {
  gemm_extents(ctx, "gemm_checked", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  fake_host("gemm_checked", "finite", finite);
  return CPU_OP(ctx, fake_cpu(ctx, true), gemm_checked, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, finite);
}

int fake_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols) {
  y = fake_real(ctx, "fill_rows", "y", y, F(rows * cols));
  row = fake_real(ctx, "fill_rows", "row", row, F(cols));
  return CPU_OP(ctx, fake_cpu(ctx, false), fill_rows, y, row, rows, cols);
}

int fake_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols) {
  sum = fake_real(ctx, "sum_rows", "sum", sum, F(cols));
  x = fake_real(ctx, "sum_rows", "x", x, F(rows * cols));
  return CPU_OP(ctx, fake_cpu(ctx, false), sum_rows, sum, x, rows, cols);
}

int fake_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n) {
  x = fake_real(ctx, "act_forward", "x", x, F(n));
  y = fake_real(ctx, "act_forward", "y", y, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), act_forward, act, param, x, y, n);
}

int fake_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                      const float *dy, float *dx, int64_t n) {
  x = fake_real(ctx, "act_backward", "x", x, F(n));
  y = fake_real(ctx, "act_backward", "y", y, F(n));
  dy = fake_real(ctx, "act_backward", "dy", dy, F(n));
  dx = fake_real(ctx, "act_backward", "dx", dx, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), act_backward, act, param, x, y, dy, dx, n);
}

int fake_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                      float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  logits = fake_real(ctx, "xent_forward", "logits", logits, F(n * c));
  targets = fake_real(ctx, "xent_forward", "targets", targets, F(n));
  weights = fake_real(ctx, "xent_forward", "weights", weights, F(c));
  probs = fake_real(ctx, "xent_forward", "probs", probs, F(n * c));
  sums = fake_real(ctx, "xent_forward", "sums", sums, 2 * sizeof *sums);
  return CPU_OP(ctx, fake_cpu(ctx, false), xent_forward, logits, targets, weights, smoothing, n, c, probs, sums);
}

int fake_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                       float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  probs = fake_real(ctx, "xent_backward", "probs", probs, F(n * c));
  targets = fake_real(ctx, "xent_backward", "targets", targets, F(n));
  weights = fake_real(ctx, "xent_backward", "weights", weights, F(c));
  dlogits = fake_real(ctx, "xent_backward", "dlogits", dlogits, F(n * c));
  return CPU_OP(ctx, fake_cpu(ctx, false), xent_backward, probs, targets, weights, smoothing, scale, n, c, dlogits);
}

int fake_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                      int64_t n, double *sum) {
  out = fake_real(ctx, "loss_forward", "out", out, F(n));
  target = fake_real(ctx, "loss_forward", "target", target, F(n));
  sum = fake_real(ctx, "loss_forward", "sum", sum, sizeof *sum);
  return CPU_OP(ctx, fake_cpu(ctx, false), loss_forward, loss, param, out, target, n, sum);
}

int fake_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out,
                       const float *target, float scale, int64_t n, float *dout) {
  out = fake_real(ctx, "loss_backward", "out", out, F(n));
  target = fake_real(ctx, "loss_backward", "target", target, F(n));
  dout = fake_real(ctx, "loss_backward", "dout", dout, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), loss_backward, loss, param, out, target, scale, n, dout);
}

int fake_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  x = fake_real(ctx, "dropout_forward", "x", x, F(n));
  y = fake_real(ctx, "dropout_forward", "y", y, F(n));
  mask = fake_real(ctx, "dropout_forward", "mask", mask, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), dropout_forward, key, p, x, y, mask, n);
}

int fake_mul(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  a = fake_real(ctx, "mul", "a", a, F(n));
  b = fake_real(ctx, "mul", "b", b, F(n));
  y = fake_real(ctx, "mul", "y", y, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), mul, a, b, y, n);
}

int fake_add(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  a = fake_real(ctx, "add", "a", a, F(n));
  b = fake_real(ctx, "add", "b", b, F(n));
  y = fake_real(ctx, "add", "y", y, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), add, a, b, y, n);
}

int fake_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n) {
  x = fake_real(ctx, "round", "x", x, F(n));
  y = fake_real(ctx, "round", "y", y, F(n));
  return CPU_OP(ctx, fake_cpu(ctx, false), round, p, x, y, n);
}

/* --- optimizers and gradients --- */

int fake_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  p = fake_real(ctx, "sgd_update", "p", p, F(n)), g = fake_real(ctx, "sgd_update", "g", g, F(n));
  buf = fake_real(ctx, "sgd_update", "buf", buf, F(n));
  fake_host("sgd_update", "the step", s);
  loom_sgd_step step = *s;
  step.gate = fake_real(ctx, "sgd_update", "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), sgd_update, &step, p, g, buf, n);
}

int fake_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                     int64_t n) {
  p = fake_real(ctx, "adam_update", "p", p, F(n)), g = fake_real(ctx, "adam_update", "g", g, F(n));
  m = fake_real(ctx, "adam_update", "m", m, F(n)), v = fake_real(ctx, "adam_update", "v", v, F(n));
  fake_host("adam_update", "the step", s);
  loom_adam_step step = *s;
  step.gate = fake_real(ctx, "adam_update", "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), adam_update, &step, p, g, m, v, n);
}

int fake_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                        float *avg, int64_t n) {
  const char *op = "rmsprop_update";
  p = fake_real(ctx, op, "p", p, F(n)), g = fake_real(ctx, op, "g", g, F(n)), sq = fake_real(ctx, op, "sq", sq, F(n));
  buf = fake_real(ctx, op, "buf", buf, F(n)), avg = fake_real(ctx, op, "avg", avg, F(n));
  fake_host(op, "the step", s);
  loom_rmsprop_step step = *s;
  step.gate = fake_real(ctx, op, "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), rmsprop_update, &step, p, g, sq, buf, avg, n);
}

int fake_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
                       float *p, const float *g, float *state, int64_t total) {
  const char *op = "update_ranges";
  const int arrays = s->rule == LOOM_RULE_SGD ? 1 : s->rule == LOOM_RULE_ADAM ? 2 : 3;
  p = fake_real(ctx, op, "p", p, F(total)), g = fake_real(ctx, op, "g", g, F(total));
  state = fake_real(ctx, op, "state", state, F(arrays * total));
  fake_host(op, "the step", s), fake_host(op, "the ranges", ranges);
  loom_update_step step = *s;
  if (s->rule == LOOM_RULE_SGD)
    step.u.sgd.gate = fake_real(ctx, op, "the gate", s->u.sgd.gate, sizeof(int));
  else if (s->rule == LOOM_RULE_ADAM)
    step.u.adam.gate = fake_real(ctx, op, "the gate", s->u.adam.gate, sizeof(int));
  else
    step.u.rmsprop.gate = fake_real(ctx, op, "the gate", s->u.rmsprop.gate, sizeof(int));
  return CPU_OP(ctx, cpu_update(ctx), update_ranges, &step, ranges, nranges, p, g, state, total);
}

int fake_sum_squares(void *ctx, const float *x, int64_t n, double *sum) {
  x = fake_real(ctx, "sum_squares", "x", x, F(n));
  fake_host("sum_squares", "sum", sum);
  return CPU_OP(ctx, fake_cpu(ctx, true), sum_squares, x, n, sum);
}

int fake_scale(void *ctx, float *x, float a, int64_t n) {
  return CPU_OP(ctx, fake_cpu(ctx, false), scale, fake_real(ctx, "scale", "x", x, F(n)), a, n);
}

int fake_clamp(void *ctx, float *x, float limit, int64_t n) {
  return CPU_OP(ctx, fake_cpu(ctx, false), clamp, fake_real(ctx, "clamp", "x", x, F(n)), limit, n);
}

int fake_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  x = fake_real(ctx, "flag_nonfinite", "x", x, F(n));
  d = fake_real(ctx, "flag_nonfinite", "d", d, (size_t)nd * sizeof *d);
  flag = fake_real(ctx, "flag_nonfinite", "flag", flag, sizeof *flag);
  return CPU_OP(ctx, fake_cpu(ctx, false), flag_nonfinite, x, n, d, nd, flag);
}

int fake_set_if(void *ctx, const int *flag, float *x, float value) {
  flag = fake_real(ctx, "set_if", "flag", flag, sizeof *flag);
  x = fake_real(ctx, "set_if", "x", x, F(1));
  return CPU_OP(ctx, fake_cpu(ctx, false), set_if, flag, x, value);
}

int fake_all_finite(void *ctx, const float *x, int64_t n, bool *finite) {
  x = fake_real(ctx, "all_finite", "x", x, F(n));
  fake_host("all_finite", "finite", finite);
  return CPU_OP(ctx, fake_cpu(ctx, true), all_finite, x, n, finite);
}

int fake_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                   int nk, int64_t *hits, int64_t *bad) {
  scores = fake_real(ctx, "topk_hits", "scores", scores, F(n * c));
  targets = fake_real(ctx, "topk_hits", "targets", targets, F(n));
  hits = fake_real(ctx, "topk_hits", "hits", hits, (size_t)nk * sizeof *hits);
  bad = fake_real(ctx, "topk_hits", "bad", bad, sizeof *bad);
  fake_host("topk_hits", "ks", ks);
  return CPU_OP(ctx, fake_cpu(ctx, false), topk_hits, scores, targets, n, c, ks, nk, hits, bad);
}
