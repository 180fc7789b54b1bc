/* One component from its JSON object: found in the registry by "type",
 * built by its constructor, checked for unknown keys, with the keys the
 * builder reads for every component of a kind (a callback's "order", an
 * optimizer's "param_groups") handled here; and the layer-name lists that
 * optimizers and init read. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/callbacks.h"
#include "loom/criterion.h"
#include "loom/data.h"
#include "loom/optimizer.h"
#include "loom/registry.h"
#include "loom/scheduler.h"

/* The keys the builder itself reads from every component of a kind, after
 * its constructor (model_init, stage_scheduler, callback_settings): known
 * from the start, so that a constructor's missing required key is never
 * blamed on one of them as a typo ("node" is near "name"). */
static const char *const *builder_keys(loom_kind kind) {
  static const char *const model[] = {"init", NULL}, *const scheduler[] = {"unit", "loader", "metric", NULL},
                           *const callback[] = {"order", "node", "scope", "filter", NULL}, *const none[] = {NULL};
  switch (kind) {
  case LOOM_KIND_MODEL: return model;
  case LOOM_KIND_SCHEDULER: return scheduler;
  case LOOM_KIND_CALLBACK: return callback;
  default: return none;
  }
}

void loom_component_destroy(loom_kind kind, void *component) {
  switch (kind) {
  case LOOM_KIND_MODEL: loom_model_destroy(component); break;
  case LOOM_KIND_LAYER: loom_layer_destroy(component); break;
  case LOOM_KIND_CRITERION: loom_criterion_destroy(component); break;
  case LOOM_KIND_OPTIMIZER: loom_optimizer_destroy(component); break;
  case LOOM_KIND_SCHEDULER: loom_scheduler_destroy(component); break;
  case LOOM_KIND_CALLBACK: loom_callback_destroy(component); break;
  case LOOM_KIND_DATASET: loom_dataset_release(component); break;
  case LOOM_KIND_TRANSFORM: loom_transform_destroy(component); break;
  case LOOM_KIND_BACKEND:
    if (component && component != loom_backend_cpu()) /* the process's, never destroyed */
      loom_backend_destroy(component);
    break;
  default: break;
  }
}

/* Keys every optimizer built from a config takes, after its constructor:
 * no_decay_bias_norm and param_groups, a list of {"layers": [names],
 * "lr_scale", "weight_decay"} (docs/config.md). `model` may be NULL. */
static int optimizer_extras(loom_params *p, const loom_model *model, loom_optimizer *opt) {
  bool no_decay;
  size_t n;
  int rc;
  if ((rc = loom_params_bool(p, "no_decay_bias_norm", false, &no_decay)) < 0 ||
      (rc = loom_params_array_length(p, "param_groups", false, &n)) < 0)
    return rc;
  loom_optimizer_set_no_decay_bias_norm(opt, no_decay);
  double weight_decay = loom_optimizer_weight_decay(opt);
  for (size_t i = 0; i < n && rc == 0; i++) {
    char key[64];
    snprintf(key, sizeof key, "param_groups[%zu]", i);
    loom_params *gp;
    if ((rc = loom_params_open(p, key, true, &gp)) < 0)
      return rc;
    loom_param_group group = {NULL, 0, 1.0, weight_decay};
    const char **names = NULL;
    if ((rc = loom_params_layer_names(gp, "layers", model, &names, &group.num_layers)) == 0 && !names)
      rc = loom_params_missing(gp, "layers", "expected an array of layer names");
    group.layers = names;
    if (rc == 0 && (rc = loom_params_number(gp, "lr_scale", 1.0, 0, 1e300, &group.lr_scale)) == 0 &&
        (rc = loom_params_number(gp, "weight_decay", weight_decay, 0, 1e300, &group.weight_decay)) == 0 &&
        (rc = loom_params_check_unknown(gp)) == 0)
      rc = loom_optimizer_add_group(opt, &group);
    free(names);
    loom_params_close(gp);
  }
  return rc;
}

