/* RMSprop as torch.optim.RMSprop: g += wd p; v = a v + (1-a) g^2;
 * centered: c = a c + (1-a) g, denominator sqrt(v - c^2) + eps, else
 * sqrt(v) + eps; with momentum b = mu b + g / denominator, p -= lr b;
 * without, p -= lr g / denominator. State [v | b | c]. */
#include <math.h>

#include "core/error_internal.h"
#include "models/optimizer_internal.h"

static void rmsprop_update(const loom_optimizer *opt, float *p, const float *g, float *state, size_t total, size_t off,
                           size_t len, int64_t step, double lr_d, double wd_d) {
  (void)step;
  const loom_rmsprop_options *o = &opt->o.rmsprop;
  float *v = state + off, *b = state + total + off, *c = state + 2 * total + off;
  p += off, g += off;
  const float a = (float)o->alpha, ca = (float)(1.0 - o->alpha), eps = (float)o->eps, mu = (float)o->momentum;
  const float lr = (float)lr_d, wd = (float)wd_d;
  for (size_t i = 0; i < len; i++) {
    float gi = g[i] + wd * p[i];
    v[i] = a * v[i] + ca * gi * gi;
    float denom;
    if (o->centered) {
      c[i] = a * c[i] + ca * gi;
      denom = sqrtf(v[i] - c[i] * c[i]) + eps;
    } else {
      denom = sqrtf(v[i]) + eps;
    }
    if (mu > 0.0f) {
      b[i] = mu * b[i] + gi / denom;
      p[i] -= lr * b[i];
    } else {
      p[i] -= lr * gi / denom;
    }
  }
}

static double rmsprop_momentum(const loom_optimizer *opt) { return opt->o.rmsprop.momentum; }
static void rmsprop_set_momentum(loom_optimizer *opt, double m) { opt->o.rmsprop.momentum = m; }
static double rmsprop_decay(const loom_optimizer *opt) { return opt->o.rmsprop.weight_decay; }

static const optimizer_ops rmsprop_ops = {"rmsprop", 3, rmsprop_update, rmsprop_momentum, rmsprop_set_momentum,
                                          rmsprop_decay};

loom_rmsprop_options loom_rmsprop_defaults(void) {
  return (loom_rmsprop_options){.lr = 1e-2, .alpha = 0.99, .eps = 1e-8};
}

loom_optimizer *loom_rmsprop_create(const loom_rmsprop_options *o) {
  if (!o || !(o->lr >= 0) || !(o->alpha >= 0 && o->alpha <= 1) || !(o->eps >= 0) || !(o->momentum >= 0) ||
      !(o->weight_decay >= 0)) {
    loom_error_set(LOOM_EINVAL, "RMSprop: need lr >= 0, 0 <= alpha <= 1, eps >= 0, momentum >= 0, weight_decay >= 0");
    return NULL;
  }
  loom_optimizer *opt = loom_optimizer_new(&rmsprop_ops, o->lr);
  if (opt)
    opt->o.rmsprop = *o;
  return opt;
}
