/* The loop: experiment -> stages -> epochs -> loaders -> batches. */
#include "core/runner_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define LOOM_FTZ_DAZ 0x8040u
#define NUM_METRIC_STORES 7

static loom_metrics **metric_stores(loom_runner *r, loom_metrics **out) {
  loom_metrics **m[NUM_METRIC_STORES] = {&r->batch_metrics, &r->loader_metrics, &r->epoch_metrics, &r->loader_sums,
                                         &r->loader_weights, &r->valid_metrics, &r->best_valid_metrics};
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    out[i] = *m[i];
  return out;
}

loom_run_options loom_run_options_default(void) {
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
  r->options = loom_run_options_default();
  r->stage_index = -1;
  return r;
}

void loom_runner_destroy(loom_runner *r) {
  if (!r)
    return;
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_comm_destroy(r->comm);
  loom_metrics *m[NUM_METRIC_STORES];
  metric_stores(r, m);
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    loom_metrics_destroy(m[i]);
  loom_checkpoint_destroy(r->resume);
  free(r->resume_source);
  free(r);
}

void loom_runner_set_comm(loom_runner *r, loom_comm *comm) {
  if (!comm)
    return;
  loom_comm_destroy(r->comm);
  r->comm = comm;
}

void loom_runner_set_handle_batch(loom_runner *r, loom_handle_batch_fn fn, void *user) {
  r->handle_batch = fn ? fn : loom_supervised_handle_batch;
  r->handle_user = fn ? user : NULL;
}

void loom_runner_set_options(loom_runner *r, const loom_run_options *o) {
  r->options = o ? *o : loom_run_options_default();
}

const loom_run_options *loom_runner_options(const loom_runner *r) { return &r->options; }

int loom_loader_kind_from_name(const char *name) {
  if (strncmp(name, "train", 5) == 0)
    return LOOM_LOADER_TRAIN;
  if (strncmp(name, "valid", 5) == 0)
    return LOOM_LOADER_VALID;
  if (strncmp(name, "infer", 5) == 0)
    return LOOM_LOADER_INFER;
  return -1;
}

/* Forgets the last run, keeping configuration and storage. */
static void reset(loom_runner *r, loom_experiment *exp) {
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_runner keep = *r;
  memset(r, 0, sizeof *r);
  r->comm = keep.comm;
  r->handle_batch = keep.handle_batch;
  r->handle_user = keep.handle_user;
  r->options = keep.options;
  r->resume_source = keep.resume_source;
  r->batch_metrics = keep.batch_metrics, r->loader_metrics = keep.loader_metrics;
  r->epoch_metrics = keep.epoch_metrics, r->loader_sums = keep.loader_sums;
  r->loader_weights = keep.loader_weights, r->valid_metrics = keep.valid_metrics;
  r->best_valid_metrics = keep.best_valid_metrics;
  loom_checkpoint_destroy(keep.resume);
  loom_metrics *m[NUM_METRIC_STORES];
  metric_stores(r, m);
  for (int i = 0; i < NUM_METRIC_STORES; i++)
    loom_metrics_clear(m[i]);
  r->exp = exp;
  r->stage_index = -1;
  r->loader_index = -1;
}

static int dispatch(loom_runner *r, loom_event event) {
  r->event = event;
  return loom_callback_table_dispatch(&r->stage_table, event, r, 0);
}

void loom_runner_interrupt(loom_runner *r, const char *reason) {
  r->interrupted = true;
  snprintf(r->interrupt_reason, sizeof r->interrupt_reason, "%s", reason ? reason : "interrupted");
}

/* Master decisions and interrupts travel once per batch and once per epoch:
 * an interrupt on any rank stops every rank; stop requests are rank 0's. */
