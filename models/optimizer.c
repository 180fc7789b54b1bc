#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/optimizer_internal.h"

loom_optimizer *loom_optimizer_new(const optimizer_ops *ops, double lr) {
  loom_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) {
    loom_error_oom("an optimizer");
    return NULL;
  }
  opt->ops = ops;
  opt->lr = lr;
  return opt;
}

void loom_optimizer_destroy(loom_optimizer *opt) {
  if (!opt)
    return;
  free(opt->state);
  free(opt);
}

const char *loom_optimizer_type(const loom_optimizer *opt) { return opt->ops->type; }

int loom_optimizer_step(loom_optimizer *opt, loom_model *model) {
  size_t n = loom_model_num_params(model);
  if (!loom_model_is_built(model))
    return loom_error_set(LOOM_ESTATE, "%s step: the model is not built", opt->ops->type);
  if (opt->state && n != opt->nparams)
    return loom_error_set(LOOM_ESTATE, "%s step: the optimizer holds state for %zu parameters but the model has %zu; "
                                       "use one optimizer per model or reset it",
                          opt->ops->type, opt->nparams, n);
  if (!opt->state && opt->ops->state_per_param) {
    opt->nstate = n * opt->ops->state_per_param;
    opt->state = calloc(opt->nstate ? opt->nstate : 1, sizeof *opt->state);
    if (!opt->state)
      return loom_error_oom("the optimizer state");
  }
  opt->nparams = n;
  opt->steps++;
  opt->ops->update(opt, loom_model_params(model), loom_model_grads(model), opt->state, n, opt->steps);
  return 0;
}

void loom_optimizer_reset(loom_optimizer *opt) {
  free(opt->state);
  opt->state = NULL;
  opt->nstate = 0;
  opt->steps = 0;
}

double loom_optimizer_lr(const loom_optimizer *opt) { return opt->lr; }
void loom_optimizer_set_lr(loom_optimizer *opt, double lr) { opt->lr = lr; }
double loom_optimizer_momentum(const loom_optimizer *opt) { return opt->ops->momentum(opt); }
int64_t loom_optimizer_steps(const loom_optimizer *opt) { return opt->steps; }

float *loom_optimizer_state(loom_optimizer *opt, size_t *n) {
  if (n)
    *n = opt->nstate;
  return opt->state;
}
