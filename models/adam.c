/* Adam and AdamW as torch.optim's: with g the gradient (Adam adds wd p to
 * it; AdamW instead first shrinks p by lr wd), m = b1 m + (1-b1) g,
 * v = b2 v + (1-b2) g^2, p -= lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps).
 * State: m and v, one contiguous buffer [m | v]. */
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/optimizer.h"

#include <stdlib.h>

static int adam_rule(const loom_adam_options *o, loom_backend *b, float *p, const float *g, float *state, size_t total,
                     size_t off, size_t len, int64_t step, double lr, double wd, bool decoupled) {
  loom_adam_step s = {lr, wd, o->beta1, o->beta2, o->eps, step, decoupled, NULL};
  return loom_backend_adam_update(b, &s, p + off, g + off, state + off, state + total + off, (int64_t)len);
}

/* Every range at once; each range brings its rate and decay. */
static int adam_ranges(const loom_adam_options *o, loom_backend *b, float *p, const float *g, float *state,
                       size_t total, const loom_update_range *ranges, int n, int64_t step, bool decoupled) {
  const loom_update_step s = {LOOM_RULE_ADAM, .u.adam = {0, 0, o->beta1, o->beta2, o->eps, step, decoupled, NULL}};
  return loom_backend_update_ranges(b, &s, ranges, n, p, g, state, (int64_t)total);
}

static int adam_ranges_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                          const loom_update_range *ranges, int n, int64_t step) {
  return adam_ranges(data, b, p, g, state, total, ranges, n, step, false);
}

static int adamw_ranges_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                           const loom_update_range *ranges, int n, int64_t step) {
  return adam_ranges(data, b, p, g, state, total, ranges, n, step, true);
}

static int adam_update_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                          size_t off, size_t len, int64_t step, double lr, double wd) {
  return adam_rule(data, b, p, g, state, total, off, len, step, lr, wd, false);
}

static int adamw_update_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                           size_t off, size_t len, int64_t step, double lr, double wd) {
  return adam_rule(data, b, p, g, state, total, off, len, step, lr, wd, true);
}

static int adam_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                       int64_t step, double lr, double wd) {
  return adam_update_on(data, loom_backend_cpu(), p, g, state, total, off, len, step, lr, wd);
}

static int adamw_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                        int64_t step, double lr, double wd) {
  return adamw_update_on(data, loom_backend_cpu(), p, g, state, total, off, len, step, lr, wd);
}

static double adam_momentum(void *data) { return ((loom_adam_options *)data)->beta1; }
static void adam_set_momentum(void *data, double m) { ((loom_adam_options *)data)->beta1 = m; }
static double adam_decay(void *data) { return ((loom_adam_options *)data)->weight_decay; }

#define ADAM_OPS(name, fn, on, ranges)                                                                                 \
  {.type = name, .state_per_param = 2, .elementwise = true, .update = fn, .update_on = on, .gateable = true,           \
   .update_ranges_on = ranges, .momentum = adam_momentum, .set_momentum = adam_set_momentum,                           \
   .weight_decay = adam_decay, .destroy = free}
static const loom_optimizer_ops adam_ops = ADAM_OPS("adam", adam_update, adam_update_on, adam_ranges_on);
static const loom_optimizer_ops adamw_ops = ADAM_OPS("adamw", adamw_update, adamw_update_on, adamw_ranges_on);

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
