/* The loop: stages -> epochs -> loaders -> batches, and the decisions that
 * travel between ranks after every batch and epoch. */
#include "runners/runner_impl.h"

int loom_runner_dispatch(loom_runner *r, loom_event event) {
  r->event = event;
  return loom_callback_table_dispatch(&r->stage_table, event, r, 0);
}

void loom_runner_interrupt(loom_runner *r, const char *reason) {
  r->interrupted = true;
  snprintf(r->interrupt_reason, sizeof r->interrupt_reason, "%s", reason ? reason : "interrupted");
}

/* Master decisions and interrupts travel once per batch and once per epoch:
 * an interrupt on any rank stops every rank; stop requests are rank 0's. */
int loom_runner_sync(loom_runner *r) {
  loom_signals_poll(r);
  int rc = 0;
  if (loom_comm_size(r->comm) > 1) {
    /* One all-reduce carries both: how many ranks were interrupted, and the
     * master's stop flags (the others add 0; small integers sum exactly). */
    double v[2] = {r->interrupted ? 1.0 : 0.0, loom_comm_is_master(r->comm) ? (double)r->stop_flags : 0.0};
    rc = loom_comm_allreduce_sum_f64(r->comm, v, 2);
    if (rc == 0 && v[0] > 0 && !r->interrupted)
      loom_runner_interrupt(r, "interrupted on another rank");
    if (rc == 0)
      r->stop_flags = (unsigned)v[1];
  }
  if (rc < 0)
    return loom_error_wrap(rc, "synchronising the stop decision over %d ranks (stage \"%s\", epoch %d, loader "
                               "\"%s\", after batch %lld)",
                           loom_comm_size(r->comm), r->stage ? r->stage->name : "-", r->epoch,
                           r->loader_name ? r->loader_name : "-", (long long)r->loader_batch_step);
  r->interrupt_synced = r->interrupted; /* every rank stops here */
  if (r->interrupted && !r->loader_name)
    return loom_error_set(LOOM_EINTERRUPTED, "%s (at the end of epoch %d of stage \"%s\")", r->interrupt_reason,
                          r->epoch, r->stage->name);
  if (r->interrupted)
    /* The step, not this rank's own batch count: a rank past its shard of
     * an evaluation loader has done fewer batches, and every rank names the
     * same point. */
    return loom_error_set(LOOM_EINTERRUPTED, "%s (stage \"%s\", epoch %d, loader \"%s\", after batch %lld)",
                          r->interrupt_reason, r->stage->name, r->epoch, r->loader_name,
                          (long long)(r->loader_step > r->loader_batch_step ? r->loader_step : r->loader_batch_step));
  return 0;
}

/* Batches per loader and epochs per stage after check/limit/overfit. */
int64_t loom_runner_batch_limit(const loom_runner *r, int64_t available) {
  int64_t n = available;
  if (r->options.check && n > 2)
    n = 2;
  if (r->options.limit_batches > 0 && n > r->options.limit_batches)
    n = r->options.limit_batches;
  if (r->options.overfit_batches > 0 && n > r->options.overfit_batches)
    n = r->options.overfit_batches;
  return n;
}

/* The model's backend when it is a device's; NULL for the CPU. */
static loom_backend *device_of_model(const loom_runner *r) {
  loom_backend *b = r->model ? loom_model_backend(r->model) : NULL;
  return b && loom_backend_device(b) != LOOM_DEVICE_CPU ? b : NULL;
}

/* After on_batch_start the batch's device copies replace the loader's
 * host tensors for a device model (runner_upload.c); a model on the CPU
 * reads the loader's tensors as they are. */
static int upload_batch(loom_runner *r) {
  loom_backend *b = device_of_model(r);
  return b ? loom_runner_upload_batch(r, b) : 0;
}

