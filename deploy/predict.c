/* Predictions: a model in evaluation mode over a loader's samples, the
 * outputs with their samples' indices, written as HDF5 or CSV. */
#include <errno.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/hdf5_quiet.h"
#include "deploy/deploy_internal.h"
#include "loom/experiment.h"

/* One loader's predictions, kept until the file is written. */
typedef struct part {
  char *name;
  int64_t n, width; /* samples, floats per output */
  int out_ndim;
  int64_t out_shape[LOOM_MAX_DIMS];
  int64_t *indices;
  float *outputs;
} part;

struct loom_predictions {
  char *path;
  bool csv;
  part *parts;
  size_t num_parts;
};

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

loom_predictions *loom_predictions_create(const char *path) {
  if (!path || !*path) {
    loom_error_set(LOOM_EINVAL, "predictions: no file name (FILE.h5 or FILE.csv)");
    return NULL;
  }
  loom_predictions *p = calloc(1, sizeof *p);
  if (p && !(p->path = strdup(path)))
    free(p), p = NULL;
  if (!p) {
    loom_error_oom("a predictions file");
    return NULL;
  }
  p->csv = ends_with(path, ".csv");
  return p;
}

void loom_predictions_discard(loom_predictions *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->num_parts; i++) {
    free(p->parts[i].name);
    free(p->parts[i].indices);
    free(p->parts[i].outputs);
  }
  free(p->parts);
  free(p->path);
  free(p);
}

int64_t loom_predictions_count(const loom_predictions *p, const char *name) {
  for (size_t i = 0; i < p->num_parts; i++)
    if (strcmp(p->parts[i].name, name) == 0)
      return p->parts[i].n;
  return 0;
}

/* A new part for `name`, sized for up to `n` outputs of out_shape. */
static int add_part(loom_predictions *p, const char *name, int64_t n, int out_ndim, const int64_t *out_shape,
                    part **out) {
  for (size_t i = 0; i < p->num_parts; i++)
    if (strcmp(p->parts[i].name, name) == 0)
      return loom_error_set(LOOM_EINVAL, "%s: predictions named \"%s\" are already in the file", p->path, name);
  part *grown = realloc(p->parts, (p->num_parts + 1) * sizeof *grown);
  if (!grown)
    return loom_error_oom("the predictions");
  p->parts = grown;
  part *t = &p->parts[p->num_parts];
  *t = (part){.out_ndim = out_ndim, .width = 1};
  memcpy(t->out_shape, out_shape, (size_t)out_ndim * sizeof *out_shape);
  for (int k = 0; k < out_ndim; k++)
    t->width *= out_shape[k];
  t->name = strdup(name);
  t->indices = malloc((size_t)(n ? n : 1) * sizeof *t->indices);
  t->outputs = malloc((size_t)((n ? n : 1) * t->width) * sizeof *t->outputs);
  if (!t->name || !t->indices || !t->outputs) {
    free(t->name), free(t->indices), free(t->outputs);
    return loom_error_oom("the predictions");
  }
  p->num_parts++;
  *out = t;
  return 0;
}

/* The batches of one epoch of `loader` through `model`, into t. */
static int run_epoch(loom_model *model, loom_loader *loader, part *t) {
  const int64_t *order = loom_loader_order(loader);
  loom_tensor *x, *y;
  int rc;
  while ((rc = loom_loader_next(loader, &x, &y)) == 1) {
    const loom_tensor *out;
    if ((rc = loom_model_forward(model, x, &out)) < 0)
      return loom_error_wrap(rc, "predicting samples %lld..", (long long)t->n);
    int64_t n = loom_tensor_dim(out, 0);
    if (loom_tensor_numel(out) != n * t->width)
      return loom_error_set(LOOM_ESHAPE, "the model gave %lld values for %lld samples; expected %lld per sample",
                            (long long)loom_tensor_numel(out), (long long)n, (long long)t->width);
    memcpy(t->outputs + t->n * t->width, loom_tensor_host_data(out), (size_t)(n * t->width) * sizeof(float));
    memcpy(t->indices + t->n, order + t->n, (size_t)n * sizeof *order);
    t->n += n;
  }
  return rc;
}

int loom_predict(loom_model *model, loom_loader *loader, const char *name, loom_predictions *out) {
  if (!model || !loader || !name || !out)
    return loom_error_set(LOOM_EINVAL, "loom_predict: needs a model, a loader, a name and a predictions file");
  if (!loom_model_is_built(model))
    return loom_error_set(LOOM_ESTATE, "loom_predict(\"%s\"): the model is not built (loom_model_build)", name);
  size_t last = loom_model_num_layers(model) - 1;
  int64_t shape[LOOM_MAX_DIMS];
  int ndim = loom_model_layer_output_shape(model, last, shape);
  loom_epoch_plan plan = {.seed = 0, .rank = 0, .world = 1, .train = false};
  int rc = loom_loader_start_epoch(loader, &plan);
  part *t = NULL;
  if (rc == 0)
    rc = add_part(out, name, loom_loader_num_samples(loader), ndim, shape, &t);
  bool was_train = loom_model_is_train(model);
  loom_model_set_train(model, false);
  if (rc == 0)
    rc = run_epoch(model, loader, t);
  loom_model_set_train(model, was_train);
  loom_loader_end_epoch(loader);
  return rc < 0 ? loom_error_wrap(rc, "predicting \"%s\"", name) : 0;
}

/* --- writing --- */

