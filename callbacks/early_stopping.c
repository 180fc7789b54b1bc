/* Early stopping on one or several monitored metrics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "callbacks/monitor.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct watched {
  loom_monitor m;
  char *loader, *metric;
  double best;
  bool has_best;
  int64_t wait; /* epochs since the last improvement */
  int best_epoch; /* the global epoch of `best` */
  char key[256];  /* "{loader}/{metric}", as last looked up */
} watched;

typedef struct early_stopping {
  loom_early_stopping_options o;
  watched w[LOOM_EARLY_STOPPING_MAX_MONITORS];
  int n;
  float *best_weights; /* the first monitor's best epoch */
  size_t nweights;
  char reason[512];
} early_stopping;

loom_monitor loom_monitor_defaults(void) {
  return (loom_monitor){.minimize = -1, .stopping_threshold = NAN, .divergence_threshold = NAN};
}

loom_early_stopping_options loom_early_stopping_defaults(void) {
  loom_early_stopping_options o = {.patience = 5, .check_finite = true};
  return o;
}

static int es_stage_start(loom_callback *cb, loom_runner *r) {
  (void)r;
  early_stopping *e = loom_callback_data(cb);
  for (int i = 0; i < e->n; i++)
    e->w[i].has_best = false, e->w[i].wait = 0;
  e->reason[0] = '\0';
  return 0;
}

static bool better(bool minimize, double a, double b) { return minimize ? a < b : a > b; }

/* Per monitor: 1 stalled, 0 not; sets *stop and the reason on a hard stop. */
static int judge(early_stopping *e, watched *w, loom_runner *r, bool *stop, bool *good_enough, bool *improved) {
  loom_monitored mon;
  int rc = loom_monitor_lookup(r, "early stopping", w->loader, w->metric, w->m.minimize, true, &mon);
  if (rc < 0)
    return rc;
  const char *key = mon.key;
  snprintf(w->key, sizeof w->key, "%.255s", key);
  double v = mon.value;
  bool minimize = mon.minimize;
  *improved = false;
  if (!isfinite(v)) {
    if (e->o.check_finite) {
      snprintf(e->reason, sizeof e->reason, "%.400s is %g", key, v);
      *stop = true;
    }
    w->wait++;
    return 1;
  }
  if (!isnan(w->m.divergence_threshold) && better(!minimize, v, w->m.divergence_threshold)) {
    snprintf(e->reason, sizeof e->reason, "%.400s = %g diverged past %g", key, v, w->m.divergence_threshold);
    *stop = true;
  }
  *good_enough = !isnan(w->m.stopping_threshold) && better(minimize, v, w->m.stopping_threshold);
  double delta = w->m.relative && w->has_best ? w->m.min_delta * fabs(w->best) : w->m.min_delta;
  if (!w->has_best || better(minimize, v, minimize ? w->best - delta : w->best + delta)) {
    w->best = v;
    w->best_epoch = loom_runner_global_epoch(r);
    w->has_best = true;
    w->wait = 0;
    *improved = true;
    return 0;
  }
  return ++w->wait >= e->o.patience;
}

/* "valid/loss did not improve by 0.001 for 5 epochs; best 0.3077 at epoch
 * 10", of the first monitor that stalled. */
static void stall_reason(early_stopping *e) {
  const watched *w = e->w;
  while (w < e->w + e->n - 1 && w->wait < e->o.patience)
    w++;
  char by[64];
  if (w->m.relative)
    snprintf(by, sizeof by, "%g%% of its best", w->m.min_delta * 100);
  else
    snprintf(by, sizeof by, "%g", w->m.min_delta);
  int n = snprintf(e->reason, sizeof e->reason, "%.256s did not improve by %s for %lld epochs", w->key, by,
                   (long long)w->wait);
  if (w->has_best && n > 0 && (size_t)n < sizeof e->reason)
    n += snprintf(e->reason + n, sizeof e->reason - (size_t)n, "; best %.4f at epoch %d", w->best, w->best_epoch);
  if (e->n > 1 && e->o.require_all && n > 0 && (size_t)n < sizeof e->reason)
    snprintf(e->reason + n, sizeof e->reason - (size_t)n, " (as every monitor did)");
}

