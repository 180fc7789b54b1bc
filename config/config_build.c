/* From a config to an experiment: every section checked, every component
 * built through the registry. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/criterion.h"
#include "loom/data.h"
#include "loom/optimizer.h"
#include "loom/plugin.h"
#include "loom/scheduler.h"
#include "loom/registry.h"
#include "loom/runner.h"

#define MAX_NAMED 64

typedef struct named {
  const char *name;
  void *object;
  bool used;
} named;

typedef struct builder {
  loom_config *c;
  loom_experiment *exp;
  named datasets[MAX_NAMED], loaders[MAX_NAMED];
  int num_datasets, num_loaders;
  loom_model *model;
} builder;

/* The object at `key` of p (required or not); *obj NULL if absent. */
static int section(loom_params *p, const char *key, bool required, json_t **obj) {
  loom_params_known(p, key);
  *obj = json_object_get(p->object, key);
  if (!*obj && required)
    return loom_params_missing(p, key, "expected an object");
  if (*obj && !json_is_object(*obj))
    return loom_params_error(p, key, LOOM_EINVAL, "expected an object");
  return 0;
}

static named *find(named *list, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(list[i].name, name) == 0)
      return &list[i];
  return NULL;
}

/* An error for a name that is not among list's, with "did you mean". */
static int unknown_name(loom_params *p, const char *key, const char *what, const char *name, named *list, int n) {
  const char *names[MAX_NAMED] = {0};
  for (int i = 0; i < n; i++)
    names[i] = list[i].name;
  const char *near = loom_did_you_mean_value(name, names, (size_t)n);
  if (near)
    return loom_params_error(p, key, LOOM_EINVAL, "no %s named \"%s\" (did you mean \"%s\"?)", what, name, near);
  char all[512] = "";
  for (int i = 0; i < n; i++)
    snprintf(all + strlen(all), sizeof all - strlen(all), "%s%s", i ? ", " : "", names[i]);
  return loom_params_error(p, key, LOOM_EINVAL, "no %s named \"%s\" (defined: %s)", what, name, n ? all : "none");
}

/* experiment.device (config/device.c); "cpu", the default, is written
 * into the resolved config and sets no backend. */
static int build_device(builder *b, loom_params *p) {
  if (!json_object_get(p->object, "device"))
    return json_object_set_new(p->object, "device", json_string("cpu")) < 0 ? loom_error_oom("the config") : 0;
  loom_backend *made;
  int rc = loom_config_device(p, "device", loom_params_validate_only(p), &made);
  return rc < 0 || !made ? rc : loom_experiment_own_backend(b->exp, made);
}

/* experiment.loss_scaling: true or false (the defaults, on or off), or an
 * object of GradScaler's options (on); absent: on for fp16 only. */
static int read_loss_scaling(loom_params *p, loom_precision precision, loom_loss_scaling *s) {
  *s = loom_loss_scaling_defaults(precision);
  json_t *v = json_object_get(p->object, "loss_scaling");
  if (v && json_is_boolean(v)) {
    loom_params_has(p, "loss_scaling");
    s->enabled = json_is_true(v);
    return 0;
  }
  loom_params *o;
  int rc = loom_params_open(p, "loss_scaling", false, &o);
  if (rc < 0 || !o)
    return rc;
  s->enabled = true;
  if ((rc = loom_params_number(o, "init_scale", s->init_scale, 1e-30, 1e30, &s->init_scale)) == 0 &&
      (rc = loom_params_number(o, "growth_factor", s->growth_factor, 1.0, 1e6, &s->growth_factor)) == 0 &&
      (rc = loom_params_number(o, "backoff_factor", s->backoff_factor, 1e-6, 1.0, &s->backoff_factor)) == 0 &&
      (rc = loom_params_int(o, "growth_interval", s->growth_interval, 1, INT64_MAX, &s->growth_interval)) == 0)
    rc = loom_params_check_unknown(o);
  if (rc == 0 && (s->growth_factor == 1.0 || s->backoff_factor == 1.0))
    rc = loom_params_error(o, s->growth_factor == 1.0 ? "growth_factor" : "backoff_factor", LOOM_EINVAL,
                           "growth_factor must be > 1 and backoff_factor < 1");
  loom_params_close(o);
  return rc;
}

