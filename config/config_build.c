/* From a config to an experiment: every section checked, every component
 * built through the registry (the stages' in config_stages.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "config/config_build.h"
#include "core/error_internal.h"
#include "loom/data.h"
#include "loom/plugin.h"
#include "loom/registry.h"
#include "loom/runner.h"

int loom_config_section(loom_params *p, const char *key, bool required, json_t **obj) {
  loom_params_known(p, key);
  *obj = json_object_get(p->object, key);
  if (!*obj && required)
    return loom_params_missing(p, key, "expected an object");
  if (*obj && !json_is_object(*obj))
    return loom_params_error(p, key, LOOM_EINVAL, "expected an object");
  return 0;
}

loom_named *loom_named_find(loom_named *list, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(list[i].name, name) == 0)
      return &list[i];
  return NULL;
}

int loom_named_unknown(loom_params *p, const char *key, const char *what, const char *name, loom_named *list, int n) {
  const char *names[LOOM_CONFIG_MAX_NAMED] = {0};
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
static int build_device(loom_builder *b, loom_params *p) {
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

static int build_experiment(loom_builder *b, loom_params *root) {
  json_t *obj;
  int rc = loom_config_section(root, "experiment", false, &obj);
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

static int build_datasets(loom_builder *b, loom_params *root) {
  json_t *obj;
  int rc = loom_config_section(root, "datasets", true, &obj);
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
    if (b->num_datasets == LOOM_CONFIG_MAX_NAMED) {
      loom_dataset_release(ds);
      return loom_params_error(&p, NULL, LOOM_EINVAL, "more than %d datasets", LOOM_CONFIG_MAX_NAMED);
    }
    b->datasets[b->num_datasets++] = (loom_named){key, ds, false};
    rc = loom_params_check_unknown(&p);
  }
  if (rc == 0 && b->num_datasets == 0)
    rc = loom_params_error(root, "datasets", LOOM_EINVAL, "defines no dataset");
  return rc;
}

/* A loader's per-sample transforms, in order. */
static int loader_transforms(loom_builder *b, loom_params *p, loom_transform **out, int *n) {
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

static int build_loaders(loom_builder *b, loom_params *root) {
  json_t *obj;
  int rc = loom_config_section(root, "loaders", true, &obj);
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
    loom_named *ds = loom_named_find(b->datasets, b->num_datasets, dataset);
    if (!ds)
      return loom_named_unknown(&p, "dataset", "dataset", dataset, b->datasets, b->num_datasets);
    if (b->num_loaders == LOOM_CONFIG_MAX_NAMED)
      return loom_params_error(&p, NULL, LOOM_EINVAL, "more than %d loaders", LOOM_CONFIG_MAX_NAMED);
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
    b->loaders[b->num_loaders++] = (loom_named){key, l, false};
  }
  if (rc == 0 && b->num_loaders == 0)
    rc = loom_params_error(root, "loaders", LOOM_EINVAL, "defines no loader");
  return rc;
}

/* The model's optional "init": {"scheme", "mode", "negative_slope", "gain",
 * "zero_bias", "layers"}, applied over the built-in initialisation. */
static int model_init(loom_builder *b, loom_params *model) {
  json_t *obj;
  int rc = loom_config_section(model, "init", false, &obj);
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

int loom_config_build_model(loom_builder *b, loom_params *root, loom_loader *first) {
  json_t *obj;
  int rc = loom_config_section(root, "model", true, &obj);
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

/* After a build: the config records every loader (keeping those no stage
 * runs, for loom_config_loader) and the model; after a failure or a
 * validation (keep false) they go. */
static int release(loom_builder *b, int rc, bool keep) {
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
  loom_builder b = {.c = c};
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
    rc = loom_config_build_stages(&b, &root);
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
