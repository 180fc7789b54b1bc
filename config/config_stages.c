/* A config's stages (config_build.c builds the rest): each stage's loaders,
 * criterion, optimizer, scheduler, callbacks, rules and main metric. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_build.h"
#include "loom/callbacks.h"
#include "loom/criterion.h"
#include "loom/error.h"
#include "loom/optimizer.h"
#include "loom/registry.h"
#include "loom/runner.h"
#include "loom/scheduler.h"

static int stage_loaders(loom_builder *b, loom_params *p, loom_stage *stage, loom_loader **first) {
  loom_params_known(p, "loaders");
  json_t *list = json_object_get(p->object, "loaders");
  if (!list)
    return loom_params_missing(p, "loaders", "expected an array of loader names");
  if (!json_is_array(list) || json_array_size(list) == 0)
    return loom_params_error(p, "loaders", LOOM_EINVAL, "expected a non-empty array of loader names");
  size_t i;
  json_t *item;
  json_array_foreach(list, i, item) {
    char key[64];
    snprintf(key, sizeof key, "loaders[%zu]", i);
    if (!json_is_string(item))
      return loom_params_error(p, key, LOOM_EINVAL, "expected a loader name");
    loom_named *l = loom_named_find(b->loaders, b->num_loaders, json_string_value(item));
    if (!l)
      return loom_named_unknown(p, key, "loader", json_string_value(item), b->loaders, b->num_loaders);
    for (size_t j = 0; j < i; j++)
      if (strcmp(json_string_value(json_array_get(list, j)), l->name) == 0)
        return loom_params_error(p, key, LOOM_EINVAL, "loader \"%s\" is listed twice", l->name);
    if (!*first)
      *first = l->object;
    l->used = true;
    int rc = loom_stage_add_loader(stage, l->name, l->object);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* A component the stage may define (criterion, optimizer); NULL with the
 * error code left at 0 when it is absent and may be. */
static void *stage_component(loom_builder *b, loom_params *p, const char *key, loom_kind kind, bool required,
                             const void *context, void (*destroy)(void *)) {
  json_t *obj;
  if (loom_config_section(p, key, false, &obj) < 0)
    return NULL;
  if (!obj) {
    if (required)
      loom_params_missing(p, key, "the first stage needs a %s", loom_kind_name(kind));
    else
      loom_error_clear();
    return NULL;
  }
  char path[600];
  loom_path_child(path, sizeof path, p->path, key);
  loom_params cp;
  void *made = loom_config_instantiate(b->c, obj, path, kind, context, &cp);
  if (made && loom_params_check_unknown(&cp) < 0) {
    destroy(made);
    return NULL;
  }
  return made;
}

static int stage_scheduler(loom_builder *b, loom_params *p, loom_stage *stage) {
  json_t *obj;
  int rc = loom_config_section(p, "scheduler", false, &obj);
  if (rc < 0 || !obj)
    return rc;
  char path[600];
  loom_path_child(path, sizeof path, p->path, "scheduler");
  loom_params sp;
  loom_scheduler *s = loom_config_instantiate(b->c, obj, path, LOOM_KIND_SCHEDULER, NULL, &sp);
  if (!s)
    return loom_last_error_code();
  static const char *const units[] = {"epoch", "step", NULL};
  int unit;
  const char *loader = NULL, *metric = NULL;
  rc = loom_params_choice(&sp, "unit", "epoch", units, &unit);
  if (rc == 0 && loom_params_has(&sp, "loader"))
    rc = loom_params_string(&sp, "loader", NULL, &loader);
  if (rc == 0 && loom_params_has(&sp, "metric"))
    rc = loom_params_string(&sp, "metric", NULL, &metric);
  if (rc == 0)
    rc = loom_params_check_unknown(&sp);
  if (rc == 0 && unit == 1 && loom_scheduler_needs_metric(s))
    rc = loom_params_error(&sp, "unit", LOOM_EINVAL, "a plateau schedule steps once per epoch, on a loader metric; "
                                                     "use \"epoch\"");
  if (rc < 0) {
    loom_scheduler_destroy(s);
    return rc;
  }
  loom_callback *cb = loom_scheduler_callback_create(s, unit ? LOOM_SCHEDULE_PER_STEP : LOOM_SCHEDULE_PER_EPOCH,
                                                     loader, metric);
  return loom_stage_add_callback(stage, cb);
}

