/* What callbacks read and write: the runner's state (names as Catalyst's). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "runners/runner_impl.h"

#include "core/fs.h"

const loom_experiment *loom_runner_experiment(const loom_runner *r) { return r->exp; }
const char *loom_runner_stage_name(const loom_runner *r) { return r->stage ? r->stage->name : NULL; }
int loom_runner_stage_index(const loom_runner *r) { return r->stage_index; }
int loom_runner_epoch(const loom_runner *r) { return r->epoch; }
int loom_runner_num_epochs(const loom_runner *r) { return r->num_epochs; }
int loom_runner_global_epoch(const loom_runner *r) { return r->global_epoch; }
const char *loom_runner_loader_name(const loom_runner *r) { return r->loader_name; }
loom_loader_kind loom_runner_loader_kind(const loom_runner *r) { return r->loader_kind; }
bool loom_runner_is_train_loader(const loom_runner *r) {
  return r->loader_name && r->loader_kind == LOOM_LOADER_TRAIN;
}
int64_t loom_runner_loader_batch_step(const loom_runner *r) { return r->loader_batch_step; }
int64_t loom_runner_loader_num_batches(const loom_runner *r) { return r->loader_num_batches; }
int64_t loom_runner_loader_sample_step(const loom_runner *r) { return r->loader_sample_step; }
int64_t loom_runner_batch_size(const loom_runner *r) { return r->batch_size; }
int64_t loom_runner_global_batch_step(const loom_runner *r) { return r->global_batch_step; }
int64_t loom_runner_global_sample_step(const loom_runner *r) { return r->global_sample_step; }
double loom_runner_loader_elapsed(const loom_runner *r) {
  uint64_t end = r->loader_end_ns ? r->loader_end_ns : loom_now_ns();
  return r->loader_start_ns ? (double)(end - r->loader_start_ns) * 1e-9 : 0.0;
}
int64_t loom_runner_loader_resumed_batches(const loom_runner *r) { return r->loader_resumed_batches; }
int64_t loom_runner_loader_samples_run(const loom_runner *r) {
  return r->loader_sample_step - r->loader_resumed_samples;
}
loom_comm *loom_runner_comm(const loom_runner *r) { return r->comm; }
int loom_runner_rank(const loom_runner *r) { return loom_comm_rank(r->comm); }
int loom_runner_world_size(const loom_runner *r) { return loom_comm_size(r->comm); }
bool loom_runner_is_master(const loom_runner *r) { return loom_comm_is_master(r->comm); }
const char *loom_runner_logdir(const loom_runner *r) { return r->exp ? loom_experiment_logdir(r->exp) : NULL; }

bool loom_runner_writes_files(const loom_runner *r) { return !r->options.no_write; }

int loom_runner_lock_logdir(loom_runner *r) {
  if (r->logdir_locked || !r->exp || !loom_runner_is_master(r) || r->options.no_write)
    return 0;
  long stale = 0;
  int rc = loom_dir_lock(loom_experiment_logdir(r->exp), &r->logdir_lock, &stale);
  if (rc < 0)
    return rc;
  r->logdir_locked = true;
  if (stale)
    loom_notice_once("logdir-lock-stale", "took over the lock of %s/.lock from pid %ld, which no longer runs",
                     loom_experiment_logdir(r->exp), stale);
  return loom_runner_claim_logdir(r);
}
loom_rng *loom_runner_rng(loom_runner *r) { return &r->rng; }

loom_model *loom_runner_model(const loom_runner *r) { return r->model; }
loom_criterion *loom_runner_criterion(const loom_runner *r) { return r->criterion; }
loom_optimizer *loom_runner_optimizer(const loom_runner *r) { return r->optimizer; }
loom_loader *loom_runner_loader(const loom_runner *r) { return r->loader; }
const loom_tensor *loom_runner_input(const loom_runner *r) { return r->input; }
const loom_tensor *loom_runner_target(const loom_runner *r) { return r->target; }
const loom_tensor *loom_runner_output(const loom_runner *r) { return r->output; }
void loom_runner_set_output(loom_runner *r, const loom_tensor *output) { r->output = output; }
double loom_runner_batch_loss(const loom_runner *r) { return r->batch_loss; }
void loom_runner_set_batch_loss(loom_runner *r, double loss) { r->batch_loss = loss; }

loom_metrics *loom_runner_batch_metrics(loom_runner *r) { return r->batch_metrics; }
loom_metrics *loom_runner_loader_metrics(loom_runner *r) { return r->loader_metrics; }
loom_metrics *loom_runner_epoch_metrics(loom_runner *r) { return r->epoch_metrics; }
const loom_metrics *loom_runner_best_valid_metrics(const loom_runner *r) { return r->best_valid_metrics; }
const char *loom_runner_valid_loader(const loom_runner *r) { return r->valid_loader; }
const char *loom_runner_main_metric(const loom_runner *r) { return r->main_metric; }
bool loom_runner_minimize_metric(const loom_runner *r) { return r->minimize; }
bool loom_runner_is_best_valid(const loom_runner *r) { return r->is_best_valid; }
void loom_runner_set_best_min_delta(loom_runner *r, double min_delta, bool relative) {
  r->best_min_delta = min_delta > 0 ? min_delta : 0;
  r->best_delta_relative = relative;
}
int loom_runner_best_epoch(const loom_runner *r) { return r->best_epoch; }

void loom_runner_request_stop(loom_runner *r, loom_stop what) { r->stop_flags |= (unsigned)what; }
void loom_runner_request_stop_because(loom_runner *r, loom_stop what, const char *reason) {
  loom_runner_request_stop(r, what);
  if (reason && !r->stop_reason[0])
    snprintf(r->stop_reason, sizeof r->stop_reason, "%s", reason);
}
const char *loom_runner_stop_reason(const loom_runner *r) { return r->stop_reason[0] ? r->stop_reason : NULL; }
bool loom_runner_need_early_stop(const loom_runner *r) { return (r->stop_flags & LOOM_STOP_STAGE) != 0; }

int loom_runner_error(const loom_runner *r) { return r->error; }
const char *loom_runner_error_message(const loom_runner *r) { return r->error_message; }
void loom_runner_mark_error_handled(loom_runner *r) { r->error_handled = true; }

int loom_runner_add_error_note(loom_runner *r, const char *fmt, ...) {
  if (!r->error)
    return loom_error_set(LOOM_EINVAL, "loom_runner_add_error_note: no error is being handled (call it from "
                                       "on_exception)");
  char note[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(note, sizeof note, fmt, ap);
  va_end(ap);
  size_t len = strlen(r->error_message);
  snprintf(r->error_message + len, sizeof r->error_message - len, "; %s", note);
  return 0;
}
bool loom_runner_error_handled(const loom_runner *r) { return r->error_handled; }

bool loom_runner_is_resumed(const loom_runner *r) { return r->resumed; }
bool loom_runner_resumed_finished(const loom_runner *r) { return r->resumed_finished; }
const char *loom_runner_resume_path(const loom_runner *r) { return r->resumed ? r->resume_path : ""; }
const char *loom_runner_resume_notice(const loom_runner *r) { return r->resume_notice; }
void loom_runner_set_manual_step(loom_runner *r, bool manual) { r->manual_step = manual; }
bool loom_runner_manual_step(const loom_runner *r) { return r->manual_step; }
int64_t loom_runner_optimizer_step_count(const loom_runner *r) { return r->global_optimizer_step; }
double loom_runner_batch_data_time(const loom_runner *r) { return r->batch_data_s; }
double loom_runner_batch_compute_time(const loom_runner *r) { return r->batch_compute_s; }
bool loom_runner_batch_skipped(const loom_runner *r) { return r->skip_batch; }

int loom_runner_callback_table(const loom_runner *r, loom_callback_info **rows, size_t *count) {
  return loom_callback_table_rows(&r->stage_table, rows, count);
}

void loom_runner_print_callbacks(const loom_runner *r, FILE *out) {
  fprintf(out, "callbacks of stage \"%s\" on rank %d, in dispatch order:\n", r->stage ? r->stage->name : "?",
          loom_comm_rank(r->comm));
  loom_callback_table_print(&r->stage_table, out);
}
