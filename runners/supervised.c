/* The supervised handle_batch: forward, loss; on train loaders also
 * backward and the optimizer step. */
#include <math.h>

#include "core/error_internal.h"
#include "loom/runner.h"

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
  int rc = loom_model_forward(model, loom_runner_input(r), &out);
  if (rc < 0)
    return rc;
  loom_runner_set_output(r, out);
  double loss;
  if ((rc = loom_criterion_forward(criterion, out, loom_runner_target(r), &loss)) < 0)
    return rc;
  loom_runner_set_batch_loss(r, loss);
  if ((rc = loom_metrics_set(loom_runner_batch_metrics(r), "loss", loss)) < 0)
    return rc;
  if (!loom_runner_is_train_loader(r))
    return 0;
  /* A non-finite loss would poison every parameter through the step. */
  if (!isfinite(loss))
    return loom_error_set(LOOM_ENONFINITE, "the loss is %g; stopping before the optimizer step corrupts the "
                                           "weights (lower the learning rate or check the data)",
                          loss);
  loom_optimizer *opt = loom_runner_optimizer(r);
  if (!opt)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": train loader \"%s\" needs an optimizer (loom_stage_set_optimizer)",
                          stage, loom_runner_loader_name(r));
  const loom_tensor *dout;
  loom_model_zero_grad(model);
  if ((rc = loom_criterion_backward(criterion, out, loom_runner_target(r), &dout)) < 0)
    return rc;
  if ((rc = loom_model_backward(model, dout)) < 0)
    return rc;
  /* Data parallel: every rank steps with the mean gradient. */
  loom_comm *comm = loom_runner_comm(r);
  if (loom_comm_size(comm) > 1 &&
      (rc = loom_comm_allreduce_mean_f32(comm, loom_model_grads(model), loom_model_num_params(model))) < 0)
    return loom_error_wrap(rc, "averaging gradients over %d ranks", loom_comm_size(comm));
  return loom_optimizer_step(opt, model);
}
