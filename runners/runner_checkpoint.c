/* Snapshots of the whole run and resuming from them. */
#include <fnmatch.h>
#include <stdint.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/checkpoint_dir.h"
#include "runners/runner_impl.h"

/* A metrics store as "<key>_names" ("a\nb") and "<key>_values". */
int loom_save_metrics(loom_state *s, const char *key, const loom_metrics *m) {
  size_t n = loom_metrics_count(m), len = 1;
  for (size_t i = 0; i < n; i++)
    len += strlen(loom_metrics_name(m, i)) + 1;
  char *names = calloc(len, 1);
  double *values = malloc((n ? n : 1) * sizeof *values);
  int rc = (names && values) ? 0 : loom_error_oom("saved metrics");
  for (size_t i = 0; rc == 0 && i < n; i++) {
    strcat(names, loom_metrics_name(m, i));
    strcat(names, i + 1 < n ? "\n" : "");
    values[i] = loom_metrics_value(m, i);
  }
  char k[128];
  snprintf(k, sizeof k, "%s_names", key);
  if (rc == 0)
    rc = loom_state_set_str(s, k, names);
  snprintf(k, sizeof k, "%s_values", key);
  if (rc == 0)
    rc = loom_state_set_f64_array(s, k, values, n);
  free(names);
  free(values);
  return rc;
}

int loom_load_metrics(const loom_state *s, const char *key, loom_metrics *m) {
  char k[128];
  const char *names;
  snprintf(k, sizeof k, "%s_names", key);
  int rc = loom_state_get_str(s, k, &names);
  if (rc < 0)
    return rc;
  snprintf(k, sizeof k, "%s_values", key);
  size_t n = loom_state_array_length(s, k);
  double *values = malloc((n ? n : 1) * sizeof *values);
  char *copy = strdup(names);
  if (!values || !copy)
    rc = loom_error_oom("saved metrics");
  if (rc == 0)
    rc = loom_state_get_f64_array(s, k, values, n);
  loom_metrics_clear(m);
  size_t i = 0;
  for (char *save = NULL, *name = rc == 0 ? strtok_r(copy, "\n", &save) : NULL; name && rc == 0;
       name = strtok_r(NULL, "\n", &save), i++)
    rc = i < n ? loom_metrics_set(m, name, values[i])
               : loom_error_set(LOOM_EFORMAT, "saved metrics \"%s\": more names than values", key);
  free(values);
  free(copy);
  return rc;
}

/* Where the loop is, as a resume point: after the last completed unit. A
 * start event's unit has not begun; an end event's unit is done, its end
 * event included (docs/architecture.md, "Checkpoints and resume"). */
loom_cursor loom_runner_cursor_now(const loom_runner *r) {
  loom_cursor c = {.stage = r->stage_index, .epoch = r->epoch, .loader = r->loader_index < 0 ? 0 : r->loader_index,
                   .batches = r->loader_batch_step, .global_epoch = r->global_epoch};
  switch (r->event) {
  case LOOM_EVENT_EXPERIMENT_START:
    return (loom_cursor){.phase = LOOM_PHASE_BEFORE_STAGE};
  case LOOM_EVENT_STAGE_START:
    c.phase = LOOM_PHASE_BEFORE_STAGE;
    break;
  case LOOM_EVENT_EPOCH_START:
    c.phase = LOOM_PHASE_EPOCH_DONE;
    c.epoch--, c.global_epoch--;
    break;
  case LOOM_EVENT_LOADER_START:
    c.phase = LOOM_PHASE_BEFORE_LOADER;
    break;
  case LOOM_EVENT_LOADER_END:
    /* No loader under way after on_loader_end: the epoch's last one is
     * done (a failure between it and on_epoch_end leaves the loop here). */
    c.phase = LOOM_PHASE_BEFORE_LOADER;
    c.loader = r->loader_index < 0 ? (int64_t)r->num_loaders : c.loader + 1;
    break;
  case LOOM_EVENT_BATCH_START: /* the batch under way is not done */
    c.phase = LOOM_PHASE_IN_LOADER;
    c.batches = r->batches_done;
    break;
  case LOOM_EVENT_BATCH_END:
    c.phase = LOOM_PHASE_IN_LOADER;
    break;
  case LOOM_EVENT_EPOCH_END:
    c.phase = LOOM_PHASE_EPOCH_DONE;
    break;
  case LOOM_EVENT_STAGE_END:
  case LOOM_EVENT_EXPERIMENT_END:
    c.phase = LOOM_PHASE_STAGE_DONE;
    break;
  default: /* between events: after a batch, or after an epoch */
    c.phase = r->loader_index >= 0 ? LOOM_PHASE_IN_LOADER : LOOM_PHASE_EPOCH_DONE;
    break;
  }
  return c;
}