static int callback_settings(loom_params *cp, loom_callback *cb) {
  static const char *const nodes[] = {"all", "master", "workers", NULL}, *const scopes[] = {"stage", "experiment", NULL};
  int64_t order;
  int node, scope, rc;
  if ((rc = loom_params_int(cp, "order", loom_callback_order(cb), -1000000, 1000000, &order)) < 0 ||
      (rc = loom_params_choice(cp, "node", nodes[loom_callback_node(cb)], nodes, &node)) < 0 ||
      (rc = loom_params_choice(cp, "scope", scopes[loom_callback_scope(cb)], scopes, &scope)) < 0)
    return rc;
  loom_callback_set_order(cb, (int)order);
  loom_callback_set_node(cb, (loom_node)node);
  loom_callback_set_scope(cb, (loom_scope)scope);
  json_t *f;
  if ((rc = loom_config_section(cp, "filter", false, &f)) < 0 || !f)
    return rc;
  char path[600];
  loom_path_child(path, sizeof path, cp->path, "filter");
  loom_params fp;
  loom_params_init(&fp, cp->config, f, path);
  loom_event_filter ef = {0};
  if ((rc = loom_params_int(&fp, "every_batches", 0, 0, INT64_MAX, &ef.every_batches)) < 0 ||
      (rc = loom_params_int(&fp, "every_epochs", 0, 0, INT64_MAX, &ef.every_epochs)) < 0 ||
      (rc = loom_params_int(&fp, "once_batch", 0, 0, INT64_MAX, &ef.once_batch)) < 0 ||
      (rc = loom_params_int(&fp, "once_epoch", 0, 0, INT64_MAX, &ef.once_epoch)) < 0)
    return rc;
  const char **loaders;
  if ((rc = loom_params_strings(&fp, "loaders", false, &loaders, &ef.num_loaders)) < 0)
    return rc;
  ef.loaders = loaders;
  if ((rc = loom_params_check_unknown(&fp)) == 0)
    rc = loom_callback_set_filter(cb, &ef);
  free(loaders);
  return rc;
}

static int stage_callbacks(loom_builder *b, loom_params *p, loom_stage *stage) {
  loom_params_known(p, "callbacks");
  json_t *list = json_object_get(p->object, "callbacks");
  if (list && !json_is_array(list))
    return loom_params_error(p, "callbacks", LOOM_EINVAL, "expected an array of callback objects");
  size_t i;
  json_t *spec;
  json_array_foreach(list, i, spec) {
    char path[600];
    snprintf(path, sizeof path, "%s.callbacks[%zu]", p->path, i);
    loom_params cp;
    loom_callback *cb = loom_config_instantiate(b->c, spec, path, LOOM_KIND_CALLBACK, NULL, &cp);
    if (!cb)
      return loom_last_error_code();
    int rc = callback_settings(&cp, cb);
    if (rc == 0)
      rc = loom_params_check_unknown(&cp);
    if (rc < 0) {
      loom_callback_destroy(cb);
      return rc;
    }
    if ((rc = loom_stage_add_callback(stage, cb)) < 0)
      return rc;
  }
  return 0;
}

static int stage_rules(loom_builder *b, loom_params *p, loom_stage *stage) {
  static const char *const states[] = {"keep", "reset", NULL}, *const which[] = {"best", "last", NULL};
  int state, w, rc;
  if ((rc = loom_params_choice(p, "optimizer_state", "keep", states, &state)) < 0)
    return rc;
  loom_stage_set_reset_optimizer(stage, state == 1);
  if (loom_params_has(p, "load_weights")) {
    if ((rc = loom_params_choice(p, "load_weights", NULL, which, &w)) < 0 ||
        (rc = loom_stage_set_load_weights(stage, which[w])) < 0)
      return rc;
  }
  json_t *frozen = json_object_get(p->object, "frozen");
  loom_params_known(p, "frozen");
  if (frozen && !json_is_array(frozen))
    return loom_params_error(p, "frozen", LOOM_EINVAL, "expected an array of layer names");
  size_t i;
  json_t *name;
  json_array_foreach(frozen, i, name) {
    char key[64];
    snprintf(key, sizeof key, "frozen[%zu]", i);
    if (!json_is_string(name))
      return loom_params_error(p, key, LOOM_EINVAL, "expected a layer name");
    if ((rc = loom_params_check_layer(p, key, b->model, json_string_value(name))) < 0)
      return rc;
    if ((rc = loom_stage_freeze(stage, json_string_value(name))) < 0)
      return rc;
  }
  return 0;
}

