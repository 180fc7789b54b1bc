/* loom/runner_view.h - the run as callbacks and handle_batch see it.
 *
 * What a callback or a custom handle_batch reads (where the loop is, the
 * stage's components, the batch, the metrics) and does (publish outputs and
 * losses, step the optimizer, ask to stop, take a snapshot) while
 * loom_run_experiment runs; loom/runner.h is the side that drives a run.
 * Accessors stay readable after the run, as loom_run_experiment says. */
#ifndef LOOM_RUNNER_VIEW_H
#define LOOM_RUNNER_VIEW_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/callback.h"
#include "loom/comm.h"
#include "loom/experiment.h"
#include "loom/metrics.h"
#include "loom/rng.h"
#include "loom/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_loader_kind { LOOM_LOADER_TRAIN, LOOM_LOADER_VALID, LOOM_LOADER_INFER } loom_loader_kind;
/* From the name: "train*" train, "valid*" valid, "infer*" infer. False for
 * any other name (an error when the stage starts), *kind untouched. */
LOOM_API bool loom_loader_kind_from_name(const char *name, loom_loader_kind *kind);

typedef enum loom_stop {
  LOOM_STOP_LOADER = 1, /* leave the current loader after this batch */
  LOOM_STOP_STAGE = 2,  /* need_early_stop: end the stage after this epoch */
} loom_stop;

/* --- snapshots (docs/architecture.md, "Checkpoints and resume") --- */
/* Everything needed to continue the run from this point of the loop:
 * model, optimizer, the runner's cursor, counters, RNG and metrics, and
 * every stateful callback's state. *out is the caller's to destroy.
 * Allowed at every event; it describes the loop after the last completed
 * unit: at a start event (experiment, stage, epoch, loader, batch) that
 * unit has not begun, so a resume restores and fires the event again (at
 * on_batch_start the counters are saved without the current batch); at an
 * end event the unit is done, end event included, so a resume goes on with
 * what follows. From on_experiment_end: the run resumes as finished (runs
 * nothing and returns 0). During a resume's replay it is a copy of the
 * checkpoint being resumed. LOOM_ESTATE outside a run, or after a failure
 * outside a stage. */
LOOM_API int loom_runner_snapshot(loom_runner *runner, loom_checkpoint **out);
/* loom_runner_snapshot, written atomically to `path`. */
LOOM_API int loom_runner_save_checkpoint(loom_runner *runner, const char *path);
/* Collective (docs/distributed.md, "Checkpoints"): every rank calls it at
 * the same point of the loop, from a callback that runs on every rank, and
 * the master's snapshot taken at that point then records each rank's
 * position in the loader under way (batches and samples of its shard) and
 * its metric sums there, so that a resume with as many ranks continues
 * inside that loader bit-exactly. A snapshot inside a loader of several
 * ranks without it resumes at that loader's first batch. The runner
 * gathers by itself when an interrupt stops every rank; nothing to do in a
 * world of one. */
LOOM_API int loom_runner_gather_ranks(loom_runner *runner);
/* True during (and after) a run that resumed from a checkpoint. */
LOOM_API bool loom_runner_is_resumed(const loom_runner *runner);
/* True during a run resumed from a checkpoint whose run had finished: no
 * stage, epoch or batch will run, and the loggers write nothing. */
LOOM_API bool loom_runner_resumed_finished(const loom_runner *runner);
/* The checkpoint file the run resumed from ("" if none). */
LOOM_API const char *loom_runner_resume_path(const loom_runner *runner);
/* What the resume had to work around, e.g. a damaged last.h5 ("" if nothing). */
LOOM_API const char *loom_runner_resume_notice(const loom_runner *runner);

/* Interrupts the run after the current batch, as SIGINT does: the loop fails
 * with LOOM_EINTERRUPTED and `reason`, so on_exception can save a checkpoint. */
LOOM_API void loom_runner_interrupt(loom_runner *runner, const char *reason);

/* --- the optimizer step --- */
/* All-reduces the gradients over ranks (mean), checks they are finite,
 * steps the optimizer, counts the step. handle_batch calls it unless a
 * callback took the step over. Returns 0 (stepped); 1 when a gradient is
 * not finite and the SKIP policy drops the batch (no step; the batch is
 * marked skipped; the gradients are left for the caller to zero); or
 * LOOM_ENONFINITE (STOP, or the budget spent) or another error. */
LOOM_API int loom_runner_optimizer_step(loom_runner *runner);
/* How a step treats the gradients first, in this order: scale (a window of
 * accumulated batches averaged), all-reduce over ranks, clip by global norm,
 * clip by value. Zeros mean "off" (scale 0 means 1). */
