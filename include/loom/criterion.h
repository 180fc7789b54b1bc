/* loom/criterion.h - losses: a scalar from model outputs and targets, and
 * the gradient of that scalar with respect to the outputs. */
#ifndef LOOM_CRITERION_H
#define LOOM_CRITERION_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>

#include "loom/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_criterion loom_criterion;

typedef struct loom_criterion_ops {
  const char *type;
  /* The loss of a batch (a mean over samples). Optional with the pair below. */
  int (*forward)(void *data, const loom_tensor *output, const loom_tensor *target, double *loss);
  /* d loss / d output of the last forward, written to dout (output's shape). */
  int (*backward)(void *data, const loom_tensor *output, const loom_tensor *target, loom_tensor *dout);
  void (*destroy)(void *data);
  /* Optional, a pair that does forward's work in two halves, so that a
   * device need not wait for the loss: forward_issue starts the forward on
   * output's backend and leaves the loss's parts in sums[0..1], two doubles
   * of that backend's memory; forward_finish, once they are on the host,
   * gives the loss and refuses what forward would have refused but can only
   * see in them (a target that is no class). */
  int (*forward_issue)(void *data, const loom_tensor *output, const loom_tensor *target, double *sums);
  int (*forward_finish)(void *data, const loom_tensor *output, const loom_tensor *target, const double *sums,
                        double *loss);
  /* Optional: false while backward needs forward_finish first (its scale
   * comes from the sums, e.g. a sum of class weights). NULL: it does not. */
  bool (*backward_before_finish)(void *data);
} loom_criterion_ops;

/* `ops` is copied; `data` is owned (freed by ops->destroy, also on failure). */
LOOM_API loom_criterion *loom_criterion_create(const loom_criterion_ops *ops, void *data);
LOOM_API void loom_criterion_destroy(loom_criterion *c);
LOOM_API const char *loom_criterion_type(const loom_criterion *c);

LOOM_API int loom_criterion_forward(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                           double *loss);
/* The forward without a wait (a model on a device): issue leaves the loss's
 * parts in sums (two doubles of output's backend's memory); once they are
 * read back, finish gives the loss. Between the two, backward may run.
 * LOOM_ENOTSUP (no message set) if the criterion has no such pair or its
 * backward needs the loss first: use loom_criterion_forward. */
LOOM_API int loom_criterion_forward_issue(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                                          double *sums);
LOOM_API int loom_criterion_forward_finish(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                                           const double *sums, double *loss);
/* loom_criterion_backward, then *dout multiplied by scale (1: as is): the
 * loss scaling's gradient (loom_runner_loss_scale). */
LOOM_API int loom_criterion_backward_scaled(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                                           double scale, const loom_tensor **dout);
/* *dout is owned by the criterion and valid until the next call. */
LOOM_API int loom_criterion_backward(loom_criterion *c, const loom_tensor *output, const loom_tensor *target,
                            const loom_tensor **dout);

/* Softmax cross-entropy, mean over the batch. Output [N, C] logits; target
 * [N] class indices stored as floats (0 .. C-1). */
LOOM_API loom_criterion *loom_cross_entropy_create(void);

typedef struct loom_cross_entropy_options {
  float label_smoothing; /* e: the target is (1 - e) onehot + e / C */
  const float *weights;  /* one per class (copied), or NULL */
  int64_t num_weights;
} loom_cross_entropy_options;
/* As torch.nn.CrossEntropyLoss(weight, label_smoothing): with weights the
 * mean divides by the sum of the targets' weights. */
LOOM_API loom_criterion *loom_cross_entropy_create_ex(const loom_cross_entropy_options *options);

/* Against a target of the output's size, mean over all values: */
/* max(z, 0) - z t + log(1 + exp(-|z|)), numerically stable. */
LOOM_API loom_criterion *loom_bce_with_logits_create(void);
LOOM_API loom_criterion *loom_mse_create(void);
LOOM_API loom_criterion *loom_l1_create(void);
/* 0.5 d^2 / beta where |d| < beta, else |d| - 0.5 beta. */
LOOM_API loom_criterion *loom_smooth_l1_create(float beta);

#ifdef __cplusplus
}
#endif
#endif
