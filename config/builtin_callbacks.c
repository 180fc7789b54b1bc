/* Config constructors of the built-in callbacks (docs/config.md). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/callbacks.h"

#define BIG 1e300

static void *accuracy(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const int64_t def = 1;
  int64_t k[8];
  size_t n;
  if (loom_params_int_array(p, "topk", &def, 1, 1, 1000000, k, 8, &n) < 0)
    return NULL;
  int topk[8];
  for (size_t i = 0; i < n; i++)
    topk[i] = (int)k[i];
  return loom_accuracy_callback_create(topk, (int)n);
}

static void *loss_metric(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const char *name;
  if (loom_params_string(p, "name", NULL, &name) < 0)
    return NULL;
  loom_criterion *c;
  if (loom_params_component(p, "criterion", LOOM_KIND_CRITERION, NULL, true, (void **)&c) < 0)
    return NULL;
  return loom_loss_metric_callback_create(name, c);
}

static void *console_logger(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  static const char *const modes[] = {"auto", "on", "off", NULL};
  int progress;
  bool verbose;
  if (loom_params_choice(p, "progress", "auto", modes, &progress) < 0 ||
      loom_params_bool(p, "verbose", false, &verbose) < 0)
    return NULL;
  loom_console_logger_options o = {.progress = (loom_progress)progress, .verbose = verbose};
  return loom_console_logger_create(&o);
}

static void *metrics_logger(loom_params *p, const void *context, void *user) {
  (void)p, (void)context, (void)user;
  return loom_metrics_logger_create();
}

static void *tensorboard(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t every;
  if (loom_params_int(p, "batch_every", 0, 0, INT64_MAX, &every) < 0)
    return NULL;
  return loom_tensorboard_logger_create(every);
}

static void *timer(loom_params *p, const void *context, void *user) {
  (void)p, (void)context, (void)user;
  return loom_timer_callback_create();
}

/* An optional string that may be null; "" reads as absent. */
static int optional_choice(loom_params *p, const char *key, const char *const *choices, const char **out) {
  *out = NULL;
  if (!loom_params_has(p, key))
    return 0;
  int i;
  int rc = loom_params_choice(p, key, NULL, choices, &i);
  if (rc == 0)
    *out = choices[i];
  return rc;
}

/* minimize: true, false, or absent (the stage decides) */
static int tristate(loom_params *p, const char *key, int *out) {
  *out = -1;
  if (!loom_params_has(p, key))
    return 0;
  bool b;
  int rc = loom_params_bool(p, key, false, &b);
  *out = b;
  return rc;
}

static void *checkpoint(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  static const char *const which[] = {"best", "last", NULL};
  loom_checkpoint_options o = loom_checkpoint_defaults();
  int64_t k;
  if ((loom_params_has(p, "loader") && loom_params_string(p, "loader", NULL, &o.loader) < 0) ||
      (loom_params_has(p, "metric") && loom_params_string(p, "metric", NULL, &o.metric) < 0) ||
      tristate(p, "minimize", &o.minimize) < 0 || loom_params_int(p, "save_top_k", 1, 0, 64, &k) < 0 ||
      loom_params_bool(p, "save_last", true, &o.save_last) < 0 ||
      loom_params_int(p, "every_n_batches", 0, 0, INT64_MAX, &o.every_n_batches) < 0 ||
      optional_choice(p, "load_on_stage_start", which, &o.load_on_stage_start) < 0 ||
      optional_choice(p, "load_on_stage_end", which, &o.load_on_stage_end) < 0 ||
      loom_params_bool(p, "save_on_exception", true, &o.save_on_exception) < 0)
    return NULL;
  o.save_top_k = (int)k;
  return loom_checkpoint_callback_create(&o);
}

