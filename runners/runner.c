/* The runner's life: create, options, run the experiment, unwind. */
#include "runners/runner_impl.h"

#include "backends/cpu/fpmode.h"
#include "backends/cpu/gemm.h"
#include "core/fs.h"

#include <stdlib.h>
#include <string.h>

#define NUM_METRIC_STORES 7

static loom_metrics **metric_stores(loom_runner *r, loom_metrics **out) {
  loom_metrics **m[NUM_METRIC_STORES] = {&r->batch_metrics, &r->loader_metrics, &r->epoch_metrics, &r->loader_sums,
                                         &r->loader_weights, &r->valid_metrics, &r->best_valid_metrics};
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    out[i] = *m[i];
  return out;
}

loom_run_options loom_run_options_defaults(void) {
  return (loom_run_options){.handle_signals = true, .nonfinite = LOOM_NONFINITE_STOP};
}

loom_runner *loom_runner_create(void) {
  loom_runner *r = calloc(1, sizeof *r);
  if (!r) {
    loom_error_oom("a runner");
    return NULL;
  }
  r->comm = loom_comm_local_create();
  loom_metrics **m[NUM_METRIC_STORES] = {&r->batch_metrics, &r->loader_metrics, &r->epoch_metrics, &r->loader_sums,
                                         &r->loader_weights, &r->valid_metrics, &r->best_valid_metrics};
  bool ok = r->comm != NULL;
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    ok = (*m[i] = loom_metrics_create()) != NULL && ok;
  if (!ok) {
    loom_runner_destroy(r);
    loom_error_oom("a runner");
    return NULL;
  }
  r->handle_batch = loom_supervised_handle_batch;
  r->options = loom_run_options_defaults();
  r->stage_index = -1;
  return r;
}

void loom_runner_destroy(loom_runner *r) {
  if (!r)
    return;
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_runner_reducer_free(r);
  loom_tensor_destroy(r->device_input), loom_tensor_destroy(r->device_target), loom_tensor_destroy(r->deferred);
  loom_runner_results_free(r);
  loom_comm_destroy(r->comm);
  loom_metrics *m[NUM_METRIC_STORES];
  metric_stores(r, m);
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    loom_metrics_destroy(m[i]);
  loom_checkpoint_destroy(r->resume);
  loom_rank_positions_clear(&r->gathered);
  free(r->resume_source);
  free(r->resume_image);
  free(r->kept[0].bytes), free(r->kept[1].bytes);
  free(r->config_changes);
  for (size_t i = 0; i < r->num_allowed; i++)
    free(r->allowed_changes[i]);
  free(r->allowed_changes);
  free(r);
}

void loom_runner_set_comm(loom_runner *r, loom_comm *comm) {
  if (!comm)
    return;
  loom_runner_reducer_free(r);
  loom_comm_destroy(r->comm);
  r->comm = comm;
}

void loom_runner_set_handle_batch(loom_runner *r, loom_handle_batch_fn fn, void *user) {
  r->handle_batch = fn ? fn : loom_supervised_handle_batch;
  r->handle_user = fn ? user : NULL;
}

void loom_runner_set_options(loom_runner *r, const loom_run_options *o) {
  r->options = o ? *o : loom_run_options_defaults();
}

const loom_run_options *loom_runner_options(const loom_runner *r) { return &r->options; }

/* Forgets the last run, keeping configuration and storage. */
static void reset(loom_runner *r, loom_experiment *exp) {
  loom_rank_positions_clear(&r->gathered);
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_runner keep = *r;
  memset(r, 0, sizeof *r);
  r->comm = keep.comm;
  r->handle_batch = keep.handle_batch;
  r->handle_user = keep.handle_user;
  r->options = keep.options;
  r->resume_source = keep.resume_source;
  r->resume_image = keep.resume_image, r->resume_image_size = keep.resume_image_size;
  r->allowed_changes = keep.allowed_changes, r->num_allowed = keep.num_allowed;
  free(keep.config_changes);
  r->batch_metrics = keep.batch_metrics, r->loader_metrics = keep.loader_metrics;
  r->epoch_metrics = keep.epoch_metrics, r->loader_sums = keep.loader_sums;
  r->loader_weights = keep.loader_weights, r->valid_metrics = keep.valid_metrics;
  r->best_valid_metrics = keep.best_valid_metrics;
  loom_checkpoint_destroy(keep.resume);
  free(keep.kept[0].bytes), free(keep.kept[1].bytes); /* a run keeps its own */
  loom_metrics *m[NUM_METRIC_STORES];
  metric_stores(r, m);
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    loom_metrics_clear(m[i]);
  r->exp = exp;
  loom_runner_scaler_start(r);
  r->stage_index = -1;
  r->loader_index = -1;
}

/* The unwind: on_exception once (the current stage's callbacks, or every
 * callback outside a stage), then on_experiment_end unless it already ran.
 * Failures while unwinding cannot replace the error being handled. */