/* The metrics stores as of the cursor, in copies: on_batch_end counts its
 * batch in the loader's sums, on_loader_end its loader in the epoch's
 * metrics, as the loop does right after those events. */
enum { SAVED_SUMS, SAVED_WEIGHTS, SAVED_EPOCH, SAVED_VALID, NUM_SAVED };

int loom_runner_sums_at_cursor(const loom_runner *r, loom_metrics *sums, loom_metrics *weights) {
  int rc = loom_metrics_copy(sums, r->loader_sums, NULL, false);
  if (rc == 0)
    rc = loom_metrics_copy(weights, r->loader_weights, NULL, false);
  if (rc == 0 && r->event == LOOM_EVENT_BATCH_END && !r->skip_batch)
    rc = loom_accumulate_metrics(sums, weights, r->batch_metrics, (double)r->batch_size);
  return rc;
}

static int metrics_at_cursor(const loom_runner *r, loom_metrics **m) {
  const loom_metrics *now[NUM_SAVED] = {NULL, NULL, r->epoch_metrics, r->valid_metrics};
  int rc = 0;
  for (int i = 0; i < NUM_SAVED && rc == 0; i++)
    rc = !(m[i] = loom_metrics_create()) ? LOOM_ENOMEM : now[i] ? loom_metrics_copy(m[i], now[i], NULL, false) : 0;
  if (rc == 0)
    rc = loom_runner_sums_at_cursor(r, m[SAVED_SUMS], m[SAVED_WEIGHTS]);
  /* (a finished loader, loader_index -1, has added its own already) */
  if (rc == 0 && r->event == LOOM_EVENT_LOADER_END && r->loader_index >= 0)
    rc = loom_runner_add_loader_metrics(r, m[SAVED_EPOCH], m[SAVED_VALID]);
  return rc;
}

static int save_runner(loom_runner *r, loom_state *s) {
  loom_cursor c = loom_runner_cursor_now(r);
  const int64_t cursor[6] = {c.stage, c.epoch, c.phase, c.loader, c.batches, c.global_epoch};
  /* During on_batch_start (and handle_batch) the counters already number
   * the batch under way, which the cursor does not count as done. */
  int64_t batch = r->event == LOOM_EVENT_BATCH_START ? r->batch_size : 0;
  bool train = r->loader_kind == LOOM_LOADER_TRAIN;
  const int64_t counters[7] = {r->global_batch_step - (batch && train), r->global_sample_step - (train ? batch : 0),
                               r->global_optimizer_step, r->loader_sample_step - batch, r->stop_flags,
                               r->nonfinite_skips, (int64_t)r->best_epoch};
  const loom_stage *stage = r->stage ? r->stage : loom_experiment_stage(r->exp, 0);
  int64_t rng[4];
  memcpy(rng, r->rng.s, sizeof rng);
  int rc = loom_state_set_i64_array(s, "cursor", cursor, 6);
  if (rc == 0)
    rc = loom_state_set_str(s, "stage_name", stage->name);
  if (rc == 0)
    rc = loom_state_set_str(s, "loader_name", r->loader_index >= 0 ? r->loader_name : "");
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "counters", counters, 7);
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "rng", rng, 4);
  if (rc == 0)
    rc = loom_state_set_i64(s, "have_best", r->have_best);
  if (rc == 0)
    rc = loom_state_set_f64(s, "best_value", r->best_value);
  if (rc == 0)
    rc = loom_runner_scaler_save(r, s);
  loom_metrics *m[NUM_SAVED] = {NULL};
  if (rc == 0)
    rc = metrics_at_cursor(r, m);
  if (rc == 0)
    rc = loom_save_metrics(s, "loader_sums", m[SAVED_SUMS]);
  if (rc == 0)
    rc = loom_save_metrics(s, "loader_weights", m[SAVED_WEIGHTS]);
  if (rc == 0)
    rc = loom_save_metrics(s, "loader_metrics", r->loader_metrics);
  if (rc == 0)
    rc = loom_save_metrics(s, "epoch_metrics", m[SAVED_EPOCH]);
  if (rc == 0)
    rc = loom_save_metrics(s, "valid_metrics", m[SAVED_VALID]);
  if (rc == 0)
    rc = loom_save_metrics(s, "best_valid_metrics", r->best_valid_metrics);
  for (int i = 0; i < NUM_SAVED; i++)
    loom_metrics_destroy(m[i]);
  return rc;
}

