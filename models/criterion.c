#include <stdlib.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/backend_cpu.h"
#include "loom/criterion.h"

struct loom_criterion {
  loom_criterion_ops ops;
  void *data;
  loom_tensor *dout;
};

loom_criterion *loom_criterion_create(const loom_criterion_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->forward || !ops->backward) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_criterion_create: a criterion needs type, forward and backward");
    return NULL;
  }
  loom_criterion *c = calloc(1, sizeof *c);
  int64_t one = 1;
  loom_tensor *dout = c ? loom_tensor_create(1, &one) : NULL;
  if (!c || !dout) {
    free(c);
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a criterion");
    return NULL;
  }
  c->ops = *ops;
  c->data = data;
  c->dout = dout;
  return c;
}

void loom_criterion_destroy(loom_criterion *c) {
  if (!c)
    return;
  if (c->ops.destroy)
    c->ops.destroy(c->data);
  loom_tensor_destroy(c->dout);
  free(c);
}

const char *loom_criterion_type(const loom_criterion *c) { return c->ops.type; }

int loom_criterion_forward(loom_criterion *c, const loom_tensor *output, const loom_tensor *target, double *loss) {
  return c->ops.forward(c->data, output, target, loss);
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
