#ifndef LOOM_RUNNERS_RUNNER_IMPL_H
#define LOOM_RUNNERS_RUNNER_IMPL_H

#include <signal.h>
#include <uv.h>

#include "loom/runner.h"

#include "core/clock.h"
#include "core/error_internal.h"
#include "runners/callback_internal.h"
#include "runners/experiment_internal.h"

/* What a snapshot saves: the loop after its last completed unit (see
 * docs/architecture.md, "Checkpoints and resume"); the phase says which
 * unit that is, and so how a resume continues. 0 and 1 mean what they
 * meant in files from before phases (epoch_done 0 and 1). */
typedef enum loom_phase {
  LOOM_PHASE_IN_LOADER = 0,     /* loader `loader` under way, `batches` of it done */
  LOOM_PHASE_EPOCH_DONE = 1,    /* on_stage_start done, epochs up to `epoch` done (0: none) */
  LOOM_PHASE_BEFORE_STAGE = 2,  /* the stage prepared, on_stage_start not fired */
  LOOM_PHASE_BEFORE_LOADER = 3, /* epoch `epoch` under way, loaders before `loader` done */
  LOOM_PHASE_STAGE_DONE = 4,    /* on_stage_end done */
  LOOM_PHASE_COUNT
} loom_phase;

typedef struct loom_cursor {
  int64_t stage;   /* index */
  int64_t epoch;   /* 1-based in the stage; 0 before the first */
  int64_t phase;   /* loom_phase */
  int64_t loader;  /* index of the loader under way (or next) */
  int64_t batches; /* batches of that loader done (or of the last loader) */
  int64_t global_epoch;
} loom_cursor;

/* Signal watchers: libuv's handler only records the signal; the runner
 * looks after every batch. */
#define LOOM_NUM_WATCHED_SIGNALS 2 /* SIGINT, SIGTERM */
typedef struct loom_signals {
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  bool active;   /* the loop and handles exist */
  bool watching; /* libuv owns SIGINT/SIGTERM; host[] is still to restore */
  int received;
  struct sigaction host[LOOM_NUM_WATCHED_SIGNALS]; /* the dispositions found at start */
} loom_signals;

/* Each rank's position in the loader under way and its metric sums there,
 * gathered on the master (runner_ranks.c) for the snapshot taken at the
 * same point: `stamp` says which point. */
typedef struct loom_rank_position {
  int64_t batches, samples; /* of the loader under way, done */
  loom_metrics *sums, *weights;
} loom_rank_position;

typedef struct loom_rank_positions {
  int64_t stamp[8]; /* the cursor, the event, the global batch step */
  int count;        /* ranks gathered; 0: none */
  loom_rank_position *ranks;
} loom_rank_positions;

/* A callback's batch result (loom_runner_add_batch_result) and its place
 * in the deferred batch's copy: `offset` into the results area that
 * follows the deferred batch's own results (runner_deferred.c). */
typedef struct loom_result_slot {
  loom_callback *cb;
  loom_batch_result result;
  size_t offset;
  bool issued; /* this batch: its ops are in the copy */
  bool done;   /* this batch: finished */
} loom_result_slot;

struct loom_runner {
  loom_comm *comm;
  int logdir_lock; /* the descriptor of <logdir>/.lock while held */
  bool logdir_locked;
  loom_handle_batch_fn handle_batch;
  void *handle_user;
  loom_run_options options;

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
  loom_event event; /* being fired; LOOM_EVENT_COUNT between events; where
                       the loop failed while unwinding */