int loom_params_build(loom_params *p, loom_kind kind, const void *context, void **out) {
  *out = NULL;
  if (kind >= LOOM_KIND_COUNT)
    return loom_params_error(p, NULL, LOOM_EINVAL, "loom_params_build: no component kind %d", (int)kind);
  if (!json_is_object(p->object))
    return loom_params_error(p, NULL, LOOM_EINVAL, "expected a %s object with a \"type\"", loom_kind_name(kind));
  const char *type;
  int rc = loom_params_string(p, "type", NULL, &type);
  if (rc < 0)
    return rc;
  void *user;
  loom_ctor ctor = loom_registry_find(kind, type, &user);
  if (!ctor && (rc = loom_registry_status()) < 0)
    return loom_params_error(p, "type", rc, "%s", loom_last_error());
  if (!ctor) {
    size_t n;
    const char *const *names = loom_registry_list(kind, &n);
    const char *near = loom_did_you_mean_value(type, names, n);
    if (near)
      return loom_params_error(p, "type", LOOM_EINVAL, "unknown %s \"%s\" (did you mean \"%s\"?)",
                               loom_kind_name(kind), type, near);
    return loom_params_error(p, "type", LOOM_EINVAL, "unknown %s \"%s\" (known: %s)", loom_kind_name(kind), type,
                             loom_registry_names(kind));
  }
  unsigned before = loom_error_serial();
  void *obj = ctor(p, context, user);
  /* A constructor's own complaint gets the position of its object, once:
   * one that already has a position (its params' error, a nested
   * component's, a --set's) is passed on as it is. */
  if (!obj) {
    bool said = loom_error_serial() != before;
    int code = said && loom_last_error_code() < 0 ? loom_last_error_code() : LOOM_EINVAL;
    if (said && loom_params_error_is_positioned())
      return code;
    return loom_params_error(p, NULL, code, "%s %s: %s", loom_kind_name(kind), type, said ? loom_last_error() : "failed");
  }
  if (kind == LOOM_KIND_OPTIMIZER && (rc = optimizer_extras(p, context, obj)) < 0) {
    loom_optimizer_destroy(obj);
    return rc;
  }
  *out = obj;
  return 0;
}

void *loom_config_instantiate(loom_config *c, json_t *object, const char *path, loom_kind kind, const void *context,
                              loom_params *p) {
  loom_params_init(p, c, object, path);
  for (const char *const *k = builder_keys(kind); *k; k++)
    loom_params_known(p, *k);
  void *obj;
  return loom_params_build(p, kind, context, &obj) < 0 ? NULL : obj;
}

int loom_params_component(loom_params *p, const char *key, loom_kind kind, const void *context, bool required,
                          void **out) {
  *out = NULL;
  if (!loom_params_has(p, key))
    return required ? loom_params_missing(p, key, "expected a %s object", loom_kind_name(kind)) : 0;
  loom_params *child;
  int rc = loom_params_open(p, key, true, &child);
  if (rc < 0)
    return rc;
  void *made;
  if ((rc = loom_params_build(child, kind, context, &made)) == 0 && (rc = loom_params_check_unknown(child)) < 0)
    loom_component_destroy(kind, made);
  else if (rc == 0)
    *out = made;
  loom_params_close(child);
  return rc;
}

int loom_params_check_layer(const loom_params *p, const char *key, const loom_model *model, const char *name) {
  if (!model || loom_model_find_layer(model, name))
    return 0; /* no model to check against: the optimizer checks at its first step */
  const char *names[256];
  size_t n = loom_model_num_layers(model);
  for (size_t k = 0; k < n && k < 256; k++)
    names[k] = loom_model_layer_name(model, k);
  const char *near = loom_did_you_mean_value(name, names, n < 256 ? n : 256);
  if (near)
    return loom_params_error(p, key, LOOM_EINVAL, "the model has no layer \"%s\" (did you mean \"%s\"?)", name, near);
  char list[400] = "";
  size_t k = 0;
  for (; k < n && k < 256 && strlen(list) < 300; k++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? ", " : "", names[k]);
  return loom_params_error(p, key, LOOM_EINVAL, "the model has no layer \"%s\" (its layers: %s%s)", name, list,
                           k < n ? ", ..." : "");
}

int loom_params_layer_names(loom_params *p, const char *key, const loom_model *model, const char ***names,
                            size_t *n) {
  int rc = loom_params_strings(p, key, false, names, n);
  for (size_t i = 0; i < *n && rc == 0; i++) {
    char at[128];
    snprintf(at, sizeof at, "%s[%zu]", key, i);
    rc = loom_params_check_layer(p, at, model, (*names)[i]);
  }
  if (rc < 0) {
    free(*names);
    *names = NULL, *n = 0;
  }
  return rc;
}
