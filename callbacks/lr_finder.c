/* The learning-rate finder (fastai's lr_find, Lightning's Tuner.lr_find):
 * an exponential sweep of the rate over the stage's train batches, the loss
 * smoothed, an early stop when it diverges, the curve written, a rate
 * suggested. The rule is in loom/callbacks.h and docs/callbacks.md. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/callbacks.h"
#include "loom/model.h"
#include "loom/optimizer.h"
#include "loom/runner.h"

typedef struct lr_finder {
  loom_lr_finder_options o;
  char *csv_path;          /* NULL: <logdir>/lr_find.csv */
  loom_callback *tb;       /* the TensorBoard logger the curve goes through, or NULL */
  double *lr, *loss, *smoothed;
  size_t n;                /* points recorded (<= o.steps) */
  double avg;              /* the loss's moving average, before bias correction */
  int64_t finite;          /* finite losses averaged */
  double best;             /* the lowest smoothed loss */
  bool sweeping, done;
  loom_lr_finder_result result;
  char stop_reason[256];
  /* What the sweep changes and the stage's end puts back. */
  loom_state *model_state, *optimizer_state;
  loom_run_options run_options;
} lr_finder;

loom_lr_finder_options loom_lr_finder_defaults(void) {
  return (loom_lr_finder_options){.min_lr = 1e-7,
                                  .max_lr = 10,
                                  .steps = 200,
                                  .beta = 0.98,
                                  .divergence = 4,
                                  .skip_begin = 10,
                                  .skip_end = 1,
                                  .restore = true};
}

/* The rate of sweep step i: min_lr at 0, max_lr at steps - 1. */
static double sweep_rate(const loom_lr_finder_options *o, int64_t i) {
  return o->min_lr * pow(o->max_lr / o->min_lr, (double)i / (double)(o->steps - 1));
}

/* d smoothed / d log10(lr) at each of n points, as numpy.gradient: central
 * differences inside, one-sided at both ends. */
static void log_gradient(const double *lr, const double *s, size_t n, double *g) {
  for (size_t i = 0; i < n; i++) {
    size_t a = i > 0 ? i - 1 : i, b = i + 1 < n ? i + 1 : i;
    g[i] = (s[b] - s[a]) / (log10(lr[b]) - log10(lr[a]));
  }
}

int loom_lr_finder_suggest(const double *lr, const double *smoothed, size_t n, int64_t skip_begin, int64_t skip_end,
                           double *suggestion, char *why, size_t why_size) {
  *suggestion = NAN;
  if (why_size)
    why[0] = '\0';
  if (skip_begin < 0 || skip_end < 0)
    return loom_error_set(LOOM_EINVAL, "lr finder: skip_begin and skip_end must be >= 0");
  /* The finite points between the skipped ends. */
  double *x = malloc((n + 1) * sizeof *x), *s = malloc((n + 1) * sizeof *s), *g = malloc((n + 1) * sizeof *g);
  if (!x || !s || !g) {
    free(x), free(s), free(g);
    return loom_error_oom("the lr finder's curve");
  }
  size_t m = 0;
  for (size_t i = (size_t)skip_begin; i + (size_t)skip_end < n && (size_t)skip_begin < n; i++)
    if (isfinite(smoothed[i]) && lr[i] > 0) {
      x[m] = lr[i];
      s[m++] = smoothed[i];
    }
  if (m < 2) {
    snprintf(why, why_size, "%zu usable point%s of %zu once the first %lld and last %lld are left out: sweep more "
             "steps or a wider range", m, m == 1 ? "" : "s", n, (long long)skip_begin, (long long)skip_end);
  } else {
    log_gradient(x, s, m, g);
    size_t best = 0;
    for (size_t i = 1; i < m; i++)
      if (g[i] < g[best])
        best = i;
    if (g[best] < 0)
      *suggestion = x[best];
    else
      snprintf(why, why_size, "the smoothed loss never fell between %g and %g: try a wider range", x[0], x[m - 1]);
  }
  free(x), free(s), free(g);
  return 0;
}

