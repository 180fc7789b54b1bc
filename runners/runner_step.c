/* The optimizer step (gradient averaging, clipping) and the non-finite
 * policy. */
#include "runners/runner_impl.h"

#include <math.h>

int loom_runner_optimizer_step_with(loom_runner *r, const loom_step_options *o, double *grad_norm) {
  if (!r->optimizer || !r->model)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": an optimizer step needs a model and an optimizer",
                          r->stage ? r->stage->name : "?");
  if (o && o->scale != 0.0 && o->scale != 1.0)
    loom_model_scale_grads(r->model, (float)o->scale);
  /* Data parallel: every rank steps with the mean gradient. */
  if (loom_comm_size(r->comm) > 1) {
    int rc = loom_comm_allreduce_mean_f32(r->comm, loom_model_grads(r->model), loom_model_num_params(r->model));
    if (rc < 0)
      return loom_error_wrap(rc, "averaging gradients over %d ranks", loom_comm_size(r->comm));
  }
  double norm = NAN;
  if (o && o->clip_norm > 0)
    norm = loom_model_clip_grad_norm(r->model, o->clip_norm);
  else if (grad_norm)
    norm = loom_model_grad_norm(r->model);
  if (o && o->clip_value > 0)
    loom_model_clip_grad_value(r->model, (float)o->clip_value);
  if (grad_norm)
    *grad_norm = norm;
  int rc = loom_optimizer_step(r->optimizer, r->model);
  if (rc == 0)
    r->global_optimizer_step++;
  return rc;
}

int loom_runner_optimizer_step(loom_runner *r) { return loom_runner_optimizer_step_with(r, NULL, NULL); }

int loom_runner_check_loss(loom_runner *r, double loss) {
  if (isfinite(loss))
    return 0;
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP && r->nonfinite_skips < r->options.nonfinite_budget) {
    r->nonfinite_skips++;
    r->skip_batch = true;
    return 1;
  }
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP)
    return loom_error_set(LOOM_ENONFINITE, "the loss is %g and the budget of %lld skipped batches is spent; "
                                           "lower the learning rate or check the data",
                          loss, (long long)r->options.nonfinite_budget);
  return loom_error_set(LOOM_ENONFINITE, "the loss is %g; stopping before the optimizer step corrupts the "
                                         "weights (lower the learning rate, check the data, or allow skips "
                                         "with the SKIP non-finite policy)",
                        loss);
}