static int sync_decisions(loom_runner *r) {
  loom_signals_poll(r);
  int rc = 0;
  if (loom_comm_size(r->comm) > 1) {
    double any = r->interrupted ? 1.0 : 0.0;
    rc = loom_comm_allreduce_sum_f64(r->comm, &any, 1);
    if (rc == 0 && any > 0 && !r->interrupted)
      loom_runner_interrupt(r, "interrupted on another rank");
  }
  if (rc == 0)
    rc = loom_comm_broadcast(r->comm, &r->stop_flags, sizeof r->stop_flags, 0);
  if (rc < 0)
    return loom_error_wrap(rc, "synchronising the stop decision over %d ranks", loom_comm_size(r->comm));
  if (r->interrupted)
    return loom_error_set(LOOM_EINTERRUPTED, "%s (stage \"%s\", epoch %d, loader \"%s\", after batch %lld)",
                          r->interrupt_reason, r->stage->name, r->epoch, r->loader_name ? r->loader_name : "-",
                          (long long)r->loader_batch_step);
  return 0;
}

int loom_accumulate_metrics(loom_metrics *sums, loom_metrics *weights, const loom_metrics *batch, double weight) {
  for (size_t i = 0; i < loom_metrics_count(batch); i++) {
    const char *name = loom_metrics_name(batch, i);
    double sum = 0, w = 0;
    loom_metrics_get(sums, name, &sum);
    loom_metrics_get(weights, name, &w);
    int rc = loom_metrics_set(sums, name, sum + loom_metrics_value(batch, i) * weight);
    if (rc == 0)
      rc = loom_metrics_set(weights, name, w + weight);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Sample-weighted means over every rank's batches: sums and weights are
 * reduced together, so master-only callbacks see global numbers. */
static int finish_loader_metrics(loom_runner *r) {
  size_t n = loom_metrics_count(r->loader_sums);
  loom_metrics_clear(r->loader_metrics);
  if (n == 0)
    return 0;
  double *buf = malloc(2 * n * sizeof *buf);
  if (!buf)
    return loom_error_oom("the loader metrics");
  for (size_t i = 0; i < n; i++) {
    buf[i] = loom_metrics_value(r->loader_sums, i);
    loom_metrics_get(r->loader_weights, loom_metrics_name(r->loader_sums, i), &buf[n + i]);
  }
  int rc = loom_comm_allreduce_sum_f64(r->comm, buf, 2 * n);
  if (rc < 0)
    rc = loom_error_wrap(rc, "reducing the metrics of loader \"%s\"", r->loader_name);
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = loom_metrics_set(r->loader_metrics, loom_metrics_name(r->loader_sums, i),
                          buf[n + i] > 0 ? buf[i] / buf[n + i] : 0.0);
  free(buf);
  return rc;
}

/* Batches per loader and epochs per stage after check/limit/overfit. */
static int64_t batch_limit(const loom_runner *r, int64_t available) {
  int64_t n = available;
  if (r->options.check && n > 2)
    n = 2;
  if (r->options.limit_batches > 0 && n > r->options.limit_batches)
    n = r->options.limit_batches;
  if (r->options.overfit_batches > 0 && n > r->options.overfit_batches)
    n = r->options.overfit_batches;
  return n;
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
  int rc = dispatch(r, LOOM_EVENT_BATCH_START);
  if (rc < 0)
    return rc;
  uint64_t t0 = loom_now_ns();
  rc = r->handle_batch(r, r->handle_user);
  r->batch_compute_s = (double)(loom_now_ns() - t0) * 1e-9;
  if (rc < 0)
    return loom_error_wrap(rc, "handle_batch (stage \"%s\", epoch %d, loader \"%s\", batch %lld)", r->stage->name,
                           r->epoch, r->loader_name, (long long)r->loader_batch_step);
  if ((rc = dispatch(r, LOOM_EVENT_BATCH_END)) < 0)
    return rc;
  if (!r->skip_batch &&
      (rc = loom_accumulate_metrics(r->loader_sums, r->loader_weights, r->batch_metrics, (double)r->batch_size)) < 0)
    return rc;
  r->batches_done = r->loader_batch_step;
  r->event = LOOM_EVENT_COUNT; /* between events */
  return sync_decisions(r);
}

/* Every rank takes as many steps as the largest shard has batches, so
 * that the per-batch synchronisation never waits for a rank that is done;
 * a rank past its own batches only synchronises. */
static int run_batches(loom_runner *r) {
  int64_t steps = batch_limit(r, loom_loader_max_batches(r->loader));
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
    rc = rc == 1 ? run_one_batch(r, x, y) : sync_decisions(r);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static int loader_body(loom_runner *r, const loom_named_loader *nl, bool resume_here);

/* The loader's workers stop however the loader ends. */
static int run_loader(loom_runner *r, int index, bool resume_here) {
  int rc = loader_body(r, &r->loaders[index], resume_here);
  loom_loader_end_epoch(r->loaders[index].loader);
  if (rc == 0)
    r->loader_index = -1;
  return rc;
}

static int loader_body(loom_runner *r, const loom_named_loader *nl, bool resume_here) {
  int index = (int)(nl - r->loaders);
  r->loader_index = index;
  r->loader_name = nl->name;
  r->loader_kind = (loom_loader_kind)loom_loader_kind_from_name(nl->name);
  r->loader = nl->loader;
  r->loader_batch_step = r->loader_sample_step = r->batches_done = 0;
  r->stop_flags &= ~(unsigned)LOOM_STOP_LOADER;
  loom_metrics_clear(r->loader_metrics);
  loom_metrics_clear(r->loader_sums);
  loom_metrics_clear(r->loader_weights);
  if (r->model)
    loom_model_set_train(r->model, r->loader_kind == LOOM_LOADER_TRAIN);

  /* Each loader draws its order from its own stream of (seed, global epoch);
   * overfitting reuses the first epoch's order every epoch. */
  loom_rng order_rng;
  uint64_t epoch_key = r->options.overfit_batches > 0 ? 1 : (uint64_t)r->global_epoch;
  loom_rng_seed(&order_rng, loom_experiment_seed(r->exp), epoch_key, loom_rng_stream_id(nl->name));
  loom_epoch_plan plan = {loom_rng_next(&order_rng), loom_comm_rank(r->comm), loom_comm_size(r->comm),
                          r->loader_kind == LOOM_LOADER_TRAIN};
  int rc = loom_loader_start_epoch(nl->loader, &plan);
  if (rc < 0)
    return loom_error_wrap(rc, "starting loader \"%s\"", nl->name);
  r->loader_num_batches = batch_limit(r, loom_loader_num_batches(nl->loader));

  r->loader_start_ns = loom_now_ns();
  if ((rc = dispatch(r, LOOM_EVENT_LOADER_START)) < 0)
    return rc;
  if (resume_here) {
    /* Replayed down to here: now the saved state takes over. */
    if ((rc = loom_runner_restore(r)) < 0)
      return rc;
    if ((rc = loom_loader_seek(nl->loader, r->batches_done)) < 0)
      return rc;
  }
  if ((rc = run_batches(r)) < 0)
    return rc;
  r->input = r->target = r->output = NULL;
  if ((rc = finish_loader_metrics(r)) < 0)
    return rc;
  if ((rc = dispatch(r, LOOM_EVENT_LOADER_END)) < 0)
    return rc;
  /* After the callbacks, so that their own aggregates (e.g. AUC) land too. */
  if ((rc = loom_metrics_copy(r->epoch_metrics, r->loader_metrics, nl->name, true)) < 0)
    return rc;
  if (strcmp(nl->name, r->valid_loader) == 0)
    rc = loom_metrics_copy(r->valid_metrics, r->loader_metrics, NULL, false);
  return rc;
}

static int update_best_valid(loom_runner *r) {
  double v;
  r->is_best_valid = false;
  if (!loom_metrics_get(r->valid_metrics, r->main_metric, &v) || isnan(v))
    return 0;
  bool better = !r->have_best || (r->minimize ? v < r->best_value : v > r->best_value);
  if (!better)
    return 0;
  r->have_best = true;
  r->best_value = v;
  r->best_epoch = r->global_epoch;
  r->is_best_valid = true;
  return loom_metrics_copy(r->best_valid_metrics, r->valid_metrics, NULL, false);
}

static int run_epoch(loom_runner *r, bool resume_here) {
  loom_rng_seed(&r->rng, loom_experiment_seed(r->exp), (uint64_t)r->global_epoch, 0);
  loom_metrics_clear(r->epoch_metrics);
  loom_metrics_clear(r->valid_metrics);
  r->is_best_valid = false;
  int rc = 0;
  if (r->optimizer) {
    /* The rate this epoch starts with: schedulers step at its end. */
    rc = loom_metrics_set(r->epoch_metrics, "lr", loom_optimizer_lr(r->optimizer));
    if (rc == 0)
      rc = loom_metrics_set(r->epoch_metrics, "momentum", loom_optimizer_momentum(r->optimizer));
    if (rc < 0)
      return rc;
  }
  if ((rc = dispatch(r, LOOM_EVENT_EPOCH_START)) < 0)
    return rc;
  int first = resume_here ? (int)r->cursor.loader : 0;
  for (int i = first; i < (int)r->num_loaders; i++)
    if ((rc = run_loader(r, i, resume_here && i == first)) < 0)
      return rc;
  r->loader_name = NULL;
  r->loader = NULL;
  if ((rc = update_best_valid(r)) < 0)
    return rc;
  if ((rc = dispatch(r, LOOM_EVENT_EPOCH_END)) < 0)
    return rc;
  r->event = LOOM_EVENT_COUNT;
  return sync_decisions(r);
}

/* The stage's carry-over rules: frozen layers, optimizer reset, weights. */
static int carry_over(loom_runner *r, const loom_stage *s, bool load) {
  if (r->model) {
    loom_model_unfreeze_all(r->model);
    for (size_t i = 0; i < s->num_frozen; i++)
      if (loom_model_set_frozen(r->model, s->frozen[i], true) < 0)
        return loom_error_wrap(LOOM_EINVAL, "stage \"%s\": cannot freeze", s->name);
  } else if (s->num_frozen) {
    return loom_error_set(LOOM_EINVAL, "stage \"%s\" freezes layers but has no model", s->name);
  }
  if (s->reset_optimizer && r->optimizer)
    loom_optimizer_reset(r->optimizer);
  if (!load || !s->load_weights || !r->model)
    return 0;
  char path[4096], notice[1024];
  loom_checkpoint *c = loom_checkpoint_open_logdir(loom_experiment_logdir(r->exp), s->load_weights, path, sizeof path,
                                                   notice, sizeof notice);
  if (!c)
    return loom_error_wrap(loom_last_error_code(), "stage \"%s\": cannot load the %s weights (does a checkpoint "
                                                   "callback save them?)",
                           s->name, s->load_weights);
  const loom_state *m = loom_checkpoint_find(c, "model");
  int rc = m ? loom_model_load(r->model, m, false) : loom_error_set(LOOM_EFORMAT, "%s holds no model", path);
  loom_checkpoint_destroy(c);
  return rc;
}

/* Components a stage does not set are the previous stage's. */
static int prepare_stage(loom_runner *r, size_t index, bool load) {
  const loom_stage *s = loom_experiment_stage(r->exp, index);
  r->stage = s;
  r->stage_index = (int)index;
  if (s->model)
    r->model = s->model;
  if (s->criterion)
    r->criterion = s->criterion;
  if (s->optimizer)
    r->optimizer = s->optimizer;
  if (s->num_loaders) {
    r->loaders = s->loaders;
    r->num_loaders = s->num_loaders;
  }
  if (r->num_loaders == 0)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\" has no loaders; add one with loom_stage_add_loader", s->name);
  for (size_t i = 0; i < r->num_loaders; i++)
    if (loom_loader_kind_from_name(r->loaders[i].name) < 0)
      return loom_error_set(LOOM_EINVAL,
                            "stage \"%s\": loader \"%s\": a loader's name must start with \"train\", "
                            "\"valid\" or \"infer\" (it decides whether the loader trains)",
                            s->name, r->loaders[i].name);
  /* A hand-made model nobody built takes the first loader's sample shape
   * and the experiment's seed, as a config's model does. */
  if (r->model && !loom_model_is_built(r->model)) {
    const loom_dataset *ds = loom_loader_dataset(r->loaders[0].loader);
    int rc = loom_model_build(r->model, loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds),
                              loom_experiment_seed(r->exp));
    if (rc < 0)
      return loom_error_wrap(rc, "stage \"%s\": building the model for the samples of loader \"%s\"", s->name,
                             r->loaders[0].name);
  }
  r->valid_loader = s->valid_loader;
  r->main_metric = s->main_metric;
  r->minimize = s->minimize;
  r->have_best = false;
  r->best_epoch = 0;
  loom_metrics_clear(r->best_valid_metrics);
  r->epoch = 0;
  r->num_epochs = s->num_epochs;
  if (r->options.check && r->num_epochs > 2)
    r->num_epochs = 2;
  r->stop_flags = 0;
  r->manual_step = false;

  int rc = carry_over(r, s, load);
  if (rc < 0)
    return rc;
  loom_callback **list;
  size_t n;
  if ((rc = loom_experiment_stage_callbacks(r->exp, index, &list, &n)) < 0)
    return rc;
  loom_callback_table_free(&r->stage_table);
  rc = loom_callback_table_build(&r->stage_table, list, n, loom_comm_rank(r->comm));
  free(list);
  return rc;
}

static int run_stage(loom_runner *r, size_t index) {
  int rc = prepare_stage(r, index, true);
  if (rc < 0)
    return rc;
  bool resume_here = r->resume && (size_t)r->cursor.stage == index;
  int first_epoch = 1;
  if (resume_here) {
    /* Counters the replayed events show; the rest is restored below. */
    first_epoch = (int)(r->cursor.epoch + r->cursor.epoch_done);
    r->global_epoch = (int)(r->cursor.global_epoch - (r->cursor.epoch_done ? 0 : 1));
    r->epoch = (int)r->cursor.epoch;
  }
  r->in_stage = true;
  if ((rc = dispatch(r, LOOM_EVENT_STAGE_START)) < 0)
    return rc;
  if (resume_here && r->cursor.epoch_done && (rc = loom_runner_restore(r)) < 0)
    return rc;
  for (int e = first_epoch; e <= r->num_epochs && !(r->stop_flags & LOOM_STOP_STAGE); e++) {
    r->epoch = e;
    r->global_epoch++;
    if ((rc = run_epoch(r, r->resume != NULL)) < 0)
      return rc;
  }
  if ((rc = dispatch(r, LOOM_EVENT_STAGE_END)) < 0)
    return rc;
  r->in_stage = false;
  return 0;
}

/* Every callback of every stage, for the experiment-wide events. */
static int build_experiment_table(loom_runner *r) {
  size_t ns = loom_experiment_num_stages(r->exp);
  loom_callback **all = NULL;
  size_t total = 0;
  int rc = 0;
  for (size_t s = 0; s < ns && rc == 0; s++) {
    loom_callback **list;
    size_t n;
    if ((rc = loom_experiment_stage_callbacks(r->exp, s, &list, &n)) < 0)
      break;
    loom_callback **grown = realloc(all, (total + n + 1) * sizeof *all);
    if (!grown) {
      free(list);
      rc = loom_error_oom("the experiment's callback table");
      break;
    }
    all = grown;
    memcpy(all + total, list, n * sizeof *list);
    total += n;
    free(list);
  }
  if (rc == 0)
    rc = loom_callback_table_build(&r->exp_table, all, total, loom_comm_rank(r->comm));
  free(all);
  return rc;
}

/* The unwind: on_exception once (the current stage's callbacks, or every
 * callback outside a stage), then on_experiment_end unless it already ran.
 * Failures while unwinding cannot replace the error being handled. */
static void unwind(loom_runner *r, int error, bool experiment_end_done) {
  r->error = error;
  snprintf(r->error_message, sizeof r->error_message, "%s", loom_last_error());
  r->error_handled = false;
  const loom_callback_table *t = r->in_stage ? &r->stage_table : &r->exp_table;
  r->event = LOOM_EVENT_EXCEPTION;
  loom_callback_table_dispatch(t, LOOM_EVENT_EXCEPTION, r, 1);
  r->event = LOOM_EVENT_EXPERIMENT_END;
  if (!experiment_end_done)
    loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_END, r, 1);
  loom_error_set(r->error, "%s", r->error_message);
}

