#ifndef LOOM_MODELS_OPTIMIZER_INTERNAL_H
#define LOOM_MODELS_OPTIMIZER_INTERNAL_H

#include "loom/optimizer.h"

typedef struct optimizer_ops {
  const char *type;
  size_t state_per_param; /* floats of state per parameter */
  /* One update; `step` counts from 1. */
  void (*update)(const loom_optimizer *opt, float *restrict p, const float *restrict g, float *restrict state,
                 size_t n, int64_t step);
  double (*momentum)(const loom_optimizer *opt);
  void (*set_momentum)(loom_optimizer *opt, double momentum);
} optimizer_ops;

struct loom_optimizer {
  const optimizer_ops *ops;
  double lr;
  union {
    loom_sgd_options sgd;
    loom_adam_options adam;
  } o;
  float *state;
  size_t nstate, nparams;
  int64_t steps;
};

loom_optimizer *loom_optimizer_new(const optimizer_ops *ops, double lr);

#endif
