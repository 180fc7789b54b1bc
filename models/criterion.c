#include <stdlib.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/backend_cpu.h"
#include "loom/criterion.h"
#include "models/layer_internal.h"

struct loom_criterion {
  loom_criterion_ops ops;
  void *data;
  loom_tensor *dout;
  /* forward's sums on a device: two doubles in a tensor of four floats
   * (a backend's memory is 64-byte aligned), moved with the output */
  loom_tensor *sums;
};

loom_criterion *loom_criterion_create(const loom_criterion_ops *ops, void *data) {
  const bool pair = ops && ops->forward_issue && ops->forward_finish;
  if (!ops || !ops->type || !(ops->forward || pair) || !ops->backward ||
      (!ops->forward_issue != !ops->forward_finish)) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_criterion_create: a criterion needs type, forward (or forward_issue and "
                                "forward_finish, both) and backward");
    return NULL;
  }
  loom_criterion *c = calloc(1, sizeof *c);
  int64_t one = 1, two_doubles = 2 * sizeof(double) / sizeof(float);
  loom_tensor *dout = c ? loom_tensor_create(1, &one) : NULL;
  loom_tensor *sums = dout && pair ? loom_tensor_create(1, &two_doubles) : NULL;
  if (!c || !dout || (pair && !sums)) {
    free(c);
    loom_tensor_destroy(dout);
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a criterion");
    return NULL;
  }
  c->ops = *ops;
  c->data = data;
  c->dout = dout;
  c->sums = sums;
  return c;
}

void loom_criterion_destroy(loom_criterion *c) {
  if (!c)
    return;
  if (c->ops.destroy)
    c->ops.destroy(c->data);
  loom_tensor_destroy(c->dout);
  loom_tensor_destroy(c->sums);
  free(c);
}

const char *loom_criterion_type(const loom_criterion *c) { return c->ops.type; }

/* Without a forward of its own, the pair with a wait between: the sums go
 * to the host (memory of the CPU backend is the host's) and back. */
int loom_criterion_forward(loom_criterion *c, const loom_tensor *output, const loom_tensor *target, double *loss) {
  if (c->ops.forward)
    return c->ops.forward(c->data, output, target, loss);
  double host[2];
  int rc = loom_tensor_move_to(c->sums, output->backend);
  double *sums = (double *)(void *)c->sums->data;
  if (rc == 0)
    rc = c->ops.forward_issue(c->data, output, target, sums);
  if (rc == 0)
    rc = loom_backend_to_host(loom_backend_of(c->sums), host, sums, sizeof host);
  return rc < 0 ? rc : c->ops.forward_finish(c->data, output, target, host, loss);
}

int loom_criterion_forward_issue(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                                 double *sums) {
  if (!c->ops.forward_issue || (c->ops.backward_before_finish && !c->ops.backward_before_finish(c->data)))
    return LOOM_ENOTSUP;
  return c->ops.forward_issue(c->data, output, target, sums);
}

int loom_criterion_forward_finish(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                                  const double *sums, double *loss) {
  if (!c->ops.forward_finish)
    return loom_error_set(LOOM_ESTATE, "criterion \"%s\": forward_finish without forward_issue", c->ops.type);
  return c->ops.forward_finish(c->data, output, target, sums, loss);
}

int loom_criterion_backward(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                            const loom_tensor **dout) {
  /* on the output's backend (nothing to do once it is there) */
  int rc = loom_tensor_move_to(c->dout, output->backend);
  if (rc == 0)
    rc = loom_tensor_resize(c->dout, output->ndim, output->shape);
  if (rc == 0)
    rc = c->ops.backward(c->data, output, target, c->dout);
  if (rc == 0)
    *dout = c->dout;
  return rc;
}

int loom_criterion_backward_scaled(loom_criterion *c, const loom_tensor *output, const loom_tensor *target, double scale,
                                   const loom_tensor **dout) {
  int rc = loom_criterion_backward(c, output, target, dout);
  if (rc == 0 && scale != 1.0)
    rc = loom_backend_scale(c->dout->backend ? c->dout->backend : loom_backend_cpu(), c->dout->data, (float)scale,
                            c->dout->numel);
  return rc;
}