typedef struct loom_step_options {
  double scale;
  double clip_norm;
  double clip_value;
} loom_step_options;
/* loom_runner_optimizer_step with gradient treatment; *grad_norm (if not
 * NULL) receives the global norm before clipping. The finiteness check
 * comes after the all-reduce and before clipping; with clip_norm or
 * grad_norm it is the norm's (no extra pass), else one vectorised pass over
 * the gradients. Returns as loom_runner_optimizer_step. */
LOOM_API int loom_runner_optimizer_step_with(loom_runner *runner, const loom_step_options *options, double *grad_norm);
/* With several ranks: the next model backward is followed by the step, so
 * the mean of each bucket of gradients (loom_run_options.bucket_bytes) may
 * start as soon as backward has finished its layers, overlapping the rest
 * of backward. The supervised handle_batch calls it before its backward;
 * a handle_batch of one's own may, and must then step after that
 * backward. Without it the buckets' means run at the step (the same
 * buckets, the same sums: the same bits). Nothing with one rank. */
LOOM_API int loom_runner_begin_backward(loom_runner *runner);
/* An optimizer callback (gradient accumulation, clipping) takes over
 * zero_grad and the step from handle_batch, for the current stage. */
LOOM_API void loom_runner_set_manual_step(loom_runner *runner, bool manual);
LOOM_API bool loom_runner_manual_step(const loom_runner *runner);
/* Optimizer steps done in the run (not batches): Lightning's global_step. */
LOOM_API int64_t loom_runner_optimizer_step_count(const loom_runner *runner);
/* True when this batch was skipped under SKIP: its loss was not finite, or
 * the gradients of the step it ended were not (set from on_batch_end on by
 * an optimizer callback's step). A skipped batch is not in the metrics. */
LOOM_API bool loom_runner_batch_skipped(const loom_runner *runner);
/* 0: finite; 1: skip this batch (policy SKIP, within budget); < 0: error. */
LOOM_API int loom_runner_check_loss(loom_runner *runner, double loss);
/* Seconds the current batch spent waiting for data, and in handle_batch
 * (for a model on a device, until the device finished the batch's work:
 * the runner synchronizes the backend before taking the end time). */
LOOM_API double loom_runner_batch_data_time(const loom_runner *runner);
LOOM_API double loom_runner_batch_compute_time(const loom_runner *runner);

/* The supervised handle_batch, for custom ones that extend it. */
LOOM_API int loom_supervised_handle_batch(loom_runner *runner, void *user);

/* --- where the loop is --- */
LOOM_API const loom_experiment *loom_runner_experiment(const loom_runner *r);
LOOM_API const char *loom_runner_stage_name(const loom_runner *r);
LOOM_API int loom_runner_stage_index(const loom_runner *r);
LOOM_API int loom_runner_epoch(const loom_runner *r);      /* 1-based within the stage */
LOOM_API int loom_runner_num_epochs(const loom_runner *r);
LOOM_API int loom_runner_global_epoch(const loom_runner *r); /* 1-based across stages */
LOOM_API const char *loom_runner_loader_name(const loom_runner *r);
LOOM_API loom_loader_kind loom_runner_loader_kind(const loom_runner *r);
LOOM_API bool loom_runner_is_train_loader(const loom_runner *r);
/* Batch counters number the current batch: the runner advances them just
 * before on_batch_start, so on_batch_start, handle_batch and on_batch_end of
 * one batch read the same values (Catalyst's rule); between batches they
 * count the batches done. A batch the SKIP policy drops counts like any
 * other (it was served), but takes no optimizer step. Lightning's
 * global_step is loom_runner_optimizer_step_count (steps done: the current
 * batch's step is not counted in on_batch_start, it is in on_batch_end);
 * its batch_idx is loader_batch_step - 1. */
LOOM_API int64_t loom_runner_loader_batch_step(const loom_runner *r); /* the current batch of the loader, 1-based */
LOOM_API int64_t loom_runner_loader_num_batches(const loom_runner *r);
LOOM_API int64_t loom_runner_loader_sample_step(const loom_runner *r); /* samples through the current batch */
LOOM_API int64_t loom_runner_batch_size(const loom_runner *r);
LOOM_API int64_t loom_runner_global_batch_step(const loom_runner *r);  /* train batches through the current one */
LOOM_API int64_t loom_runner_global_sample_step(const loom_runner *r); /* train samples through the current batch */
/* Seconds since on_loader_start, or since the resume for a loader resumed
 * mid-way; at on_loader_end, up to the end of its last batch. */
LOOM_API double loom_runner_loader_elapsed(const loom_runner *r);
/* For a loader resumed mid-way, the batches the interrupted run had done
 * (0 for a loader begun in this run). */