static int run_one_batch(loom_runner *r, loom_tensor *x, loom_tensor *y) {
  r->input = x;
  r->target = y;
  r->output = NULL;
  r->batch_loss = 0;
  r->skip_batch = false;
  r->batch_size = loom_tensor_dim(x, 0);
  r->loader_batch_step++;
  r->loader_sample_step += r->batch_size;
  if (r->loader_kind == LOOM_LOADER_TRAIN) {
    r->global_batch_step++;
    r->global_sample_step += r->batch_size;
  }
  loom_metrics_clear(r->batch_metrics);
  int rc = loom_runner_dispatch(r, LOOM_EVENT_BATCH_START);
  if (rc < 0 || (rc = upload_batch(r)) < 0)
    return rc;
  uint64_t t0 = loom_now_ns();
  r->deferred_criterion = NULL, r->step_deferred = false, r->loss_bad_flag = NULL;
  loom_runner_results_begin(r);
  loom_backend *logged;
  if ((rc = loom_runner_graph_begin(r, &logged)) == 0)
    rc = loom_runner_graph_end(logged, r->handle_batch(r, r->handle_user));
  /* A device runs behind the host: the batch ends when its work does, and
   * a deferred batch's results come back then, in one copy, the
   * callbacks' batch results with them (their errors name themselves). */
  loom_backend *device = device_of_model(r);
  const bool deferred = rc >= 0 && r->deferred_criterion;
  if (deferred) {
    /* Settled even when a result fails to issue: the gate says whether
     * the step was taken, and the counts (and a checkpoint made on the
     * exception) must say the same. The issue's error stays the batch's,
     * its message too (settling may fail with its own). */
    int issued = loom_runner_issue_results(r);
    char why[LOOM_ERROR_MAX] = "";
    if (issued < 0)
      snprintf(why, sizeof why, "%s", loom_last_error());
    rc = loom_runner_settle_deferred(r);
    if (issued < 0)
      return loom_error_set(issued, "%s", why);
  } else if (rc >= 0 && device && (rc = loom_backend_synchronize(device)) < 0)
    rc = loom_error_wrap(rc, "waiting for backend \"%s\"", loom_backend_name(device));
  r->batch_compute_s = (double)(loom_now_ns() - t0) * 1e-9;
  if (rc < 0)
    return loom_error_wrap(rc, "handle_batch (stage \"%s\", epoch %d, loader \"%s\", batch %lld)", r->stage->name,
                           r->epoch, r->loader_name, (long long)r->loader_batch_step);
  if (deferred && (rc = loom_runner_finish_results(r)) < 0)
    return rc;
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_BATCH_END)) < 0)
    return rc;
  if (!r->skip_batch &&
      (rc = loom_accumulate_metrics(r->loader_sums, r->loader_weights, r->batch_metrics, (double)r->batch_size)) < 0)
    return rc;
  r->batches_done = r->loader_batch_step;
  r->event = LOOM_EVENT_COUNT; /* between events */
  return loom_runner_sync(r);
}

/* Every rank takes as many steps as the largest shard has batches, so
 * that the per-batch synchronisation never waits for a rank that is done;
 * a rank past its own batches only synchronises. */
static int run_batches(loom_runner *r) {
  int64_t steps = loom_runner_batch_limit(r, loom_loader_max_batches(r->loader));
  for (int64_t step = r->batches_done; step < steps && !(r->stop_flags & LOOM_STOP_LOADER); step++) {
    loom_tensor *x, *y;
    int rc = 0;
    if (step < r->loader_num_batches) {
      uint64_t t0 = loom_now_ns();
      rc = loom_loader_next(r->loader, &x, &y);
      r->batch_data_s = (double)(loom_now_ns() - t0) * 1e-9;
      if (rc < 0)
        return loom_error_wrap(rc, "loader \"%s\", batch %lld", r->loader_name, (long long)r->loader_batch_step + 1);
    }
    r->loader_step = step + 1;
    rc = rc == 1 ? run_one_batch(r, x, y) : loom_runner_sync(r);
    if (rc == 0)
      rc = loom_runner_upload_done(r); /* before the loader may refill the batch's slot */
    if (rc < 0)
      return rc;
  }
  return 0;
}

