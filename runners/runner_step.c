/* The optimizer step (gradient averaging, clipping) and the non-finite
 * policy. */
#include "runners/runner_impl.h"

#include <math.h>
#include <stdlib.h>

/* The non-finite policy for this batch: 1 to skip it (SKIP, within the
 * budget: no step, no metrics), else LOOM_ENONFINITE saying `what` was
 * non-finite and, with `advice`, what to do. */
static int apply_nonfinite_policy(loom_runner *r, const char *what, const char *advice) {
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP && r->nonfinite_skips < r->options.nonfinite_budget) {
    r->nonfinite_skips++;
    r->skip_batch = true;
    return 1;
  }
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP)
    return loom_error_set(LOOM_ENONFINITE, "%s and the budget of %lld skipped batches is spent; %s", what,
                          (long long)r->options.nonfinite_budget, advice);
  return loom_error_set(LOOM_ENONFINITE, "%s; stopping before the optimizer step corrupts the weights (%s, or "
                                         "allow skips with the SKIP non-finite policy)",
                        what, advice);
}

/* The first layer with a non-finite gradient, for the message ("?" if none
 * or if a device's gradients cannot be copied to the host: this is only
 * the failure's path, so a copy costs nothing the steps pay). */
static const char *first_nonfinite_layer(loom_model *m) {
  const bool device = loom_backend_device(loom_model_backend(m)) != LOOM_DEVICE_CPU;
  float *copy = device ? malloc(loom_model_num_params(m) * sizeof *copy) : NULL;
  if (device && (!copy || loom_model_grads_to_host(m, copy) < 0)) {
    free(copy);
    return "?";
  }
  const float *g = device ? copy : loom_model_grads(m);
  const char *name = "?";
  for (size_t l = 0; l < loom_model_num_layers(m) && name[0] == '?'; l++) {
    size_t off, count;
    loom_model_layer_params(m, l, &off, &count);
    for (size_t i = off; i < off + count; i++)
      if (!isfinite(g[i])) {
        name = loom_model_layer_name(m, l);
        break;
      }
  }
  free(copy);
  return name;
}

/* A non-finite gradient: the policy, with a message that names the norm
 * (if it was computed), the step, the first layer with a non-finite
 * gradient, and where the loop is unless handle_batch is running (the loop
 * prefixes handle_batch's errors with that). */
static int nonfinite_gradients(loom_runner *r, bool have_norm, double norm) {
  char what[640], value[32] = "not finite", where[256] = "";
  if (have_norm)
    snprintf(value, sizeof value, "%g", norm);
  if (r->stage && r->event != LOOM_EVENT_BATCH_START)
    snprintf(where, sizeof where, " (stage \"%s\", epoch %d, loader \"%s\", batch %lld)", r->stage->name, r->epoch,
             r->loader_name ? r->loader_name : "-", (long long)r->loader_batch_step);
  int len = snprintf(what, sizeof what, "the gradient norm is %s before optimizer step %lld%s, first in layer \"%s\"",
                     value, (long long)r->global_optimizer_step + 1, where, first_nonfinite_layer(r->model));
  if (loom_comm_size(r->comm) > 1 && len > 0 && (size_t)len < sizeof what)
    snprintf(what + len, sizeof what - (size_t)len, r->loss_poisoned ? " (averaged over %d ranks; this rank's loss was %g)"
                                                                       : " (averaged over %d ranks)",
             loom_comm_size(r->comm), r->poisoned_loss);
  return apply_nonfinite_policy(r, what, "check the data and any custom layer's or loss's backward, lower the "
                                         "learning rate");
}

int loom_runner_nonfinite_gradients(loom_runner *r) { return nonfinite_gradients(r, false, NAN); }

static int optimizer_step(loom_runner *r, const loom_step_options *o, double *grad_norm);

int loom_runner_optimizer_step_with(loom_runner *r, const loom_step_options *o, double *grad_norm) {
  int rc = optimizer_step(r, o, grad_norm);
  r->loss_poisoned = false; /* decided, by every rank alike */
  return rc;
}

static int optimizer_step(loom_runner *r, const loom_step_options *o, double *grad_norm) {
  if (!r->optimizer || !r->model)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": an optimizer step needs a model and an optimizer",
                          r->stage ? r->stage->name : "?");
  if (o && o->scale != 0.0 && o->scale != 1.0)
    loom_model_scale_grads(r->model, (float)o->scale);
  /* Data parallel: every rank steps with the mean gradient. */
  if (loom_comm_size(r->comm) > 1) {
    int rc = loom_runner_mean_grads(r); /* this rank's NaN loss travels as a NaN gradient */
    if (rc < 0)
      return loom_error_wrap(rc, "averaging gradients over %d ranks for optimizer step %lld", loom_comm_size(r->comm),
                             (long long)r->global_optimizer_step + 1);
  }
  /* Loss scaling: an overflow skips the step; else the true gradients. */
  int skip = loom_runner_unscale(r);
  if (skip)
    return skip;
  /* The non-finite check, before clipping changes anything: free where the
   * norm is computed anyway; else known from backward, which checked the
   * gradients as it wrote them (loom_model_grads_checked); else (gradients
   * averaged over ranks, or written by other code) fused into the
   * optimizer's step, or a pass of its own before clipping by value. Its
   * cost: docs/architecture.md, "Run options". Ranks hold the same averaged
   * gradients, so they all decide alike. */
  const bool clip = o && o->clip_norm > 0, want_norm = clip || grad_norm;
  double norm = NAN;
  if (clip)
    norm = loom_model_clip_grad_norm(r->model, o->clip_norm); /* leaves non-finite gradients alone */
  else if (grad_norm)
    norm = loom_model_grad_norm(r->model);
  if (grad_norm)
    *grad_norm = norm;
  const bool clip_value = o && o->clip_value > 0;
  if (want_norm ? !isfinite(norm) : clip_value && !loom_model_grads_finite(r->model))
    return nonfinite_gradients(r, want_norm, norm);
  if (clip_value)
    loom_model_clip_grad_value(r->model, (float)o->clip_value);
  int rc;
  bool finite;
  if (!want_norm && !clip_value && loom_model_grads_checked(r->model, &finite)) { /* checked as backward wrote them */
    if (!finite)
      return nonfinite_gradients(r, false, NAN);
    rc = loom_optimizer_step(r->optimizer, r->model);
  } else if (!want_norm && !clip_value) { /* the check fused into the step */
    rc = loom_optimizer_step_checked(r->optimizer, r->model, &finite);
    if (rc == 0 && !finite)
      return nonfinite_gradients(r, false, NAN);
  } else {
    rc = loom_optimizer_step(r->optimizer, r->model);
  }
  if (rc == 0) {
    r->global_optimizer_step++;
    loom_runner_scaler_stepped(r);
  }
  return rc;
}

int loom_runner_optimizer_step(loom_runner *r) { return loom_runner_optimizer_step_with(r, NULL, NULL); }

int loom_runner_check_loss(loom_runner *r, double loss) {
  if (isfinite(loss))
    return 0;
  /* With other ranks the decision is theirs too: a rank that stopped or
   * skipped alone would leave them waiting in the gradients' all-reduce.
   * This rank goes on, and its gradients carry the NaN through it, where
   * every rank sees it before the step and applies the policy alike. */
  if (loom_comm_size(r->comm) > 1 && r->optimizer && r->model) {
    r->loss_poisoned = true;
    r->poisoned_loss = loss;
    return 0;
  }
  char what[64];
  snprintf(what, sizeof what, "the loss is %g", loss);
  return apply_nonfinite_policy(r, what, "lower the learning rate, check the data");
}
