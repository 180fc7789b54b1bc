/* The criteria's arithmetic: softmax cross-entropy and the pointwise
 * losses (formulas in loom/backend.h and models/cross_entropy.c), and the
 * accuracy's top-k hits. */
#include "backends/cpu/kernels.h"

#include <math.h>

#include "backends/cpu/criteria_math.h"

void loom_cpu_xent_forward(const float *logits, const float *targets, const float *weights, float smoothing, int64_t n,
                           int64_t c, float *probs, double *loss_sum, double *weight_sum) {
  double total = 0.0, wsum = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double lse = loom_softmax_row(logits + i * c, probs + i * c, c);
    if (!loom_is_class(targets[i], c)) { /* see loom/backend.h */
      total = wsum = NAN;
      continue;
    }
    const int64_t y = (int64_t)targets[i];
    total += loom_xent_row(logits + i * c, lse, y, weights, smoothing, c);
    wsum += loom_class_weight(weights, y);
  }
  *loss_sum = total;
  *weight_sum = wsum;
}

void loom_cpu_xent_backward(const float *probs, const float *targets, const float *weights, float smoothing,
                            float scale, int64_t n, int64_t c, float *dlogits) {
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
    const float wq = loom_xent_wq(weights, y, smoothing, c);
    for (int64_t j = 0; j < c; j++)
      d[i * c + j] = loom_xent_grad(p[i * c + j], wq, weights, j, y, smoothing, c, scale);
  }
}

double loom_cpu_loss_forward(loom_pointwise_loss loss, float beta, const float *out, const float *target, int64_t n) {
  double total = 0;
  for (int64_t i = 0; i < n; i++)
    total += loom_pointwise_value(loss, beta, out[i], target[i]);
  return total;
}

void loom_cpu_loss_backward(loom_pointwise_loss loss, float beta, const float *out, const float *target, float scale,
                            int64_t n, float *dout) {
  for (int64_t i = 0; i < n; i++)
    dout[i] = loom_pointwise_grad(loss, beta, out[i], target[i]) * scale;
}

void loom_cpu_topk_hits(const float *scores, const float *targets, int64_t n, int64_t c, const int *ks, int nk,
                        int64_t *hits, int64_t *bad) {
  *bad = -1;
  for (int k = 0; k < nk; k++)
    hits[k] = 0;
  for (int64_t i = 0; i < n; i++) {
    if (!loom_is_class(targets[i], c)) {
      if (*bad < 0)
        *bad = i;
      continue;
    }
    const int64_t rank = loom_class_rank(scores + i * c, c, (int64_t)targets[i]);
    for (int k = 0; k < nk; k++)
      hits[k] += rank < ks[k];
  }
}
