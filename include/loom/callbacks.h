/* loom/callbacks.h - the built-in callbacks.
 *
 * Each constructor returns a callback with its band's order (metrics 20,
 * loggers 120); change it with loom_callback_set_order. Hand the callback to
 * loom_stage_add_callback or loom_experiment_add_callback. */
#ifndef LOOM_CALLBACKS_H
#define LOOM_CALLBACKS_H

#include <stdio.h>

#include "loom/callback.h"
#include "loom/criterion.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Top-k accuracy of the model output [N, C] against class targets [N], into
 * the batch metrics: "accuracy" for k = 1, "accuracy@k" for other k. `topk`
 * may be NULL for top-1 only. Ties count in the target's favour only for
 * classes after it, as argmax picks the first maximum. */
loom_callback *loom_accuracy_callback_create(const int *topk, int n);

/* Evaluates `criterion` (owned from here on, also on failure) on the model
 * output and targets of every batch into the batch metric `name`: another
 * loss reported beside the one being optimised (which the supervised runner
 * already puts under "loss"). */
loom_callback *loom_loss_metric_callback_create(const char *name, loom_criterion *criterion);

typedef enum loom_progress { LOOM_PROGRESS_AUTO, LOOM_PROGRESS_ON, LOOM_PROGRESS_OFF } loom_progress;

typedef struct loom_console_logger_options {
  FILE *out;             /* default stdout */
  loom_progress progress; /* AUTO: a live bar only when `out` is a terminal */
} loom_console_logger_options;

/* One line per loader per epoch with its metrics and time, a live progress
 * bar (samples/s, ETA) on a terminal, and the error if the run fails.
 * Master only. `options` may be NULL. */
loom_callback *loom_console_logger_create(const loom_console_logger_options *options);

/* Writes <logdir>/metrics.jsonl and <logdir>/metrics.csv: one row per loader
 * per epoch, at on_loader_end, flushed at once. A JSON line reads
 * {"stage": "train", "epoch": 3, "global_epoch": 3, "loader": "valid",
 *  "metrics": {"loss": 0.41, "accuracy": 0.853}, "time_s": 1.92}
 * with every number printed to round-trip (%.17g). Master only. */
loom_callback *loom_metrics_logger_create(void);

/* Checkpoints into <logdir>/checkpoints (layout in docs/checkpoints.md):
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
loom_checkpoint_options loom_checkpoint_defaults(void);
loom_callback *loom_checkpoint_callback_create(const loom_checkpoint_options *options);

#ifdef __cplusplus
}
#endif
#endif
