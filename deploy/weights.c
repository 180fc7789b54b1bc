/* The weights as HDF5 (names, shapes, dtypes) and the architecture beside
 * them as JSON. */
#include <errno.h>
#include <hdf5.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/hdf5_quiet.h"
#include "deploy/deploy_internal.h"

static herr_t string_attr(hid_t obj, const char *name, const char *value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, strlen(value) + 1);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = a < 0 ? -1 : H5Awrite(a, type, value);
  if (a >= 0)
    H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
  return st;
}

static herr_t write_tensor(hid_t file, const loom_named_tensor *t, const char *layer, const char *type) {
  hsize_t dims[LOOM_MAX_DIMS + 1];
  for (int k = 0; k < t->ndim; k++)
    dims[k] = (hsize_t)t->shape[k];
  hid_t space = H5Screate_simple(t->ndim, dims, NULL);
  hid_t d = H5Dcreate2(file, t->name, H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = d < 0 ? -1 : H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data);
  if (st >= 0)
    st = string_attr(d, "layer", layer);
  if (st >= 0)
    st = string_attr(d, "type", type);
  if (d >= 0)
    H5Dclose(d);
  H5Sclose(space);
  return st;
}

int loom_export_weights(loom_model *m, const char *architecture, const char *path) {
  if (!m || !path || !loom_model_is_built(m))
    return loom_error_set(LOOM_EINVAL, "loom_export_weights: needs a built model and a file name");
  char tmp[4200];
  int rc = loom_deploy_temp(path, "weights", tmp, sizeof tmp);
  if (rc < 0)
    return rc;
  loom_h5_quiet q = loom_h5_hush();
  hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = file < 0 ? -1 : 0;
  for (size_t i = 0; i < loom_model_num_layers(m) && st >= 0; i++) {
    loom_named_tensor t[LOOM_LAYER_MAX_TENSORS];
    int n;
    loom_deploy_layer_tensors(m, i, t, &n);
    for (int k = 0; k < n && st >= 0; k++)
      st = write_tensor(file, &t[k], loom_model_layer_name(m, i), loom_layer_type(loom_model_layer(m, i)));
  }
  if (st >= 0 && architecture)
    st = string_attr(file, "architecture", architecture);
  if (file >= 0 && H5Fclose(file) < 0)
    st = -1;
  loom_h5_unhush(q);
  if (st < 0) {
    unlink(tmp);
    return loom_error_set(LOOM_EIO, "cannot write the weights %s: HDF5 failed writing it (is the disk full?)", path);
  }
  if (rename(tmp, path) < 0) {
    int e = errno;
    unlink(tmp);
    return loom_error_set(LOOM_EIO, "cannot write the weights %s: %s", path, strerror(e));
  }
  return 0;
}

static json_t *shape_json(int ndim, const int64_t *shape) {
  json_t *a = json_array();
  for (int k = 0; k < ndim && a; k++)
    json_array_append_new(a, json_integer((json_int_t)shape[k]));
  return a;
}

static json_t *layer_json(loom_model *m, size_t i) {
  int64_t shape[LOOM_MAX_DIMS];
  int ndim = loom_model_layer_output_shape(m, i, shape);
  json_t *tensors = json_array();
  loom_named_tensor t[LOOM_LAYER_MAX_TENSORS];
  int n;
  loom_deploy_layer_tensors(m, i, t, &n);
  for (int k = 0; k < n && tensors; k++)
    json_array_append_new(tensors, json_pack("{ssso*ss}", "name", t[k].name, "shape", shape_json(t[k].ndim, t[k].shape),
                                             "dtype", "float32"));
  return json_pack("{ssssso*so*}", "name", loom_model_layer_name(m, i), "type", loom_layer_type(loom_model_layer(m, i)),
                   "output_shape", shape_json(ndim, shape), "tensors", tensors);
}

int loom_export_architecture(loom_model *m, const char *model_json, const char *path) {
  if (!m || !path || !loom_model_is_built(m))
    return loom_error_set(LOOM_EINVAL, "loom_export_architecture: needs a built model and a file name");
  json_t *model = NULL;
  if (model_json) {
    json_error_t e;
    if (!(model = json_loads(model_json, 0, &e)))
      return loom_error_set(LOOM_EINVAL, "loom_export_architecture: the model's JSON does not parse: %s", e.text);
  }
  int64_t in[LOOM_MAX_DIMS];
  int in_ndim = loom_model_input_shape(m, in);
  json_t *layers = json_array();
  for (size_t i = 0; i < loom_model_num_layers(m) && layers; i++)
    json_array_append_new(layers, layer_json(m, i));
  json_t *doc = json_pack("{so*so*so*ss}", "model", model ? model : json_null(), "input_shape", shape_json(in_ndim, in),
                          "layers", layers, "weights_dtype", "float32");
  char tmp[4200] = "";
  int rc = doc ? loom_deploy_temp(path, "architecture", tmp, sizeof tmp) : loom_error_oom("the architecture");
  if (rc == 0 && json_dump_file(doc, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) != 0)
    rc = loom_error_set(LOOM_EIO, "cannot write the architecture %s: %s", path, strerror(errno));
  if (rc == 0 && rename(tmp, path) < 0)
    rc = loom_error_set(LOOM_EIO, "cannot write the architecture %s: %s", path, strerror(errno));
  if (rc < 0 && tmp[0])
    unlink(tmp);
  json_decref(doc);
  return rc;
}
