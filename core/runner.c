/* The loop: experiment -> stages -> epochs -> loaders -> batches. */
#include "core/runner_impl.h"

#include <stdlib.h>
#include <string.h>

#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#define LOOM_FTZ_DAZ 0x8040u

loom_runner *loom_runner_create(void) {
  loom_runner *r = calloc(1, sizeof *r);
  if (!r) {
    loom_error_oom("a runner");
    return NULL;
  }
  r->comm = loom_comm_local_create();
  r->batch_metrics = loom_metrics_create();
  r->loader_metrics = loom_metrics_create();
  r->epoch_metrics = loom_metrics_create();
  r->loader_sums = loom_metrics_create();
  r->loader_weights = loom_metrics_create();
  r->valid_metrics = loom_metrics_create();
  r->best_valid_metrics = loom_metrics_create();
  if (!r->comm || !r->batch_metrics || !r->loader_metrics || !r->epoch_metrics || !r->loader_sums ||
      !r->loader_weights || !r->valid_metrics || !r->best_valid_metrics) {
    loom_runner_destroy(r);
    loom_error_oom("a runner");
    return NULL;
  }
  r->handle_batch = loom_supervised_handle_batch;
  return r;
}

void loom_runner_destroy(loom_runner *r) {
  if (!r)
    return;
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_comm_destroy(r->comm);
  loom_metrics_destroy(r->batch_metrics);
  loom_metrics_destroy(r->loader_metrics);
  loom_metrics_destroy(r->epoch_metrics);
  loom_metrics_destroy(r->loader_sums);
  loom_metrics_destroy(r->loader_weights);
  loom_metrics_destroy(r->valid_metrics);
  loom_metrics_destroy(r->best_valid_metrics);
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

int loom_loader_kind_from_name(const char *name) {
  if (strncmp(name, "train", 5) == 0)
    return LOOM_LOADER_TRAIN;
  if (strncmp(name, "valid", 5) == 0)
    return LOOM_LOADER_VALID;
  if (strncmp(name, "infer", 5) == 0)
    return LOOM_LOADER_INFER;
  return -1;
}

static void reset(loom_runner *r, loom_experiment *exp) {
  loom_callback_table_free(&r->exp_table);
  loom_callback_table_free(&r->stage_table);
  loom_comm *comm = r->comm;
  loom_handle_batch_fn fn = r->handle_batch;
  void *user = r->handle_user;
  loom_metrics *m[7] = {r->batch_metrics, r->loader_metrics, r->epoch_metrics, r->loader_sums,
                        r->loader_weights, r->valid_metrics, r->best_valid_metrics};
  memset(r, 0, sizeof *r);
  r->comm = comm;
  r->handle_batch = fn;
  r->handle_user = user;
  r->batch_metrics = m[0], r->loader_metrics = m[1], r->epoch_metrics = m[2];
  r->loader_sums = m[3], r->loader_weights = m[4], r->valid_metrics = m[5], r->best_valid_metrics = m[6];
  for (int i = 0; i < 7; i++)
    loom_metrics_clear(m[i]);
  r->exp = exp;
  r->stage_index = -1;
}

static int dispatch(loom_runner *r, loom_event event) {
  return loom_callback_table_dispatch(&r->stage_table, event, r, 0);
}

/* Master decisions travel as one broadcast at a fixed point of the loop. */
static int sync_stop_flags(loom_runner *r) {
  int rc = loom_comm_broadcast(r->comm, &r->stop_flags, sizeof r->stop_flags, 0);
  return rc < 0 ? loom_error_wrap(rc, "broadcasting the stop decision") : 0;
}

static int accumulate_batch_metrics(loom_runner *r) {
  double weight = (double)r->batch_size;
  for (size_t i = 0; i < loom_metrics_count(r->batch_metrics); i++) {
    const char *name = loom_metrics_name(r->batch_metrics, i);
    double sum = 0, w = 0;
    loom_metrics_get(r->loader_sums, name, &sum);
    loom_metrics_get(r->loader_weights, name, &w);
    int rc = loom_metrics_set(r->loader_sums, name, sum + loom_metrics_value(r->batch_metrics, i) * weight);
    if (rc == 0)
      rc = loom_metrics_set(r->loader_weights, name, w + weight);
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

static int run_batches(loom_runner *r) {
  for (;;) {
    loom_tensor *x, *y;
    int rc = loom_loader_next(r->loader, &x, &y);
    if (rc < 0)
      return loom_error_wrap(rc, "loader \"%s\", batch %lld", r->loader_name, (long long)r->loader_batch_step + 1);
    if (rc == 0)
      return 0;
    r->input = x;
    r->target = y;
    r->output = NULL;
    r->batch_loss = 0;
    r->batch_size = loom_tensor_dim(x, 0);
    r->loader_batch_step++;
    r->loader_sample_step += r->batch_size;
    if (r->loader_kind == LOOM_LOADER_TRAIN) {
      r->global_batch_step++;
      r->global_sample_step += r->batch_size;
    }
    loom_metrics_clear(r->batch_metrics);
    if ((rc = dispatch(r, LOOM_EVENT_BATCH_START)) < 0)
      return rc;
    if ((rc = r->handle_batch(r, r->handle_user)) < 0)
      return loom_error_wrap(rc, "handle_batch (stage \"%s\", epoch %d, loader \"%s\", batch %lld)",
                             r->stage->name, r->epoch, r->loader_name, (long long)r->loader_batch_step);
    if ((rc = dispatch(r, LOOM_EVENT_BATCH_END)) < 0)
      return rc;
    if ((rc = accumulate_batch_metrics(r)) < 0)
      return rc;
    if ((rc = sync_stop_flags(r)) < 0)
      return rc;
    if (r->stop_flags & LOOM_STOP_LOADER)
      return 0;
  }
}

static int run_loader(loom_runner *r, const loom_named_loader *nl) {
  r->loader_name = nl->name;
  r->loader_kind = (loom_loader_kind)loom_loader_kind_from_name(nl->name);
  r->loader = nl->loader;
  r->loader_batch_step = 0;
  r->loader_sample_step = 0;
  r->loader_num_batches = loom_loader_num_batches(nl->loader);
  r->stop_flags &= ~(unsigned)LOOM_STOP_LOADER;
  loom_metrics_clear(r->loader_metrics);
  loom_metrics_clear(r->loader_sums);
  loom_metrics_clear(r->loader_weights);
  if (r->model)
    loom_model_set_train(r->model, r->loader_kind == LOOM_LOADER_TRAIN);

  /* Each loader draws its order from its own stream of (seed, global epoch). */
  loom_rng order_rng;
  loom_rng_seed(&order_rng, r->exp ? loom_experiment_seed(r->exp) : 0, (uint64_t)r->global_epoch,
                loom_rng_stream_id(nl->name));
  int rc = loom_loader_start_epoch(nl->loader, loom_rng_next(&order_rng));
  if (rc < 0)
    return loom_error_wrap(rc, "starting loader \"%s\"", nl->name);

  r->loader_start_ns = loom_now_ns();
  if ((rc = dispatch(r, LOOM_EVENT_LOADER_START)) < 0)
    return rc;
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
  if (!loom_metrics_get(r->valid_metrics, r->main_metric, &v))
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

static int run_epoch(loom_runner *r) {
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
  for (size_t i = 0; i < r->num_loaders; i++)
    if ((rc = run_loader(r, &r->loaders[i])) < 0)
      return rc;
  r->loader_name = NULL;
  r->loader = NULL;
  if ((rc = update_best_valid(r)) < 0)
    return rc;
  if ((rc = dispatch(r, LOOM_EVENT_EPOCH_END)) < 0)
    return rc;
  return sync_stop_flags(r);
}

/* Components a stage does not set are the previous stage's. */
static int prepare_stage(loom_runner *r, size_t index) {
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
  r->valid_loader = s->valid_loader;
  r->main_metric = s->main_metric;
  r->minimize = s->minimize;
  r->have_best = false;
  r->best_epoch = 0;
  loom_metrics_clear(r->best_valid_metrics);
  r->epoch = 0;
  r->num_epochs = s->num_epochs;
  r->stop_flags = 0;

  loom_callback **list;
  size_t n;
  int rc = loom_experiment_stage_callbacks(r->exp, index, &list, &n);
  if (rc < 0)
    return rc;
  loom_callback_table_free(&r->stage_table);
  rc = loom_callback_table_build(&r->stage_table, list, n, loom_comm_rank(r->comm));
  free(list);
  r->in_stage = rc == 0;
  return rc;
}

static int run_stage(loom_runner *r, size_t index) {
  int rc = prepare_stage(r, index);
  if (rc < 0)
    return rc;
  if ((rc = dispatch(r, LOOM_EVENT_STAGE_START)) < 0)
    return rc;
  for (int e = 1; e <= r->num_epochs; e++) {
    r->epoch = e;
    r->global_epoch++;
    if ((rc = run_epoch(r)) < 0)
      return rc;
    if (r->stop_flags & LOOM_STOP_STAGE)
      break;
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
  loom_callback_table_dispatch(t, LOOM_EVENT_EXCEPTION, r, 1);
  if (!experiment_end_done)
    loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_END, r, 1);
  loom_error_set(r->error, "%s", r->error_message);
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
  int rc = build_experiment_table(r);
  bool end_done = false;
  if (rc == 0)
    rc = loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_START, r, 0);
  for (size_t s = 0; rc == 0 && s < loom_experiment_num_stages(exp); s++)
    rc = run_stage(r, s);
  if (rc == 0) {
    rc = loom_callback_table_dispatch(&r->exp_table, LOOM_EVENT_EXPERIMENT_END, r, 1);
    end_done = true;
  }
  if (rc < 0)
    unwind(r, rc, end_done);
#if defined(__SSE__)
  _mm_setcsr(csr);
#endif
  return (rc < 0 && !r->error_handled) ? rc : 0;
}