  /* where the loop is */
  int epoch, num_epochs, global_epoch;
  int loader_index;
  const char *loader_name;
  loom_loader_kind loader_kind;
  loom_loader *loader;
  int64_t loader_batch_step, loader_num_batches, loader_sample_step, batch_size;
  int64_t batches_done; /* of the current loader, metrics accumulated */
  int64_t global_batch_step, global_sample_step, global_optimizer_step;
  uint64_t loader_start_ns, loader_end_ns; /* end: 0 while its batches run */
  /* Of the loader under way, what the interrupted run had done before a
   * resume (0 if the loader began in this run). */
  int64_t loader_resumed_batches, loader_resumed_samples;
  double batch_data_s, batch_compute_s;
  loom_rng rng;
  unsigned stop_flags;
  char stop_reason[512]; /* why this epoch stopped the run or stage ("": no reason given) */
  bool manual_step;
  bool skip_batch; /* non-finite loss skipped: no metrics */
  int64_t nonfinite_skips;
  /* Dynamic loss scaling (runner_scaler.c). */
  loom_loss_scaling scaling;
  double loss_scale;
  int64_t scale_good_steps, overflow_skips;
  /* A non-finite loss on this rank of several: decided at the step, with
   * the others, through NaN gradients (loom_runner_check_loss). */
  /* The loader's step under way: its batch, or past a rank's shard the
   * synchronisation it joins; the same on every rank. */
  int64_t loader_step;
  bool loss_poisoned;
  /* The gradients' mean over ranks, in buckets (runner_reducer.c). */
  struct loom_reducer *reducer;
  double poisoned_loss;

  /* the batch */
  const loom_tensor *input, *target, *output;
  /* The batch on a device model's backend, reused across batches, when it
   * is copied after on_batch_start (runner_upload.c). */
  loom_tensor *device_input, *device_target;
  /* The deferred batch (runner_deferred.c): its results on the device, the
   * criterion whose loss is there (NULL: none pending), a held-back step. */
  loom_tensor *deferred;
  loom_criterion *deferred_criterion;
  bool step_deferred;
  int *loss_bad_flag; /* several ranks: on the device, set if this rank's loss is not finite */
  int graph_ranks;    /* several ranks: whether all log this loader's steps (runner_graph.c): 0 not asked, 1, -1 */
  /* The callbacks' batch results that travel in its copy, for the stage
   * (loom_runner_add_batch_result), results_bytes of them in all (each
   * aligned); the copy's host side. */
  loom_result_slot *results;
  size_t num_results, cap_results, results_bytes;
  void *results_host;
  size_t results_host_bytes;
  /* The loaders whose batches upload asynchronously (runner_upload.c). */
  struct loom_uploads *uploads;
  double batch_loss;

  /* metrics */
  loom_metrics *batch_metrics, *loader_metrics, *epoch_metrics;
  loom_metrics *loader_sums, *loader_weights; /* sample-weighted accumulators */
  loom_metrics *valid_metrics, *best_valid_metrics;
  const char *valid_loader, *main_metric;
  bool minimize, is_best_valid, have_best;
  double best_value;
  double best_min_delta; /* the stage's: a smaller improvement is no new best */
  bool best_delta_relative; /* min_delta is a fraction of |best_value| */
  int best_epoch;

  /* resume */
  char *resume_source;        /* as asked: a path, "last" or "best" (or the image's name) */
  void *resume_image;         /* loom_runner_set_resume_image's bytes, or NULL */
  size_t resume_image_size;
  /* A no_write run's last and best checkpoints (loom_runner_keep_checkpoint). */
  struct {
    void *bytes;
    size_t size;
  } kept[2];
  loom_checkpoint *resume;    /* until restored */
  loom_cursor cursor;         /* the resume's */
  bool resumed;
  bool resumed_finished; /* the checkpoint's run had finished: nothing runs */
  char resume_path[4096];
  char resume_notice[1024];
  int resume_world;            /* the ranks the checkpoint was written by */
  loom_rank_positions gathered; /* on the master: every rank's, for a snapshot */
  char **allowed_changes; /* loom_runner_allow_change's patterns */
  size_t num_allowed;
  char *config_changes; /* the accepted changes, JSON, or NULL */

  /* interrupts */
  loom_signals signals;
  bool interrupted;
  bool interrupt_synced; /* every rank stops at this point (loom_runner_sync) */
  char interrupt_reason[256];

  /* the error that stopped the run */
  int error;
  char error_message[LOOM_ERROR_MAX];
  bool error_handled;
};

/* runner_logdir.c */
/* Once the logdir is locked: refuses (LOOM_EEXIST) a logdir that holds an
 * earlier run's files, unless this run resumes, or removes those files
 * when options.overwrite. */
int loom_runner_claim_logdir(loom_runner *r);
/* Refuses a run two of whose callbacks (r->exp_table: every stage's and
 * the experiment's) write the same file (loom_callback_set_writes). */
int loom_runner_check_writers(const loom_runner *r);