static int loader_body(loom_runner *r, const loom_named_loader *nl, bool resume_here);

/* The loader's workers stop however the loader ends, and its upload slots
 * are released. */
static int run_loader(loom_runner *r, int index, bool resume_here) {
  int rc = loader_body(r, &r->loaders[index], resume_here);
  rc = loom_runner_upload_pause(r, r->loaders[index].loader, rc);
  if (rc == 0)
    r->loader_index = -1;
  return rc;
}

static int loader_body(loom_runner *r, const loom_named_loader *nl, bool resume_here) {
  int index = (int)(nl - r->loaders);
  r->loader_index = index;
  /* Between events until on_loader_start: a checkpoint taken if this
   * loader fails to start resumes at its beginning, not past it. */
  r->event = LOOM_EVENT_COUNT;
  r->loader_name = nl->name;
  loom_loader_kind_from_name(nl->name, &r->loader_kind); /* checked when the stage was prepared */
  r->loader = nl->loader;
  r->loader_batch_step = r->loader_sample_step = r->batches_done = 0;
  r->loader_step = 0;
  r->loader_resumed_batches = r->loader_resumed_samples = 0;
  r->loader_end_ns = 0;
  r->graph_ranks = 0;
  r->stop_flags &= ~(unsigned)LOOM_STOP_LOADER;
  loom_metrics_clear(r->loader_metrics);
  loom_metrics_clear(r->loader_sums);
  loom_metrics_clear(r->loader_weights);
  if (r->model)
    loom_model_set_train(r->model, r->loader_kind == LOOM_LOADER_TRAIN);
  /* Each rank's batches moved its own running statistics: evaluate the master's. */
  int rc = r->loader_kind == LOOM_LOADER_TRAIN ? 0 : loom_runner_share_buffers(r);
  if (rc < 0)
    return rc;

  /* Each loader draws its order from its own stream of (seed, global epoch);
   * overfitting reuses the first epoch's order every epoch. */
  loom_rng order_rng;
  uint64_t epoch_key = r->options.overfit_batches > 0 ? 1 : (uint64_t)r->global_epoch;
  loom_rng_seed(&order_rng, loom_experiment_seed(r->exp), epoch_key, loom_rng_stream_id(nl->name));
  loom_epoch_plan plan = {loom_rng_next(&order_rng), loom_comm_rank(r->comm), loom_comm_size(r->comm),
                          r->loader_kind == LOOM_LOADER_TRAIN};
  if ((rc = loom_runner_upload_attach(r, nl->loader, nl->name)) < 0)
    return rc;
  rc = loom_loader_start_epoch(nl->loader, &plan);
  if (rc < 0)
    return loom_error_wrap(rc, "starting loader \"%s\"", nl->name);
  r->loader_num_batches = loom_runner_batch_limit(r, loom_loader_num_batches(nl->loader));

  r->loader_start_ns = loom_now_ns();
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_LOADER_START)) < 0)
    return rc;
  if (resume_here) {
    /* Replayed down to here: now the saved state takes over. */
    if ((rc = loom_runner_restore(r)) < 0)
      return rc;
    /* This rank's own position: past its shard's end, a rank only steps.
     * The batches made from the epoch's start are dropped, their slots
     * released first. */
    if ((rc = loom_runner_upload_pause(r, nl->loader, 0)) < 0 ||
        (rc = loom_loader_seek(nl->loader, r->loader_batch_step)) < 0)
      return rc;
    /* The time and rate are those of what this run does. */
    r->loader_resumed_batches = r->loader_batch_step;
    r->loader_resumed_samples = r->loader_sample_step;
    r->loader_start_ns = loom_now_ns();
  }
  if ((rc = run_batches(r)) < 0)
    return rc;
  r->loader_end_ns = loom_now_ns(); /* every reader at on_loader_end sees one time */
  r->input = r->target = r->output = NULL;
  if ((rc = loom_runner_finish_loader_metrics(r)) < 0)
    return rc;
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_LOADER_END)) < 0)
    return rc;
  /* After the callbacks, so that their own aggregates (e.g. AUC) land too. */
  return loom_runner_add_loader_metrics(r, r->epoch_metrics, r->valid_metrics);
}

