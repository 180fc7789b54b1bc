/* loom/runner.h - driving a run: the runner, its options, running an
 * experiment and resuming one.
 *
 * loom_run_experiment walks experiment -> stages -> epochs -> loaders ->
 * batches and fires the events of loom/callback.h (see docs/architecture.md
 * for the exact sequence). handle_batch does the work of one batch; the
 * default is the supervised one (forward, loss, backward, optimizer step).
 * What callbacks read and do during the run is loom/runner_view.h, which
 * this header includes. */
#ifndef LOOM_RUNNER_H
#define LOOM_RUNNER_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>

#include "loom/comm.h"
#include "loom/experiment.h"
#include "loom/runner_view.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef int (*loom_handle_batch_fn)(loom_runner *runner, void *user);

/* What to do with a non-finite training loss, or non-finite gradients
 * before an optimizer step (a NaN or Inf anywhere in them, after the
 * all-reduce and before clipping: what a non-finite global norm means).
 * Either way the weights and the optimizer state never see it. */
typedef enum loom_nonfinite_policy {
  LOOM_NONFINITE_STOP, /* fail the run with LOOM_ENONFINITE (default) */
  LOOM_NONFINITE_SKIP, /* skip the batch (no step, no metrics), up to a budget */
} loom_nonfinite_policy;

typedef struct loom_run_options {
  bool check;               /* smoke test: 2 batches per loader, 2 epochs per stage; the
                             * logdir stays the experiment's (the CLI's --check picks a
                             * temporary one) */
  int64_t limit_batches;    /* at most N batches per loader per epoch (0: all) */
  int64_t overfit_batches;  /* every epoch, the same first N batches of each loader (0: off) */
  /* SIGINT/SIGTERM interrupt the run after the current batch. The host's
   * dispositions of both (handler, mask, flags) are saved at the start and
   * restored exactly at the first signal and at the end of the run, so a
   * second signal goes to the host's handler (or, by default, ends the
   * process). No other signal is touched. */
  bool handle_signals;
  loom_nonfinite_policy nonfinite;
  int64_t nonfinite_budget; /* batches SKIP may drop over the whole run (losses and gradients alike) */
  /* A run that is not a resume refuses a logdir that already holds files
   * (an earlier run's metrics, checkpoints, ...: LOOM_EEXIST, naming one),
   * so that nothing of that run is overwritten. With overwrite, the files
   * loom writes there are removed first (the logdir's metrics, config,
   * model summary, TensorBoard files and checkpoints/); a file loom does not
   * write is no run's: it neither refuses a run nor is removed. */
  bool overwrite;
  /* Several ranks: the gradients' mean goes in buckets of whole layers of
   * about this many bytes, last layers first, each started as soon as
   * backward has finished it (loom_runner_begin_backward); 0:
   * LOOM_BUCKET_BYTES_DEFAULT; SIZE_MAX: one bucket. no_overlap starts
   * every bucket after backward instead (the same sums, the same bits). */
  size_t bucket_bytes;
  bool no_overlap;
  /* Several ranks and a model on a device backend: the buckets are summed
   * where they lie, on the device, when the communicator can
   * (loom_comm_sums_on), or by an NCCL communicator the runner makes from
   * an MPI one for a CUDA backend when NCCL loads on every rank
   * (loom/comm_nccl.h); otherwise, and always with host_staged_grads,
   * through a host copy of each bucket, which waits for the device. */
  bool host_staged_grads;
  /* A model on a backend with step graphs (loom/backend.h): each training
   * batch's device ops are logged and a step seen twice is replayed as one
   * graph, bit for bit the step run op by op (one rank; a last partial
   * batch, a step with dropout or one that reads a result on the host
   * before its end runs op by op). no_graphs runs every step op by op. */
  bool no_graphs;
  /* Nothing is written to disk (fuzzing, tests, a dry run): the logdir is
   * neither created, locked nor claimed; the metrics logger, TensorBoard,
   * the exception callback and the LR finder's CSV skip their files (their
   * saved states still save and load); the checkpoint callback keeps its
   * last and best checkpoints as images in memory (what its load_weights
   * reads), lost with the process. Callbacks ask loom_runner_writes_files. */
  bool no_write;
} loom_run_options;

