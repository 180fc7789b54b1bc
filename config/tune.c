/* A config reduced to one stage's learning-rate sweep (loom tune lr). */
#include <stdio.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"

/* The stage's own "criterion" or "optimizer", else a copy of the nearest
 * earlier stage's: what the stage would have run with. */
static int inherit(json_t *stages, json_t *chosen, const char *key) {
  if (json_object_get(chosen, key))
    return 0;
  json_t *found = NULL;
  const char *name;
  json_t *spec;
  json_object_foreach(stages, name, spec) {
    if (spec == chosen)
      break;
    if (json_is_object(spec) && json_object_get(spec, key))
      found = json_object_get(spec, key);
  }
  return found && json_object_set_new(chosen, key, json_deep_copy(found)) < 0 ? loom_error_oom("the sweep's config") : 0;
}

/* Keeps the train loaders, and of the callbacks the optimizer ones (they
 * shape each step: accumulation, clipping). */
static int keep_training_parts(json_t *spec, const char *stage) {
  json_t *loaders = json_object_get(spec, "loaders"), *kept = json_array();
  size_t i;
  json_t *item;
  json_array_foreach(loaders, i, item) {
    if (json_is_string(item) && strncmp(json_string_value(item), "train", 5) == 0)
      json_array_append(kept, item);
  }
  if (json_array_size(kept) == 0) {
    json_decref(kept);
    return loom_error_set(LOOM_EINVAL, "stage \"%s\" has no train loader to sweep the learning rate over "
                                       "(a loader whose name starts with \"train\")", stage);
  }
  json_object_set_new(spec, "loaders", kept);
  json_t *callbacks = json_object_get(spec, "callbacks"), *steppers = json_array();
  json_array_foreach(callbacks, i, item) {
    json_t *type = json_is_object(item) ? json_object_get(item, "type") : NULL;
    if (json_is_string(type) && strcmp(json_string_value(type), "optimizer") == 0)
      json_array_append(steppers, item);
  }
  json_object_set_new(spec, "callbacks", steppers);
  return 0;
}

int loom_config_lr_sweep(loom_config *c, const char *stage, int64_t steps) {
  json_t *stages = json_object_get(c->root, "stages");
  if (!json_is_object(stages) || json_object_size(stages) == 0)
    return loom_error_set(LOOM_EINVAL, "%s: defines no stage to sweep the learning rate in", c->name);
  if (steps < 1)
    return loom_error_set(LOOM_EINVAL, "the sweep needs at least one step (got %lld)", (long long)steps);
  const char *name = stage;
  if (!name) {
    void *first = json_object_iter(stages);
    name = json_object_iter_key(first);
  }
  json_t *chosen = json_object_get(stages, name);
  if (!json_is_object(chosen)) {
    const char *names[64];
    size_t n = 0;
    char all[512] = "";
    const char *key;
    json_t *spec;
    json_object_foreach(stages, key, spec) {
      if (n < 64)
        names[n++] = key;
      snprintf(all + strlen(all), sizeof all - strlen(all), "%s\"%s\"", all[0] ? ", " : "", key);
    }
    const char *near = loom_did_you_mean_value(name, names, n);
    if (near)
      return loom_error_set(LOOM_EINVAL, "%s: no stage \"%s\" (did you mean \"%s\"?)", c->name, name, near);
    return loom_error_set(LOOM_EINVAL, "%s: no stage \"%s\" (stages: %s)", c->name, name, all);
  }
  int rc = inherit(stages, chosen, "criterion");
  if (rc == 0)
    rc = inherit(stages, chosen, "optimizer");
  if (rc == 0)
    rc = keep_training_parts(chosen, name);
  if (rc < 0)
    return rc;
  /* What would reach outside the sweep, or decide on validation. */
  static const char *const dropped[] = {"scheduler", "load_weights", "valid_loader", "main_metric", "minimize"};
  for (size_t i = 0; i < sizeof dropped / sizeof dropped[0]; i++)
    json_object_del(chosen, dropped[i]);
  /* An epoch has at least one batch: `steps` epochs cover the sweep. */
  json_object_set_new(chosen, "num_epochs", json_integer(steps));
  json_t *only = json_object();
  if (only && json_object_set(only, name, chosen) == 0)
    return json_object_set_new(c->root, "stages", only) == 0 ? 0 : loom_error_oom("the sweep's config");
  json_decref(only);
  return loom_error_oom("the sweep's config");
}
