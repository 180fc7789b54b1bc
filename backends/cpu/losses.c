/* The criteria's arithmetic: softmax cross-entropy and the pointwise
 * losses (formulas in loom/backend.h and models/cross_entropy.c). */
#include "backends/cpu/kernels.h"

#include <math.h>

static float weight(const float *weights, int64_t c) { return weights ? weights[c] : 1.0f; }

void loom_cpu_xent_forward(const float *logits, const float *targets, const float *weights, float smoothing, int64_t n,
                           int64_t c, float *probs, double *loss_sum, double *weight_sum) {
  const double off = smoothing / (double)c, on = 1.0 - smoothing + off;
  double total = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const float *restrict x = logits + i * c;
    float *restrict p = probs + i * c;
    float max = x[0];
    for (int64_t j = 1; j < c; j++)
      max = x[j] > max ? x[j] : max;
    float sum = 0.0f;
    for (int64_t j = 0; j < c; j++) {
      p[j] = expf(x[j] - max);
      sum += p[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < c; j++)
      p[j] *= inv;
    const double lse = (double)logf(sum) + (double)max;
    const float t = targets[i];
    if (!(t >= 0.0f && t < (float)c) || t != floorf(t)) { /* not a class: see loom/backend.h */
      total = wsum = NAN;
      continue;
    }
    const int64_t y = (int64_t)t;
    if (smoothing == 0.0f && !weights) {
      total += lse - (double)x[y];
    } else {
      for (int64_t j = 0; j < c; j++)
        total += weight(weights, j) * (j == y ? on : off) * (lse - (double)x[j]);
    }
    wsum += weight(weights, y);
  }
  *loss_sum = total;
  *weight_sum = wsum;
}

void loom_cpu_xent_backward(const float *probs, const float *targets, const float *weights, float smoothing,
                            float scale, int64_t n, int64_t c, float *dlogits) {
  const float off = smoothing / (float)c, on = 1.0f - smoothing + off;
  const float *restrict p = probs;
  float *restrict d = dlogits;
  if (smoothing == 0.0f && !weights) {
    for (int64_t i = 0; i < n * c; i++)
      d[i] = p[i] * scale;
    for (int64_t i = 0; i < n; i++)
      d[i * c + (int64_t)targets[i]] -= scale;
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    const int64_t y = (int64_t)targets[i];
    float wq = 0.0f; /* sum_c w_c q_ic */
    for (int64_t j = 0; j < c; j++)
      wq += weight(weights, j) * (j == y ? on : off);
    for (int64_t j = 0; j < c; j++)
      d[i * c + j] = (wq * p[i * c + j] - weight(weights, j) * (j == y ? on : off)) * scale;
  }
}

double loom_cpu_loss_forward(loom_pointwise_loss loss, float beta, const float *out, const float *target, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; i++) {
    double z = out[i], t = target[i], d = z - t;
    switch (loss) {
    case LOOM_LOSS_BCE_WITH_LOGITS: total += fmax(z, 0) - z * t + log1p(exp(-fabs(z))); break;
    case LOOM_LOSS_MSE: total += d * d; break;
    case LOOM_LOSS_L1: total += fabs(d); break;
    case LOOM_LOSS_SMOOTH_L1: total += fabs(d) < beta ? 0.5 * d * d / beta : fabs(d) - 0.5 * beta; break;
    case LOOM_LOSS_COUNT: break;
    }
  }
  return total;
}

void loom_cpu_loss_backward(loom_pointwise_loss loss, float beta, const float *out, const float *target, float scale,
                            int64_t n, float *dout) {
  for (int64_t i = 0; i < n; i++) {
    float z = out[i], t = target[i], d = z - t, g;
    switch (loss) {
    case LOOM_LOSS_BCE_WITH_LOGITS: g = 1.0f / (1.0f + expf(-z)) - t; break;
    case LOOM_LOSS_MSE: g = 2.0f * d; break;
    case LOOM_LOSS_L1: g = (float)((d > 0) - (d < 0)); break;
    default: g = fabsf(d) < beta ? d / beta : (float)((d > 0) - (d < 0)); break;
    }
    dout[i] = g * scale;
  }
}
