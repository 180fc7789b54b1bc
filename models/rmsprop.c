/* RMSprop as torch.optim.RMSprop: g += wd p; v = a v + (1-a) g^2;
 * centered: c = a c + (1-a) g, denominator sqrt(v - c^2) + eps, else
 * sqrt(v) + eps; with momentum b = mu b + g / denominator, p -= lr b;
 * without, p -= lr g / denominator. State [v | b | c]. */
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/optimizer.h"

#include <stdlib.h>

static int rmsprop_update_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                             size_t off, size_t len, int64_t step, double lr, double wd) {
  (void)step;
  const loom_rmsprop_options *o = data;
  loom_rmsprop_step s = {lr, wd, o->alpha, o->eps, o->momentum, o->centered, NULL};
  return loom_backend_rmsprop_update(b, &s, p + off, g + off, state + off, state + total + off,
                                     state + 2 * total + off, (int64_t)len);
}

static int rmsprop_ranges_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                             const loom_update_range *ranges, int n, int64_t step) {
  (void)step;
  const loom_rmsprop_options *o = data;
  const loom_update_step s = {LOOM_RULE_RMSPROP,
                              .u.rmsprop = {0, 0, o->alpha, o->eps, o->momentum, o->centered, NULL}};
  return loom_backend_update_ranges(b, &s, ranges, n, p, g, state, (int64_t)total);
}

static int rmsprop_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                          int64_t step, double lr, double wd) {
  return rmsprop_update_on(data, loom_backend_cpu(), p, g, state, total, off, len, step, lr, wd);
}

static double rmsprop_momentum(void *data) { return ((loom_rmsprop_options *)data)->momentum; }
static void rmsprop_set_momentum(void *data, double m) { ((loom_rmsprop_options *)data)->momentum = m; }
static double rmsprop_decay(void *data) { return ((loom_rmsprop_options *)data)->weight_decay; }

static const loom_optimizer_ops rmsprop_ops = {.type = "rmsprop",
                                               .elementwise = true,
                                               .state_per_param = 3,
                                               .update = rmsprop_update,
                                               .update_on = rmsprop_update_on,
                                               .gateable = true,
                                               .update_ranges_on = rmsprop_ranges_on,
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