static void unwind(loom_runner *r, int error, bool experiment_end_done) {
  r->error = error;
  snprintf(r->error_message, sizeof r->error_message, "%s", loom_last_error());
  r->error_handled = false;
  const loom_callback_table *t = r->in_stage ? &r->stage_table : &r->exp_table;
  /* The other ranks learn of a failure here now, not by waiting for this
   * rank forever; an interrupt already travelled with the stop decision,
   * and a failed collective has told them or heard from them. */
  if (error != LOOM_EINTERRUPTED && !loom_comm_failed(r->comm))
    loom_comm_notify_failure(r->comm, r->error_message);
  /* An interrupt stopped every rank at one point: the master's checkpoint
   * there records where each rank was (without, a resume starts the
   * loader again). */
  if (error == LOOM_EINTERRUPTED && r->interrupt_synced && !loom_comm_failed(r->comm))
    loom_runner_gather_ranks(r);
  /* r->event stays where the loop failed: a snapshot describes that point. */
  loom_callback_table_dispatch(t, LOOM_EVENT_EXCEPTION, r, 1);
  if (!experiment_end_done)
    loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_END, r, 1);
  loom_error_set(r->error, "%s", r->error_message);
}

static int run(loom_runner *r, bool *end_done) {
  /* Every callback of every stage, for the experiment-wide events. */
  int rc = loom_runner_share_seed(r); /* the loaders' orders and the draws follow it */
  if (rc == 0)
    rc = loom_experiment_build_table(r->exp, LOOM_EXPERIMENT_EVENTS, loom_comm_rank(r->comm), &r->exp_table);
  if (rc == 0)
    rc = loom_runner_check_writers(r); /* before any callback has written */
  if (rc == 0 && r->resume_source)
    rc = loom_runner_open_resume(r);
  if (rc == 0 && r->options.handle_signals)
    rc = loom_signals_start(r);
  loom_gemm_check_kernels(); /* a notice for the loggers, before they start */
  r->event = LOOM_EVENT_EXPERIMENT_START;
  if (rc == 0)
    rc = loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_START, r, 0);
  size_t first = r->resume ? (size_t)r->cursor.stage : 0;
  /* Stages before the resumed one only lend their components. */
  for (size_t s = 0; rc == 0 && s < first; s++)
    rc = loom_runner_prepare_stage(r, s, false);
  if (rc == 0 && r->resume && r->cursor.phase == LOOM_PHASE_STAGE_DONE)
    rc = loom_runner_restore_ended_stage(r, first++);
  for (size_t s = first; rc == 0 && s < loom_experiment_num_stages(r->exp); s++)
    rc = loom_runner_run_stage(r, s);
  if (rc == 0) {
    r->event = LOOM_EVENT_EXPERIMENT_END;
    rc = loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_END, r, 1);
    *end_done = true;
  }
  return rc;
}

int loom_run_experiment(loom_runner *r, loom_experiment *exp) {
  if (!r || !exp)
    return loom_error_set(LOOM_EINVAL, "loom_run_experiment: runner and experiment are required");
  reset(r, exp);
  if (loom_experiment_num_stages(exp) == 0)
    return loom_error_set(LOOM_EINVAL, "experiment \"%s\" has no stages; add one with loom_experiment_add_stage",
                          loom_experiment_name(exp));
  unsigned fpmode = loom_cpu_fast_denormals_begin();
  loom_precision autocast = loom_backend_set_autocast(loom_experiment_precision(exp));
  bool end_done = false;
  int rc = run(r, &end_done);
  if (rc < 0)
    unwind(r, rc, end_done);
  loom_signals_stop(r);
  if (r->logdir_locked)
    loom_dir_unlock(r->logdir_lock);
  r->logdir_locked = false;
  /* No batch is current after a run, however it ended. */
  r->input = r->target = r->output = NULL;
  /* The batch's device copies live on the experiment's backend, which the
   * experiment may destroy before the runner: they go with the run. */
  loom_tensor_destroy(r->device_input), loom_tensor_destroy(r->device_target), loom_tensor_destroy(r->deferred);
  r->device_input = r->device_target = r->deferred = NULL;
  r->deferred_criterion = NULL;
  /* The callbacks' batch results end with the run (the experiment owns
   * the callbacks). */
  loom_runner_results_free(r);
  /* And the upload slots, whose hooks the loaders (the experiment's) drop. */
  loom_runner_upload_free(r);
  /* So do the gradient buckets: they hook the experiment's model, and a
   * device communicator made for its backend uses that backend's stream. */
  loom_runner_reducer_free(r);
  /* A resume source serves one run. */
  free(r->resume_source);
  free(r->resume_image);
  r->resume_source = NULL, r->resume_image = NULL;
  loom_backend_set_autocast(autocast);
  loom_cpu_fast_denormals_end(fpmode);
  return (rc < 0 && !r->error_handled) ? rc : 0;
}
