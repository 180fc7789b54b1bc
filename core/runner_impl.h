#ifndef LOOM_CORE_RUNNER_IMPL_H
#define LOOM_CORE_RUNNER_IMPL_H

#include "loom/runner.h"

#include "core/callback_internal.h"
#include "core/error_internal.h"
#include "core/experiment_internal.h"

struct loom_runner {
  loom_comm *comm;
  loom_handle_batch_fn handle_batch;
  void *handle_user;

  /* what runs */
  loom_experiment *exp;
  const loom_stage *stage;
  int stage_index;
  loom_model *model;
  loom_criterion *criterion;
  loom_optimizer *optimizer;
  const loom_named_loader *loaders;
  size_t num_loaders;
  loom_callback_table exp_table;   /* every callback: experiment start/end */
  loom_callback_table stage_table; /* the current stage's */
  bool in_stage;

  /* where the loop is */
  int epoch, num_epochs, global_epoch;
  const char *loader_name;
  loom_loader_kind loader_kind;
  loom_loader *loader;
  int64_t loader_batch_step, loader_num_batches, loader_sample_step, batch_size;
  int64_t global_batch_step, global_sample_step;
  uint64_t loader_start_ns;
  loom_rng rng;
  unsigned stop_flags;

  /* the batch */
  const loom_tensor *input, *target, *output;
  double batch_loss;

  /* metrics */
  loom_metrics *batch_metrics, *loader_metrics, *epoch_metrics;
  loom_metrics *loader_sums, *loader_weights; /* sample-weighted accumulators */
  loom_metrics *valid_metrics, *best_valid_metrics;
  const char *valid_loader, *main_metric;
  bool minimize, is_best_valid, have_best;
  double best_value;
  int best_epoch;

  /* the error that stopped the run */
  int error;
  char error_message[LOOM_ERROR_MAX];
  bool error_handled;
};

/* Nanoseconds from a monotonic clock. */
uint64_t loom_now_ns(void);

#endif