LOOM_API int64_t loom_runner_loader_resumed_batches(const loom_runner *r);
/* The samples this run processed in the loader: loader_sample_step less
 * what the interrupted run had done. Rates divide this by the elapsed time. */
LOOM_API int64_t loom_runner_loader_samples_run(const loom_runner *r);
LOOM_API loom_comm *loom_runner_comm(const loom_runner *r);
LOOM_API int loom_runner_rank(const loom_runner *r);
LOOM_API int loom_runner_world_size(const loom_runner *r);
LOOM_API bool loom_runner_is_master(const loom_runner *r);
LOOM_API const char *loom_runner_logdir(const loom_runner *r);
/* False in a loom_run_options.no_write run: a callback then writes no file. */
LOOM_API bool loom_runner_writes_files(const loom_runner *r);
/* A no_write run's checkpoints: keeps `snap`'s bytes in memory as the run's
 * "last" or "best" (the checkpoint callback's files when it writes). */
LOOM_API int loom_runner_keep_checkpoint(loom_runner *r, const char *which, const loom_checkpoint *snap);
/* Opens the run's "last" or "best" checkpoint: <logdir>/checkpoints'
 * (loom_checkpoint_open_logdir), or in a no_write run the one kept in
 * memory (LOOM_ENOENT if none). `path` receives what was opened. */
LOOM_API loom_checkpoint *loom_runner_open_checkpoint(loom_runner *r, const char *which, char *path, size_t path_size);
/* Takes <logdir>/.lock (creating the logdir) for the rest of the run, so a
 * second run into the same logdir refuses (LOOM_EBUSY, naming the first's
 * pid) instead of interleaving files. Callbacks that write to the logdir
 * call it before their first write; the master rank only takes it, a
 * second call is a no-op, and loom_run_experiment releases it however the
 * run ends. A lock left by a crashed run is taken over with a notice.
 * Taking it, a run that is not a resume refuses a logdir that already holds
 * files (LOOM_EEXIST: an earlier run's), or with loom_run_options.overwrite
 * removes the files loom wrote there first. */
LOOM_API int loom_runner_lock_logdir(loom_runner *r);
/* Seeded from (experiment seed, global epoch) at each epoch start. */
LOOM_API loom_rng *loom_runner_rng(loom_runner *r);

/* --- the current stage's components and batch --- */
LOOM_API loom_model *loom_runner_model(const loom_runner *r);
LOOM_API loom_criterion *loom_runner_criterion(const loom_runner *r);
LOOM_API loom_optimizer *loom_runner_optimizer(const loom_runner *r);
LOOM_API loom_loader *loom_runner_loader(const loom_runner *r);
/* The current batch. At on_batch_start: the loader's tensors, in host
 * memory, read-only (change samples in the loader's transforms: on a
 * backend with asynchronous uploads the batch's copy to the device started
 * when the loader made it, before on_batch_start). From handle_batch on,
 * for a model on a device (loom_model_backend not the CPU): copies on the
 * model's backend, in tensors the runner keeps across batches (one pair
 * per loader slot, filled on the backend's copy stream, or one pair
 * copied into after on_batch_start on a backend without asynchronous
 * uploads); read their values through loom_tensor_host_data. For a model
 * on the CPU they stay the loader's tensors, uncopied. The target is NULL
 * for an unlabelled dataset. */
LOOM_API const loom_tensor *loom_runner_input(const loom_runner *r);
LOOM_API const loom_tensor *loom_runner_target(const loom_runner *r);
LOOM_API const loom_tensor *loom_runner_output(const loom_runner *r);
/* handle_batch publishes the model's output for metric callbacks. */
LOOM_API void loom_runner_set_output(loom_runner *r, const loom_tensor *output);
LOOM_API double loom_runner_batch_loss(const loom_runner *r);
LOOM_API void loom_runner_set_batch_loss(loom_runner *r, double loss);

/* --- metrics --- */
LOOM_API loom_metrics *loom_runner_batch_metrics(loom_runner *r);
LOOM_API loom_metrics *loom_runner_loader_metrics(loom_runner *r);
LOOM_API loom_metrics *loom_runner_epoch_metrics(loom_runner *r);
LOOM_API const loom_metrics *loom_runner_best_valid_metrics(const loom_runner *r);
LOOM_API const char *loom_runner_valid_loader(const loom_runner *r);
LOOM_API const char *loom_runner_main_metric(const loom_runner *r);
LOOM_API bool loom_runner_minimize_metric(const loom_runner *r);
/* True at on_epoch_end when this epoch's main metric is the best so far:
 * better than the best by more than the stage's min_delta (0: any
 * improvement). */