static int monitor(loom_params *m, loom_monitor *out) {
  *out = loom_monitor_defaults();
  int rc = 0;
  if (loom_params_has(m, "loader"))
    rc = loom_params_string(m, "loader", NULL, &out->loader);
  if (rc == 0 && loom_params_has(m, "metric"))
    rc = loom_params_string(m, "metric", NULL, &out->metric);
  if (rc == 0)
    rc = tristate(m, "minimize", &out->minimize);
  if (rc == 0)
    rc = loom_params_number(m, "min_delta", 0, 0, BIG, &out->min_delta);
  if (rc == 0)
    rc = loom_params_bool(m, "relative", false, &out->relative);
  if (rc == 0 && loom_params_has(m, "stopping_threshold"))
    rc = loom_params_number(m, "stopping_threshold", NAN, -BIG, BIG, &out->stopping_threshold);
  if (rc == 0 && loom_params_has(m, "divergence_threshold"))
    rc = loom_params_number(m, "divergence_threshold", NAN, -BIG, BIG, &out->divergence_threshold);
  return rc == 0 ? loom_params_check_unknown(m) : rc;
}

static void *early_stopping(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_early_stopping_options o = loom_early_stopping_defaults();
  if (loom_params_int(p, "patience", o.patience, 1, INT64_MAX, &o.patience) < 0 ||
      loom_params_bool(p, "require_all", false, &o.require_all) < 0 ||
      loom_params_bool(p, "check_finite", true, &o.check_finite) < 0 ||
      loom_params_bool(p, "restore_best_weights", false, &o.restore_best_weights) < 0)
    return NULL;
  size_t n;
  if (loom_params_array_length(p, "monitors", false, &n) < 0)
    return NULL;
  if (n > LOOM_EARLY_STOPPING_MAX_MONITORS) {
    loom_params_error(p, "monitors", LOOM_EINVAL, "expected an array of at most %d monitor objects",
                      LOOM_EARLY_STOPPING_MAX_MONITORS);
    return NULL;
  }
  for (size_t i = 0; i < n; i++) {
    char key[64];
    snprintf(key, sizeof key, "monitors[%zu]", i);
    loom_params *mp;
    if (loom_params_open(p, key, true, &mp) < 0)
      return NULL;
    int rc = monitor(mp, &o.monitors[i]);
    loom_params_close(mp);
    if (rc < 0)
      return NULL;
    o.num_monitors++;
  }
  return loom_early_stopping_callback_create(&o);
}

static void *optimizer(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_optimizer_callback_options o;
  if (loom_params_int(p, "accumulation_steps", 1, 1, INT64_MAX, &o.accumulation_steps) < 0 ||
      loom_params_number(p, "clip_norm", 0, 0, BIG, &o.clip_norm) < 0 ||
      loom_params_number(p, "clip_value", 0, 0, BIG, &o.clip_value) < 0)
    return NULL;
  return loom_optimizer_callback_create(&o);
}

static void *exception(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_exception_options o;
  if (loom_params_bool(p, "handle", false, &o.handle) < 0 ||
      loom_params_bool(p, "handle_interrupts_only", false, &o.handle_interrupts_only) < 0 ||
      loom_params_bool(p, "save_checkpoint", false, &o.save_checkpoint) < 0)
    return NULL;
  return loom_exception_callback_create(&o);
}

static void *time_limit(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double seconds;
  if (loom_params_number(p, "seconds", NAN, 1e-6, BIG, &seconds) < 0)
    return NULL;
  return loom_time_limit_callback_create(seconds);
}

void loom_register_builtin_callbacks(void) {
  loom_register_builtin(LOOM_KIND_CALLBACK, "accuracy", accuracy);
  loom_register_builtin(LOOM_KIND_CALLBACK, "loss_metric", loss_metric);
  loom_register_builtin(LOOM_KIND_CALLBACK, "console_logger", console_logger);
  loom_register_builtin(LOOM_KIND_CALLBACK, "metrics_logger", metrics_logger);
  loom_register_builtin(LOOM_KIND_CALLBACK, "tensorboard", tensorboard);
  loom_register_builtin(LOOM_KIND_CALLBACK, "timer", timer);
  loom_register_builtin(LOOM_KIND_CALLBACK, "checkpoint", checkpoint);
  loom_register_builtin(LOOM_KIND_CALLBACK, "early_stopping", early_stopping);
  loom_register_builtin(LOOM_KIND_CALLBACK, "optimizer", optimizer);
  loom_register_builtin(LOOM_KIND_CALLBACK, "exception", exception);
  loom_register_builtin(LOOM_KIND_CALLBACK, "time_limit", time_limit);
}