static int save_experiment(const loom_experiment *exp, loom_state *s) {
  size_t n = loom_experiment_num_stages(exp), len = 1;
  for (size_t i = 0; i < n; i++)
    len += strlen(loom_stage_name(loom_experiment_stage(exp, i))) + 1;
  char *names = calloc(len, 1);
  if (!names)
    return loom_error_oom("the experiment description");
  for (size_t i = 0; i < n; i++) {
    strcat(names, loom_stage_name(loom_experiment_stage(exp, i)));
    strcat(names, i + 1 < n ? "\n" : "");
  }
  int rc = loom_state_set_str(s, "name", loom_experiment_name(exp));
  if (rc == 0 && loom_experiment_config(exp))
    rc = loom_state_set_str(s, "config", loom_experiment_config(exp));
  if (rc == 0)
    rc = loom_state_set_i64(s, "seed", (int64_t)loom_experiment_seed(exp));
  if (rc == 0)
    rc = loom_state_set_str(s, "stages", names);
  free(names);
  return rc;
}

int loom_runner_snapshot(loom_runner *r, loom_checkpoint **out) {
  *out = NULL;
  if (!r->exp)
    return loom_error_set(LOOM_ESTATE, "a snapshot needs a run: take it from a callback");
  if (r->error && !r->in_stage)
    return loom_error_set(LOOM_ESTATE, "the run failed outside a stage: there is no loop state to snapshot");
  if (r->resume) {
    /* Until the saved state is back, the run stands where the checkpoint
     * it resumes was taken (the events before are a replay). */
    *out = loom_checkpoint_copy(r->resume);
    return *out ? 0 : loom_error_oom("a snapshot");
  }
  loom_checkpoint *c = loom_checkpoint_create();
  if (!c)
    return LOOM_ENOMEM;
  loom_state *g;
  int rc = (g = loom_checkpoint_group(c, "experiment")) ? save_experiment(r->exp, g) : LOOM_ENOMEM;
  if (rc == 0)
    rc = (g = loom_checkpoint_group(c, "runner")) ? save_runner(r, g) : LOOM_ENOMEM;
  if (rc == 0)
    rc = loom_runner_save_ranks(r, c);
  if (rc == 0 && r->model && loom_model_is_built(r->model))
    rc = (g = loom_checkpoint_group(c, "model")) ? loom_model_save(r->model, g, true) : LOOM_ENOMEM;
  if (rc == 0 && r->optimizer)
    rc = (g = loom_checkpoint_group(c, "optimizer")) ? loom_optimizer_save(r->optimizer, g) : LOOM_ENOMEM;
  /* Samplers with state of their own (the built-in ones are pure functions
   * of the epoch's seed and save nothing). */
  for (size_t i = 0; rc == 0 && i < r->num_loaders; i++) {
    char name[512];
    snprintf(name, sizeof name, "samplers/%s", r->loaders[i].name);
    loom_state *tmp = loom_state_create();
    rc = tmp ? loom_sampler_save(loom_loader_sampler(r->loaders[i].loader), tmp) : LOOM_ENOMEM;
    if (rc == 0 && loom_state_count(tmp) > 0) {
      loom_state *g = loom_checkpoint_group(c, name);
      rc = g ? loom_sampler_save(loom_loader_sampler(r->loaders[i].loader), g) : LOOM_ENOMEM;
    }
    loom_state_destroy(tmp);
  }
  /* Before the first stage, every callback is the stage's to come. */
  const loom_callback_table *t = r->stage_index < 0 ? &r->exp_table : &r->stage_table;
  for (size_t i = 0; rc == 0 && i < t->count; i++) {
    loom_callback *cb = t->all[i];
    if (!loom_callback_is_stateful(cb))
      continue;
    char name[512];
    snprintf(name, sizeof name, "callbacks/%s", loom_callback_name(cb));
    rc = (g = loom_checkpoint_group(c, name)) ? loom_callback_save(cb, r, g) : LOOM_ENOMEM;
  }
  if (rc < 0) {
    loom_checkpoint_destroy(c);
    return rc;
  }
  *out = c;
  return 0;
}

