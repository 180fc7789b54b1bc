/* Optimizer step control: accumulation windows, clipping, the step. */
#include <stdlib.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct stepper {
  loom_optimizer_callback_options o;
  int64_t window; /* batches accumulated since the last step */
} stepper;

static int flush(stepper *s, loom_runner *r) {
  /* Average over the batches really accumulated: a last partial window
   * weighs by its own size, not by accumulation_steps. */
  loom_step_options so = {1.0 / (double)s->window, s->o.clip_norm, s->o.clip_value};
  double norm;
  int rc = loom_runner_optimizer_step_with(r, &so, s->o.clip_norm > 0 ? &norm : NULL);
  if (rc == 0 && s->o.clip_norm > 0)
    rc = loom_metrics_set(loom_runner_batch_metrics(r), "grad_norm", norm);
  /* Stepped or skipped (rc 1: a non-finite gradient), the window is done:
   * its gradients go. */
  loom_model_zero_grad(loom_runner_model(r));
  s->window = 0;
  return rc < 0 ? rc : 0;
}

static int opt_stage_start(loom_callback *cb, loom_runner *r) {
  stepper *s = loom_callback_data(cb);
  loom_runner_set_manual_step(r, true);
  if (loom_runner_model(r))
    loom_model_zero_grad(loom_runner_model(r));
  s->window = 0;
  return 0;
}

static int opt_batch_end(loom_callback *cb, loom_runner *r) {
  stepper *s = loom_callback_data(cb);
  if (!loom_runner_is_train_loader(r) || loom_runner_batch_skipped(r))
    return 0;
  return ++s->window >= s->o.accumulation_steps ? flush(s, r) : 0;
}

static int opt_loader_end(loom_callback *cb, loom_runner *r) {
  stepper *s = loom_callback_data(cb);
  return (loom_runner_is_train_loader(r) && s->window > 0) ? flush(s, r) : 0;
}

static int opt_save(loom_callback *cb, loom_runner *r, loom_state *state) {
  (void)r;
  return loom_state_set_i64(state, "window", ((stepper *)loom_callback_data(cb))->window);
}

static int opt_load(loom_callback *cb, loom_runner *r, const loom_state *state) {
  (void)r;
  return loom_state_get_i64(state, "window", &((stepper *)loom_callback_data(cb))->window);
}

static const loom_callback_ops optimizer_ops = {
    .type = "optimizer",
    .on_stage_start = opt_stage_start,
    .on_batch_end = opt_batch_end,
    .on_loader_end = opt_loader_end,
    .save = opt_save,
    .load = opt_load,
    .destroy = free,
};

loom_callback *loom_optimizer_callback_create(const loom_optimizer_callback_options *o) {
  if (!o || o->accumulation_steps < 1 || !(o->clip_norm >= 0) || !(o->clip_value >= 0)) {
    loom_error_set(LOOM_EINVAL, "optimizer callback: accumulation_steps >= 1, clip_norm >= 0 and clip_value >= 0");
    return NULL;
  }
  stepper *s = calloc(1, sizeof *s);
  if (!s) {
    loom_error_oom("the optimizer callback");
    return NULL;
  }
  s->o = *o;
  return loom_callback_create(&optimizer_ops, s, LOOM_ORDER_OPTIMIZER);
}
