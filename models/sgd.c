/* SGD as torch.optim.SGD: d = g + wd p; buf = mu buf + (1 - dampening) d
 * (buf = d on the first step); d = nesterov ? d + mu buf : buf; p -= lr d. */
#include <math.h>

#include "core/error_internal.h"
#include "backends/cpu/simd.h"
#include "loom/optimizer.h"

#include <stdlib.h>

LOOM_HOT static void sgd_range(const loom_sgd_options *o, float *restrict p, const float *restrict g,
                                float *restrict buf, size_t n, int64_t step, double lr_d, double wd_d) {
  const float lr = (float)lr_d, wd = (float)wd_d, mu = (float)o->momentum;
  const float damp = (float)(1.0 - o->dampening);
  if (mu == 0.0f) {
    for (size_t i = 0; i < n; i++)
      p[i] -= lr * (g[i] + wd * p[i]);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float d = g[i] + wd * p[i];
    buf[i] = step == 1 ? d : mu * buf[i] + damp * d;
    p[i] -= lr * (o->nesterov ? d + mu * buf[i] : buf[i]);
  }
}

static void sgd_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                       int64_t step, double lr, double wd) {
  (void)total;
  sgd_range(data, p + off, g + off, state ? state + off : NULL, len, step, lr, wd);
}

static double sgd_decay(void *data) { return ((loom_sgd_options *)data)->weight_decay; }
static double sgd_momentum(void *data) { return ((loom_sgd_options *)data)->momentum; }
static void sgd_set_momentum(void *data, double m) { ((loom_sgd_options *)data)->momentum = m; }

static const loom_optimizer_ops sgd_ops = {.type = "sgd",
                                           .state_per_param = 1,
                                           .elementwise = true,
                                           .update = sgd_update,
                                           .momentum = sgd_momentum,
                                           .set_momentum = sgd_set_momentum,
                                           .weight_decay = sgd_decay,
                                           .destroy = free};
/* Plain SGD keeps no buffer; its momentum stays 0 (no setter). */
static const loom_optimizer_ops sgd_plain_ops = {.type = "sgd",
                                                 .elementwise = true,
                                                 .update = sgd_update,
                                                 .momentum = sgd_momentum,
                                                 .weight_decay = sgd_decay,
                                                 .destroy = free};

loom_optimizer *loom_sgd_create(const loom_sgd_options *o) {
  if (!o || !(o->lr >= 0) || !(o->momentum >= 0) || !(o->weight_decay >= 0) || !(o->dampening >= 0)) {
    loom_error_set(LOOM_EINVAL, "SGD: lr, momentum, dampening and weight_decay must be >= 0");
    return NULL;
  }
  if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) {
    loom_error_set(LOOM_EINVAL, "SGD: Nesterov momentum needs momentum > 0 and dampening 0");
    return NULL;
  }
  loom_sgd_options *data = malloc(sizeof *data);
  if (!data) {
    loom_error_oom("SGD");
    return NULL;
  }
  *data = *o;
  return loom_optimizer_create(o->momentum > 0 ? &sgd_ops : &sgd_plain_ops, data, o->lr);
}