int loom_runner_save_checkpoint(loom_runner *r, const char *path) {
  loom_checkpoint *c;
  int rc = loom_runner_snapshot(r, &c);
  if (rc == 0)
    rc = loom_checkpoint_write(c, path);
  loom_checkpoint_destroy(c);
  return rc;
}

int loom_runner_set_resume(loom_runner *r, const char *source) {
  char *copy = NULL;
  if (source && !(copy = strdup(source)))
    return loom_error_oom("the resume source");
  free(r->resume_source);
  free(r->resume_image);
  r->resume_source = copy;
  r->resume_image = NULL;
  return 0;
}

/* kept[0] is "last", kept[1] "best"; -1 for another name. */
static int kept_index(const char *which) {
  return strcmp(which, "last") == 0 ? 0 : strcmp(which, "best") == 0 ? 1 : -1;
}

int loom_runner_keep_checkpoint(loom_runner *r, const char *which, const loom_checkpoint *snap) {
  int i = which ? kept_index(which) : -1;
  if (i < 0)
    return loom_error_set(LOOM_EINVAL, "loom_runner_keep_checkpoint: \"last\" or \"best\", not \"%s\"",
                          which ? which : "(null)");
  void *bytes;
  size_t size;
  int rc = loom_checkpoint_write_memory(snap, &bytes, &size);
  if (rc < 0)
    return rc;
  free(r->kept[i].bytes);
  r->kept[i].bytes = bytes, r->kept[i].size = size;
  return 0;
}

loom_checkpoint *loom_runner_open_checkpoint(loom_runner *r, const char *which, char *path, size_t path_size) {
  int i = kept_index(which);
  if (!r->options.no_write) {
    char notice[1024];
    return loom_checkpoint_open_logdir(loom_experiment_logdir(r->exp), which, path, path_size, notice, sizeof notice);
  }
  snprintf(path, path_size, "the %s checkpoint (in memory)", which);
  if (i < 0 || !r->kept[i].bytes) {
    loom_error_set(LOOM_ENOENT, "no %s checkpoint kept yet (a no_write run keeps them in memory)", which);
    return NULL;
  }
  return loom_checkpoint_read_memory(r->kept[i].bytes, r->kept[i].size, path);
}

int loom_runner_set_resume_image(loom_runner *r, const void *bytes, size_t size, const char *name) {
  if (!bytes && size)
    return loom_error_set(LOOM_EINVAL, "loom_runner_set_resume_image: no bytes");
  void *copy = malloc(size ? size : 1);
  if (!copy)
    return loom_error_oom("the resume image");
  int rc = loom_runner_set_resume(r, name ? name : "(checkpoint in memory)");
  if (rc < 0) {
    free(copy);
    return rc;
  }
  if (size)
    memcpy(copy, bytes, size);
  r->resume_image = copy;
  r->resume_image_size = size;
  return 0;
}

int loom_runner_allow_change(loom_runner *r, const char *pattern) {
  char **grown = realloc(r->allowed_changes, (r->num_allowed + 1) * sizeof *grown);
  if (!grown)
    return loom_error_oom("an allowed change");
  r->allowed_changes = grown;
  if (!(grown[r->num_allowed] = strdup(pattern)))
    return loom_error_oom("an allowed change");
  r->num_allowed++;
  return 0;
}

const char *loom_runner_config_changes(const loom_runner *r) { return r->config_changes; }

/* Whether `key` (or a key it lies under) matches `pattern`. */
static bool key_matches(const char *pattern, const char *key) {
  char prefix[1024];
  snprintf(prefix, sizeof prefix, "%s", key);
  for (char *end = prefix + strlen(prefix);; *end = '\0') {
    if (fnmatch(pattern, prefix, 0) == 0)
      return true;
    if (!(end = strrchr(prefix, '.')))
      return false;
  }
}

/* Values the checkpoint itself restores (the optimizer's rate and momentum,
 * which Adam's beta1 is): a change there would not apply, and config.json
 * would then not describe the run, so it is refused even when allowed. */