#define LOOM_BUCKET_BYTES_DEFAULT ((size_t)256 << 10)

/* check false, no limits, handle_signals true, STOP, overwrite false, no_write false. */
LOOM_API loom_run_options loom_run_options_defaults(void);

LOOM_API loom_runner *loom_runner_create(void);
LOOM_API void loom_runner_destroy(loom_runner *runner);
/* Replaces the communicator (default: local); owned from here on. */
LOOM_API void loom_runner_set_comm(loom_runner *runner, loom_comm *comm);
/* Replaces handle_batch: a custom runner. NULL restores the supervised one. */
LOOM_API void loom_runner_set_handle_batch(loom_runner *runner, loom_handle_batch_fn fn, void *user);

/* Runs the experiment. Returns 0, or the error that stopped it unless a
 * callback marked that error handled in on_exception.
 *
 * After the run, as after Lightning's fit, the accessors below describe
 * where it ended, until the next run or loom_runner_destroy:
 * - the runner's own state stays readable even after the experiment is
 *   destroyed: counters and positions (stage index, epoch, global steps,
 *   optimizer steps), the batch, loader, epoch and best-valid metrics, the
 *   RNG, the error and its message, the resume path and notice;
 * - what the experiment owns is the last stage's, valid while the
 *   experiment lives and not after loom_experiment_destroy: the model
 *   (with the trained parameters), criterion and optimizer, the loader (NULL
 *   unless the run stopped inside one), the experiment, the stage, loader,
 *   valid-loader and main-metric names, the logdir, and the callbacks of
 *   loom_runner_callback_table;
 * - no batch is current: input, target and output are NULL.
 * Resumed from a snapshot taken at on_experiment_end it runs no stage, fires
 * on_experiment_start and on_experiment_end, and returns 0. */
LOOM_API int loom_run_experiment(loom_runner *runner, loom_experiment *exp);

LOOM_API void loom_runner_set_options(loom_runner *runner, const loom_run_options *options);

/* Dynamic loss scaling (loom_experiment_set_loss_scaling): the scale the
 * loss's gradient is multiplied by now (1 without scaling; a custom
 * handle_batch multiplies its own, as loom_criterion_backward_scaled
 * does), and the optimizer steps skipped for overflow so far. */
LOOM_API double loom_runner_loss_scale(const loom_runner *runner);
LOOM_API int64_t loom_runner_overflow_skips(const loom_runner *runner);
LOOM_API const loom_run_options *loom_runner_options(const loom_runner *runner);

/* --- resume (docs/architecture.md, "Checkpoints and resume") --- */
/* The next loom_run_experiment resumes from `source`: a checkpoint file, or
 * "last" or "best" in <logdir>/checkpoints (see loom_checkpoint_callback). */
LOOM_API int loom_runner_set_resume(loom_runner *runner, const char *source);
/* The same from a checkpoint file's bytes (loom_checkpoint_write_memory's,
 * or a file read whole), copied; `name` stands for the file in messages
 * (NULL: "(checkpoint in memory)"). Nothing is read from disk. */
LOOM_API int loom_runner_set_resume_image(loom_runner *runner, const void *bytes, size_t size, const char *name);
/* Allows a resume to change the config keys matching `pattern` (a dotted
 * path as in --set, `*` matching any part, e.g. "stages.*.optimizer.lr";
 * a key also allows everything under it). Allowed by default:
 * stages.*.num_epochs, experiment.logdir and experiment.allow_change
 * (experiment.seed is always the checkpoint's); a config's
 * experiment.allow_change lists more patterns. Kept for every later run
 * of this runner. */
LOOM_API int loom_runner_allow_change(loom_runner *runner, const char *pattern);
/* After a resume opened: the config changes it accepted, as a JSON array of
 * {"key", "old", "new"} ("[]" if none; NULL without a resume or a config on
 * both sides). */
LOOM_API const char *loom_runner_config_changes(const loom_runner *runner);
#ifdef __cplusplus
}
#endif
#endif
