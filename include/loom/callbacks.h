/* loom/callbacks.h - the built-in callbacks.
 *
 * Each constructor returns a callback with its band's order (metrics 20,
 * loggers 120); change it with loom_callback_set_order. Hand the callback to
 * loom_stage_add_callback or loom_experiment_add_callback. */
#ifndef LOOM_CALLBACKS_H
#define LOOM_CALLBACKS_H

#include "loom/api.h"


#include <stdio.h>

#include "loom/callback.h"
#include "loom/criterion.h"
#include "loom/scheduler.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Top-k accuracy of the model output [N, C] against class targets [N], into
 * the batch metrics: "accuracy" for k = 1, "accuracy@k" for other k. `topk`
 * may be NULL for top-1 only. Ties count in the target's favour only for
 * classes after it, as argmax picks the first maximum. */
LOOM_API loom_callback *loom_accuracy_callback_create(const int *topk, int n);

/* Evaluates `criterion` (owned from here on, also on failure) on the model
 * output and targets of every batch into the batch metric `name`: another
 * loss reported beside the one being optimised (which the supervised runner
 * already puts under "loss"). */
LOOM_API loom_callback *loom_loss_metric_callback_create(const char *name, loom_criterion *criterion);

typedef enum loom_progress { LOOM_PROGRESS_AUTO, LOOM_PROGRESS_ON, LOOM_PROGRESS_OFF } loom_progress;

typedef struct loom_console_logger_options {
  FILE *out;              /* default stdout */
  loom_progress progress; /* AUTO: a live bar only when `out` is a terminal */
  bool verbose;           /* print the resolved callback table at each stage start */
} loom_console_logger_options;

/* One line per loader per epoch with its metrics and time, a live progress
 * bar (samples/s, ETA) on a terminal, where a resume came from, loom's
 * notices about the environment (loom_notice, each once per logger) as
 * "warning: ..." lines at experiment start, and the error if the run fails.
 * Master only. `options` may be NULL. */
LOOM_API loom_callback *loom_console_logger_create(const loom_console_logger_options *options);

/* Writes <logdir>/metrics.jsonl and <logdir>/metrics.csv: one row per loader
 * per epoch, at on_loader_end, flushed at once. A JSON line reads
 * {"stage": "train", "epoch": 3, "global_epoch": 3, "loader": "valid",
 *  "metrics": {"loss": 0.41, "accuracy": 0.853}, "time_s": 1.92}
 * with every number printed to round-trip (%.17g). Master only. */
LOOM_API loom_callback *loom_metrics_logger_create(void);

/* Checkpoints into <logdir>/checkpoints (layout in docs/architecture.md, "Checkpoints and resume"):
 * last.h5 at every epoch end (and every N train batches when asked), the
 * best K by a monitored metric as epoch_NNNN.h5 with best.h5 linking the
 * top one, and manifest.json with the ranking and each file's CRC-32. A
 * new file is complete on disk before an old one is removed; the ranking is
 * part of the callback's saved state, so it survives a resume. On
 * LOOM_EINTERRUPTED (a signal, a time limit) it saves last.h5 at the batch
 * boundary; on another error, exception.h5. Runs last (order 250). */
typedef struct loom_checkpoint_options {
  const char *loader;  /* monitored loader; NULL: the stage's valid loader */
  const char *metric;  /* monitored metric; NULL: the stage's main metric */
  int minimize;        /* 1, 0, or -1: as the stage says */
  int save_top_k;      /* best K files kept; 0: none */
  bool save_last;
  int64_t every_n_batches;         /* also last.h5 every N train batches (0: off) */
  const char *load_on_stage_start; /* NULL, "best" or "last": weights loaded at stage start */
  const char *load_on_stage_end;   /* NULL, "best" or "last": weights loaded at stage end */
  bool save_on_exception;
} loom_checkpoint_options;

/* top 1, last on, exception checkpoints on, the stage's metric. */
LOOM_API loom_checkpoint_options loom_checkpoint_defaults(void);
LOOM_API loom_callback *loom_checkpoint_callback_create(const loom_checkpoint_options *options);

/* --- optimizer step control (order 60) --- */
typedef struct loom_optimizer_callback_options {
  int64_t accumulation_steps; /* batches per optimizer step (>= 1) */
  double clip_norm;           /* clip the global gradient norm (0: off) */
  double clip_value;          /* clamp each gradient (0: off) */
} loom_optimizer_callback_options;
/* Takes the optimizer step over from handle_batch: gradients of
 * `accumulation_steps` train batches are summed and averaged (a last
 * partial window, at the loader's end, by its real number of batches), then
 * all-reduced, clipped, stepped and zeroed. Steps are counted apart from
 * batches (loom_runner_optimizer_step_count). With clipping it reports the
 * batch metric "grad_norm" (before clipping) on the batches that step.
 * Non-finite gradients follow the run's non-finite policy: SKIP drops the
 * whole window (no step, gradients zeroed, the batch that ended it out of
 * the metrics). */