static int es_epoch_end(loom_callback *cb, loom_runner *r) {
  early_stopping *e = loom_callback_data(cb);
  bool stop = false;
  int stalled = 0, good = 0;
  for (int i = 0; i < e->n; i++) {
    bool good_enough = false, improved = false;
    int rc = judge(e, &e->w[i], r, &stop, &good_enough, &improved);
    if (rc < 0)
      return rc;
    stalled += rc;
    good += good_enough;
    /* Through the host copy helpers: the model may be on a device. */
    if (i == 0 && improved && e->best_weights && loom_runner_model(r) &&
        (rc = loom_model_params_to_host(loom_runner_model(r), e->best_weights)) < 0)
      return loom_error_wrap(rc, "early stopping: keeping the best weights");
  }
  bool combined_stall = e->o.require_all ? stalled == e->n : stalled > 0;
  bool combined_good = e->o.require_all ? good == e->n : good > 0;
  if (!stop && combined_good) {
    snprintf(e->reason, sizeof e->reason, "%s", e->o.require_all ? "every monitor reached its stopping threshold"
                                                                 : "a monitor reached its stopping threshold");
    stop = true;
  }
  if (!stop && combined_stall) {
    stall_reason(e);
    stop = true;
  }
  if (!stop)
    return 0;
  char why[600];
  snprintf(why, sizeof why, "early stopping: %s", e->reason);
  loom_runner_request_stop_because(r, LOOM_STOP_STAGE, why);
  if (e->o.restore_best_weights && e->best_weights && e->w[0].has_best && loom_runner_model(r)) {
    int rc = loom_model_params_from_host(loom_runner_model(r), e->best_weights);
    if (rc < 0)
      return loom_error_wrap(rc, "early stopping: restoring the best weights");
  }
  return 0;
}

static int es_experiment_start(loom_callback *cb, loom_runner *r) {
  (void)r;
  early_stopping *e = loom_callback_data(cb);
  free(e->best_weights);
  e->best_weights = NULL;
  e->nweights = 0;
  return 0;
}

/* Whether `w` watches the stage's own "best": its valid loader and main
 * metric, in its direction. */
static bool watches_main_metric(const watched *w, loom_runner *r) {
  return (!w->loader || strcmp(w->loader, loom_runner_valid_loader(r)) == 0) &&
         (!w->metric || strcmp(w->metric, loom_runner_main_metric(r)) == 0) &&
         (w->m.minimize < 0 || (w->m.minimize != 0) == loom_runner_minimize_metric(r));
}

/* The best weights buffer follows the stage's model; the runner's "new
 * best" takes the min_delta of a monitor of the main metric, so that the
 * console never calls best what this callback calls no improvement. */
static int es_stage_prepare(loom_callback *cb, loom_runner *r) {
  early_stopping *e = loom_callback_data(cb);
  for (int i = 0; i < e->n; i++)
    if (watches_main_metric(&e->w[i], r)) {
      loom_runner_set_best_min_delta(r, e->w[i].m.min_delta, e->w[i].m.relative);
      break;
    }
  loom_model *m = loom_runner_model(r);
  if (e->o.restore_best_weights && m && loom_model_num_params(m) != e->nweights) {
    free(e->best_weights);
    e->nweights = loom_model_num_params(m);
    if (!(e->best_weights = malloc((e->nweights ? e->nweights : 1) * sizeof(float))))
      return loom_error_oom("the early stopping's best weights");
  }
  return es_stage_start(cb, r);
}

