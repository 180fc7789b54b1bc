/* The CPU backend's table: host memory, and the kernels of this folder. */
#include "loom/backend_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/kernels.h"
#include "backends/cpu/nn.h"
#include "core/error_internal.h"

static void *cpu_alloc(void *ctx, size_t bytes) {
  (void)ctx;
  /* 64-byte alignment keeps AVX-512 loads aligned for BLAS and our loops. */
  size_t rounded = ((bytes ? bytes : 1) + 63) & ~(size_t)63;
  void *p = aligned_alloc(64, rounded);
  if (!p)
    loom_error_set(LOOM_ENOMEM, "CPU backend: out of memory allocating %zu bytes", bytes);
  return p;
}

static void cpu_free(void *ctx, void *ptr) {
  (void)ctx;
  free(ptr);
}

static int cpu_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  (void)ctx;
  if (bytes)
    memmove(dst, src, bytes);
  return 0;
}

static int cpu_zero(void *ctx, void *ptr, size_t bytes) {
  (void)ctx;
  memset(ptr, 0, bytes);
  return 0;
}

static int cpu_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                    int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  (void)ctx;
  loom_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return 0;
}

static int cpu_gemm_checked(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                            const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                            bool *finite) {
  (void)ctx;
  *finite = loom_gemm_checked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  return 0;
}

static int cpu_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols) {
  (void)ctx;
  for (int64_t i = 0; i < rows; i++)
    memcpy(y + i * cols, row, (size_t)cols * sizeof *row);
  return 0;
}

static int cpu_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols) {
  (void)ctx;
  float *restrict s = sum;
  const float *restrict g = x;
  for (int64_t i = 0; i < rows; i++)
    for (int64_t j = 0; j < cols; j++)
      s[j] += g[i * cols + j];
  return 0;
}

static int cpu_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n) {
  (void)ctx;
  loom_cpu_act_forward(act, param, x, y, n);
  return 0;
}

static int cpu_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                            const float *dy, float *dx, int64_t n) {
  (void)ctx;
  loom_cpu_act_backward(act, param, x, y, dy, dx, n);
  return 0;
}

static int cpu_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                            float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  (void)ctx;
  loom_cpu_xent_forward(logits, targets, weights, smoothing, n, c, probs, &sums[0], &sums[1]);
  return 0;
}

static int cpu_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                             float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  (void)ctx;
  loom_cpu_xent_backward(probs, targets, weights, smoothing, scale, n, c, dlogits);
  return 0;
}

static int cpu_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                            int64_t n, double *sum) {
  (void)ctx;
  *sum = loom_cpu_loss_forward(loss, param, out, target, n);
  return 0;
}

static int cpu_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                             float scale, int64_t n, float *dout) {
  (void)ctx;
  loom_cpu_loss_backward(loss, param, out, target, scale, n, dout);
  return 0;
}

static int cpu_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                         int nk, int64_t *hits, int64_t *bad) {
  (void)ctx;
  loom_cpu_topk_hits(scores, targets, n, c, ks, nk, hits, bad);
  return 0;
}

static int cpu_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  (void)ctx;
  loom_cpu_dropout_forward(key, p, x, y, mask, n);
  return 0;
}

static int cpu_mul(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  (void)ctx;
  loom_cpu_mul(a, b, y, n);
  return 0;
}

static int cpu_add(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  (void)ctx;
  loom_cpu_add(a, b, y, n);
  return 0;
}

static int cpu_conv_plan(void *ctx, const loom_conv_desc *desc, loom_plan **plan) {
  (void)ctx;
  return loom_cpu_conv_plan(desc, plan);
}

static int cpu_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                            int64_t n) {
  (void)ctx;
  return loom_cpu_conv_forward(plan, x, w, bias, y, n, NULL);
}

static int cpu_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                             float *dbias, float *dx, int64_t n) {
  (void)ctx;
  return loom_cpu_conv_backward(plan, x, w, dy, dw, dbias, dx, n);
}

static int cpu_pool_plan(void *ctx, const loom_pool_desc *desc, loom_plan **plan) {
  (void)ctx;
  return loom_cpu_pool_plan(desc, plan);
}

static int cpu_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n) {
  (void)ctx;
  return loom_cpu_pool_forward(plan, x, y, n);
}

static int cpu_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  (void)ctx;
  return loom_cpu_pool_backward(plan, dy, dx, n);
}

static int cpu_batchnorm_plan(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan) {
  (void)ctx;
  return loom_cpu_batchnorm_plan(desc, plan);
}

static int cpu_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  (void)ctx;
  return loom_cpu_batchnorm_forward(plan, train, x, gamma, beta, running_mean, running_var, y, n, NULL);
}

static int cpu_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n) {
  (void)ctx;
  return loom_cpu_batchnorm_backward(plan, x, gamma, beta, dy, dgamma, dbeta, dx, n, NULL);
}

