/* RMSprop as torch.optim.RMSprop: g += wd p; v = a v + (1-a) g^2;
 * centered: c = a c + (1-a) g, denominator sqrt(v - c^2) + eps, else
 * sqrt(v) + eps; with momentum b = mu b + g / denominator, p -= lr b;
 * without, p -= lr g / denominator. State [v | b | c]. */
#include <math.h>

#include "core/error_internal.h"
#include "loom/optimizer.h"

#include <stdlib.h>

static void rmsprop_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                           int64_t step, double lr_d, double wd_d) {
  (void)step;
  const loom_rmsprop_options *o = data;
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

static double rmsprop_momentum(void *data) { return ((loom_rmsprop_options *)data)->momentum; }
static void rmsprop_set_momentum(void *data, double m) { ((loom_rmsprop_options *)data)->momentum = m; }
static double rmsprop_decay(void *data) { return ((loom_rmsprop_options *)data)->weight_decay; }

static const loom_optimizer_ops rmsprop_ops = {.type = "rmsprop",
                                               .state_per_param = 3,
                                               .elementwise = true,
                                               .update = rmsprop_update,
                                               .momentum = rmsprop_momentum,
                                               .set_momentum = rmsprop_set_momentum,
                                               .weight_decay = rmsprop_decay,
                                               .destroy = free};

loom_rmsprop_options loom_rmsprop_defaults(void) {
  return (loom_rmsprop_options){.lr = 1e-2, .alpha = 0.99, .eps = 1e-8};
}

loom_optimizer *loom_rmsprop_create(const loom_rmsprop_options *o) {
  if (!o || !(o->lr >= 0) || !(o->alpha >= 0 && o->alpha <= 1) || !(o->eps >= 0) || !(o->momentum >= 0) ||
      !(o->weight_decay >= 0)) {
    loom_error_set(LOOM_EINVAL, "RMSprop: need lr >= 0, 0 <= alpha <= 1, eps >= 0, momentum >= 0, weight_decay >= 0");
    return NULL;
  }
  loom_rmsprop_options *data = malloc(sizeof *data);
  if (!data) {
    loom_error_oom("RMSprop");
    return NULL;
  }
  *data = *o;
  return loom_optimizer_create(&rmsprop_ops, data, o->lr);
}