static int es_save(loom_callback *cb, loom_runner *r, loom_state *s) {
  (void)r;
  early_stopping *e = loom_callback_data(cb);
  double best[LOOM_EARLY_STOPPING_MAX_MONITORS];
  int64_t wait[LOOM_EARLY_STOPPING_MAX_MONITORS], has[LOOM_EARLY_STOPPING_MAX_MONITORS],
      at[LOOM_EARLY_STOPPING_MAX_MONITORS];
  for (int i = 0; i < e->n; i++)
    best[i] = e->w[i].best, wait[i] = e->w[i].wait, has[i] = e->w[i].has_best, at[i] = e->w[i].best_epoch;
  int rc = loom_state_set_f64_array(s, "best", best, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "best_epoch", at, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "wait", wait, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "has_best", has, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_set_str(s, "reason", e->reason);
  if (rc == 0 && e->best_weights)
    rc = loom_state_set_f32_array(s, "best_weights", e->best_weights, e->nweights);
  return rc;
}

static int es_load(loom_callback *cb, loom_runner *r, const loom_state *s) {
  (void)r;
  early_stopping *e = loom_callback_data(cb);
  double best[LOOM_EARLY_STOPPING_MAX_MONITORS];
  int64_t wait[LOOM_EARLY_STOPPING_MAX_MONITORS], has[LOOM_EARLY_STOPPING_MAX_MONITORS],
      at[LOOM_EARLY_STOPPING_MAX_MONITORS] = {0};
  const char *reason;
  int rc = loom_state_get_f64_array(s, "best", best, (size_t)e->n);
  if (rc == 0 && loom_state_has(s, "best_epoch")) /* older checkpoints lack it */
    rc = loom_state_get_i64_array(s, "best_epoch", at, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_get_i64_array(s, "wait", wait, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_get_i64_array(s, "has_best", has, (size_t)e->n);
  if (rc == 0)
    rc = loom_state_get_str(s, "reason", &reason);
  if (rc == 0 && e->best_weights && loom_state_has(s, "best_weights"))
    rc = loom_state_get_f32_array(s, "best_weights", e->best_weights, e->nweights);
  if (rc < 0)
    return rc;
  for (int i = 0; i < e->n; i++)
    e->w[i].best = best[i], e->w[i].wait = wait[i], e->w[i].has_best = has[i] != 0, e->w[i].best_epoch = (int)at[i];
  snprintf(e->reason, sizeof e->reason, "%s", reason);
  return 0;
}

static void es_destroy(void *data) {
  early_stopping *e = data;
  for (int i = 0; i < LOOM_EARLY_STOPPING_MAX_MONITORS; i++) {
    free(e->w[i].loader);
    free(e->w[i].metric);
  }
  free(e->best_weights);
  free(e);
}

static const loom_callback_ops early_stopping_ops = {
    .type = "early_stopping",
    .on_experiment_start = es_experiment_start,
    .on_stage_start = es_stage_prepare,
    .on_epoch_end = es_epoch_end,
    .save = es_save,
    .load = es_load,
    .destroy = es_destroy,
};

loom_callback *loom_early_stopping_callback_create(const loom_early_stopping_options *o) {
  loom_early_stopping_options d = loom_early_stopping_defaults();
  if (!o)
    o = &d;
  if (o->num_monitors < 0 || o->num_monitors > LOOM_EARLY_STOPPING_MAX_MONITORS || o->patience < 1) {
    loom_error_set(LOOM_EINVAL, "early stopping: 0 to %d monitors and patience >= 1", LOOM_EARLY_STOPPING_MAX_MONITORS);
    return NULL;
  }
  for (int i = 0; i < o->num_monitors; i++)
    if (!(o->monitors[i].min_delta >= 0)) {
      loom_error_set(LOOM_EINVAL, "early stopping: monitor %d has a negative min_delta", i);
      return NULL;
    }
  early_stopping *e = calloc(1, sizeof *e);
  if (!e) {
    loom_error_oom("the early stopping callback");
    return NULL;
  }
  e->o = *o;
  e->n = o->num_monitors ? o->num_monitors : 1;
  bool ok = true;
  for (int i = 0; i < e->n; i++) {
    e->w[i].m = o->num_monitors ? o->monitors[i] : loom_monitor_defaults();
    if (e->w[i].m.loader)
      ok = ok && (e->w[i].loader = strdup(e->w[i].m.loader));
    if (e->w[i].m.metric)
      ok = ok && (e->w[i].metric = strdup(e->w[i].m.metric));
    e->w[i].m.loader = e->w[i].m.metric = NULL;
  }
  if (!ok) {
    es_destroy(e);
    loom_error_oom("the early stopping callback");
    return NULL;
  }
  /* Before the loggers, so that they report why it stopped. */
  return loom_callback_create(&early_stopping_ops, e, LOOM_ORDER_LOGGING - 10);
}

const char *loom_early_stopping_reason(const loom_callback *cb) {
  const early_stopping *e = loom_callback_data(cb);
  return e->reason;
}