static void cpu_plan_destroy(void *ctx, loom_plan *plan) {
  (void)ctx;
  switch (plan->kind) {
  case CPU_PLAN_CONV: loom_cpu_conv_destroy(plan); break;
  case CPU_PLAN_POOL: loom_cpu_pool_destroy(plan); break;
  case CPU_PLAN_BATCHNORM: loom_cpu_batchnorm_destroy(plan); break;
  case CPU_PLAN_BLOCK: loom_cpu_block_destroy(plan); break;
  }
}

static int cpu_plan_block(void *ctx, const loom_layer_desc *layers, int count, loom_block *block) {
  (void)ctx;
  return loom_cpu_plan_block(layers, count, block);
}

static int cpu_block_forward(void *ctx, loom_plan *plan, bool train, const float *x, const loom_block_io *io,
                             int64_t n) {
  (void)ctx;
  return loom_cpu_block_forward(plan, train, x, io, n);
}

static int cpu_block_backward(void *ctx, loom_plan *plan, int first, const float *x, const loom_block_io *io,
                              float *dx, int64_t n) {
  (void)ctx;
  return loom_cpu_block_backward(plan, first, x, io, dx, n);
}

static int cpu_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  (void)ctx;
  if (!(s->gate && *s->gate)) /* held back by the gate */
    loom_cpu_sgd_update(s, p, g, buf, n);
  return 0;
}

static int cpu_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                           int64_t n) {
  (void)ctx;
  if (!(s->gate && *s->gate))
    loom_cpu_adam_update(s, p, g, m, v, n);
  return 0;
}

static int cpu_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                              float *avg, int64_t n) {
  (void)ctx;
  if (!(s->gate && *s->gate))
    loom_cpu_rmsprop_update(s, p, g, sq, buf, avg, n);
  return 0;
}

static int cpu_sum_squares(void *ctx, const float *x, int64_t n, double *sum) {
  (void)ctx;
  *sum = loom_cpu_sum_squares(x, n);
  return 0;
}

static int cpu_scale(void *ctx, float *x, float a, int64_t n) {
  (void)ctx;
  loom_cpu_scale(x, a, n);
  return 0;
}

static int cpu_clamp(void *ctx, float *x, float limit, int64_t n) {
  (void)ctx;
  loom_cpu_clamp(x, limit, n);
  return 0;
}

static int cpu_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  (void)ctx;
  bool finite = loom_cpu_all_finite(x, n);
  for (int64_t i = 0; i < nd && finite; i++)
    finite = isfinite(d[i]);
  if (!finite)
    *flag = 1;
  return 0;
}

static int cpu_set_if(void *ctx, const int *flag, float *x, float value) {
  (void)ctx;
  if (*flag)
    x[0] = value;
  return 0;
}

static int cpu_all_finite(void *ctx, const float *x, int64_t n, bool *finite) {
  (void)ctx;
  *finite = loom_cpu_all_finite(x, n);
  return 0;
}

static int cpu_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n) {
  (void)ctx;
  loom_cpu_round(p, x, y, n);
  return 0;
}

static const loom_backend_ops cpu_ops = {
    .name = "cpu",
    .device = LOOM_DEVICE_CPU,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_copy,
    .from_host = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .gemm = cpu_gemm,
    .fill_rows = cpu_fill_rows,
    .sum_rows = cpu_sum_rows,
    .act_forward = cpu_act_forward,
    .act_backward = cpu_act_backward,
    .xent_forward = cpu_xent_forward,
    .xent_backward = cpu_xent_backward,
    .loss_forward = cpu_loss_forward,
    .loss_backward = cpu_loss_backward,
    .dropout_forward = cpu_dropout_forward,
    .mul = cpu_mul,
    .add = cpu_add,
    .sgd_update = cpu_sgd_update,
    .adam_update = cpu_adam_update,
    .rmsprop_update = cpu_rmsprop_update,
    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .clamp = cpu_clamp,
    .all_finite = cpu_all_finite,
    .flag_nonfinite = cpu_flag_nonfinite,
    .set_if = cpu_set_if,
    .gemm_checked = cpu_gemm_checked,
    .topk_hits = cpu_topk_hits,
    .round = cpu_round,
    .conv_plan = cpu_conv_plan,
    .conv_forward = cpu_conv_forward,
    .conv_backward = cpu_conv_backward,
    .pool_plan = cpu_pool_plan,
    .pool_forward = cpu_pool_forward,
    .pool_backward = cpu_pool_backward,
    .batchnorm_plan = cpu_batchnorm_plan,
    .batchnorm_forward = cpu_batchnorm_forward,
    .batchnorm_backward = cpu_batchnorm_backward,
    .plan_destroy = cpu_plan_destroy,
    .plan_block = cpu_plan_block,
    .block_forward = cpu_block_forward,
    .block_backward = cpu_block_backward,
};

static loom_backend *the_cpu;
static uv_once_t once = UV_ONCE_INIT;

static void create_cpu(void) { the_cpu = loom_backend_create(&cpu_ops, NULL); }

loom_backend *loom_backend_cpu(void) {
  uv_once(&once, create_cpu);
  if (!the_cpu)
    loom_error_set(LOOM_ENOMEM, "the CPU backend could not be created (out of memory at start-up)");
  return the_cpu;
}
