/* TensorBoard event files (callbacks/tfevent.h): the loader and epoch
 * metrics as scalars, and the run's hyperparameters as HParams summaries
 * (callbacks/hparams.h), with hparams.json beside them. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "callbacks/hparams.h"
#include "callbacks/tfevent.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct tensorboard {
  loom_tfevents events;
  int64_t batch_every;
  loom_hparams user;    /* set through loom_tensorboard_logger_set_hparam* */
  loom_hparams hparams; /* this run's: the config's scalars, then the user's */
  loom_metrics *final;  /* the last value of each "<loader>/<metric>" */
  double start_time;
} tensorboard;

/* Writes m's metrics as scalars "<prefix>/<name>"; with `final`, also keeps
 * each as the run's final value of that tag. */
static int write_metrics(tensorboard *t, const loom_metrics *m, const char *prefix, bool skip_slashed, int64_t step,
                         loom_metrics *final) {
  char *tag = NULL;
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < loom_metrics_count(m) && rc == 0; i++) {
    const char *name = loom_metrics_name(m, i);
    if (skip_slashed && strchr(name, '/'))
      continue;
    size_t need = (prefix ? strlen(prefix) + 1 : 0) + strlen(name) + 1; /* the tag whole, however long */
    if (need > cap) {
      char *grown = realloc(tag, need);
      if (!grown) {
        rc = loom_error_oom("a TensorBoard tag");
        break;
      }
      tag = grown, cap = need;
    }
    snprintf(tag, cap, "%s%s%s", prefix ? prefix : "", prefix ? "/" : "", name);
    rc = loom_tfevents_write_scalar(&t->events, tag, loom_metrics_value(m, i), step);
    if (rc == 0 && final)
      rc = loom_metrics_set(final, tag, loom_metrics_value(m, i));
  }
  free(tag);
  return rc == 0 ? loom_tfevents_flush(&t->events) : rc;
}

/* The run's hyperparameters: every scalar of the resolved config (when the
 * experiment was built from one), then those the program set. */
static int collect_hparams(tensorboard *t, const loom_runner *r) {
  loom_hparams_clear(&t->hparams);
  const char *config = loom_experiment_config(loom_runner_experiment(r));
  int rc = 0;
  if (config) {
    json_error_t err;
    json_t *root = json_loads(config, 0, &err);
    rc = root ? loom_hparams_add_json(&t->hparams, "", root)
              : loom_error_set(LOOM_EFORMAT, "tensorboard: the experiment's config is not JSON: %s", err.text);
    json_decref(root);
  }
  return rc == 0 ? loom_hparams_merge(&t->hparams, &t->user) : rc;
}

static int tb_experiment_start(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  if (loom_runner_resumed_finished(r) || !loom_runner_writes_files(r))
    return 0; /* nothing will run, or nothing is written: no file */
  loom_metrics_clear(t->final);
  t->start_time = loom_hparams_now();
  int rc = loom_runner_lock_logdir(r);
  if (rc == 0)
    rc = collect_hparams(t, r);
  if (rc == 0)
    rc = loom_tfevents_create(&t->events, loom_runner_logdir(r));
  if (rc == 0 && t->hparams.count)
    rc = loom_hparams_write_session_start(&t->events, &t->hparams, NULL, t->start_time);
  return rc == 0 ? loom_tfevents_flush(&t->events) : rc;
}

static int tb_batch_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  if (!t->events.f || t->batch_every <= 0 || !loom_runner_is_train_loader(r) ||
      loom_runner_global_batch_step(r) % t->batch_every != 0)
    return 0;
  const char *loader = loom_runner_loader_name(r);
  char *prefix = malloc(strlen(loader) + sizeof "batch/");
  if (!prefix)
    return loom_error_oom("a TensorBoard tag");
  sprintf(prefix, "batch/%s", loader);
  int rc = write_metrics(t, loom_runner_batch_metrics(r), prefix, false, loom_runner_global_batch_step(r), NULL);
  free(prefix);
  return rc;
}

static int tb_loader_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  return t->events.f ? write_metrics(t, loom_runner_loader_metrics(r), loom_runner_loader_name(r), false,
                                     loom_runner_global_epoch(r), t->final)
                     : 0;
}

static int tb_epoch_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  return t->events.f ? write_metrics(t, loom_runner_epoch_metrics(r), NULL, true, loom_runner_global_epoch(r), NULL)
                     : 0;
}

/* "done", "interrupted" (a signal or a time limit: resumable) or "failed". */
static const char *run_status(const loom_runner *r) {
  int error = loom_runner_error(r);
  return error == 0 ? "done" : error == LOOM_EINTERRUPTED ? "interrupted" : "failed";
}

/* <logdir>/hparams.json: {"hparams": {...}, "final": {"valid/loss": ...},
 * "status": "done"}. */