static void free_saved(lr_finder *f) {
  loom_state_destroy(f->model_state);
  loom_state_destroy(f->optimizer_state);
  f->model_state = f->optimizer_state = NULL;
}

static int finder_experiment_start(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (!f->tb || !loom_runner_is_master(r) || loom_runner_resumed_finished(r))
    return 0;
  return loom_callback_handler(f->tb, LOOM_EVENT_EXPERIMENT_START)(f->tb, r);
}

static int finder_experiment_end(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  return f->tb && loom_runner_is_master(r) ? loom_callback_handler(f->tb, LOOM_EVENT_EXPERIMENT_END)(f->tb, r) : 0;
}

/* Keeps what the sweep will change, and lets a non-finite loss or gradient
 * end the sweep as a divergence instead of failing the run. */
static int finder_stage_start(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  loom_model *model = loom_runner_model(r);
  loom_optimizer *opt = loom_runner_optimizer(r);
  if (!model || !opt)
    return loom_error_set(LOOM_EINVAL, "lr finder: stage \"%s\" has no %s to sweep (loom_stage_set_%s)",
                          loom_runner_stage_name(r), model ? "optimizer" : "model", model ? "optimizer" : "model");
  free_saved(f);
  f->n = 0;
  f->avg = 0;
  f->finite = 0;
  f->best = INFINITY;
  f->done = false;
  f->stop_reason[0] = '\0';
  f->result = (loom_lr_finder_result){.suggestion = NAN, .diverged_lr = NAN};
  if (f->o.restore) {
    f->model_state = loom_state_create();
    f->optimizer_state = loom_state_create();
    if (!f->model_state || !f->optimizer_state)
      return loom_error_oom("the lr finder's saved weights");
    int rc = loom_model_save(model, f->model_state, false);
    if (rc == 0)
      rc = loom_optimizer_save(opt, f->optimizer_state);
    if (rc < 0)
      return loom_error_wrap(rc, "lr finder: keeping the weights to put back");
  }
  f->run_options = *loom_runner_options(r);
  loom_run_options sweep = f->run_options;
  sweep.nonfinite = LOOM_NONFINITE_SKIP;
  sweep.nonfinite_budget = INT64_MAX;
  loom_runner_set_options(r, &sweep);
  f->sweeping = true;
  return 0;
}

/* Loaders that do not train, and every loader once the sweep is done, run
 * no batch. */
static int finder_loader_start(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (f->sweeping && (f->done || !loom_runner_is_train_loader(r)))
    loom_runner_request_stop(r, LOOM_STOP_LOADER);
  return 0;
}

static int finder_batch_start(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (f->sweeping && !f->done && loom_runner_is_train_loader(r))
    loom_optimizer_set_lr(loom_runner_optimizer(r), sweep_rate(&f->o, (int64_t)f->n));
  return 0;
}

/* Ends the sweep after this batch: its loader and its stage stop. */
static void finish_sweep(lr_finder *f, loom_runner *r) {
  f->done = true;
  loom_runner_request_stop_because(r, LOOM_STOP_LOADER, f->stop_reason);
  loom_runner_request_stop(r, LOOM_STOP_STAGE);
}

/* Records the batch: its rate, loss and smoothed loss; stops on divergence
 * or after the last step. A batch skipped for a non-finite loss or
 * gradient is a divergence, and is not averaged. */
