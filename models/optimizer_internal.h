#ifndef LOOM_MODELS_OPTIMIZER_INTERNAL_H
#define LOOM_MODELS_OPTIMIZER_INTERNAL_H

#include "loom/optimizer.h"

typedef struct optimizer_ops {
  const char *type;
  size_t state_per_param; /* floats of state per parameter */
  /* One update of parameters [off, off + len) of `total` with rate lr and
   * weight decay wd; p, g and state are the whole arrays (state per
   * parameter laid out as consecutive arrays of `total`); `step` counts
   * from 1. */
  void (*update)(const loom_optimizer *opt, float *p, const float *g, float *state, size_t total, size_t off,
                 size_t len, int64_t step, double lr, double wd);
  double (*momentum)(const loom_optimizer *opt);
  void (*set_momentum)(loom_optimizer *opt, double momentum);
  /* The decay of parameters in no group. */
  double (*weight_decay)(const loom_optimizer *opt);
} optimizer_ops;

typedef struct group {
  char **layers;
  size_t num_layers;
  double lr_scale, weight_decay;
} group;

struct loom_optimizer {
  const optimizer_ops *ops;
  double lr;
  union {
    loom_sgd_options sgd;
    loom_adam_options adam;
    loom_rmsprop_options rmsprop;
  } o;
  group *groups;
  size_t num_groups;
  bool no_decay_bias_norm;
  float *state;
  size_t nstate, nparams;
  int64_t steps;
};

loom_optimizer *loom_optimizer_new(const optimizer_ops *ops, double lr);

#endif
