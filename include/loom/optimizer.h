/* loom/optimizer.h - optimizers over a model's contiguous parameters.
 *
 * An optimizer's state (momentum, Adam moments) is one contiguous buffer,
 * allocated on the first step for the model it is stepped with. Updates
 * follow PyTorch's torch.optim formulas exactly. */
#ifndef LOOM_OPTIMIZER_H
#define LOOM_OPTIMIZER_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/model.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_optimizer loom_optimizer;

typedef struct loom_sgd_options {
  double lr;
  double momentum;     /* 0: plain SGD */
  double dampening;
  double weight_decay; /* L2, added to the gradient */
  bool nesterov;       /* needs momentum > 0 and dampening 0 */
} loom_sgd_options;

typedef struct loom_adam_options {
  double lr;           /* 1e-3 */
  double beta1, beta2; /* 0.9, 0.999 */
  double eps;          /* 1e-8 */
  double weight_decay; /* L2, added to the gradient (Adam, not AdamW) */
} loom_adam_options;

/* The defaults above, for `loom_adam_options o = loom_adam_defaults();`. */
LOOM_API loom_adam_options loom_adam_defaults(void);
/* AdamW's: as Adam's with weight_decay 0.01 (decoupled: p -= lr wd p). */
LOOM_API loom_adam_options loom_adamw_defaults(void);

typedef struct loom_rmsprop_options {
  double lr;           /* 0.01 */
  double alpha;        /* 0.99 */
  double eps;          /* 1e-8 */
  double momentum;     /* 0 */
  double weight_decay; /* 0, added to the gradient */
  bool centered;
} loom_rmsprop_options;
LOOM_API loom_rmsprop_options loom_rmsprop_defaults(void);

LOOM_API loom_optimizer *loom_sgd_create(const loom_sgd_options *options);
LOOM_API loom_optimizer *loom_adam_create(const loom_adam_options *options);
LOOM_API loom_optimizer *loom_adamw_create(const loom_adam_options *options);
LOOM_API loom_optimizer *loom_rmsprop_create(const loom_rmsprop_options *options);

/* Parameter groups: the named layers (comma-separated) step with
 * lr_scale times the optimizer's rate (schedules move every group alike)
 * and their own weight decay. Layers in no group use the optimizer's. */
typedef struct loom_param_group {
  const char *layers;
  double lr_scale;
  double weight_decay;
} loom_param_group;
LOOM_API int loom_optimizer_add_group(loom_optimizer *opt, const loom_param_group *group);
/* Spares biases and normalisation parameters (BatchNorm's scale and shift)
 * from weight decay: the usual one-line setting. */
LOOM_API void loom_optimizer_set_no_decay_bias_norm(loom_optimizer *opt, bool on);
LOOM_API void loom_optimizer_destroy(loom_optimizer *opt);
LOOM_API const char *loom_optimizer_type(const loom_optimizer *opt);

/* One update of the model's parameters from its gradients. */
LOOM_API int loom_optimizer_step(loom_optimizer *opt, loom_model *model);
/* Forgets the state (moments, step count). */
LOOM_API void loom_optimizer_reset(loom_optimizer *opt);

LOOM_API double loom_optimizer_lr(const loom_optimizer *opt);
LOOM_API void loom_optimizer_set_lr(loom_optimizer *opt, double lr);
/* SGD's momentum, Adam's beta1. */
LOOM_API double loom_optimizer_momentum(const loom_optimizer *opt);
/* Sets SGD's momentum or Adam's beta1 (OneCycle cycles it). */
LOOM_API void loom_optimizer_set_momentum(loom_optimizer *opt, double momentum);
LOOM_API int64_t loom_optimizer_steps(const loom_optimizer *opt);
/* Saves / restores lr, momentum, step count and state buffer. */
LOOM_API int loom_optimizer_save(const loom_optimizer *opt, loom_state *state);
LOOM_API int loom_optimizer_load(loom_optimizer *opt, const loom_state *state);
/* The state buffer and its length in floats (NULL, 0 before the first step). */
LOOM_API float *loom_optimizer_state(loom_optimizer *opt, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
