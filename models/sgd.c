/* SGD as torch.optim.SGD: d = g + wd p; buf = mu buf + (1 - dampening) d
 * (buf = d on the first step); d = nesterov ? d + mu buf : buf; p -= lr d. */
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/optimizer.h"

#include <stdlib.h>

static int sgd_update_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                         size_t off, size_t len, int64_t step, double lr, double wd) {
  (void)total;
  const loom_sgd_options *o = data;
  loom_sgd_step s = {lr, wd, o->momentum, o->dampening, o->nesterov, step == 1, NULL};
  return loom_backend_sgd_update(b, &s, p + off, g + off, state ? state + off : NULL, (int64_t)len);
}

static int sgd_ranges_on(void *data, loom_backend *b, float *p, const float *g, float *state, size_t total,
                         const loom_update_range *ranges, int n, int64_t step) {
  const loom_sgd_options *o = data;
  const loom_update_step s = {LOOM_RULE_SGD, .u.sgd = {0, 0, o->momentum, o->dampening, o->nesterov, step == 1, NULL}};
  return loom_backend_update_ranges(b, &s, ranges, n, p, g, state, (int64_t)total);
}

static int sgd_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                      int64_t step, double lr, double wd) {
  return sgd_update_on(data, loom_backend_cpu(), p, g, state, total, off, len, step, lr, wd);
}

static double sgd_decay(void *data) { return ((loom_sgd_options *)data)->weight_decay; }
static double sgd_momentum(void *data) { return ((loom_sgd_options *)data)->momentum; }
static void sgd_set_momentum(void *data, double m) { ((loom_sgd_options *)data)->momentum = m; }

/* Elementwise: loom splits a step over the cores (and fuses the finiteness
 * check into it); the backend op then runs each part on its own thread. */
static const loom_optimizer_ops sgd_ops = {.type = "sgd",
                                           .elementwise = true,
                                           .state_per_param = 1,
                                           .update = sgd_update,
                                           .update_on = sgd_update_on,
                                           .gateable = true,
                                           .update_ranges_on = sgd_ranges_on,
                                           .momentum = sgd_momentum,
                                           .set_momentum = sgd_set_momentum,
                                           .weight_decay = sgd_decay,
                                           .destroy = free};
/* Plain SGD keeps no buffer; its momentum stays 0 (no setter). */
static const loom_optimizer_ops sgd_plain_ops = {.type = "sgd",
                                                 .elementwise = true,
                                                 .update = sgd_update,
                                                 .update_on = sgd_update_on,
                                           .gateable = true,
                                           .update_ranges_on = sgd_ranges_on,
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