static int write_hparams_json(tensorboard *t, const loom_runner *r, const char *status) {
  char path[4096];
  int rc = loom_path_join(path, sizeof path, loom_runner_logdir(r), "hparams.json");
  if (rc < 0)
    return rc;
  json_t *final = json_object();
  for (size_t i = 0; final && i < loom_metrics_count(t->final); i++)
    json_object_set_new(final, loom_metrics_name(t->final, i), json_real(loom_metrics_value(t->final, i)));
  json_t *doc = json_pack("{s:o?, s:o?, s:s}", "hparams", loom_hparams_to_json(&t->hparams), "final", final,
                          "status", status);
  if (!doc)
    return loom_error_oom("hparams.json");
  if (json_dump_file(doc, path, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) < 0)
    rc = loom_error_set(LOOM_EIO, "tensorboard: cannot write %s: %s", path, strerror(errno));
  json_decref(doc);
  return rc;
}

/* The run's HParams: the Experiment (its hparams, its final metrics) and,
 * unless it was interrupted (a resume ends the session), the session's end. */
static int write_hparams_end(tensorboard *t, const char *status) {
  if (!t->hparams.count)
    return 0;
  size_t n = loom_metrics_count(t->final);
  const char **tags = calloc(n ? n : 1, sizeof *tags);
  if (!tags)
    return loom_error_oom("the metrics' names");
  for (size_t i = 0; i < n; i++)
    tags[i] = loom_metrics_name(t->final, i);
  int rc = loom_hparams_write_experiment(&t->events, &t->hparams, 1, tags, n, t->start_time);
  free(tags);
  if (rc == 0 && strcmp(status, "interrupted") != 0)
    rc = loom_hparams_write_session_end(&t->events, strcmp(status, "done") == 0 ? LOOM_HPARAMS_STATUS_SUCCESS
                                                                               : LOOM_HPARAMS_STATUS_FAILURE,
                                        loom_hparams_now());
  return rc;
}

static int tb_experiment_end(loom_callback *cb, loom_runner *r) {
  tensorboard *t = loom_callback_data(cb);
  if (!t->events.f)
    return 0;
  const char *status = run_status(r);
  int rc = write_hparams_end(t, status);
  int closed = loom_tfevents_close(&t->events);
  if (rc == 0)
    rc = closed;
  return rc == 0 ? write_hparams_json(t, r, status) : rc;
}

static void tb_destroy(void *data) {
  tensorboard *t = data;
  loom_tfevents_close(&t->events);
  loom_hparams_clear(&t->user);
  loom_hparams_clear(&t->hparams);
  loom_metrics_destroy(t->final);
  free(t);
}

static const loom_callback_ops tensorboard_ops = {
    .type = "tensorboard",
    .on_experiment_start = tb_experiment_start,
    .on_batch_end = tb_batch_end,
    .on_loader_end = tb_loader_end,
    .on_epoch_end = tb_epoch_end,
    .on_experiment_end = tb_experiment_end,
    .destroy = tb_destroy,
};

loom_callback *loom_tensorboard_logger_create(int64_t batch_every) {
  if (batch_every < 0) {
    loom_error_set(LOOM_EINVAL, "tensorboard: batch_every must be >= 0");
    return NULL;
  }
  tensorboard *t = calloc(1, sizeof *t);
  if (!t || !(t->final = loom_metrics_create())) {
    free(t);
    loom_error_oom("the tensorboard logger");
    return NULL;
  }
  t->batch_every = batch_every;
  loom_callback *cb = loom_callback_create(&tensorboard_ops, t, LOOM_ORDER_LOGGING);
  /* Its event file has a name of its own; hparams.json is shared. */
  if (cb && loom_callback_set_writes(cb, "hparams.json") < 0) {
    loom_callback_destroy(cb);
    return NULL;
  }
  if (cb)
    loom_callback_set_node(cb, LOOM_NODE_MASTER);
  return cb;
}

/* The logger's data, or NULL with an error when cb is not a tensorboard
 * logger or the name is empty. */
static tensorboard *hparam_target(loom_callback *cb, const char *name) {
  if (!cb || strcmp(loom_callback_type(cb), "tensorboard") != 0) {
    loom_error_set(LOOM_EINVAL, "loom_tensorboard_logger_set_hparam: the callback is not a tensorboard logger "
                                "(give the one loom_tensorboard_logger_create returned)");
    return NULL;
  }
  if (!name || !name[0]) {
    loom_error_set(LOOM_EINVAL, "loom_tensorboard_logger_set_hparam: a hyperparameter needs a name");
    return NULL;
  }
  return loom_callback_data(cb);
}

int loom_tensorboard_logger_set_hparam(loom_callback *cb, const char *name, double value) {
  tensorboard *t = hparam_target(cb, name);
  return t ? loom_hparams_set_number(&t->user, name, value) : LOOM_EINVAL;
}

int loom_tensorboard_logger_set_hparam_string(loom_callback *cb, const char *name, const char *value) {
  tensorboard *t = hparam_target(cb, name);
  if (t && !value)
    return loom_error_set(LOOM_EINVAL, "loom_tensorboard_logger_set_hparam_string: \"%s\" has no value (NULL)", name);
  return t ? loom_hparams_set_string(&t->user, name, value) : LOOM_EINVAL;
}

int loom_tensorboard_logger_set_hparam_bool(loom_callback *cb, const char *name, bool value) {
  tensorboard *t = hparam_target(cb, name);
  return t ? loom_hparams_set_bool(&t->user, name, value) : LOOM_EINVAL;
}
