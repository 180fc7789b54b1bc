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
  /* Frozen layers' parameters (and their state) are left as they are. */
  const size_t *off, *len;
  size_t k = loom_model_trainable_ranges(model, &off, &len);
  for (size_t r = 0; r < k; r++)
    opt->ops->update(opt, loom_model_params(model), loom_model_grads(model), opt->state, n, off[r], len[r], opt->steps);
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

void loom_optimizer_set_momentum(loom_optimizer *opt, double momentum) { opt->ops->set_momentum(opt, momentum); }

int loom_optimizer_save(const loom_optimizer *opt, loom_state *s) {
  int rc = loom_state_set_str(s, "type", opt->ops->type);
  if (rc == 0)
    rc = loom_state_set_f64(s, "lr", opt->lr);
  if (rc == 0)
    rc = loom_state_set_f64(s, "momentum", opt->ops->momentum(opt));
  if (rc == 0)
    rc = loom_state_set_i64(s, "steps", opt->steps);
  if (rc == 0)
    rc = loom_state_set_i64(s, "nparams", (int64_t)opt->nparams);
  if (rc == 0)
    rc = loom_state_set_f32_array(s, "state", opt->state, opt->state ? opt->nstate : 0);
  return rc;
}

int loom_optimizer_load(loom_optimizer *opt, const loom_state *s) {
  const char *type;
  double lr, momentum;
  int64_t steps, nparams;
  int rc = loom_state_get_str(s, "type", &type);
  if (rc == 0 && strcmp(type, opt->ops->type) != 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint holds a %s optimizer's state, this stage uses %s", type,
                          opt->ops->type);
  if (rc == 0)
    rc = loom_state_get_f64(s, "lr", &lr);
  if (rc == 0)
    rc = loom_state_get_f64(s, "momentum", &momentum);
  if (rc == 0)
    rc = loom_state_get_i64(s, "steps", &steps);
  if (rc == 0)
    rc = loom_state_get_i64(s, "nparams", &nparams);
  if (rc < 0)
    return rc;
  size_t n = loom_state_array_length(s, "state");
  float *state = NULL;
  if (n) {
    if (!(state = malloc(n * sizeof *state)))
      return loom_error_oom("the optimizer state");
    if ((rc = loom_state_get_f32_array(s, "state", state, n)) < 0) {
      free(state);
      return rc;
    }
  }
  free(opt->state);
  opt->state = state;
  opt->nstate = n;
  opt->nparams = (size_t)nparams;
  opt->steps = steps;
  opt->lr = lr;
  opt->ops->set_momentum(opt, momentum);
  return 0;
}