static int run(loom_runner *r, bool *end_done) {
  int rc = build_experiment_table(r);
  if (rc == 0 && r->resume_source)
    rc = loom_runner_open_resume(r);
  if (rc == 0 && r->options.handle_signals)
    rc = loom_signals_start(r);
  r->event = LOOM_EVENT_EXPERIMENT_START;
  if (rc == 0)
    rc = loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_START, r, 0);
  size_t first = r->resume ? (size_t)r->cursor.stage : 0;
  /* Stages before the resumed one only lend their components. */
  for (size_t s = 0; rc == 0 && s < first; s++)
    rc = prepare_stage(r, s, false);
  for (size_t s = first; rc == 0 && s < loom_experiment_num_stages(r->exp); s++)
    rc = run_stage(r, s);
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
#if defined(__SSE__)
  /* Denormal gradients make epochs 3-7x slower and change nothing visible. */
  unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | LOOM_FTZ_DAZ);
#endif
  bool end_done = false;
  int rc = run(r, &end_done);
  if (rc < 0)
    unwind(r, rc, end_done);
  loom_signals_stop(r);
  /* A resume source serves one run. */
  free(r->resume_source);
  r->resume_source = NULL;
#if defined(__SSE__)
  _mm_setcsr(csr);
#endif
  return (rc < 0 && !r->error_handled) ? rc : 0;
}

