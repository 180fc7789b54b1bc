/* loom/optimizer.h - optimizers over a model's contiguous parameters.
 *
 * An optimizer's state (momentum, Adam moments) is one contiguous buffer,
 * allocated on the first step for the model it is stepped with, where that
 * model's memory is (loom_model_set_backend: on a device the updates run
 * there, through the ops' update_on). The
 * built-in updates follow PyTorch's torch.optim formulas exactly; a new
 * optimizer is a loom_optimizer_ops table, as the built-ins are. */
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

/* What an optimizer implements. The optimizer object keeps what every
 * optimizer has (the rate, the step count, parameter groups, the no-decay
 * rule, the state buffer and saving them); the ops say how a range of
 * parameters is updated. */
typedef struct loom_optimizer_ops {
  const char *type;
  /* Floats of state per parameter: the state buffer holds that many arrays
   * of the model's parameter count, one after the other (Adam's [m | v]),
   * allocated zeroed at the first step, saved in checkpoints and freed by
   * loom_optimizer_reset. 0: no buffer. */
  size_t state_per_param;
  /* true: update may be called on parts of a range from several threads at
   * once (an elementwise rule). false: one call per range, on one thread
   * (a rule that needs the whole range, e.g. a layer-wise norm). */
  bool elementwise;
  /* Updates parameters [off, off + len) of `total` with rate lr and weight
   * decay wd. params, grads and state are the whole arrays: parameter i's
   * k-th state value is state[k * total + i] (state is NULL without a
   * buffer). A range lies within one layer: its weights, or its biases and
   * normalisation parameters (which loom_optimizer_set_no_decay_bias_norm
   * hands over with wd 0). `step` counts from 1. Returns 0 or an error
   * (with loom_error_set; an elementwise rule's parts on other threads
   * should not fail, as their message cannot reach the caller). */
  int (*update)(void *data, float *params, const float *grads, float *state, size_t total, size_t off, size_t len,
                int64_t step, double lr, double wd);
  /* The momentum (SGD's, Adam's beta1) and its setter, for schedules that
   * cycle it. Optional: 0, and setting it does nothing. */
  double (*momentum)(void *data);
  void (*set_momentum)(void *data, double momentum);
  /* The weight decay of parameters in no group. Optional: 0. */
  double (*weight_decay)(void *data);
  /* State of the data's own beyond what loom saves (the rate, momentum,
   * step count and state buffer), under keys other than "type", "lr",
   * "momentum", "steps", "nparams" and "state". Optional. */
  int (*save)(void *data, loom_state *state);
  int (*load)(void *data, const loom_state *state);
  /* Forgets that state (loom_optimizer_reset). Optional. */
  void (*reset)(void *data);
  /* Frees data. Optional. */
  void (*destroy)(void *data);
  /* update on `backend`'s memory (loom/backend.h): how a model on a device
   * (loom_model_set_backend) is stepped, with its parameters, gradients
   * and the state there, one call per range (the built-ins call the
   * backend's sgd_update, adam_update, rmsprop_update). Optional: an
   * optimizer without it steps models in host memory only, and refuses
   * one on a device. */
  int (*update_on)(void *data, loom_backend *backend, float *params, const float *grads, float *state, size_t total,
                   size_t off, size_t len, int64_t step, double lr, double wd);
  /* true: update_on writes only through the backend's update ops, which a
   * gate can hold back (loom_backend_set_update_gate), so that
   * loom_optimizer_step_gated may leave the decision to the device. */
  bool gateable;
  /* Optional: the ranges of a step's update_on calls, with their rates
   * and decays, in one call (loom_backend_update_ranges: one launch on a
   * device). The built-ins have it. */
  int (*update_ranges_on)(void *data, loom_backend *backend, float *params, const float *grads, float *state,
                          size_t total, const loom_update_range *ranges, int nranges, int64_t step);
} loom_optimizer_ops;

/* A new optimizer with rate lr (>= 0). `ops` is copied; `data` is owned
 * (freed by ops->destroy, also on failure). */
LOOM_API loom_optimizer *loom_optimizer_create(const loom_optimizer_ops *ops, void *data, double lr);
LOOM_API void *loom_optimizer_data(const loom_optimizer *opt);

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

/* Parameter groups: the named layers step with lr_scale times the
 * optimizer's rate (schedules move every group alike) and their own weight
 * decay. Layers in no group use the optimizer's. The names are copied. */
typedef struct loom_param_group {
  const char *const *layers;
  size_t num_layers;
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
/* The same, only if every gradient is finite: *finite says whether the
 * step was taken (if not, nothing changed, the step count included). The
 * check is fused into the update (each core checks, then updates, its own
 * slice), so it costs little more than the step. */
LOOM_API int loom_optimizer_step_checked(loom_optimizer *opt, loom_model *model, bool *finite);
/* The checked step as the device decides it, without a wait (a model on
 * a device): *gate (an int in the backend's memory, zeroed by the caller)
 * becomes 1 if a gradient or one of also[0..nalso) (that memory too: the
 * loss's sums) is not finite, and the update is held back on the device
 * if so. The step is counted; once the host has read the gate, a step it
 * held back is taken back with loom_optimizer_untake_step. LOOM_ENOTSUP
 * (no message set) for a model on the CPU, a backend without the
 * flag_nonfinite op, or an optimizer that is not gateable. */
LOOM_API int loom_optimizer_step_gated(loom_optimizer *opt, loom_model *model, const double *also, int64_t nalso,
                                       int *gate);
LOOM_API void loom_optimizer_untake_step(loom_optimizer *opt);
LOOM_API bool loom_optimizer_is_gateable(const loom_optimizer *opt);
/* Forgets the state (moments, step count, and the ops' own: ops->reset). */
LOOM_API void loom_optimizer_reset(loom_optimizer *opt);

LOOM_API double loom_optimizer_lr(const loom_optimizer *opt);
LOOM_API void loom_optimizer_set_lr(loom_optimizer *opt, double lr);
/* The weight decay of parameters in no group (ops->weight_decay). */
LOOM_API double loom_optimizer_weight_decay(const loom_optimizer *opt);
/* SGD's momentum, Adam's beta1. */
LOOM_API double loom_optimizer_momentum(const loom_optimizer *opt);
/* Sets SGD's momentum or Adam's beta1 (OneCycle cycles it). */
LOOM_API void loom_optimizer_set_momentum(loom_optimizer *opt, double momentum);
LOOM_API int64_t loom_optimizer_steps(const loom_optimizer *opt);
/* Saves / restores lr, momentum, step count, state buffer and the ops' own
 * state (ops->save / ops->load). */
LOOM_API int loom_optimizer_save(const loom_optimizer *opt, loom_state *state);
LOOM_API int loom_optimizer_load(loom_optimizer *opt, const loom_state *state);
/* The state buffer and its length in floats (NULL, 0 before the first
 * step): in the memory of the backend of the model it was last stepped
 * with (loom_model_backend; host memory after loom_optimizer_load, until
 * the next step moves it there). */
LOOM_API float *loom_optimizer_state(loom_optimizer *opt, size_t *n);

#ifdef __cplusplus
}
#endif
#endif