static bool restored_from_checkpoint(const char *key) {
  static const char *const restored[] = {"stages.*.optimizer.lr", "stages.*.optimizer.momentum",
                                         "stages.*.optimizer.beta1", "stages.*.optimizer.betas"};
  for (size_t i = 0; i < sizeof restored / sizeof restored[0]; i++)
    if (key_matches(restored[i], key))
      return true;
  return false;
}

/* Allowed: by default, by loom_runner_allow_change, or by the new config's
 * experiment.allow_change (`config_allowed`, a JSON array of patterns). */
static bool change_allowed(const loom_runner *r, json_t *config_allowed, const char *key) {
  /* A checkpoint holds host arrays in fp32: it resumes on any device, in
   * any precision. */
  static const char *const by_default[] = {"stages.*.num_epochs", "experiment.logdir", "experiment.allow_change",
                                           "experiment.device", "experiment.precision"};
  if (restored_from_checkpoint(key))
    return false;
  for (size_t i = 0; i < sizeof by_default / sizeof by_default[0]; i++)
    if (key_matches(by_default[i], key))
      return true;
  for (size_t i = 0; i < r->num_allowed; i++)
    if (key_matches(r->allowed_changes[i], key))
      return true;
  for (size_t i = 0; i < json_array_size(config_allowed); i++) {
    const char *pattern = json_string_value(json_array_get(config_allowed, i));
    if (pattern && key_matches(pattern, key))
      return true;
  }
  return false;
}

/* Appends {"key", "old", "new"} to `out` for each leaf where a and b differ
 * (objects compared key by key, anything else as a whole; a missing side
 * is null). experiment.seed is left out: a resume takes the checkpoint's.
 * False when out of memory: a difference missed would let a changed config
 * through. */
static bool diff_json(const char *path, json_t *a, json_t *b, json_t *out) {
  if (json_equal(a, b) || strcmp(path, "experiment.seed") == 0)
    return true;
  bool ok = true;
  if (json_is_object(a) && json_is_object(b)) {
    char sub[1024];
    const char *k;
    json_t *v;
    json_object_foreach(a, k, v) {
      snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", k);
      ok = ok && diff_json(sub, v, json_object_get(b, k), out);
    }
    json_object_foreach(b, k, v) {
      snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", k);
      if (!json_object_get(a, k))
        ok = ok && diff_json(sub, json_null(), v, out);
    }
    return ok;
  }
  return json_array_append_new(out, json_pack("{s:s, s:O, s:O}", "key", path, "old", a ? a : json_null(), "new",
                                              b ? b : json_null())) == 0;
}

/* Compares the checkpoint's config with the experiment's: a change not
 * allowed is refused with every difference listed; the allowed ones are
 * kept in r->config_changes. */
