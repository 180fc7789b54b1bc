/* SGD as torch.optim.SGD: d = g + wd p; buf = mu buf + (1 - dampening) d
 * (buf = d on the first step); d = nesterov ? d + mu buf : buf; p -= lr d. */
#include <math.h>

#include "core/error_internal.h"
#include "backends/cpu/simd.h"
#include "models/optimizer_internal.h"

LOOM_HOT static void sgd_range(const loom_optimizer *opt, float *restrict p, const float *restrict g,
                                float *restrict buf, size_t n, int64_t step, double lr_d, double wd_d) {
  const loom_sgd_options *o = &opt->o.sgd;
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

static void sgd_update(const loom_optimizer *opt, float *p, const float *g, float *state, size_t total, size_t off,
                       size_t len, int64_t step, double lr, double wd) {
  (void)total;
  sgd_range(opt, p + off, g + off, state ? state + off : NULL, len, step, lr, wd);
}

static double sgd_decay(const loom_optimizer *opt) { return opt->o.sgd.weight_decay; }

static double sgd_momentum(const loom_optimizer *opt) { return opt->o.sgd.momentum; }

static void sgd_set_momentum(loom_optimizer *opt, double m) { opt->o.sgd.momentum = m; }

static const optimizer_ops sgd_ops = {"sgd", 1, sgd_update, sgd_momentum, sgd_set_momentum, sgd_decay};
/* Plain SGD keeps no buffer; its momentum stays 0. */
static void sgd_plain_set_momentum(loom_optimizer *opt, double m) { (void)opt, (void)m; }
static const optimizer_ops sgd_plain_ops = {"sgd", 0, sgd_update, sgd_momentum, sgd_plain_set_momentum, sgd_decay};

loom_optimizer *loom_sgd_create(const loom_sgd_options *o) {
  if (!o || !(o->lr >= 0) || !(o->momentum >= 0) || !(o->weight_decay >= 0) || !(o->dampening >= 0)) {
    loom_error_set(LOOM_EINVAL, "SGD: lr, momentum, dampening and weight_decay must be >= 0");
    return NULL;
  }
  if (o->nesterov && (o->momentum <= 0 || o->dampening != 0)) {
    loom_error_set(LOOM_EINVAL, "SGD: Nesterov momentum needs momentum > 0 and dampening 0");
    return NULL;
  }
  loom_optimizer *opt = loom_optimizer_new(o->momentum > 0 ? &sgd_ops : &sgd_plain_ops, o->lr);
  if (opt)
    opt->o.sgd = *o;
  return opt;
}
