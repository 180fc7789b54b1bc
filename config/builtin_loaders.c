/* Config constructors of the datasets and transforms. */
#include <limits.h>
#include <stdlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/data.h"

/* Whether a dataset constructor, its keys read, stops before opening
 * files: loom_config_validate's, which gets the stand-in. */
static bool unread(loom_params *p, loom_dataset **ds) {
  *ds = loom_params_validate_only(p) ? loom_dataset_retain(p->config->unread) : NULL;
  return *ds != NULL;
}

/* A dataset constructor's failure, reported at the key that named the file. */
static void *located(loom_params *p, const char *key, loom_dataset *ds) {
  if (!ds)
    loom_params_error(p, key, loom_last_error_code(), "%s", loom_last_error());
  return ds;
}

/* Whether `key` is given as null (an unlabelled dataset's targets); it
 * counts as asked for. */
static bool is_null(loom_params *p, const char *key) {
  if (!json_is_null(json_object_get(loom_params_object(p), key)))
    return false;
  loom_params_known(p, key);
  return true;
}

static void *fashion_mnist(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  static const char *const splits[] = {"train", "test", NULL};
  const char *dir;
  int split;
  if (loom_params_file(p, "dir", "/usr/share/datasets/fashion-mnist", &dir) < 0 ||
      loom_params_choice(p, "split", NULL, splits, &split) < 0)
    return NULL;
  loom_dataset *ds;
  if (unread(p, &ds))
    return ds;
  return located(p, "dir", loom_fashion_mnist_open(dir, split == 0));
}

static void *idx(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const char *images, *labels;
  if (loom_params_file(p, "images", NULL, &images) < 0 || loom_params_file(p, "labels", NULL, &labels) < 0)
    return NULL;
  loom_dataset *ds;
  if (unread(p, &ds))
    return ds;
  return located(p, "images", loom_idx_dataset_open(images, labels));
}

/* {"type": "hdf5", "files": ["a.h5", ...], "inputs": "images", "targets": "labels" (null: unlabelled), ...} */
static void *hdf5(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  size_t n;
  if (loom_params_array_length(p, "files", true, &n) < 0)
    return NULL;
  if (n == 0 || n > 256) {
    loom_params_error(p, "files", LOOM_EINVAL, "expected an array of 1 to 256 file names");
    return NULL;
  }
  const char *names[256];
  for (size_t i = 0; i < n; i++) {
    char key[32];
    snprintf(key, sizeof key, "files[%zu]", i);
    if (loom_params_file(p, key, NULL, &names[i]) < 0) /* written back absolute, like every data path */
      return NULL;
  }
  loom_hdf5_options o = {.files = names, .num_files = (int)n};
  bool preload;
  if (loom_params_string(p, "inputs", "images", &o.inputs) < 0 ||
      (!is_null(p, "targets") && loom_params_string(p, "targets", "labels", &o.targets) < 0) ||
      loom_params_number(p, "scale", 1.0, -HUGE_VAL, HUGE_VAL, &o.scale) < 0 ||
      loom_params_int(p, "cache_mb", 256, 1, INT32_MAX, &o.cache_mb) < 0 ||
      loom_params_int(p, "block", 256, 1, INT32_MAX, &o.block) < 0 || loom_params_bool(p, "preload", false, &preload) < 0)
    return NULL;
  o.preload = preload;
  loom_dataset *ds;
  if (unread(p, &ds))
    return ds;
  return located(p, "files", loom_hdf5_dataset_open(&o));
}

static void *csv(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const char *file;
  int64_t column;
  bool header;
  column = LOOM_CSV_NO_TARGET;
  if (loom_params_file(p, "file", NULL, &file) < 0 ||
      (!is_null(p, "target_column") && loom_params_int(p, "target_column", -1, -4096, 4095, &column) < 0) ||
      loom_params_bool(p, "header", false, &header) < 0)
    return NULL;
  loom_dataset *ds;
  if (unread(p, &ds))
    return ds;
  return located(p, "file", loom_csv_dataset_open(file, (int)column, header));
}

/* "mean": 0.5 or [0.49, 0.48, 0.45], "std" likewise (one per channel). */
static void *normalize(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double mean[64], std[64];
  size_t nm = 1, ns = 1;
  int rc = 0;
  if (loom_params_is_array(p, "mean"))
    rc = loom_params_number_array(p, "mean", NULL, 0, mean, 64, &nm);
  else
    rc = loom_params_number(p, "mean", NAN, -HUGE_VAL, HUGE_VAL, &mean[0]);
  if (rc == 0 && loom_params_is_array(p, "std"))
    rc = loom_params_number_array(p, "std", NULL, 0, std, 64, &ns);
  else if (rc == 0)
    rc = loom_params_number(p, "std", NAN, -HUGE_VAL, HUGE_VAL, &std[0]); /* > 0 checked below */
  if (rc < 0)
    return NULL;
  if (nm != ns || nm == 0) {
    loom_params_error(p, "std", LOOM_EINVAL, "%zu means but %zu stds; give one of each per channel", nm, ns);
    return NULL;
  }
  float m[64], s[64];
  for (size_t i = 0; i < nm; i++) {
    if (!(std[i] > 0)) {
      loom_params_error(p, "std", LOOM_EINVAL, "%g is out of range (expected a number > 0)", std[i]);
      return NULL;
    }
    m[i] = (float)mean[i], s[i] = (float)std[i];
  }
  return loom_normalize_transform_create(m, s, (int)nm);
}

static void *random_crop(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t padding;
  if (loom_params_int(p, "padding", LOOM_REQUIRED_INT, 0, 4096, &padding) < 0)
    return NULL;
  return loom_random_crop_transform_create(padding);
}

static void *random_flip(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double prob;
  if (loom_params_number(p, "probability", 0.5, 0, 1, &prob) < 0)
    return NULL;
  return loom_random_flip_transform_create(prob);
}

void loom_register_builtin_datasets(void) {
  loom_register_builtin(LOOM_KIND_DATASET, "fashion_mnist", fashion_mnist);
  loom_register_builtin(LOOM_KIND_DATASET, "idx", idx);
  loom_register_builtin(LOOM_KIND_DATASET, "hdf5", hdf5);
  loom_register_builtin(LOOM_KIND_DATASET, "csv", csv);
  loom_register_builtin(LOOM_KIND_TRANSFORM, "normalize", normalize);
  loom_register_builtin(LOOM_KIND_TRANSFORM, "random_crop", random_crop);
  loom_register_builtin(LOOM_KIND_TRANSFORM, "random_flip", random_flip);
}
