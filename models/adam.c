/* Adam as torch.optim.Adam: g += wd p; m = b1 m + (1-b1) g;
 * v = b2 v + (1-b2) g^2; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
 * State: m and v, one contiguous buffer [m | v]. */
#include <math.h>

#include "core/error_internal.h"
#include "core/simd.h"
#include "models/optimizer_internal.h"

LOOM_HOT static void adam_range(const loom_optimizer *opt, float *restrict p, const float *restrict g,
                                 float *restrict m, float *restrict v, size_t n, int64_t step) {
  const loom_adam_options *o = &opt->o.adam;
  const float b1 = (float)o->beta1, b2 = (float)o->beta2, wd = (float)o->weight_decay, eps = (float)o->eps;
  /* 1 - beta in double, then rounded, as PyTorch does: 1 - 0.999f is off by 1e-5. */
  const float c1 = (float)(1.0 - o->beta1), c2 = (float)(1.0 - o->beta2);
  const double bc1 = 1.0 - pow(o->beta1, (double)step), bc2 = 1.0 - pow(o->beta2, (double)step);
  const float step_size = (float)(opt->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] + wd * p[i];
    m[i] = b1 * m[i] + c1 * gi;
    v[i] = b2 * v[i] + c2 * gi * gi;
    p[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
  }
}

/* State [m | v], each of `total` floats. */
static void adam_update(const loom_optimizer *opt, float *p, const float *g, float *state, size_t total, size_t off,
                        size_t len, int64_t step) {
  adam_range(opt, p + off, g + off, state + off, state + total + off, len, step);
}

static double adam_momentum(const loom_optimizer *opt) { return opt->o.adam.beta1; }

static void adam_set_momentum(loom_optimizer *opt, double m) { opt->o.adam.beta1 = m; }

static const optimizer_ops adam_ops = {"adam", 2, adam_update, adam_momentum, adam_set_momentum};

loom_adam_options loom_adam_defaults(void) {
  return (loom_adam_options){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
}

loom_optimizer *loom_adam_create(const loom_adam_options *o) {
  if (!o || !(o->lr >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
      !(o->eps >= 0) || !(o->weight_decay >= 0)) {
    loom_error_set(LOOM_EINVAL, "Adam: need lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0");
    return NULL;
  }
  loom_optimizer *opt = loom_optimizer_new(&adam_ops, o->lr);
  if (opt)
    opt->o.adam = *o;
  return opt;
}
