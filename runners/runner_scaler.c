/* Dynamic loss scaling (loom_experiment_set_loss_scaling): the scale the
 * loss's gradient is multiplied by, its check at the optimizer step, and
 * its place in checkpoints. */
#include "runners/runner_impl.h"

#include <math.h>

void loom_runner_scaler_start(loom_runner *r) {
  r->scaling = loom_experiment_loss_scaling(r->exp);
  r->loss_scale = r->scaling.enabled ? r->scaling.init_scale : 1.0;
  r->scale_good_steps = 0;
  r->overflow_skips = 0;
}

double loom_runner_loss_scale(const loom_runner *r) { return r->scaling.enabled ? r->loss_scale : 1.0; }
int64_t loom_runner_overflow_skips(const loom_runner *r) { return r->overflow_skips; }

/* Ranks decide on the same averaged gradients, so alike (a rank's NaN loss
 * reaches the others as NaN gradients: an overflow to them all). Once the
 * scale is down to 1 a non-finite gradient is no overflow (where
 * GradScaler would go on skipping every step): it goes to the non-finite
 * policy, which stops the run or skips the batch within its budget. */
int loom_runner_unscale(loom_runner *r) {
  if (!r->scaling.enabled)
    return 0;
  bool finite;
  if (!loom_model_grads_checked(r->model, &finite))
    finite = loom_model_grads_finite(r->model);
  if (!finite && r->loss_scale <= 1.0)
    return 0;
  if (!finite) { /* GradScaler's skip: the scale was too large for these gradients */
    r->loss_scale *= r->scaling.backoff_factor;
    r->scale_good_steps = 0;
    r->overflow_skips++;
    return 1;
  }
  loom_model_scale_grads(r->model, (float)(1.0 / r->loss_scale));
  return 0;
}

void loom_runner_scaler_stepped(loom_runner *r) {
  if (r->scaling.enabled && ++r->scale_good_steps >= r->scaling.growth_interval) {
    const double grown = r->loss_scale * r->scaling.growth_factor;
    r->loss_scale = isfinite(grown) ? grown : r->loss_scale;
    r->scale_good_steps = 0;
  }
}

/* Only a run with scaling saves it. */
int loom_runner_scaler_save(const loom_runner *r, loom_state *s) {
  if (!r->scaling.enabled)
    return 0;
  int rc = loom_state_set_f64(s, "loss_scale", r->loss_scale);
  if (rc == 0)
    rc = loom_state_set_i64(s, "loss_scale_good_steps", r->scale_good_steps);
  return rc == 0 ? loom_state_set_i64(s, "overflow_skips", r->overflow_skips) : rc;
}

/* A checkpoint without the keys (older, or of a run without scaling), or
 * a run that turned scaling off since, keeps the start's values. */
int loom_runner_scaler_restore(loom_runner *r, const loom_state *s) {
  if (!r->scaling.enabled || !loom_state_has(s, "loss_scale"))
    return 0;
  double scale;
  int64_t good, skips;
  int rc = loom_state_get_f64(s, "loss_scale", &scale);
  if (rc == 0)
    rc = loom_state_get_i64(s, "loss_scale_good_steps", &good);
  if (rc == 0)
    rc = loom_state_get_i64(s, "overflow_skips", &skips);
  if (rc < 0)
    return rc;
  if (!(scale > 0) || !isfinite(scale) || good < 0 || skips < 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's loss scale %g (after %lld good steps, %lld skips) is out of "
                                        "range",
                          scale, (long long)good, (long long)skips);
  r->loss_scale = scale;
  r->scale_good_steps = good;
  r->overflow_skips = skips;
  return 0;
}
