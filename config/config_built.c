/* What a build made, for the commands that use a trained model (predict,
 * export): the loaders by name and the model; and a dataset file to
 * predict, added to the config before it is built. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/data.h"

int loom_config_keep_loader(loom_config *c, const char *name, loom_loader *loader, bool owned) {
  loom_built_loader *grown = realloc(c->built_loaders, (c->num_built_loaders + 1) * sizeof *grown);
  char *copy = grown ? strdup(name) : NULL;
  if (grown)
    c->built_loaders = grown;
  if (!copy) {
    if (owned)
      loom_loader_destroy(loader);
    return loom_error_oom("the config's loaders");
  }
  c->built_loaders[c->num_built_loaders++] = (loom_built_loader){copy, loader, owned};
  return 0;
}

void loom_config_forget_built(loom_config *c) {
  for (size_t i = 0; i < c->num_built_loaders; i++) {
    if (c->built_loaders[i].owned)
      loom_loader_destroy(c->built_loaders[i].loader);
    free(c->built_loaders[i].name);
  }
  free(c->built_loaders);
  c->built_loaders = NULL;
  c->num_built_loaders = 0;
  c->built_model = NULL;
}

size_t loom_config_num_loaders(const loom_config *c) { return c->num_built_loaders; }

const char *loom_config_loader_name(const loom_config *c, size_t i) {
  return i < c->num_built_loaders ? c->built_loaders[i].name : NULL;
}

loom_loader *loom_config_loader(const loom_config *c, const char *name) {
  for (size_t i = 0; i < c->num_built_loaders; i++)
    if (strcmp(c->built_loaders[i].name, name) == 0)
      return c->built_loaders[i].loader;
  return NULL;
}

loom_model *loom_config_model(const loom_config *c) { return c->built_model; }

/* The loader whose preparation a predicted file copies: the first infer*
 * loader, else the first valid*, else the first; NULL if none. */
static json_t *template_loader(json_t *loaders) {
  static const char *const prefixes[] = {"infer", "valid", ""};
  for (size_t k = 0; k < 3; k++) {
    const char *key;
    json_t *spec;
    json_object_foreach(loaders, key, spec)
      if (json_is_object(spec) && strncmp(key, prefixes[k], strlen(prefixes[k])) == 0)
        return spec;
  }
  return NULL;
}

/* Whether `like` is a dataset of that type. */
static bool has_type(json_t *like, const char *type) {
  json_t *t = json_is_object(like) ? json_object_get(like, "type") : NULL;
  return json_is_string(t) && strcmp(json_string_value(t), type) == 0;
}

/* {"type": "hdf5", "files": [path], "targets": null} or {"type": "csv",
 * "file": path, "target_column": null}: the like-typed dataset's other keys
 * (inputs, scale, header, ...) kept, its labels ignored. An HDF5 file in
 * place of an IDX dataset (idx, fashion_mnist) is read as loom convert idx
 * writes one: the IDX bytes, which the IDX dataset scales by 1/255. */
static json_t *file_dataset(json_t *like, bool csv, const char *path) {
  const char *type = csv ? "csv" : "hdf5";
  json_t *ds = has_type(like, type) ? json_deep_copy(like) : json_pack("{ss}", "type", type);
  if (ds && !csv && (has_type(like, "idx") || has_type(like, "fashion_mnist")) &&
      json_object_set_new(ds, "scale", json_real(1.0 / 255.0)) != 0) {
    json_decref(ds);
    return NULL;
  }
  if (!ds)
    return NULL;
  int rc = csv ? json_object_set_new(ds, "file", json_string(path)) | json_object_set_new(ds, "target_column", json_null())
               : json_object_set_new(ds, "files", json_pack("[s]", path)) | json_object_set_new(ds, "targets", json_null());
  if (rc != 0) {
    json_decref(ds);
    return NULL;
  }
  return ds;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

int loom_config_add_dataset_file(loom_config *c, const char *path, const char *name) {
  bool csv = ends_with(path, ".csv");
  if (!csv && !ends_with(path, ".h5") && !ends_with(path, ".hdf5") && !ends_with(path, ".he5"))
    return loom_error_set(LOOM_EINVAL, "%s: expected an HDF5 file (.h5, .hdf5) or a CSV file (.csv) to predict", path);
  json_t *datasets = json_object_get(c->root, "datasets"), *loaders = json_object_get(c->root, "loaders");
  if (!json_is_object(datasets) || !json_is_object(loaders))
    return loom_error_set(LOOM_EINVAL, "%s: the config needs \"datasets\" and \"loaders\" objects to predict %s",
                          c->name, path);
  if (json_object_get(datasets, name) || json_object_get(loaders, name))
    return loom_error_set(LOOM_EINVAL, "%s: the config already has a dataset or loader \"%s\"; predict %s under "
                                       "another name",
                          c->name, name, path);
  /* Relative to the working directory, as given on the command line (the
   * config's own paths are relative to the config). */
  char abs[PATH_MAX + 1], cwd[PATH_MAX];
  if (path[0] != '/' && getcwd(cwd, sizeof cwd))
    snprintf(abs, sizeof abs, "%s/%s", cwd, path);
  else
    snprintf(abs, sizeof abs, "%s", path);
  json_t *like = template_loader(loaders);
  json_t *like_ds = like ? json_object_get(like, "dataset") : NULL;
  json_t *ds = file_dataset(json_is_string(like_ds) ? json_object_get(datasets, json_string_value(like_ds)) : NULL,
                            csv, abs);
  json_t *batch = like ? json_object_get(like, "batch_size") : NULL, *transforms = like ? json_object_get(like, "transforms") : NULL;
  json_t *loader = json_pack("{sssI}", "dataset", name, "batch_size",
                             (json_int_t)(json_is_integer(batch) ? json_integer_value(batch) : 256));
  if (loader && transforms)
    json_object_set_new(loader, "transforms", json_deep_copy(transforms));
  if (!ds || !loader || json_object_set_new(datasets, name, ds) != 0) {
    json_decref(loader);
    return loom_error_oom("the predicted dataset");
  }
  if (json_object_set_new(loaders, name, loader) != 0)
    return loom_error_oom("the predicted dataset's loader");
  return 0;
}