/* runner_loop.c */
/* Fires `event` to the current stage's table. */
int loom_runner_dispatch(loom_runner *r, loom_event event);
/* Polls signals, ORs interrupts over ranks, broadcasts rank 0's stop flags;
 * LOOM_EINTERRUPTED if interrupted. */
int loom_runner_sync(loom_runner *r);
/* Batches a loader runs after check/limit/overfit. */
int64_t loom_runner_batch_limit(const loom_runner *r, int64_t available);
int loom_runner_run_stage(loom_runner *r, size_t index);
/* A resume after stage `index` ended: the stage lends its components and
 * callbacks the saved state, and fires no event. */
int loom_runner_restore_ended_stage(loom_runner *r, size_t index);

/* runner_stage.c */
/* Makes stage `index` current: components, loaders, model build, carry-over
 * (loading weights only if `load`), callback table. */
int loom_runner_prepare_stage(loom_runner *r, size_t index, bool load);

/* runner_metrics.c */
/* sums[name] += value * weight, weights[name] += weight, per batch metric. */
int loom_accumulate_metrics(loom_metrics *sums, loom_metrics *weights, const loom_metrics *batch, double weight);
/* loader_metrics := the weighted means of the sums, reduced over ranks. */
int loom_runner_finish_loader_metrics(loom_runner *r);
/* is_best_valid and best_valid_metrics from the valid loader's main metric. */
int loom_runner_update_best_valid(loom_runner *r);
/* The finished loader's metrics into `epoch` as "{loader}/{metric}" and,
 * for the stage's valid loader, into `valid`. */
int loom_runner_add_loader_metrics(const loom_runner *r, loom_metrics *epoch, loom_metrics *valid);

/* runner_checkpoint.c */
/* A metrics store into a state as "<key>_names" and "<key>_values", and back. */
int loom_save_metrics(loom_state *s, const char *key, const loom_metrics *m);
int loom_load_metrics(const loom_state *s, const char *key, loom_metrics *m);
/* Opens the checkpoint named by r->resume_source into r->resume and reads
 * its cursor; checks it belongs to this experiment. */
int loom_runner_open_resume(loom_runner *r);
/* Restores every saved state from r->resume and drops it. */
int loom_runner_restore(loom_runner *r);

/* runner_dist.c: rank 0's values on every rank (nothing in a world of one). */
/* The experiment's seed, before anything draws from it. */
int loom_runner_share_seed(loom_runner *r);
/* The model's parameters and buffers, and with `optimizer` its state. */
int loom_runner_share_weights(loom_runner *r, bool optimizer);
/* The model's buffers (BatchNorm's statistics, which each rank's batches
 * move): evaluation on every rank uses the master's. */
int loom_runner_share_buffers(loom_runner *r);

/* The loop's position as a snapshot records it. */
loom_cursor loom_runner_cursor_now(const loom_runner *r);
/* This rank's loader sums and weights as of that position (at on_batch_end
 * the batch counted), into `sums` and `weights` (replacing their contents). */
int loom_runner_sums_at_cursor(const loom_runner *r, loom_metrics *sums, loom_metrics *weights);

/* runner_ranks.c: what each rank's loader under way had consumed. */
/* Into a snapshot's "ranks/<i>" groups and "world_size": every rank's
 * position if gathered at this point (a world of one: its own). */
int loom_runner_save_ranks(loom_runner *r, loom_checkpoint *c);
/* Whether checkpoint `c` lets this rank continue inside the loader under
 * way (the same world size, and its own position recorded). */
bool loom_runner_can_resume_in_loader(const loom_runner *r, const loom_checkpoint *c);
/* This rank's position and sums from a checkpoint of the same world size. */
int loom_runner_restore_rank(loom_runner *r, const loom_checkpoint *c);
void loom_rank_positions_clear(loom_rank_positions *p);

/* runner_signals.c */
int loom_signals_start(loom_runner *r);
/* Polls for signals received since the last call. */
void loom_signals_poll(loom_runner *r);
void loom_signals_stop(loom_runner *r);

/* runner_reducer.c: the gradients' mean over ranks, bucket by bucket
 * (started during backward after loom_runner_begin_backward), and freeing
 * it (before the communicator or the model goes). */
typedef struct loom_reducer loom_reducer;
int loom_runner_mean_grads(loom_runner *r);
/* Whether the gradients of the model (on device backend b) are summed
 * where they lie, by a device-aware communicator (making the reducer). */
