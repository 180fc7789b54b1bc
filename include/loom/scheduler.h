/* loom/scheduler.h - learning-rate schedules (PyTorch's formulas).
 *
 * A schedule maps the number of steps taken, t, to a learning rate from the
 * base rate the optimizer had when the schedule started. A step is an
 * optimizer step (not a micro-batch) or an epoch, as the scheduler callback
 * is told. OneCycle also cycles the momentum (SGD's, or Adam's beta1). */
#ifndef LOOM_SCHEDULER_H
#define LOOM_SCHEDULER_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>

#include "loom/optimizer.h"
#include "loom/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_scheduler loom_scheduler;

/* What a schedule implements (the built-ins below are written the same
 * way). The scheduler object keeps the step count t, the base rate and the
 * current rate, sets them on the optimizer and saves them; the ops say what
 * the rate is at each step. */
typedef struct loom_scheduler_ops {
  const char *type;
  /* Steps once per epoch on a loader metric (ReduceLROnPlateau). */
  bool needs_metric;
  /* The rate (and momentum) for step t: t = 0 when the schedule starts,
   * then 1, 2, ... at each step. `base_lr` is the optimizer's rate when the
   * schedule started. On entry *lr is the current rate and *momentum the
   * optimizer's momentum; set either or neither (a closed form of t sets
   * *lr; a reactive schedule scales it). `metric` is the monitored value
   * when needs_metric (NaN at t = 0), else NaN. */
  int (*rate)(void *data, int64_t t, double base_lr, double metric, double *lr, double *momentum);
  /* Forgets the data's own state when the schedule starts. Optional. */
  void (*reset)(void *data);
  /* State of the data's own beyond t and the rates (which loom saves),
   * under keys other than "type", "steps", "base_lr" and "lr". Optional. */
  int (*save)(void *data, loom_state *state);
  int (*load)(void *data, const loom_state *state);
  /* Frees data. Optional. */
  void (*destroy)(void *data);
} loom_scheduler_ops;

/* `ops` is copied; `data` is owned (freed by ops->destroy, also on failure). */
LOOM_API loom_scheduler *loom_scheduler_create(const loom_scheduler_ops *ops, void *data);
LOOM_API void *loom_scheduler_data(const loom_scheduler *s);

/* base * gamma^floor(t / step_size) */
LOOM_API loom_scheduler *loom_step_lr_create(int64_t step_size, double gamma);
/* base * gamma^(number of milestones <= t); milestones increasing */
LOOM_API loom_scheduler *loom_multistep_lr_create(const int64_t *milestones, int n, double gamma);
/* base * gamma^t */
LOOM_API loom_scheduler *loom_exponential_lr_create(double gamma);
/* Linear warmup from base * warmup_start_factor to base over warmup_steps,
 * then cosine annealing to min_lr at total_steps (and min_lr after). */
LOOM_API loom_scheduler *loom_cosine_lr_create(int64_t warmup_steps, int64_t total_steps, double min_lr,
                                      double warmup_start_factor);

typedef struct loom_onecycle_options {
  double max_lr;
  int64_t total_steps;
  double pct_start;        /* 0.3 */
  double div_factor;       /* 25: initial lr = max_lr / div_factor */
  double final_div_factor; /* 1e4: final lr = initial lr / final_div_factor */
  bool cycle_momentum;     /* true */
  double base_momentum;    /* 0.85 */
  double max_momentum;     /* 0.95 */
} loom_onecycle_options;
LOOM_API loom_onecycle_options loom_onecycle_defaults(double max_lr, int64_t total_steps);
LOOM_API loom_scheduler *loom_onecycle_lr_create(const loom_onecycle_options *options);

typedef struct loom_plateau_options {
  bool minimize;        /* true */
  double factor;        /* 0.1 */
  int64_t patience;     /* 10 epochs without improvement */
  double threshold;     /* 1e-4 */
  bool relative;        /* true: threshold relative to the best */
  int64_t cooldown;     /* 0 */
  double min_lr;        /* 0 */
} loom_plateau_options;
LOOM_API loom_plateau_options loom_plateau_defaults(void);
/* ReduceLROnPlateau: multiplies the rate by `factor` after `patience` steps
 * whose metric did not beat the best by `threshold`. */
LOOM_API loom_scheduler *loom_plateau_lr_create(const loom_plateau_options *options);

LOOM_API void loom_scheduler_destroy(loom_scheduler *s);
LOOM_API const char *loom_scheduler_type(const loom_scheduler *s);
/* Whether step() needs a metric (ReduceLROnPlateau). */
LOOM_API bool loom_scheduler_needs_metric(const loom_scheduler *s);

/* Captures the optimizer's rate as the base and sets the rate for t = 0. */
LOOM_API int loom_scheduler_start(loom_scheduler *s, loom_optimizer *opt);
/* One step: t += 1 and the optimizer's rate (and momentum) follow. */
LOOM_API int loom_scheduler_step(loom_scheduler *s, loom_optimizer *opt, double metric);
LOOM_API int64_t loom_scheduler_steps(const loom_scheduler *s);
/* The rate the schedule set last. */
LOOM_API double loom_scheduler_lr(const loom_scheduler *s);
LOOM_API int loom_scheduler_save(const loom_scheduler *s, loom_state *state);
LOOM_API int loom_scheduler_load(loom_scheduler *s, const loom_state *state);

#ifdef __cplusplus
}
#endif
#endif