static int run_epoch(loom_runner *r, bool resume_here) {
  loom_rng_seed(&r->rng, loom_experiment_seed(r->exp), (uint64_t)r->global_epoch, 0);
  loom_metrics_clear(r->epoch_metrics);
  loom_metrics_clear(r->valid_metrics);
  r->is_best_valid = false;
  r->stop_reason[0] = '\0';
  int rc = 0;
  if (r->optimizer) {
    /* The rate this epoch starts with: schedulers step at its end. */
    rc = loom_metrics_set(r->epoch_metrics, "lr", loom_optimizer_lr(r->optimizer));
    if (rc == 0)
      rc = loom_metrics_set(r->epoch_metrics, "momentum", loom_optimizer_momentum(r->optimizer));
    if (rc < 0)
      return rc;
  }
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_EPOCH_START)) < 0)
    return rc;
  int first = 0;
  bool in_loader = false;
  if (resume_here) {
    /* Replayed down to here: a resume between loaders restores now, one
     * inside a loader after that loader's on_loader_start. */
    first = (int)r->cursor.loader;
    in_loader = r->cursor.phase == LOOM_PHASE_IN_LOADER;
    if (!in_loader && (rc = loom_runner_restore(r)) < 0)
      return rc;
  }
  for (int i = first; i < (int)r->num_loaders; i++)
    if ((rc = run_loader(r, i, in_loader && i == first)) < 0)
      return rc;
  r->loader_name = NULL;
  r->loader = NULL;
  if ((rc = loom_runner_update_best_valid(r)) < 0)
    return rc;
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_EPOCH_END)) < 0)
    return rc;
  r->event = LOOM_EVENT_COUNT;
  return loom_runner_sync(r);
}

int loom_runner_run_stage(loom_runner *r, size_t index) {
  int rc = loom_runner_prepare_stage(r, index, true);
  if (rc < 0)
    return rc;
  bool resume_here = r->resume && (size_t)r->cursor.stage == index;
  int first_epoch = 1;
  if (resume_here) {
    /* Counters the replayed events show; the rest is restored below. */
    bool epoch_done = r->cursor.phase == LOOM_PHASE_EPOCH_DONE || r->cursor.phase == LOOM_PHASE_BEFORE_STAGE;
    first_epoch = (int)r->cursor.epoch + epoch_done;
    r->global_epoch = (int)r->cursor.global_epoch - !epoch_done;
    r->epoch = (int)r->cursor.epoch;
    /* Before the stage began: its on_stage_start is no replay. */
    if (r->cursor.phase == LOOM_PHASE_BEFORE_STAGE && (rc = loom_runner_restore(r)) < 0)
      return rc;
  }
  r->in_stage = true;
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_STAGE_START)) < 0)
    return rc;
  if (resume_here && r->cursor.phase == LOOM_PHASE_EPOCH_DONE && (rc = loom_runner_restore(r)) < 0)
    return rc;
  for (int e = first_epoch; e <= r->num_epochs && !(r->stop_flags & LOOM_STOP_STAGE); e++) {
    r->epoch = e;
    r->global_epoch++;
    if ((rc = run_epoch(r, r->resume != NULL)) < 0)
      return rc;
  }
  if ((rc = loom_runner_dispatch(r, LOOM_EVENT_STAGE_END)) < 0)
    return rc;
  r->in_stage = false;
  loom_runner_results_end(r);
  return 0;
}

int loom_runner_restore_ended_stage(loom_runner *r, size_t index) {
  int rc = loom_runner_prepare_stage(r, index, false);
  r->epoch = (int)r->cursor.epoch;
  r->global_epoch = (int)r->cursor.global_epoch;
  return rc < 0 ? rc : loom_runner_restore(r);
}