static int build_experiment(builder *b, loom_params *root) {
  json_t *obj;
  int rc = section(root, "experiment", false, &obj);
  if (rc < 0)
    return rc;
  if (!obj) {
    obj = json_object();
    json_object_set_new(root->object, "experiment", obj);
  }
  loom_params p;
  loom_params_init(&p, b->c, obj, "experiment");
  const char *name, *logdir;
  int64_t seed;
  char def_logdir[600];
  /* No seed given: one from the clock, written into the resolved config. */
  int64_t clock_seed = (int64_t)((uv_hrtime() ^ ((uint64_t)getpid() << 20)) % 2147483647);
  if ((rc = loom_params_string(&p, "name", "experiment", &name)) < 0 ||
      (rc = loom_params_int(&p, "seed", clock_seed, 0, INT64_MAX, &seed)) < 0)
    return rc;
  snprintf(def_logdir, sizeof def_logdir, "logs/%s", name);
  if ((rc = loom_params_string(&p, "logdir", def_logdir, &logdir)) < 0)
    return rc;
  static const char *const precisions[] = {"fp32", "bf16", "fp16", NULL};
  int precision;
  loom_loss_scaling scaling;
  if ((rc = loom_params_choice(&p, "precision", "fp32", precisions, &precision)) < 0 ||
      (rc = read_loss_scaling(&p, (loom_precision)precision, &scaling)) < 0)
    return rc;
  loom_params_known(&p, "device"); /* built once the experiment is */
  /* The config keys a resume may change (the runner reads them from the
   * resolved config, as --allow-change's): checked to be names here. */
  const char **allowed;
  size_t num_allowed;
  if ((rc = loom_params_strings(&p, "allow_change", false, &allowed, &num_allowed)) < 0)
    return rc;
  free(allowed);
  if ((rc = loom_params_check_unknown(&p)) < 0)
    return rc;
  if (!(b->exp = loom_experiment_create(name)))
    return LOOM_ENOMEM;
  loom_experiment_set_seed(b->exp, (uint64_t)seed);
  rc = loom_experiment_set_precision(b->exp, (loom_precision)precision);
  if (rc == 0)
    rc = loom_experiment_set_loss_scaling(b->exp, &scaling);
  if (rc == 0)
    rc = loom_experiment_set_logdir(b->exp, logdir);
  return rc < 0 ? rc : build_device(b, &p);
}

static int build_datasets(builder *b, loom_params *root) {
  json_t *obj;
  int rc = section(root, "datasets", true, &obj);
  const char *key;
  json_t *spec;
  json_object_foreach(obj, key, spec) {
    if (rc < 0)
      break;
    char path[600];
    loom_path_child(path, sizeof path, "datasets", key);
    loom_params p;
    loom_dataset *ds = loom_config_instantiate(b->c, spec, path, LOOM_KIND_DATASET, NULL, &p);
    if (!ds)
      return loom_last_error_code();
    if (b->num_datasets == MAX_NAMED) {
      loom_dataset_release(ds);
      return loom_params_error(&p, NULL, LOOM_EINVAL, "more than %d datasets", MAX_NAMED);
    }
    b->datasets[b->num_datasets++] = (named){key, ds, false};
    rc = loom_params_check_unknown(&p);
  }
  if (rc == 0 && b->num_datasets == 0)
    rc = loom_params_error(root, "datasets", LOOM_EINVAL, "defines no dataset");
  return rc;
}

