/* Elementwise losses against a target of the output's size, mean over all
 * elements: BCE with logits, MSE, L1, SmoothL1 (PyTorch's definitions), on
 * the output's backend (loss_forward, loss_backward). */
#include <stdlib.h>

#include "core/error_internal.h"
#include "loom/criterion.h"
#include "models/layer_internal.h"

typedef struct elementwise {
  loom_pointwise_loss kind;
  float beta; /* SmoothL1 */
} elementwise;

static const char *const names[LOOM_LOSS_COUNT] = {"bce_with_logits", "mse", "l1", "smooth_l1"};

static int check(const elementwise *e, const loom_tensor *out, const loom_tensor *target) {
  if (out->numel != target->numel)
    return loom_error_set(LOOM_ESHAPE, "%s: the output has %lld values but the target %lld", names[e->kind],
                          (long long)out->numel, (long long)target->numel);
  return 0;
}

static int ew_issue(void *data, const loom_tensor *out, const loom_tensor *target, double *sums) {
  const elementwise *e = data;
  int rc = check(e, out, target);
  return rc < 0 ? rc
                : loom_backend_loss_forward(loom_backend_of(out), e->kind, e->beta, out->data, target->data,
                                            out->numel, sums);
}

static int ew_finish(void *data, const loom_tensor *out, const loom_tensor *target, const double *sums, double *loss) {
  (void)data, (void)target;
  *loss = out->numel ? sums[0] / (double)out->numel : 0.0;
  return 0;
}

static int ew_backward(void *data, const loom_tensor *out, const loom_tensor *target, loom_tensor *dout) {
  const elementwise *e = data;
  int rc = check(e, out, target);
  const float inv = out->numel ? 1.0f / (float)out->numel : 0.0f;
  return rc < 0 ? rc
                : loom_backend_loss_backward(loom_backend_of(out), e->kind, e->beta, out->data, target->data, inv,
                                             out->numel, dout->data);
}

#define EW_OPS(name) {.type = name, .forward_issue = ew_issue, .forward_finish = ew_finish, .backward = ew_backward, \
                      .destroy = free}
static const loom_criterion_ops ew_ops[] = {EW_OPS("bce_with_logits"), EW_OPS("mse"), EW_OPS("l1"),
                                            EW_OPS("smooth_l1")};

static loom_criterion *make(loom_pointwise_loss k, float beta) {
  elementwise *e = malloc(sizeof *e);
  if (!e) {
    loom_error_oom("a loss");
    return NULL;
  }
  e->kind = k;
  e->beta = beta;
  return loom_criterion_create(&ew_ops[k], e);
}

loom_criterion *loom_bce_with_logits_create(void) { return make(LOOM_LOSS_BCE_WITH_LOGITS, 0); }
loom_criterion *loom_mse_create(void) { return make(LOOM_LOSS_MSE, 0); }
loom_criterion *loom_l1_create(void) { return make(LOOM_LOSS_L1, 0); }

loom_criterion *loom_smooth_l1_create(float beta) {
  if (!(beta > 0)) {
    loom_error_set(LOOM_EINVAL, "SmoothL1: beta must be > 0, got %g", (double)beta);
    return NULL;
  }
  return make(LOOM_LOSS_SMOOTH_L1, beta);
}