static int finder_batch_end(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (!f->sweeping || f->done || !loom_runner_is_train_loader(r))
    return 0;
  double lr = sweep_rate(&f->o, (int64_t)f->n), loss = loom_runner_batch_loss(r), smoothed = NAN;
  bool finite = isfinite(loss) && !loom_runner_batch_skipped(r);
  if (finite) {
    f->avg = f->o.beta * f->avg + (1 - f->o.beta) * loss;
    f->finite++;
    smoothed = f->avg / (1 - pow(f->o.beta, (double)f->finite));
  }
  f->lr[f->n] = lr;
  f->loss[f->n] = loss;
  f->smoothed[f->n] = smoothed;
  f->n++;
  loom_metrics *m = loom_runner_batch_metrics(r);
  int rc = loom_metrics_set(m, "lr", lr);
  if (rc == 0 && finite)
    rc = loom_metrics_set(m, "smoothed_loss", smoothed);
  if (rc == 0 && finite && f->tb && loom_runner_is_master(r))
    rc = loom_callback_handler(f->tb, LOOM_EVENT_BATCH_END)(f->tb, r);
  if (rc < 0)
    return rc;
  if (!finite || (f->o.divergence > 0 && f->finite > 1 && smoothed > f->o.divergence * f->best)) {
    f->result.diverged = true;
    f->result.diverged_lr = lr;
    if (finite)
      snprintf(f->stop_reason, sizeof f->stop_reason,
               "lr finder: the smoothed loss %g passed %g x its best (%g) at lr %g", smoothed, f->o.divergence,
               f->best, lr);
    else
      snprintf(f->stop_reason, sizeof f->stop_reason, "lr finder: the loss or its gradient was not finite at lr %g",
               lr);
    finish_sweep(f, r);
  } else if ((int64_t)f->n == f->o.steps) {
    snprintf(f->stop_reason, sizeof f->stop_reason, "lr finder: swept all %zu rates, up to %g", f->n, lr);
    finish_sweep(f, r);
  }
  if (smoothed < f->best)
    f->best = smoothed;
  return 0;
}

static int write_csv(lr_finder *f, loom_runner *r) {
  char path[4096];
  int rc = 0;
  if (!loom_runner_writes_files(r))
    return 0;
  if (f->csv_path)
    snprintf(path, sizeof path, "%s", f->csv_path);
  else if ((rc = loom_runner_lock_logdir(r)) < 0 || (rc = loom_mkdir_p(loom_runner_logdir(r))) < 0 ||
           (rc = loom_path_join(path, sizeof path, loom_runner_logdir(r), "lr_find.csv")) < 0)
    return rc;
  FILE *out = fopen(path, "w");
  if (!out)
    return loom_error_set(LOOM_EIO, "lr finder: cannot write %s: %s", path, strerror(errno));
  fputs("lr,loss,smoothed\n", out);
  for (size_t i = 0; i < f->n; i++)
    fprintf(out, "%.17g,%.17g,%.17g\n", f->lr[i], f->loss[i], f->smoothed[i]);
  bool failed = ferror(out) != 0;
  if (fclose(out) != 0 || failed)
    return loom_error_set(LOOM_EIO, "lr finder: writing %s failed: %s", path, strerror(errno));
  snprintf(f->result.csv_path, sizeof f->result.csv_path, "%s", path);
  return 0;
}

/* Puts back what the sweep changed: the run's options always, the weights
 * and optimizer state when asked. */
static int put_back(lr_finder *f, loom_runner *r) {
  loom_runner_set_options(r, &f->run_options);
  f->sweeping = false;
  int rc = 0;
  if (f->model_state)
    rc = loom_model_load(loom_runner_model(r), f->model_state, false);
  if (rc == 0 && f->optimizer_state)
    rc = loom_optimizer_load(loom_runner_optimizer(r), f->optimizer_state);
  free_saved(f);
  return rc < 0 ? loom_error_wrap(rc, "lr finder: putting the weights back") : 0;
}

static int finder_stage_end(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (!f->sweeping)
    return 0;
  f->result.points = (int64_t)f->n;
  f->result.best_loss = f->best;
  f->result.reason = f->stop_reason[0] ? f->stop_reason : "lr finder: the stage ended before the sweep did";
  int rc = loom_lr_finder_suggest(f->lr, f->smoothed, f->n, f->o.skip_begin, f->o.skip_end, &f->result.suggestion,
                                  f->result.why_none, sizeof f->result.why_none);
  if (rc == 0 && loom_runner_is_master(r))
    rc = write_csv(f, r);
  int back = put_back(f, r);
  f->result.lr = f->lr;
  f->result.loss = f->loss;
  f->result.smoothed = f->smoothed;
  return rc < 0 ? rc : back;
}

static int finder_exception(loom_callback *cb, loom_runner *r) {
  lr_finder *f = loom_callback_data(cb);
  if (f->sweeping) {
    loom_runner_set_options(r, &f->run_options);
    f->sweeping = false;
    free_saved(f);
  }
  return 0;
}