LOOM_API loom_callback *loom_optimizer_callback_create(const loom_optimizer_callback_options *options);

/* --- learning-rate schedules (order 100) --- */
typedef enum loom_schedule_unit {
  LOOM_SCHEDULE_PER_STEP,  /* after every optimizer step */
  LOOM_SCHEDULE_PER_EPOCH, /* after every epoch */
} loom_schedule_unit;
/* Drives `scheduler` (owned from here on, also on failure) for each stage it
 * runs in: started from the optimizer's rate at stage start, stepped per
 * optimizer step or per epoch. ReduceLROnPlateau watches `loader`/`metric`
 * (NULL: the stage's valid loader and main metric) and steps per epoch. One
 * added to a resumed run starts where the run resumes. */
LOOM_API loom_callback *loom_scheduler_callback_create(loom_scheduler *scheduler, loom_schedule_unit unit, const char *loader,
                                              const char *metric);

/* --- early stopping (order 200) --- */
#define LOOM_EARLY_STOPPING_MAX_MONITORS 8
typedef struct loom_monitor {
  const char *loader;          /* NULL: the stage's valid loader */
  const char *metric;          /* NULL: the stage's main metric */
  int minimize;                /* 1, 0, or -1: as the stage says */
  double min_delta;            /* an improvement must beat the best by this */
  bool relative;               /* min_delta is a fraction of |best| */
  double stopping_threshold;   /* stop once better than this (NAN: off) */
  double divergence_threshold; /* stop once worse than this (NAN: off) */
} loom_monitor;
typedef struct loom_early_stopping_options {
  loom_monitor monitors[LOOM_EARLY_STOPPING_MAX_MONITORS];
  int num_monitors;          /* 0: one monitor on the stage's main metric */
  bool require_all;          /* stop when all monitors stall (true) or any (false) */
  int64_t patience;          /* epochs without improvement */
  bool check_finite;         /* stop on NaN or infinity */
  bool restore_best_weights; /* put back the best epoch's weights on stopping */
} loom_early_stopping_options;
/* patience 5, check_finite, any, no thresholds. */
LOOM_API loom_early_stopping_options loom_early_stopping_defaults(void);
/* A monitor with the defaults: the stage's metric, no delta, no thresholds. */
LOOM_API loom_monitor loom_monitor_defaults(void);
/* Sets need_early_stop at on_epoch_end when the monitors say so. Restarts
 * in each stage; its counters and the best weights are saved state. */
LOOM_API loom_callback *loom_early_stopping_callback_create(const loom_early_stopping_options *options);
/* Why it stopped the last stage ("" if it did not). */
LOOM_API const char *loom_early_stopping_reason(const loom_callback *cb);

/* --- faults --- */
typedef struct loom_exception_options {
  bool handle;          /* mark the error handled: loom_run_experiment returns 0 */
  bool handle_interrupts_only; /* with handle: only LOOM_EINTERRUPTED */
  bool save_checkpoint; /* write <logdir>/checkpoints/exception.h5 */
} loom_exception_options;
/* Records the error in <logdir>/exception.json (code, message, where in the
 * loop, time) and, as asked, saves an "exception" checkpoint and marks the
 * error handled. */
LOOM_API loom_callback *loom_exception_callback_create(const loom_exception_options *options);

/* Interrupts the run after the first batch that ends past `seconds` since
 * the experiment started, as a signal would (a checkpoint callback saves
 * last.h5), and marks that interrupt handled: the run ends cleanly. */
LOOM_API loom_callback *loom_time_limit_callback_create(double seconds);

/* --- observability --- */
/* Batch metrics "time/data_s" (waiting for the loader) and "time/compute_s"
 * (handle_batch); loader metrics "time/samples_per_s" and
 * "time/data_fraction" (data wait over the loader's wall time). */
LOOM_API loom_callback *loom_timer_callback_create(void);

/* Writes TensorBoard event files (events.out.tfevents.*) into the logdir:
 * each loader metric as the scalar "<loader>/<metric>" at step = global
 * epoch, epoch-level metrics (lr, ...) under their own names; with
 * batch_every > 0 also "batch/<loader>/<metric>" every N train batches at
 * step = global batch. Steps continue across stages and resumes.
 *
 * Hyperparameters (docs/callbacks.md, "Hyperparameters"): every scalar of
 * the experiment's resolved config (loom_experiment_config: every run built
 * from a config) under its key path as --set writes it
 * ("stages.train.optimizer.lr"), then those set below (replacing a config
 * key of the same name). When there is any, the file gets TensorBoard's
 * HParams summaries: the session's start with the values at experiment
 * start; at experiment end the Experiment (the hparams, and each
 * "<loader>/<metric>" as a metric) and the session's end with its status
 * (none for an interrupted run, whose resume goes on with the session).
 * At experiment end it also writes <logdir>/hparams.json:
 * {"hparams": {...}, "final": {"valid/loss": 0.41, ...}, "status":
 * "done"|"failed"|"interrupted"}, "final" holding each loader metric's
 * last value. */