/* A loader's per-sample transforms, in order. */
static int loader_transforms(builder *b, loom_params *p, loom_transform **out, int *n) {
  loom_params_known(p, "transforms");
  json_t *list = json_object_get(p->object, "transforms");
  if (list && (!json_is_array(list) || json_array_size(list) > 32))
    return loom_params_error(p, "transforms", LOOM_EINVAL, "expected an array of at most 32 transform objects");
  size_t i;
  json_t *t;
  json_array_foreach(list, i, t) {
    char path[700];
    snprintf(path, sizeof path, "%s.transforms[%zu]", p->path, i);
    loom_params tp;
    loom_transform *made = loom_config_instantiate(b->c, t, path, LOOM_KIND_TRANSFORM, NULL, &tp);
    if (!made)
      return loom_last_error_code();
    out[(*n)++] = made;
    int rc = loom_params_check_unknown(&tp);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static int build_loaders(builder *b, loom_params *root) {
  json_t *obj;
  int rc = section(root, "loaders", true, &obj);
  const char *key;
  json_t *spec;
  json_object_foreach(obj, key, spec) {
    if (rc < 0)
      break;
    char path[600];
    loom_path_child(path, sizeof path, "loaders", key);
    loom_params p;
    loom_params_init(&p, b->c, spec, path);
    loom_loader_kind kind;
    if (!loom_loader_kind_from_name(key, &kind)) {
      loom_params names;
      loom_params_init(&names, b->c, obj, "loaders");
      return loom_params_key_error(&names, key, "a loader's name starts with \"train\", \"valid\" or \"infer\" (it "
                                       "decides whether it trains)");
    }
    if (!json_is_object(spec))
      return loom_params_error(&p, NULL, LOOM_EINVAL, "expected a loader object");
    const char *dataset;
    int64_t batch, workers, prefetch;
    bool shuffle, drop_last;
    if ((rc = loom_params_string(&p, "dataset", NULL, &dataset)) < 0 ||
        (rc = loom_params_int(&p, "batch_size", LOOM_REQUIRED_INT, 1, INT32_MAX, &batch)) < 0 ||
        (rc = loom_params_bool(&p, "shuffle", kind == LOOM_LOADER_TRAIN, &shuffle)) < 0 ||
        (rc = loom_params_bool(&p, "drop_last", false, &drop_last)) < 0 ||
        (rc = loom_params_int(&p, "workers", 0, 0, 256, &workers)) < 0 ||
        (rc = loom_params_int(&p, "prefetch", 0, 0, 4096, &prefetch)) < 0)
      return rc;
    named *ds = find(b->datasets, b->num_datasets, dataset);
    if (!ds)
      return unknown_name(&p, "dataset", "dataset", dataset, b->datasets, b->num_datasets);
    if (b->num_loaders == MAX_NAMED)
      return loom_params_error(&p, NULL, LOOM_EINVAL, "more than %d loaders", MAX_NAMED);
    loom_transform *transforms[32];
    int num_transforms = 0;
    if ((rc = loader_transforms(b, &p, transforms, &num_transforms)) < 0 ||
        (rc = loom_params_check_unknown(&p)) < 0) {
      for (int i = 0; i < num_transforms; i++)
        loom_transform_destroy(transforms[i]);
      return rc;
    }
    loom_loader_options o = {.batch_size = batch, .shuffle = shuffle, .drop_last = drop_last, .workers = (int)workers,
                             .prefetch = (int)prefetch, .transforms = transforms, .num_transforms = num_transforms};
    loom_loader *l = loom_loader_create(loom_dataset_retain(ds->object), &o);
    if (!l)
      return loom_last_error_code();
    b->loaders[b->num_loaders++] = (named){key, l, false};
  }
  if (rc == 0 && b->num_loaders == 0)
    rc = loom_params_error(root, "loaders", LOOM_EINVAL, "defines no loader");
  return rc;
}

/* The model's optional "init": {"scheme", "mode", "negative_slope", "gain",
 * "zero_bias", "layers"}, applied over the built-in initialisation. */
static int model_init(builder *b, loom_params *model) {
  json_t *obj;
  int rc = section(model, "init", false, &obj);
  if (rc < 0 || !obj)
    return rc;
  static const char *const schemes[] = {"kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal", NULL},
                           *const modes[] = {"fan_in", "fan_out", NULL};
  loom_params p;
  loom_params_init(&p, b->c, obj, "model.init");
  int scheme, mode;
  loom_init init = {0};
  if ((rc = loom_params_choice(&p, "scheme", NULL, schemes, &scheme)) < 0 ||
      (rc = loom_params_choice(&p, "mode", "fan_in", modes, &mode)) < 0 ||
      (rc = loom_params_number(&p, "negative_slope", 0, -1e6, 1e6, &init.negative_slope)) < 0 ||
      (rc = loom_params_number(&p, "gain", 1, 1e-12, 1e6, &init.gain)) < 0 ||
      (rc = loom_params_bool(&p, "zero_bias", false, &init.zero_bias)) < 0)
    return rc;
  init.scheme = (loom_init_scheme)scheme;
  init.fan_out = mode == 1;
  const char **names;
  size_t n;
  if ((rc = loom_params_layer_names(&p, "layers", b->model, &names, &n)) < 0)
    return rc;
  if ((rc = loom_params_check_unknown(&p)) == 0 && !loom_params_validate_only(&p)) /* an unbuilt model then */
    rc = loom_model_init_weights(b->model, &init, names, n, loom_experiment_seed(b->exp));
  free(names);
  return rc;
}

/* The model, built for the samples of the first stage's first loader. */
static int build_model(builder *b, loom_params *root, loom_loader *first) {
  json_t *obj;
  int rc = section(root, "model", true, &obj);
  if (rc < 0)
    return rc;
  loom_dataset *ds = loom_loader_dataset(first);
  loom_model_context ctx = {loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds),
                            loom_experiment_seed(b->exp)};
  if (ds == b->c->unread) /* loom_config_validate: the samples' shape is not known */
    ctx.ndim = 0, ctx.sample_shape = NULL;
  loom_params p;
  b->model = loom_config_instantiate(b->c, obj, "model", LOOM_KIND_MODEL, &ctx, &p);
  if (!b->model)
    return loom_last_error_code();
  if ((rc = model_init(b, &p)) < 0 || (rc = loom_params_check_unknown(&p)) < 0) {
    loom_model_destroy(b->model);
    b->model = NULL;
  }
  return rc;
}

static int stage_loaders(builder *b, loom_params *p, loom_stage *stage, loom_loader **first) {
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
    named *l = find(b->loaders, b->num_loaders, json_string_value(item));
    if (!l)
      return unknown_name(p, key, "loader", json_string_value(item), b->loaders, b->num_loaders);
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
static void *stage_component(builder *b, loom_params *p, const char *key, loom_kind kind, bool required,
                             const void *context, void (*destroy)(void *)) {
  json_t *obj;
  if (section(p, key, false, &obj) < 0)
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

static int stage_scheduler(builder *b, loom_params *p, loom_stage *stage) {
  json_t *obj;
  int rc = section(p, "scheduler", false, &obj);
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
  if ((rc = section(cp, "filter", false, &f)) < 0 || !f)
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

static int stage_callbacks(builder *b, loom_params *p, loom_stage *stage) {
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

static int stage_rules(builder *b, loom_params *p, loom_stage *stage) {
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

static int build_stage(builder *b, loom_params *root, const char *name, json_t *spec, bool first_stage) {
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
    if ((rc = build_model(b, root, first)) < 0)
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

static int build_stages(builder *b, loom_params *root) {
  json_t *obj;
  int rc = section(root, "stages", true, &obj);
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

/* After a build: the config records every loader (keeping those no stage
 * runs, for loom_config_loader) and the model; after a failure or a
 * validation (keep false) they go. */
static int release(builder *b, int rc, bool keep) {
  for (int i = 0; i < b->num_datasets; i++)
    loom_dataset_release(b->datasets[i].object);
  for (int i = 0; i < b->num_loaders; i++) {
    if (rc == 0 && keep)
      rc = loom_config_keep_loader(b->c, b->loaders[i].name, b->loaders[i].object, !b->loaders[i].used);
    else if (!b->loaders[i].used)
      loom_loader_destroy(b->loaders[i].object);
  }
  if (rc == 0 && keep)
    b->c->built_model = b->model;
  return rc;
}

/* "plugins": shared libraries (relative to the config's directory) that
 * register components, loaded before anything names them. */
static int load_plugins(loom_params *root) {
  size_t n;
  int rc = loom_params_array_length(root, "plugins", false, &n);
  for (size_t i = 0; i < n && rc == 0; i++) {
    char key[32];
    const char *path;
    snprintf(key, sizeof key, "plugins[%zu]", i);
    if ((rc = loom_params_file(root, key, NULL, &path)) == 0 && (rc = loom_plugin_load(path)) < 0)
      rc = loom_params_error(root, key, rc, "%s", loom_last_error());
  }
  return rc;
}

/* "distributed": which communicator the loom command opens (loom/comm_mpi.h). */
static int read_distributed(loom_config *c, loom_params *root) {
  /* In loom_dist's order. */
  static const char *const choices[] = {"auto", "local", "mpi", NULL};
  int index = 0;
  int rc = loom_params_choice(root, "distributed", "auto", choices, &index);
  c->distributed = (loom_dist)index;
  return rc;
}

loom_dist loom_config_distributed(const loom_config *c) { return c->distributed; }

/* loom_config_validate's stand-in for every dataset it does not open. */
static int64_t unread_length(void *data) {
  (void)data;
  return 0;
}

static int unread_fetch(void *data, const int64_t *indices, int64_t n, float *x, float *y) {
  (void)data, (void)indices, (void)n, (void)x, (void)y;
  return loom_error_set(LOOM_ESTATE, "a dataset loom_config_validate did not read has no samples");
}

/* The build, or with validate_only the same checks with no data read and
 * no model allocated, nothing kept. */
static int build(loom_config *c, bool validate_only, loom_experiment **out) {
  *out = NULL;
  builder b = {.c = c};
  loom_config_forget_built(c);
  if (validate_only) {
    static const loom_dataset_ops unread_ops = {.type = "unread", .length = unread_length, .fetch = unread_fetch};
    if (!(c->unread = loom_dataset_create(&unread_ops, NULL, 1, (const int64_t[]){0}, 0, NULL)))
      return loom_last_error_code();
  }
  loom_params root;
  loom_params_init(&root, c, c->root, "");
  loom_error_clear();
  /* The top level's keys are fixed: a misspelt one is the first thing to say. */
  static const char *const sections[] = {"plugins", "distributed", "experiment", "datasets", "loaders", "model",
                                         "stages"};
  for (size_t i = 0; i < sizeof sections / sizeof sections[0]; i++)
    loom_params_known(&root, sections[i]);
  int rc = loom_params_check_unknown(&root);
  if (rc == 0)
    rc = read_distributed(c, &root);
  if (rc == 0)
    rc = load_plugins(&root);
  if (rc == 0)
    rc = build_experiment(&b, &root);
  if (rc == 0)
    rc = build_datasets(&b, &root);
  if (rc == 0)
    rc = build_loaders(&b, &root);
  if (rc == 0)
    rc = build_stages(&b, &root);
  /* The resolved config, for checkpoints to record and resumes to compare. */
  char *text = rc == 0 && !validate_only ? json_dumps(c->root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17))
                                         : NULL;
  if (rc == 0 && !validate_only)
    rc = text ? loom_experiment_set_config(b.exp, text) : loom_error_oom("the resolved config");
  free(text);
  rc = release(&b, rc, !validate_only);
  loom_dataset_release(c->unread);
  c->unread = NULL;
  if (rc < 0 || validate_only) {
    loom_config_forget_built(c);
    loom_experiment_destroy(b.exp);
    return rc;
  }
  *out = b.exp;
  return 0;
}

int loom_config_build(loom_config *c, loom_experiment **out) { return build(c, false, out); }

/* On a copy of the document: the defaults a build writes back would make
 * the config's later build read them as given (a "valid_loader" the stage
 * does not run, say). */
int loom_config_validate(loom_config *c) {
  json_t *document = c->root, *copy = json_deep_copy(document);
  if (!copy)
    return loom_error_oom("a copy of the config");
  c->root = copy;
  loom_experiment *none;
  int rc = build(c, true, &none);
  c->root = document;
  json_decref(copy);
  return rc;
}