static int check_config(loom_runner *r, const char *saved) {
  json_error_t err_old, err_now;
  json_t *old = json_loads(saved, 0, &err_old), *now = json_loads(loom_experiment_config(r->exp), 0, &err_now);
  json_t *changes = json_array();
  int rc = 0;
  if (!old || !now)
    rc = loom_error_set(LOOM_EFORMAT, "the %s config is not JSON (%s)", old ? "experiment's" : "checkpoint's",
                        old ? err_now.text : err_old.text);
  else if (!changes || !diff_json("", old, now, changes))
    rc = loom_error_oom("the comparison of the configs");
  char refused[2048] = "";
  size_t len = 0, i;
  json_t *c;
  json_array_foreach(changes, i, c) {
    const char *key = json_string_value(json_object_get(c, "key"));
    if (change_allowed(r, json_object_get(json_object_get(now, "experiment"), "allow_change"), key) ||
        len >= sizeof refused)
      continue;
    char *o = json_dumps(json_object_get(c, "old"), JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
    char *n = json_dumps(json_object_get(c, "new"), JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(15));
    len += (size_t)snprintf(refused + len, sizeof refused - len, "%s%s: %s -> %s%s", len ? "; " : "", key,
                            o ? o : "?", n ? n : "?",
                            restored_from_checkpoint(key) ? " (the checkpoint restores it: it cannot change on resume)"
                                                          : "");
    free(o), free(n);
  }
  if (rc == 0 && refused[0])
    rc = loom_error_set(LOOM_EINVAL, "the config differs from the one the checkpoint was written under: %s. Resume "
                                     "with that config, allow the changes (loom run --allow-change KEY, the "
                                     "config's experiment.allow_change, loom_runner_allow_change), or start a new "
                                     "logdir",
                        refused);
  if (rc == 0 && !(r->config_changes = json_dumps(changes, JSON_COMPACT | JSON_REAL_PRECISION(17))))
    rc = loom_error_oom("the config changes");
  json_decref(old), json_decref(now), json_decref(changes);
  return rc;
}

/* Adds `what` to the resume notice. */
static void notice(loom_runner *r, const char *what) {
  size_t len = strlen(r->resume_notice);
  snprintf(r->resume_notice + len, sizeof r->resume_notice - len, "%s%s", len ? "; " : "", what);
}

/* The checkpoint must describe this experiment's stages. */
static int check_experiment(loom_runner *r, const loom_state *s) {
  const char *name, *stages;
  int64_t seed;
  int rc = loom_state_get_str(s, "name", &name);
  if (rc == 0)
    rc = loom_state_get_str(s, "stages", &stages);
  if (rc == 0)
    rc = loom_state_get_i64(s, "seed", &seed);
  if (rc < 0)
    return rc;
  loom_state *mine = loom_state_create();
  const char *my_stages = NULL;
  rc = mine ? save_experiment(r->exp, mine) : LOOM_ENOMEM;
  if (rc == 0 && loom_state_get_str(mine, "stages", &my_stages) == 0 && strcmp(stages, my_stages) != 0)
    rc = loom_error_set(LOOM_EINVAL, "the checkpoint's stages (%s) are not this experiment's (%s)", stages,
                        my_stages);
  loom_state_destroy(mine);
  const char *saved_config;
  if (rc == 0 && loom_experiment_config(r->exp) && loom_state_has(s, "config") &&
      (rc = loom_state_get_str(s, "config", &saved_config)) == 0)
    rc = check_config(r, saved_config);
  if (rc == 0 && (uint64_t)seed != loom_experiment_seed(r->exp)) {
    /* The run continues as the run it was, with the seed it drew with. */
    char what[160];
    snprintf(what, sizeof what, "seed %llu taken from the checkpoint (the experiment said %llu)",
             (unsigned long long)seed, (unsigned long long)loom_experiment_seed(r->exp));
    notice(r, what);
    loom_experiment_set_seed(r->exp, (uint64_t)seed);
  }
  return rc;
}

/* The cursor's loader must be one of the stage's (or one past the last,
 * between loaders); its epoch may pass a stage shortened since (the stage
 * then has nothing left to run), but not go negative. */
static int check_cursor_bounds(const loom_experiment *exp, const int64_t cur[6]) {
  size_t loaders = 0;
  for (size_t i = 0; i <= (size_t)cur[0]; i++) {
    const loom_stage *t = loom_experiment_stage(exp, i);
    if (t->num_loaders) /* a stage without loaders uses the previous stage's */
      loaders = t->num_loaders;
  }
  const int64_t past = cur[2] == LOOM_PHASE_IN_LOADER ? 0 : 1; /* a loader under way must exist */
  if ((loaders && cur[3] > (int64_t)loaders - 1 + past) || cur[5] < 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's cursor (loader %lld of %zu, global epoch %lld) lies outside "
                                        "stage \"%s\"; the file is not from this experiment",
                          (long long)cur[3], loaders, (long long)cur[5], loom_experiment_stage(exp, (size_t)cur[0])->name);
  return 0;
}

/* Whether the cursor leaves no batch to run: past the last stage's end, or
 * after its last epoch (or an epoch that stopped it), where only its
 * on_stage_end and on_experiment_end are left. */
static bool nothing_left(const loom_runner *r, const loom_state *run, const int64_t cur[6]) {
  size_t last = loom_experiment_num_stages(r->exp) - 1;
  if ((size_t)cur[0] != last)
    return false;
  if (cur[2] == LOOM_PHASE_STAGE_DONE)
    return true;
  int64_t epochs = loom_stage_num_epochs(loom_experiment_stage(r->exp, last)), counters[7];
  if (r->options.check && epochs > 2)
    epochs = 2;
  bool stopped = loom_state_get_i64_array(run, "counters", counters, 7) == 0 && (counters[4] & LOOM_STOP_STAGE);
  return cur[2] == LOOM_PHASE_EPOCH_DONE && (cur[1] >= epochs || stopped);
}

/* Inside a loader, a resume continues where every rank was only with the
 * same world size and every rank's position recorded (runner_ranks.c);
 * otherwise the ranks' shards of that loader are not the ones whose
 * batches were done, and the loader starts again from its first batch
 * (for a train loader, the epoch's training starts again from the saved
 * weights). Said in one line of the resume notice. */
static void resume_in_loader_or_before(loom_runner *r, const loom_checkpoint *c, const loom_state *run,
                                       int64_t cur[6]) {
  int size = loom_comm_size(r->comm);
  char what[512];
  if (cur[2] != LOOM_PHASE_IN_LOADER || loom_runner_can_resume_in_loader(r, c)) {
    if (r->resume_world != size) {
      snprintf(what, sizeof what, "written by %d rank%s, resumed on %d", r->resume_world,
               r->resume_world == 1 ? "" : "s", size);
      notice(r, what);
    }
    return;
  }
  const char *loader = "";
  loom_state_get_str(run, "loader_name", &loader);
  const char *why = r->resume_world != size ? "" : ", and not every rank's position in it was recorded";
  snprintf(what, sizeof what, "written by %d rank%s%s, resumed on %d: loader \"%s\" of epoch %lld starts again "
                              "from its first batch (the checkpoint was taken after its batch %lld)",
           r->resume_world, r->resume_world == 1 ? "" : "s", why, size, loader, (long long)cur[1], (long long)cur[4]);
  notice(r, what);
  cur[2] = LOOM_PHASE_BEFORE_LOADER;
  cur[4] = 0;
}

int loom_runner_open_resume(loom_runner *r) {
  const char *src = r->resume_source;
  loom_checkpoint *c;
  r->resume_notice[0] = '\0';
  if (r->resume_image) {
    snprintf(r->resume_path, sizeof r->resume_path, "%s", src);
    c = loom_checkpoint_read_memory(r->resume_image, r->resume_image_size, src);
  } else if (strcmp(src, "last") == 0 || strcmp(src, "best") == 0) {
    c = loom_checkpoint_open_logdir(loom_experiment_logdir(r->exp), src, r->resume_path, sizeof r->resume_path,
                                 r->resume_notice, sizeof r->resume_notice);
  } else {
    snprintf(r->resume_path, sizeof r->resume_path, "%s", src);
    c = loom_checkpoint_read(src);
  }
  if (!c)
    return loom_error_wrap(loom_last_error_code(), "cannot resume from \"%s\"", src);
  const loom_state *exp = loom_checkpoint_find(c, "experiment"), *run = loom_checkpoint_find(c, "runner");
  int64_t cur[6];
  int rc = (exp && run) ? check_experiment(r, exp)
                        : loom_error_set(LOOM_EFORMAT, "%s holds weights only, not a run to resume "
                                                       "(load it with loom_model_load_weights)",
                                         r->resume_path);
  if (rc == 0)
    rc = loom_state_get_i64_array(run, "cursor", cur, 6);
  size_t stages = loom_experiment_num_stages(r->exp);
  if (rc == 0 && (cur[0] < 0 || (size_t)cur[0] >= stages))
    rc = loom_error_set(LOOM_EFORMAT, "the checkpoint's stage %lld does not exist", (long long)cur[0]);
  /* Epochs are counted in int: one at INT32_MAX would overflow on the next. */
  if (rc == 0 && (cur[2] < 0 || cur[2] >= LOOM_PHASE_COUNT || cur[1] < 0 || cur[1] >= INT32_MAX || cur[3] < 0 ||
                  cur[4] < 0 || cur[5] >= INT32_MAX))
    rc = loom_error_set(LOOM_EFORMAT, "the checkpoint's cursor (phase %lld, epoch %lld, loader %lld, batch %lld) is "
                                      "not one this version writes",
                        (long long)cur[2], (long long)cur[1], (long long)cur[3], (long long)cur[4]);
  if (rc == 0)
    rc = check_cursor_bounds(r->exp, cur);
  int64_t world = 1; /* files from before world sizes: one process wrote them */
  if (rc == 0 && loom_state_has(run, "world_size") && (rc = loom_state_get_i64(run, "world_size", &world)) == 0 &&
      (world < 1 || world > INT32_MAX))
    rc = loom_error_set(LOOM_EFORMAT, "the checkpoint's world size %lld is out of range", (long long)world);
  if (rc < 0) {
    loom_checkpoint_destroy(c);
    return loom_error_wrap(rc, "cannot resume from %s", r->resume_path);
  }
  r->resume_world = (int)world;
  resume_in_loader_or_before(r, c, run, cur);
  r->cursor = (loom_cursor){cur[0], cur[1], cur[2], cur[3], cur[4], cur[5]};
  r->resumed_finished = nothing_left(r, run, cur);
  if (r->resumed_finished)
    notice(r, "already finished (the checkpoint's run had finished): nothing left to run");
  r->resume = c;
  r->resumed = true;
  return 0;
}

static int restore_runner(loom_runner *r, const loom_state *s) {
  int64_t counters[7], rng[4], have_best;
  int rc = loom_state_get_i64_array(s, "counters", counters, 7);
  if (rc == 0)
    rc = loom_state_get_i64_array(s, "rng", rng, 4);
  if (rc == 0)
    rc = loom_state_get_i64(s, "have_best", &have_best);
  if (rc == 0)
    rc = loom_state_get_f64(s, "best_value", &r->best_value);
  if (rc == 0)
    rc = loom_load_metrics(s, "loader_sums", r->loader_sums);
  if (rc == 0)
    rc = loom_load_metrics(s, "loader_weights", r->loader_weights);
  if (rc == 0 && loom_state_has(s, "loader_metrics_names")) /* not in older files */
    rc = loom_load_metrics(s, "loader_metrics", r->loader_metrics);
  if (rc == 0)
    rc = loom_load_metrics(s, "epoch_metrics", r->epoch_metrics);
  if (rc == 0)
    rc = loom_load_metrics(s, "valid_metrics", r->valid_metrics);
  if (rc == 0)
    rc = loom_load_metrics(s, "best_valid_metrics", r->best_valid_metrics);
  if (rc == 0)
    rc = loom_runner_scaler_restore(r, s);
  if (rc < 0)
    return rc;
  for (int i = 0; i < 7; i++)
    if (counters[i] < 0 || (i == 4 && counters[i] > (LOOM_STOP_LOADER | LOOM_STOP_STAGE)))
      return loom_error_set(LOOM_EFORMAT, "the checkpoint's runner counter %d is %lld, out of range", i,
                            (long long)counters[i]);
  r->global_batch_step = counters[0];
  r->global_sample_step = counters[1];
  r->global_optimizer_step = counters[2];
  r->loader_sample_step = counters[3];
  r->stop_flags = (unsigned)counters[4];
  r->nonfinite_skips = counters[5];
  r->best_epoch = (int)counters[6];
  r->have_best = have_best != 0;
  memcpy(r->rng.s, rng, sizeof rng);
  r->loader_batch_step = r->batches_done = r->cursor.batches;
  return 0;
}

int loom_runner_restore(loom_runner *r) {
  loom_checkpoint *c = r->resume;
  const loom_state *s;
  int rc = restore_runner(r, loom_checkpoint_find(c, "runner"));
  if (rc == 0 && r->cursor.phase == LOOM_PHASE_IN_LOADER)
    rc = loom_runner_restore_rank(r, c);
  if (rc == 0 && r->model && (s = loom_checkpoint_find(c, "model")))
    rc = loom_model_load(r->model, s, true);
  if (rc == 0 && r->optimizer && (s = loom_checkpoint_find(c, "optimizer")))
    rc = loom_optimizer_load(r->optimizer, s);
  for (size_t i = 0; rc == 0 && i < r->num_loaders; i++) {
    char name[512];
    snprintf(name, sizeof name, "samplers/%s", r->loaders[i].name);
    if ((s = loom_checkpoint_find(c, name)))
      rc = loom_sampler_load(loom_loader_sampler(r->loaders[i].loader), s);
  }
  /* A callback without saved state (added since) starts afresh. */
  for (size_t i = 0; rc == 0 && i < r->stage_table.count; i++) {
    loom_callback *cb = r->stage_table.all[i];
    char name[512];
    snprintf(name, sizeof name, "callbacks/%s", loom_callback_name(cb));
    if (loom_callback_is_stateful(cb) && (s = loom_checkpoint_find(c, name)))
      rc = loom_callback_load(cb, r, s);
  }
  loom_checkpoint_destroy(c);
  r->resume = NULL;
  if (rc == 0)
    rc = loom_runner_share_weights(r, true); /* the master's reading of the file */
  return rc < 0 ? loom_error_wrap(rc, "restoring from %s", r->resume_path) : 0;
}