/* Default valid loader: "valid" if listed, else the first loader that does
 * not train, else "valid" (then no epoch has a best). */
static const char *default_valid(json_t *list) {
  size_t i;
  json_t *item;
  json_array_foreach(list, i, item) if (strcmp(json_string_value(item), "valid") == 0) return "valid";
  json_array_foreach(list, i, item) if (strncmp(json_string_value(item), "train", 5) != 0) return json_string_value(item);
  return "valid";
}

static int stage_metric(loom_params *p, loom_stage *stage) {
  json_t *list = json_object_get(p->object, "loaders");
  const char *def = default_valid(list), *valid, *metric;
  bool minimize;
  size_t i;
  json_t *item;
  bool given = loom_params_has(p, "valid_loader");
  int rc = loom_params_string(p, "valid_loader", def, &valid);
  if (rc == 0 && given) {
    bool listed = false;
    json_array_foreach(list, i, item) listed = listed || strcmp(json_string_value(item), valid) == 0;
    if (!listed)
      rc = loom_params_error(p, "valid_loader", LOOM_EINVAL, "\"%s\" is not one of this stage's loaders", valid);
  }
  if (rc == 0)
    rc = loom_params_string(p, "main_metric", "loss", &metric);
  if (rc == 0)
    rc = loom_params_bool(p, "minimize", true, &minimize);
  return rc == 0 ? loom_stage_set_main_metric(stage, valid, metric, minimize) : rc;
}

static void destroy_criterion(void *c) { loom_criterion_destroy(c); }
static void destroy_optimizer(void *o) { loom_optimizer_destroy(o); }

static int build_stage(loom_builder *b, loom_params *root, const char *name, json_t *spec, bool first_stage) {
  char path[600];
  loom_path_child(path, sizeof path, "stages", name);
  loom_params p;
  loom_params_init(&p, b->c, spec, path);
  if (!json_is_object(spec))
    return loom_params_error(&p, NULL, LOOM_EINVAL, "expected a stage object");
  int64_t epochs;
  int rc = loom_params_int(&p, "num_epochs", LOOM_REQUIRED_INT, 1, 1000000000, &epochs);
  if (rc < 0)
    return rc;
  loom_stage *stage = loom_experiment_add_stage(b->exp, name, (int)epochs);
  if (!stage)
    return loom_last_error_code();
  loom_loader *first = NULL;
  if ((rc = stage_loaders(b, &p, stage, &first)) < 0)
    return rc;
  if (first_stage) {
    if ((rc = loom_config_build_model(b, root, first)) < 0)
      return rc;
    loom_model *m = b->model;
    b->model = NULL; /* the experiment owns it from here */
    if ((rc = loom_stage_set_model(stage, m)) < 0)
      return rc;
    b->model = m;
  }
  loom_criterion *crit = stage_component(b, &p, "criterion", LOOM_KIND_CRITERION, first_stage, NULL, destroy_criterion);
  if (!crit && loom_last_error_code() < 0)
    return loom_last_error_code();
  if (crit && (rc = loom_stage_set_criterion(stage, crit)) < 0)
    return rc;
  loom_optimizer *opt = stage_component(b, &p, "optimizer", LOOM_KIND_OPTIMIZER, first_stage, b->model, destroy_optimizer);
  if (!opt && loom_last_error_code() < 0)
    return loom_last_error_code();
  if (opt && (rc = loom_stage_set_optimizer(stage, opt)) < 0)
    return rc;
  if ((rc = stage_scheduler(b, &p, stage)) < 0 || (rc = stage_callbacks(b, &p, stage)) < 0 ||
      (rc = stage_rules(b, &p, stage)) < 0 || (rc = stage_metric(&p, stage)) < 0)
    return rc;
  return loom_params_check_unknown(&p);
}

int loom_config_build_stages(loom_builder *b, loom_params *root) {
  json_t *obj;
  int rc = loom_config_section(root, "stages", true, &obj);
  if (rc == 0 && json_object_size(obj) == 0)
    rc = loom_params_error(root, "stages", LOOM_EINVAL, "defines no stage");
  const char *name;
  json_t *spec;
  bool first = true;
  json_object_foreach(obj, name, spec) {
    if (rc < 0)
      break;
    rc = build_stage(b, root, name, spec, first);
    first = false;
  }
  return rc;
}