bool loom_runner_grads_summed_on(loom_runner *r, loom_backend *b);
void loom_runner_reducer_free(loom_runner *r);

/* runner_deferred.c: the supervised batch on a device without a wait
 * before its end. criterion_forward leaves the loss on the device when it
 * can (*deferred), or gives it; step_deferred is then the step, held back
 * on the device if need be; settle_deferred, at the batch's end, reads the
 * results, records the loss and applies the non-finite policy to a step
 * held back. record_loss: the batch's loss and its "loss" metric. */
int loom_runner_criterion_forward(loom_runner *r, loom_criterion *c, const loom_tensor *out, double *loss,
                                  bool *deferred);
int loom_runner_step_deferred(loom_runner *r);
int loom_runner_settle_deferred(loom_runner *r);
int loom_runner_record_loss(loom_runner *r, double loss);
/* The callbacks' batch results (loom_runner_add_batch_result) of a
 * deferred batch: results_begin at each batch's start (none done yet),
 * issue_results after handle_batch (before settle_deferred's copy),
 * finish_results after it; results_end forgets them (the stage's end),
 * results_free frees their storage too (the run's end). */
void loom_runner_results_begin(loom_runner *r);
int loom_runner_issue_results(loom_runner *r);
int loom_runner_finish_results(loom_runner *r);
void loom_runner_results_end(loom_runner *r);
void loom_runner_results_free(loom_runner *r);

/* runner_graph.c: a training batch's device ops logged (loom_backend_log_begin)
 * on a backend with step graphs, unless options.no_graphs (over several
 * ranks, on all or none, the supervised handle_batch's with the gradients
 * summed on the device: loom_backend_log_begin_over): begin
 * moves the batch out of its upload slot (loom_runner_upload_fix) and sets
 * *logged to the backend it opened the log on (NULL: none), or fails with
 * the copy's error; end ends the log after handle_batch returned rc
 * (dropped if rc < 0) and returns rc or the log's error. */
int loom_runner_graph_begin(loom_runner *r, loom_backend **logged);
int loom_runner_graph_end(loom_backend *b, int rc);

/* runner_step.c: a non-finite gradient found at the step, to the policy. */
int loom_runner_nonfinite_gradients(loom_runner *r);

/* runner_upload.c: each batch onto a device model's backend. */
/* Before loader l's epoch starts: on a backend with asynchronous uploads,
 * gives l the hooks that copy each batch as it is made (once per loader
 * and backend; taken off when the model moved); nothing otherwise. */
int loom_runner_upload_attach(loom_runner *r, loom_loader *l, const char *name);
/* After on_batch_start: r->input and r->target become the batch's copies
 * on `b` (the model's device backend): its slot's, once the compute stream
 * waits for their upload, or copied now. */
int loom_runner_upload_batch(loom_runner *r, loom_backend *b);
/* The batch at the runner's own device tensors (on b) if it is in an
 * upload slot's: a step graph's log then names the same addresses every
 * batch, not one per slot (one device-to-device copy of the batch). */
int loom_runner_upload_fix(loom_runner *r, loom_backend *b);
/* After the batch, before the loader's next: its slot may be refilled. */
int loom_runner_upload_done(loom_runner *r);
/* Ends l's epoch (loom_loader_end_epoch) and releases its slots, those of
 * batches made and never used included: before a seek, a new epoch, or
 * the run's end. `error` < 0: the loader failed with it, which is returned
 * with its message whatever the release does; else 0 or the release's. */
int loom_runner_upload_pause(loom_runner *r, loom_loader *l, int error);
/* At the run's end: the hooks off the loaders, the slots freed. */
void loom_runner_upload_free(loom_runner *r);

/* runner_scaler.c: the loss scale from the experiment at the run's start;
 * at the step, after the gradients' mean, 1 to skip an overflowing step
 * (the scale backs off) or the gradients divided by the scale; a step
 * made (the scale may grow); the state in the runner's checkpoint group. */
void loom_runner_scaler_start(loom_runner *r);
int loom_runner_unscale(loom_runner *r);
void loom_runner_scaler_stepped(loom_runner *r);
int loom_runner_scaler_save(const loom_runner *r, loom_state *s);
int loom_runner_scaler_restore(loom_runner *r, const loom_state *s);

#endif
