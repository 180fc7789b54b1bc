#ifndef LOOM_RUNNERS_EXPERIMENT_INTERNAL_H
#define LOOM_RUNNERS_EXPERIMENT_INTERNAL_H

#include "loom/experiment.h"
#include "runners/callback_internal.h"

typedef struct loom_named_loader {
  char *name;
  loom_loader *loader;
} loom_named_loader;

struct loom_stage {
  loom_experiment *exp;
  char *name;
  int num_epochs;
  loom_model *model; /* NULL: the previous stage's */
  loom_criterion *criterion;
  loom_optimizer *optimizer;
  loom_named_loader *loaders; /* none: the previous stage's */
  size_t num_loaders, cap_loaders;
  loom_callback **callbacks;
  size_t num_callbacks, cap_callbacks;
  char *valid_loader, *main_metric;
  bool minimize;
  bool reset_optimizer;
  char *load_weights; /* "best", "last" or NULL */
  char **frozen;
  size_t num_frozen, cap_frozen;
};

/* Builds the callback table of stage `stage` (or LOOM_EXPERIMENT_EVENTS) on
 * `rank`, as loom_experiment_callback_table describes it. */
int loom_experiment_build_table(const loom_experiment *exp, int stage, int rank, loom_callback_table *t);

#endif
