/* Whole-model gradient operations over the one contiguous buffer, on the
 * model's backend's sum_squares, scale, clamp and all_finite. */
#include <math.h>

#include "loom/model.h"
#include "models/layer_internal.h"

/* These cannot fail on the CPU backend; another backend's failure leaves
 * the gradients unscaled (the norm NaN, the check false): these calls
 * predate errors from backends. */
void loom_model_scale_grads(loom_model *m, float scale) {
  loom_backend_scale(loom_model_backend(m), loom_model_grad_buffer(m), scale, (int64_t)loom_model_num_params(m));
  loom_model_grads_rewritten(m, fabsf(scale) <= 1.0f); /* a larger scale can overflow; NaN fails the test */
}

double loom_model_grad_norm(loom_model *m) {
  double sum = NAN;
  loom_backend_sum_squares(loom_model_backend(m), loom_model_grad_buffer(m), (int64_t)loom_model_num_params(m), &sum);
  return sqrt(sum);
}

double loom_model_clip_grad_norm(loom_model *m, double max_norm) {
  double norm = loom_model_grad_norm(m);
  /* As torch.nn.utils.clip_grad_norm_: scale by max/(norm + 1e-6) if above. */
  double coef = max_norm / (norm + 1e-6);
  if (isfinite(norm) && coef < 1.0)
    loom_model_scale_grads(m, (float)coef);
  return norm;
}

bool loom_model_grads_finite(loom_model *m) {
  bool finite = false;
  loom_backend_all_finite(loom_model_backend(m), loom_model_grad_buffer(m), (int64_t)loom_model_num_params(m), &finite);
  return finite;
}

void loom_model_clip_grad_value(loom_model *m, float limit) {
  loom_backend_clamp(loom_model_backend(m), loom_model_grad_buffer(m), limit, (int64_t)loom_model_num_params(m));
  loom_model_grads_rewritten(m, true); /* an Inf becomes the limit: what was known non-finite is not known */
}