/* --- the optimizer step and the loss policy --- */

int loom_runner_optimizer_step_with(loom_runner *r, const loom_step_options *o, double *grad_norm) {
  if (!r->optimizer || !r->model)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": an optimizer step needs a model and an optimizer",
                          r->stage ? r->stage->name : "?");
  if (o && o->scale != 0.0 && o->scale != 1.0)
    loom_model_scale_grads(r->model, (float)o->scale);
  /* Data parallel: every rank steps with the mean gradient. */
  if (loom_comm_size(r->comm) > 1) {
    int rc = loom_comm_allreduce_mean_f32(r->comm, loom_model_grads(r->model), loom_model_num_params(r->model));
    if (rc < 0)
      return loom_error_wrap(rc, "averaging gradients over %d ranks", loom_comm_size(r->comm));
  }
  double norm = NAN;
  if (o && o->clip_norm > 0)
    norm = loom_model_clip_grad_norm(r->model, o->clip_norm);
  else if (grad_norm)
    norm = loom_model_grad_norm(r->model);
  if (o && o->clip_value > 0)
    loom_model_clip_grad_value(r->model, (float)o->clip_value);
  if (grad_norm)
    *grad_norm = norm;
  int rc = loom_optimizer_step(r->optimizer, r->model);
  if (rc == 0)
    r->global_optimizer_step++;
  return rc;
}

int loom_runner_optimizer_step(loom_runner *r) { return loom_runner_optimizer_step_with(r, NULL, NULL); }

int loom_runner_check_loss(loom_runner *r, double loss) {
  if (isfinite(loss))
    return 0;
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP && r->nonfinite_skips < r->options.nonfinite_budget) {
    r->nonfinite_skips++;
    r->skip_batch = true;
    return 1;
  }
  if (r->options.nonfinite == LOOM_NONFINITE_SKIP)
    return loom_error_set(LOOM_ENONFINITE, "the loss is %g and the budget of %lld skipped batches is spent; "
                                           "lower the learning rate or check the data",
                          loss, (long long)r->options.nonfinite_budget);
  return loom_error_set(LOOM_ENONFINITE, "the loss is %g; stopping before the optimizer step corrupts the "
                                         "weights (lower the learning rate, check the data, or allow skips "
                                         "with the SKIP non-finite policy)",
                        loss);
}
