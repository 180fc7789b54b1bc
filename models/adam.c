/* Adam and AdamW as torch.optim's: with g the gradient (Adam adds wd p to
 * it; AdamW instead first shrinks p by lr wd), m = b1 m + (1-b1) g,
 * v = b2 v + (1-b2) g^2, p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps).
 * State: m and v, one contiguous buffer [m | v]. */
#include <math.h>

#include "core/error_internal.h"
#include "backends/cpu/simd.h"
#include "loom/optimizer.h"

#include <stdlib.h>

LOOM_HOT static void adam_range(const loom_adam_options *o, float *restrict p, const float *restrict g,
                                 float *restrict m, float *restrict v, size_t n, int64_t step, double lr, double wd,
                                 bool decoupled) {
  const float b1 = (float)o->beta1, b2 = (float)o->beta2, eps = (float)o->eps;
  /* 1 - beta in double, then rounded, as PyTorch does: 1 - 0.999f is off by 1e-5. */
  const float c1 = (float)(1.0 - o->beta1), c2 = (float)(1.0 - o->beta2);
  const float l2 = decoupled ? 0.0f : (float)wd, shrink = decoupled ? (float)(1.0 - lr * wd) : 1.0f;
  const double bc1 = 1.0 - pow(o->beta1, (double)step), bc2 = 1.0 - pow(o->beta2, (double)step);
  const float step_size = (float)(lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
  for (size_t i = 0; i < n; i++) {
    float gi = g[i] + l2 * p[i];
    p[i] *= shrink;
    m[i] = b1 * m[i] + c1 * gi;
    v[i] = b2 * v[i] + c2 * gi * gi;
    p[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
  }
}

static void adam_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                        int64_t step, double lr, double wd) {
  adam_range(data, p + off, g + off, state + off, state + total + off, len, step, lr, wd, false);
}

static void adamw_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                         int64_t step, double lr, double wd) {
  adam_range(data, p + off, g + off, state + off, state + total + off, len, step, lr, wd, true);
}

static double adam_momentum(void *data) { return ((loom_adam_options *)data)->beta1; }
static void adam_set_momentum(void *data, double m) { ((loom_adam_options *)data)->beta1 = m; }
static double adam_decay(void *data) { return ((loom_adam_options *)data)->weight_decay; }

#define ADAM_OPS(name, fn)                                                                                             \
  {.type = name, .state_per_param = 2, .elementwise = true, .update = fn, .momentum = adam_momentum,                  \
   .set_momentum = adam_set_momentum, .weight_decay = adam_decay, .destroy = free}
static const loom_optimizer_ops adam_ops = ADAM_OPS("adam", adam_update);
static const loom_optimizer_ops adamw_ops = ADAM_OPS("adamw", adamw_update);

loom_adam_options loom_adam_defaults(void) {
  return (loom_adam_options){.lr = 1e-3, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0};
}

loom_adam_options loom_adamw_defaults(void) {
  loom_adam_options o = loom_adam_defaults();
  o.weight_decay = 1e-2;
  return o;
}

static loom_optimizer *create(const loom_optimizer_ops *ops, const loom_adam_options *o) {
  if (!o || !(o->lr >= 0) || !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1) ||
      !(o->eps >= 0) || !(o->weight_decay >= 0)) {
    loom_error_set(LOOM_EINVAL, "%s: need lr >= 0, 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0", ops->type);
    return NULL;
  }
  loom_adam_options *data = malloc(sizeof *data);
  if (!data) {
    loom_error_oom(ops->type);
    return NULL;
  }
  *data = *o;
  return loom_optimizer_create(ops, data, o->lr);
}

loom_optimizer *loom_adam_create(const loom_adam_options *o) { return create(&adam_ops, o); }
loom_optimizer *loom_adamw_create(const loom_adam_options *o) { return create(&adamw_ops, o); }