LOOM_API bool loom_runner_is_best_valid(const loom_runner *r);
/* From on_stage_start: the main metric's improvements of min_delta or less
 * (relative: min_delta times |best|) make no new best for the rest of the
 * stage (is_best_valid, best_valid_metrics, best_epoch, the console's
 * "new best"). Early stopping sets its monitor's when that monitor watches
 * the stage's valid loader and main metric; reset at each stage start. */
LOOM_API void loom_runner_set_best_min_delta(loom_runner *r, double min_delta, bool relative);
LOOM_API int loom_runner_best_epoch(const loom_runner *r); /* global epoch, 0 if none */

/* --- a callback's batch result, in the deferred batch's copy --- */
/* A metric a callback counts where the batch is, brought to the host with
 * the deferred batch's results (docs/architecture.md, "The deferred
 * batch"): on a device, one copy at the batch's end carries the loss, the
 * step's gate and every registered result, instead of a wait for each. */
typedef struct loom_batch_result {
  size_t bytes; /* the result's size (> 0): a few counts or sums */
  /* After handle_batch, before the copy: issues the ops that write the
   * result at `device` (`bytes` of backend b's memory, the model's,
   * aligned for any type, zeroed before), reading the batch where it is
   * (loom_runner_output, loom_runner_target). Returns 0 (issued); 1 (not
   * this batch: nothing is copied for it, and the callback's on_batch_end
   * does its work as on a batch that is not deferred); or < 0, with a
   * message. */
  int (*issue)(loom_callback *cb, loom_runner *r, loom_backend *b, void *device);
  /* After the copy, before on_batch_end, once the loss is known: the
   * result's bytes on the host; sets the callback's batch metrics.
   * Returns 0 or < 0 with a message. */
  int (*finish)(loom_callback *cb, loom_runner *r, const void *host);
} loom_batch_result;
/* Registers cb's batch result for the rest of the current stage (the
 * callback must be in its table; call it from on_stage_start, which every
 * run of a stage fires, resumes included); again, it replaces cb's
 * result, and NULL removes it. The runner issues and finishes it on each
 * deferred batch whose on_batch_end cb hears (its event filter); a batch
 * that is not deferred (a model on the CPU, several ranks, a manual step,
 * loss scaling, a criterion that needs its loss at once) leaves it alone,
 * and the callback works at on_batch_end. Registrations end with the stage
 * and the run. An error of issue or finish fails the batch, naming the
 * callback and the batch. LOOM_ESTATE outside a stage, LOOM_EINVAL for a
 * callback of another table or a result without bytes or functions. */
LOOM_API int loom_runner_add_batch_result(loom_runner *r, loom_callback *cb, const loom_batch_result *result);
/* True from the finish of cb's result of this batch to the batch's end:
 * its on_batch_end then has nothing left to do. */
LOOM_API bool loom_runner_batch_result_done(const loom_runner *r, const loom_callback *cb);

/* The current stage's callback table on this rank, in dispatch order (as
 * loom_experiment_callback_table describes it); empty before the first
 * stage starts, the last stage's after a run. *rows is the caller's to
 * free(). */
LOOM_API int loom_runner_callback_table(const loom_runner *r, loom_callback_info **rows, size_t *count);
/* Prints that table, one callback a line. */
LOOM_API void loom_runner_print_callbacks(const loom_runner *r, FILE *out);

/* --- control --- */
LOOM_API void loom_runner_request_stop(loom_runner *r, loom_stop what);
/* The same, saying why (the first reason of an epoch is kept); loggers
 * ordered after the caller report it at on_epoch_end. */
LOOM_API void loom_runner_request_stop_because(loom_runner *r, loom_stop what, const char *reason);
/* This epoch's reason to stop, NULL when none was given. */
LOOM_API const char *loom_runner_stop_reason(const loom_runner *r);
LOOM_API bool loom_runner_need_early_stop(const loom_runner *r);

/* --- errors --- */
/* The error that stopped the run (0 if none) and its message. */
LOOM_API int loom_runner_error(const loom_runner *r);
LOOM_API const char *loom_runner_error_message(const loom_runner *r);
/* From on_exception: adds "; <note>" to the error's message, which
 * loom_run_experiment returns (what a callback did about it: "checkpoint
 * saved: logs/x/checkpoints/last.h5"). LOOM_EINVAL outside on_exception. */
LOOM_API int loom_runner_add_error_note(loom_runner *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* From on_exception: the error is dealt with; loom_run_experiment returns 0. */
LOOM_API void loom_runner_mark_error_handled(loom_runner *r);
LOOM_API bool loom_runner_error_handled(const loom_runner *r);

#ifdef __cplusplus
}
#endif
#endif