static int write_csv(const loom_predictions *p, FILE *f) {
  fputs("loader,index", f);
  int64_t width = p->num_parts ? p->parts[0].width : 0;
  for (int64_t k = 0; k < width; k++)
    fprintf(f, ",output_%lld", (long long)k);
  fputc('\n', f);
  for (size_t i = 0; i < p->num_parts; i++) {
    const part *t = &p->parts[i];
    if (t->width != width)
      return loom_error_set(LOOM_EINVAL, "%s: \"%s\" has %lld outputs per sample but \"%s\" %lld; a CSV file holds "
                                         "one width (write HDF5)",
                            p->path, t->name, (long long)t->width, p->parts[0].name, (long long)width);
    for (int64_t s = 0; s < t->n; s++) {
      fprintf(f, "%s,%lld", t->name, (long long)t->indices[s]);
      for (int64_t k = 0; k < width; k++)
        fprintf(f, ",%.9g", (double)t->outputs[s * width + k]);
      fputc('\n', f);
    }
  }
  return 0;
}

static herr_t write_array(hid_t group, const char *name, hid_t type, int ndim, const hsize_t *dims, const void *data) {
  hid_t space = H5Screate_simple(ndim, dims, NULL);
  hid_t d = H5Dcreate2(group, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = d < 0 ? -1 : H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data);
  if (d >= 0)
    H5Dclose(d);
  H5Sclose(space);
  return st;
}

static int write_hdf5(const loom_predictions *p, const char *tmp) {
  loom_h5_quiet q = loom_h5_hush();
  hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = file < 0 ? -1 : 0;
  for (size_t i = 0; i < p->num_parts && st >= 0; i++) {
    const part *t = &p->parts[i];
    hid_t g = H5Gcreate2(file, t->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hsize_t dims[LOOM_MAX_DIMS + 1] = {(hsize_t)t->n};
    for (int k = 0; k < t->out_ndim; k++)
      dims[k + 1] = (hsize_t)t->out_shape[k];
    st = g < 0 ? -1 : write_array(g, "indices", H5T_NATIVE_INT64, 1, dims, t->indices);
    if (st >= 0)
      st = write_array(g, "outputs", H5T_NATIVE_FLOAT, t->out_ndim + 1, dims, t->outputs);
    if (g >= 0)
      H5Gclose(g);
  }
  if (file >= 0 && H5Fclose(file) < 0)
    st = -1;
  loom_h5_unhush(q);
  return st < 0 ? loom_error_set(LOOM_EIO, "cannot write the predictions %s: HDF5 failed writing it (is the disk full?)",
                                  p->path) : 0;
}

/* Writes p into `tmp`, a new file. */
static int write_file(const loom_predictions *p, const char *tmp) {
  if (!p->csv)
    return write_hdf5(p, tmp);
  FILE *f = fopen(tmp, "w");
  if (!f)
    return loom_error_set(LOOM_EIO, "cannot write the predictions %s: %s", p->path, strerror(errno));
  int rc = write_csv(p, f);
  bool failed = ferror(f) != 0;
  if (fclose(f) != 0 || failed)
    rc = rc < 0 ? rc : loom_error_set(LOOM_EIO, "cannot write the predictions %s: %s", p->path, strerror(errno));
  return rc;
}

int loom_predictions_close(loom_predictions *p) {
  if (!p)
    return loom_error_set(LOOM_EINVAL, "loom_predictions_close: no predictions");
  char tmp[4200];
  int rc = loom_deploy_temp(p->path, "predictions", tmp, sizeof tmp);
  if (rc < 0) {
    loom_predictions_discard(p);
    return rc;
  }
  rc = write_file(p, tmp);
  if (rc == 0 && rename(tmp, p->path) < 0)
    rc = loom_error_set(LOOM_EIO, "cannot write the predictions %s: %s", p->path, strerror(errno));
  if (rc < 0)
    unlink(tmp);
  loom_predictions_discard(p);
  return rc;
}

/* --- loom predict --- */

/* The names of what to predict: the config's infer* loaders, or the file's. */
static int predict_all(loom_config *c, const loom_predict_options *o, loom_predictions *out) {
  loom_model *model = loom_config_model(c);
  int rc = 0;
  size_t done = 0;
  for (size_t i = 0; i < loom_config_num_loaders(c) && rc == 0; i++) {
    const char *name = loom_config_loader_name(c, i);
    if (strncmp(name, "infer", 5) != 0 || (o->dataset && strcmp(name, "infer_dataset") != 0))
      continue;
    rc = loom_predict(model, loom_config_loader(c, name), name, out);
    done++;
  }
  if (rc == 0 && done == 0)
    rc = loom_error_set(LOOM_EINVAL, "%s defines no infer* loader to predict; add one to its \"loaders\", or give a "
                                     "dataset file (loom predict --dataset FILE)",
                        loom_config_name(c));
  return rc;
}

int loom_predict_config(loom_config *c, const loom_predict_options *o, char *used, size_t used_size) {
  if (!c || !o || !o->out)
    return loom_error_set(LOOM_EINVAL, "loom_predict_config: needs a config and an output file");
  int rc = o->dataset ? loom_config_add_dataset_file(c, o->dataset, "infer_dataset") : 0;
  loom_experiment *exp = NULL;
  if (rc == 0)
    rc = loom_deploy_build(c, o->resume, &exp, used, used_size);
  loom_predictions *out = rc == 0 ? loom_predictions_create(o->out) : NULL;
  if (rc == 0 && !out)
    rc = loom_last_error_code();
  if (rc == 0)
    rc = predict_all(c, o, out);
  if (rc == 0) {
    rc = loom_predictions_close(out);
    out = NULL;
  }
  loom_predictions_discard(out);
  loom_experiment_destroy(exp);
  return rc;
}