LOOM_API loom_callback *loom_tensorboard_logger_create(int64_t batch_every);
/* A hyperparameter of the run, recorded as above; `cb` must be a logger
 * from loom_tensorboard_logger_create. Setting a name again replaces it. */
LOOM_API int loom_tensorboard_logger_set_hparam(loom_callback *cb, const char *name, double value);
LOOM_API int loom_tensorboard_logger_set_hparam_string(loom_callback *cb, const char *name, const char *value);
LOOM_API int loom_tensorboard_logger_set_hparam_bool(loom_callback *cb, const char *name, bool value);

/* --- learning-rate finder (order 100: the scheduler band) --- */
typedef struct loom_lr_finder_options {
  double min_lr;        /* 1e-7: the first batch's rate */
  double max_lr;        /* 10: the last batch's rate */
  int64_t steps;        /* 200: train batches in the sweep (>= 2) */
  double beta;          /* 0.98: the loss's moving average, in [0, 1) */
  double divergence;    /* 4: stop once the smoothed loss passes this times its best (0: never) */
  int64_t skip_begin;   /* 10: points the suggestion leaves out at the start */
  int64_t skip_end;     /* 1: ... and at the end */
  const char *csv_path; /* NULL: <logdir>/lr_find.csv (copied) */
  bool tensorboard;     /* also the curve as TensorBoard scalars in the logdir (loom_tensorboard_logger_create) */
  bool restore;         /* true: the stage ends with the weights and optimizer state it began with */
} loom_lr_finder_options;
/* The values above. */
LOOM_API loom_lr_finder_options loom_lr_finder_defaults(void);
/* fastai's lr_find, Lightning's Tuner.lr_find, for the stage it is added to
 * (docs/callbacks.md): train batch i (0-based) of the stage runs at
 *   lr_i = min_lr * (max_lr / min_lr)^(i / (steps - 1)),
 * set before every batch, whatever a scheduler set (give the sweep a stage
 * without a scheduler: a schedule's momentum changes are not undone). The
 * loss is smoothed as avg_i = beta avg_(i-1) + (1 - beta) loss_i, smoothed_i
 * = avg_i / (1 - beta^(i+1)). The sweep stops after `steps` batches, or
 * early when it diverges: a smoothed loss above `divergence` times the
 * lowest one before it, or a non-finite loss or gradient (the run's
 * non-finite policy is SKIP with no budget during the sweep, then the
 * run's own again; the weights never see it). Then the stage ends (its
 * other loaders, and loaders that do not train, run no batch). At the
 * stage's end it writes the curve as CSV (lr,loss,smoothed; master only)
 * and puts the weights and optimizer state back (`restore`); nothing else
 * is written. The suggestion (loom_lr_finder_suggest) is the rate where
 * the smoothed loss falls fastest against log10(lr). */
LOOM_API loom_callback *loom_lr_finder_callback_create(const loom_lr_finder_options *options);

typedef struct loom_lr_finder_result {
  int64_t points;      /* batches swept */
  bool diverged;       /* stopped early, at diverged_lr (else NAN) */
  double diverged_lr;
  double best_loss;    /* the lowest smoothed loss */
  double suggestion;   /* NAN when there is none: why_none says why */
  char why_none[256];
  const char *reason;  /* why the sweep ended */
  char csv_path[4096]; /* "" on ranks other than the master */
  /* The curve, `points` long: the rate, the batch's loss and the smoothed
   * loss (NAN where the loss was not finite). Owned by the callback. */
  const double *lr, *loss, *smoothed;
} loom_lr_finder_result;
/* After the stage with the finder ended: what its sweep found. Valid until
 * the callback sweeps again or is destroyed. */
LOOM_API int loom_lr_finder_get_result(const loom_callback *cb, loom_lr_finder_result *out);
/* The suggestion rule, for any curve: among points skip_begin .. n -
 * skip_end - 1 with a finite smoothed loss, the gradient of smoothed
 * against log10(lr) (at each point, the difference of its two neighbours
 * over their distance; one-sided at both ends: numpy.gradient on evenly
 * spaced points); the suggestion is the rate where it is
 * most negative (fastai's "steep", Lightning's suggestion). NAN, with the
 * reason in `why`, when fewer than 2 points remain or the loss never falls. */
LOOM_API int loom_lr_finder_suggest(const double *lr, const double *smoothed, size_t n, int64_t skip_begin,
                                    int64_t skip_end, double *suggestion, char *why, size_t why_size);

#ifdef __cplusplus
}
#endif
#endif
