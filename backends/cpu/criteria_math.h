/* The criteria's and the accuracy's arithmetic for one row or one element,
 * shared by the CPU's loops (losses.c) and the CUDA kernels
 * (backends/cuda/kernels.cu), so
 * that both backends compute one formula in one order (loom/backend.h
 * states them). Plain C that nvcc compiles for the device too. */
#ifndef LOOM_BACKENDS_CPU_CRITERIA_MATH_H
#define LOOM_BACKENDS_CPU_CRITERIA_MATH_H

#include <math.h>
#include <stdbool.h>
#include <stdint.h>

#include "loom/backend.h"

#ifdef __CUDACC__
#define LOOM_HD __host__ __device__
#else
#define LOOM_HD
#endif

static inline LOOM_HD float loom_class_weight(const float *weights, int64_t j) { return weights ? weights[j] : 1.0f; }

/* Whether t names a class in [0, c) (NaN does not). */
static inline LOOM_HD bool loom_is_class(float t, int64_t c) { return t >= 0.0f && t < (float)c && t == floorf(t); }

/* p = softmax(x) over c logits, in float; the row's log-sum-exp in double. */
static inline LOOM_HD double loom_softmax_row(const float *x, float *p, int64_t c) {
  float max = x[0];
  for (int64_t j = 1; j < c; j++)
    max = x[j] > max ? x[j] : max;
  float sum = 0.0f;
  for (int64_t j = 0; j < c; j++) {
    p[j] = expf(x[j] - max);
    sum += p[j];
  }
  const float inv = 1.0f / sum;
  for (int64_t j = 0; j < c; j++)
    p[j] *= inv;
  return (double)logf(sum) + (double)max;
}

/* The row's loss sum_j w_j q_j (lse - x_j) for class y, q = (1 - e)
 * onehot(y) + e / c. */
static inline LOOM_HD double loom_xent_row(const float *x, double lse, int64_t y, const float *weights, float smoothing,
                                           int64_t c) {
  if (smoothing == 0.0f && !weights)
    return lse - (double)x[y];
  const double off = smoothing / (double)c, on = 1.0 - smoothing + off;
  double total = 0.0;
  for (int64_t j = 0; j < c; j++)
    total += loom_class_weight(weights, j) * (j == y ? on : off) * (lse - (double)x[j]);
  return total;
}

/* The gradient of one logit, dlogit_j = (wq p_j - w_j q_j) scale, where
 * wq = sum_k w_k q_k (loom_xent_wq): float, as the backward computes it. */
static inline LOOM_HD float loom_xent_wq(const float *weights, int64_t y, float smoothing, int64_t c) {
  const float off = smoothing / (float)c, on = 1.0f - smoothing + off;
  float wq = 0.0f;
  for (int64_t k = 0; k < c; k++)
    wq += loom_class_weight(weights, k) * (k == y ? on : off);
  return wq;
}

static inline LOOM_HD float loom_xent_grad(float p, float wq, const float *weights, int64_t j, int64_t y,
                                           float smoothing, int64_t c, float scale) {
  const float off = smoothing / (float)c, on = 1.0f - smoothing + off;
  return (wq * p - loom_class_weight(weights, j) * (j == y ? on : off)) * scale;
}

/* The rank of class y among the c scores x: the classes scoring higher, or
 * equal and earlier (top-k holds y when its rank is below k). */
static inline LOOM_HD int64_t loom_class_rank(const float *x, int64_t c, int64_t y) {
  int64_t rank = 0;
  for (int64_t j = 0; j < c; j++)
    rank += x[j] > x[y] || (x[j] == x[y] && j < y);
  return rank;
}

/* The pointwise loss of z against t, in double. */
static inline LOOM_HD double loom_pointwise_value(loom_pointwise_loss loss, float beta, double z, double t) {
  const double d = z - t;
  switch (loss) {
  case LOOM_LOSS_BCE_WITH_LOGITS: return fmax(z, 0.0) - z * t + log1p(exp(-fabs(z)));
  case LOOM_LOSS_MSE: return d * d;
  case LOOM_LOSS_L1: return fabs(d);
  case LOOM_LOSS_SMOOTH_L1: return fabs(d) < beta ? 0.5 * d * d / beta : fabs(d) - 0.5 * beta;
  default: return 0.0;
  }
}

/* Its derivative in z, in float. */
static inline LOOM_HD float loom_pointwise_grad(loom_pointwise_loss loss, float beta, float z, float t) {
  const float d = z - t;
  switch (loss) {
  case LOOM_LOSS_BCE_WITH_LOGITS: return 1.0f / (1.0f + expf(-z)) - t;
  case LOOM_LOSS_MSE: return 2.0f * d;
  case LOOM_LOSS_L1: return (float)((d > 0) - (d < 0));
  default: return fabsf(d) < beta ? d / beta : (float)((d > 0) - (d < 0));
  }
}

#endif
