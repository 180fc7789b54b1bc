/* Whole-model gradient operations over the one contiguous buffer. */
#include <math.h>

#include "backends/cpu/simd.h"
#include "loom/model.h"

LOOM_HOT void loom_model_scale_grads(loom_model *m, float scale) {
  float *restrict g = loom_model_grads(m);
  size_t n = loom_model_num_params(m);
  for (size_t i = 0; i < n; i++)
    g[i] *= scale;
}

double loom_model_grad_norm(loom_model *m) {
  const float *g = loom_model_grads(m);
  size_t n = loom_model_num_params(m);
  double sum = 0.0;
  for (size_t i = 0; i < n; i++)
    sum += (double)g[i] * (double)g[i];
  return sqrt(sum);
}

double loom_model_clip_grad_norm(loom_model *m, double max_norm) {
  double norm = loom_model_grad_norm(m);
  /* As torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6) if above. */
  double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    loom_model_scale_grads(m, (float)coef);
  return norm;
}

LOOM_HOT void loom_model_clip_grad_value(loom_model *m, float limit) {
  float *restrict g = loom_model_grads(m);
  size_t n = loom_model_num_params(m);
  for (size_t i = 0; i < n; i++)
    g[i] = g[i] > limit ? limit : (g[i] < -limit ? -limit : g[i]);
}
