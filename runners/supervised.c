/* The supervised handle_batch: forward, loss; on train loaders also
 * backward and, unless an optimizer callback took it over, the step. */
#include "core/error_internal.h"
#include "runners/runner_impl.h"

int loom_supervised_handle_batch(loom_runner *r, void *user) {
  (void)user;
  loom_model *model = loom_runner_model(r);
  loom_criterion *criterion = loom_runner_criterion(r);
  const char *stage = loom_runner_stage_name(r);
  if (!model || !criterion)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": the supervised runner needs a model and a criterion "
                                       "(loom_stage_set_model, loom_stage_set_criterion)",
                          stage);
  const loom_tensor *out;
  loom_model_set_rng(model, loom_runner_rng(r));
  int rc = loom_model_forward(model, loom_runner_input(r), &out);
  if (rc < 0)
    return rc;
  loom_runner_set_output(r, out);
  loom_loader *loader = loom_runner_loader(r);
  if (loader && !loom_dataset_is_labelled(loom_loader_dataset(loader)))
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": loader \"%s\" has an unlabelled dataset (no targets), so it cannot "
                                       "be trained or evaluated on; predict it instead (loom predict, loom/deploy.h)",
                          stage, loom_runner_loader_name(r));
  /* On a device the loss may stay there until the batch's end (deferred:
   * runner_deferred.c), and the step with it. */
  double loss;
  bool deferred;
  if ((rc = loom_runner_criterion_forward(r, criterion, out, &loss, &deferred)) < 0 ||
      (!deferred && (rc = loom_runner_record_loss(r, loss)) < 0))
    return rc;
  if (!loom_runner_is_train_loader(r))
    return 0;
  /* A non-finite loss would poison every parameter through the step. */
  if (!deferred && (rc = loom_runner_check_loss(r, loss)) != 0)
    return rc < 0 ? rc : 0;
  if (!loom_runner_optimizer(r))
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": train loader \"%s\" needs an optimizer (loom_stage_set_optimizer)",
                          stage, loom_runner_loader_name(r));
  bool manual = loom_runner_manual_step(r);
  if (!manual)
    loom_model_zero_grad(model);
  const loom_tensor *dout;
  if ((rc = loom_criterion_backward_scaled(criterion, out, loom_runner_target(r), loom_runner_loss_scale(r), &dout)) <
      0)
    return rc;
  if (!manual && (rc = loom_runner_begin_backward(r)) < 0) /* the step follows */
    return rc;
  if ((rc = loom_model_backward(model, dout)) < 0)
    return rc;
  if (manual)
    return 0;
  rc = deferred ? loom_runner_step_deferred(r) : loom_runner_optimizer_step(r); /* 1: a non-finite gradient, skipped */
  return rc < 0 ? rc : 0;
}
