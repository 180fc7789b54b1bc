/* The CUDA backend's kernels (kernels.cu), launched on a stream from C
 * (ops.c, updates.c, gemm.c, cudnn_pool.c, cudnn_batchnorm.c). Each
 * launcher returns the launch's error (cudaGetLastError); none waits for
 * its kernel. n == 0 launches nothing. The formulas are the
 * CPU backend's (backends/cpu/activations.c, optim.c, grads.c), compiled
 * without contracting a * b + c into FMAs, so that elementwise results of
 * the basic operations match the CPU's bit for bit. */
#ifndef LOOM_BACKENDS_CUDA_KERNELS_H
#define LOOM_BACKENDS_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "loom/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Blocks of a reduction's first pass: its partials fill this many doubles. */
#define LOOM_CUDA_REDUCE_BLOCKS 1024

cudaError_t loom_cuda_fill_rows(cudaStream_t s, float *y, const float *row, int64_t rows, int64_t cols);
/* sum[j] += x[0, j] + x[1, j] + ..., in row order, in float (as the CPU's). */
cudaError_t loom_cuda_sum_rows(cudaStream_t s, float *sum, const float *x, int64_t rows, int64_t cols);
cudaError_t loom_cuda_act_forward(cudaStream_t s, loom_activation act, float param, const float *x, float *y,
                                  int64_t n);
cudaError_t loom_cuda_act_backward(cudaStream_t s, loom_activation act, float param, const float *x, const float *y,
                                   const float *dy, float *dx, int64_t n);
cudaError_t loom_cuda_mul(cudaStream_t s, const float *a, const float *b, float *y, int64_t n);
cudaError_t loom_cuda_add(cudaStream_t s, const float *a, const float *b, float *y, int64_t n);
cudaError_t loom_cuda_dropout_forward(cudaStream_t s, uint64_t key, float p, const float *x, float *y, float *mask,
                                      int64_t n);
/* The same with the key read from device memory (a step graph's). */
cudaError_t loom_cuda_dropout_forward_at(cudaStream_t s, const uint64_t *key, float p, const float *x, float *y,
                                         float *mask, int64_t n);
cudaError_t loom_cuda_scale(cudaStream_t s, float *x, float a, int64_t n);
cudaError_t loom_cuda_clamp(cudaStream_t s, float *x, float limit, int64_t n);
/* y = x rounded to p (backends/cpu/round_math.h; y may be x). */
cudaError_t loom_cuda_round(cudaStream_t s, loom_precision p, const float *x, float *y, int64_t n);
/* dst (rows x cols, packed) = the rows x cols block of x (stride ld)
 * rounded to p (bf16 or fp16) as that format's bits (loom_lowp_bits):
 * gemm_lowp's operands. */
cudaError_t loom_cuda_to_lowp(cudaStream_t s, loom_precision p, const float *x, int64_t rows, int64_t cols, int64_t ld,
                              uint16_t *dst);
/* *out (device) = sum of x_i^2 in double, through `partials` (device,
 * LOOM_CUDA_REDUCE_BLOCKS doubles): a fixed order for a given n, so the
 * same sum every run. */
cudaError_t loom_cuda_sum_squares(cudaStream_t s, const float *x, int64_t n, double *partials, double *out);
/* The criteria (formulas in loom/backend.h): out[0] (device) = the loss
 * sum, out[1] = the weight sum, through `partials` (device,
 * 2 LOOM_CUDA_REDUCE_BLOCKS doubles); NaN both for a target that is no
 * class. */
cudaError_t loom_cuda_xent_forward(cudaStream_t s, const float *logits, const float *targets, const float *weights,
                                   float smoothing, int64_t n, int64_t c, float *probs, double *partials,
                                   double *out);
cudaError_t loom_cuda_xent_backward(cudaStream_t s, const float *probs, const float *targets, const float *weights,
                                    float smoothing, float scale, int64_t n, int64_t c, float *dlogits);
/* *sum (device) = the loss summed over n elements, as sum_squares does. */
cudaError_t loom_cuda_loss_forward(cudaStream_t s, loom_pointwise_loss loss, float beta, const float *out,
                                   const float *target, int64_t n, double *partials, double *sum);
cudaError_t loom_cuda_loss_backward(cudaStream_t s, loom_pointwise_loss loss, float beta, const float *out,
                                    const float *target, float scale, int64_t n, float *dout);
/* The accuracy's hits: hits[k] += the samples whose target's rank is
 * below ks[k] (k < nk), *bad = min(itself, the first sample whose target
 * is no class); the caller sets hits to 0 and *bad to all ones first. */
typedef struct loom_cuda_topk {
  int ks[LOOM_TOPK_MAX];
  int nk;
} loom_cuda_topk;
cudaError_t loom_cuda_topk_hits(cudaStream_t s, const float *scores, const float *targets, int64_t n, int64_t c,
                                loom_cuda_topk k, unsigned long long *hits, unsigned long long *bad);