static void finder_destroy(void *data) {
  lr_finder *f = data;
  if (!f)
    return;
  free_saved(f);
  loom_callback_destroy(f->tb);
  free(f->csv_path);
  free(f->lr), free(f->loss), free(f->smoothed);
  free(f);
}

static const loom_callback_ops finder_ops = {
    .type = "lr_finder",
    .on_experiment_start = finder_experiment_start,
    .on_stage_start = finder_stage_start,
    .on_loader_start = finder_loader_start,
    .on_batch_start = finder_batch_start,
    .on_batch_end = finder_batch_end,
    .on_stage_end = finder_stage_end,
    .on_experiment_end = finder_experiment_end,
    .on_exception = finder_exception,
    .destroy = finder_destroy,
};

static int check_options(const loom_lr_finder_options *o) {
  if (!(o->min_lr > 0) || !(o->max_lr > o->min_lr) || !isfinite(o->max_lr))
    return loom_error_set(LOOM_EINVAL, "lr finder: the sweep needs 0 < min_lr < max_lr (got %g and %g)", o->min_lr,
                          o->max_lr);
  if (o->steps < 2 || o->steps > 100000000)
    return loom_error_set(LOOM_EINVAL, "lr finder: steps must be between 2 and 1e8 (got %lld)", (long long)o->steps);
  if (!(o->beta >= 0 && o->beta < 1))
    return loom_error_set(LOOM_EINVAL, "lr finder: beta must be in [0, 1) (got %g)", o->beta);
  if (!(o->divergence == 0 || o->divergence > 1))
    return loom_error_set(LOOM_EINVAL, "lr finder: divergence must be 0 (off) or > 1 (got %g)", o->divergence);
  if (o->skip_begin < 0 || o->skip_end < 0)
    return loom_error_set(LOOM_EINVAL, "lr finder: skip_begin and skip_end must be >= 0");
  return 0;
}

loom_callback *loom_lr_finder_callback_create(const loom_lr_finder_options *options) {
  loom_lr_finder_options o = options ? *options : loom_lr_finder_defaults();
  if (check_options(&o) < 0)
    return NULL;
  lr_finder *f = calloc(1, sizeof *f);
  if (!f) {
    loom_error_oom("the lr finder");
    return NULL;
  }
  f->o = o;
  f->o.csv_path = NULL;
  f->lr = malloc((size_t)o.steps * sizeof *f->lr);
  f->loss = malloc((size_t)o.steps * sizeof *f->loss);
  f->smoothed = malloc((size_t)o.steps * sizeof *f->smoothed);
  bool ok = f->lr && f->loss && f->smoothed && (!o.csv_path || (f->csv_path = strdup(o.csv_path)));
  if (ok && o.tensorboard && !(f->tb = loom_tensorboard_logger_create(1)))
    ok = false;
  if (!ok) {
    if (loom_last_error_code() == 0)
      loom_error_oom("the lr finder's curve");
    finder_destroy(f);
    return NULL;
  }
  f->result = (loom_lr_finder_result){.suggestion = NAN, .diverged_lr = NAN, .best_loss = NAN};
  /* A relative csv_path is the working directory's, not the logdir's. */
  const char *writes = !f->csv_path ? "lr_find.csv" : f->csv_path[0] == '/' ? f->csv_path : NULL;
  loom_callback *cb = loom_callback_create(&finder_ops, f, LOOM_ORDER_SCHEDULER);
  if (cb && writes && loom_callback_set_writes(cb, writes) < 0) {
    loom_callback_destroy(cb);
    return NULL;
  }
  return cb;
}

int loom_lr_finder_get_result(const loom_callback *cb, loom_lr_finder_result *out) {
  if (!cb || strcmp(loom_callback_type(cb), "lr_finder") != 0 || loom_callback_handler(cb, LOOM_EVENT_BATCH_END) !=
                                                                       finder_batch_end)
    return loom_error_set(LOOM_EINVAL, "loom_lr_finder_get_result: not an lr finder callback");
  *out = ((lr_finder *)loom_callback_data(cb))->result;
  return 0;
}