/* *flag (device) = 1 if any x_i is Inf or NaN; left as it was otherwise
 * (the caller zeroes it first). */
cudaError_t loom_cuda_any_nonfinite(cudaStream_t s, const float *x, int64_t n, int *flag);
/* The same over doubles (a loss's sums: a handful). */
cudaError_t loom_cuda_any_nonfinite_f64(cudaStream_t s, const double *x, int64_t n, int *flag);
/* x[0] = value if *flag (both device) is not 0. */
cudaError_t loom_cuda_set_if(cudaStream_t s, const int *flag, float *x, float value);

/* The optimizers' updates: the scalars as the CPU's computes them in float;
 * a non-NULL gate (device) holding a non-zero value holds the update back. */
typedef struct loom_cuda_sgd {
  float lr, wd, mu, damp; /* damp = 1 - dampening */
  int momentum, first, nesterov;
  const int *gate;
} loom_cuda_sgd;
typedef struct loom_cuda_adam {
  float b1, b2, c1, c2, eps, l2, shrink, step_size, inv_sqrt_bc2;
  const int *gate;
} loom_cuda_adam;
typedef struct loom_cuda_rmsprop {
  float a, ca, eps, mu, lr, wd;
  int centered;
  const int *gate;
} loom_cuda_rmsprop;
cudaError_t loom_cuda_sgd_update(cudaStream_t s, loom_cuda_sgd k, float *p, const float *g, float *buf, int64_t n);
cudaError_t loom_cuda_adam_update(cudaStream_t s, loom_cuda_adam k, float *p, const float *g, float *m, float *v,
                                  int64_t n);
cudaError_t loom_cuda_rmsprop_update(cudaStream_t s, loom_cuda_rmsprop k, float *p, const float *g, float *sq,
                                     float *buf, float *avg, int64_t n);
/* The same over several ranges of one buffer in one launch: table t[nr]
 * (device memory) gives each range's start in the concatenation of the
 * ranges (0, then the lengths' running sum), its offset in the buffer and
 * its scalars (their gate unused: `gate` holds the whole launch back); n
 * is the ranges' total length. */
#define LOOM_CUDA_RANGED(K) \
  struct {                  \
    int64_t start, off;     \
    K k;                    \
  }
typedef LOOM_CUDA_RANGED(loom_cuda_sgd) loom_cuda_sgd_range;
typedef LOOM_CUDA_RANGED(loom_cuda_adam) loom_cuda_adam_range;
typedef LOOM_CUDA_RANGED(loom_cuda_rmsprop) loom_cuda_rmsprop_range;
cudaError_t loom_cuda_sgd_ranges(cudaStream_t s, const loom_cuda_sgd_range *t, int nr, const int *gate, float *p,
                                 const float *g, float *buf, int64_t n);
cudaError_t loom_cuda_adam_ranges(cudaStream_t s, const loom_cuda_adam_range *t, int nr, const int *gate, float *p,
                                  const float *g, float *m, float *v, int64_t n);
cudaError_t loom_cuda_rmsprop_ranges(cudaStream_t s, const loom_cuda_rmsprop_range *t, int nr, const int *gate,
                                     float *p, const float *g, float *sq, float *buf, float *avg, int64_t n);

/* The planned ops' kernels (cudnn.c). Pooling of x[n][c][h][w] as
 * backends/cpu/pool.c computes it, bit for bit: a max takes the first
 * greatest value of its window, or its last NaN, and records where in its
 * plane in argmax[n][c][oh][ow] (unused otherwise); an average adds its
 * window in order and divides by k^2 (padding counted); a global average
 * adds its plane in double. `d` as the plan checked it (oh = ow = 1 for a
 * global average). */
cudaError_t loom_cuda_pool_forward(cudaStream_t s, loom_pool_desc d, const float *x, float *y, int32_t *argmax,
                                   int64_t n);
/* dx from dy after the forward that wrote argmax: each input gathers from
 * the outputs whose windows hold it, in the CPU's order. */
cudaError_t loom_cuda_pool_backward(cudaStream_t s, loom_pool_desc d, const float *dy, const int32_t *argmax,
                                    float *dx, int64_t n);
/* BatchNorm after an evaluation forward: mean = running_mean and invstd =
 * 1 / sqrtf(running_var + eps) over c channels (the CPU's floats); then,
 * from those, the backward over x[n][c][spatial]: dx = gamma invstd dy
 * (NULL: none), dgamma += sum dy (x - mean) invstd and dbeta += sum dy
 * (both NULL: none), the sums in double in a fixed order. */
cudaError_t loom_cuda_bn_eval_stats(cudaStream_t s, const float *running_mean, const float *running_var, float eps,
                                    int64_t c, float *mean, float *invstd);
cudaError_t loom_cuda_bn_eval_backward(cudaStream_t s, const float *x, const float *gamma, const float *mean,
                                       const float *invstd, const float *dy, float *dgamma, float *dbeta, float *dx,
                                       int64_t n, int64_t c, int64_t spatial);

#ifdef __cplusplus
}
#endif
#endif
