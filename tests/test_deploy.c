/* Predictions and export (loom/deploy.h): the written outputs read back
 * equal a forward pass in evaluation mode, with the right sample indices,
 * as HDF5 and CSV, for labelled and unlabelled datasets, from C and from a
 * config; the weights file holds names, shapes and values; ONNX export
 * names a layer it cannot map (its graph is checked by check_onnx.py). */
#include <hdf5.h>
#include <math.h>
#include <unistd.h>

#include "helpers.h"
#include "deploy_models.h"

enum { N = 10 };

/* N samples of `shape` (deterministic), and labels unless `unlabelled`. */
static loom_dataset *samples(int ndim, const int64_t *shape, bool unlabelled, float **x_out) {
  int64_t size = 1;
  for (int i = 0; i < ndim; i++)
    size *= shape[i];
  float *x = malloc((size_t)(N * size) * sizeof *x), y[N];
  deploy_fill(x, (size_t)(N * size), 5, 1.0f);
  for (int i = 0; i < N; i++)
    y[i] = (float)(i % 3);
  loom_dataset *ds = loom_memory_dataset_create(x, unlabelled ? NULL : y, N, ndim, shape, 0, NULL);
  *x_out = x;
  return ds;
}

/* The model's outputs for all N samples in one evaluation forward, each
 * sample's `width` values at its index. */
static float *expected(loom_model *m, const float *x, int ndim, const int64_t *shape, int64_t *width) {
  int64_t dims[4] = {N};
  memcpy(dims + 1, shape, (size_t)ndim * sizeof *shape);
  loom_tensor *in = loom_tensor_create(ndim + 1, dims);
  memcpy(loom_tensor_data(in), x, (size_t)loom_tensor_numel(in) * sizeof(float));
  loom_model_set_train(m, false);
  const loom_tensor *out;
  assert_int_equal(loom_model_forward(m, in, &out), 0);
  loom_model_set_train(m, true);
  *width = loom_tensor_numel(out) / N;
  float *y = malloc((size_t)loom_tensor_numel(out) * sizeof *y);
  memcpy(y, loom_tensor_host_data(out), (size_t)loom_tensor_numel(out) * sizeof *y);
  loom_tensor_destroy(in);
  return y;
}

/* Each sample's written outputs equal the expected ones within `tol`, and
 * the indices cover 0..N-1 once. */
static void check_outputs(const int64_t *indices, const float *outputs, int64_t n, const float *want, int64_t width,
                          double tol) {
  assert_int_equal(n, N);
  bool seen[N] = {false};
  for (int64_t s = 0; s < n; s++) {
    int64_t k = indices[s];
    assert_true(k >= 0 && k < N && !seen[k]);
    seen[k] = true;
    for (int64_t j = 0; j < width; j++)
      assert_float_equal(outputs[s * width + j], want[k * width + j], tol);
  }
}

/* /NAME/indices and /NAME/outputs of an HDF5 predictions file. */
static void read_h5(const char *path, const char *name, int64_t *indices, float *outputs, int64_t *n, int *out_ndim) {
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  assert_true(f >= 0);
  char key[256];
  snprintf(key, sizeof key, "/%s/indices", name);
  hid_t d = H5Dopen2(f, key, H5P_DEFAULT);
  assert_true(d >= 0);
  hid_t space = H5Dget_space(d);
  hsize_t dims[8];
  H5Sget_simple_extent_dims(space, dims, NULL);
  *n = (int64_t)dims[0];
  H5Sclose(space);
  assert_true(H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, indices) >= 0);
  H5Dclose(d);
  snprintf(key, sizeof key, "/%s/outputs", name);
  d = H5Dopen2(f, key, H5P_DEFAULT);
  space = H5Dget_space(d);
  *out_ndim = H5Sget_simple_extent_ndims(space) - 1;
  H5Sclose(space);
  assert_true(H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, outputs) >= 0);
  H5Dclose(d);
  H5Fclose(f);
}

/* An MLP with Dropout over a shuffled labelled loader, to HDF5: outputs
 * are the evaluation forward's (Dropout off) at the shuffled indices, and
 * the model is left in training mode as it was. */
static void test_predict_hdf5(void **state) {
  (void)state;
  loom_model *m = deploy_mlp();
  float *x;
  loom_dataset *ds = samples(2, deploy_mlp_shape(), false, &x);
  int64_t width;
  float *want = expected(m, x, 2, deploy_mlp_shape(), &width);
  assert_int_equal(width, 3);
  loom_loader *l = loom_loader_create(ds, &(loom_loader_options){.batch_size = 4, .shuffle = true});
  char path[512];
  snprintf(path, sizeof path, "%s/out/pred.h5", test_dir);
  loom_predictions *p = loom_predictions_create(path);
  assert_int_equal(loom_predict(m, l, "infer", p), 0);
  assert_true(loom_model_is_train(m));
  assert_int_equal(loom_predictions_count(p, "infer"), N);
  assert_int_equal(loom_predict(m, l, "infer", p), LOOM_EINVAL); /* a name once per file */
  assert_int_equal(loom_predictions_close(p), 0);
  int64_t indices[N], n;
  float outputs[N * 3];
  int out_ndim;
  read_h5(path, "infer", indices, outputs, &n, &out_ndim);
  assert_int_equal(out_ndim, 1);
  bool shuffled = false;
  for (int i = 0; i < N; i++)
    shuffled |= indices[i] != i;
  assert_true(shuffled);
  check_outputs(indices, outputs, n, want, width, 1e-6);
  free(want);
  free(x);
  loom_loader_destroy(l);
  loom_model_destroy(m);
}

/* "loader,index,output_0,..." rows back into indices and outputs. */
static int64_t read_csv(const char *path, const char *name, int64_t width, int64_t *indices, float *outputs) {
  char *text = test_read_file(path);
  assert_non_null(text);
  char header[256] = "loader,index";
  for (int64_t j = 0; j < width; j++)
    snprintf(header + strlen(header), sizeof header - strlen(header), ",output_%lld", (long long)j);
  assert_memory_equal(text, header, strlen(header));
  int64_t n = 0;
  for (char *line = strchr(text, '\n'); line && line[1]; line = strchr(line + 1, '\n')) {
    char *p = line + 1;
    assert_memory_equal(p, name, strlen(name));
    p += strlen(name) + 1;
    indices[n] = strtoll(p, &p, 10);
    for (int64_t j = 0; j < width; j++)
      outputs[n * width + j] = strtof(p + 1, &p);
    n++;
  }
  free(text);
  return n;
}

/* A CNN with BatchNorm over an unlabelled dataset, to CSV: the running
 * statistics, not the batch's, and the values read back exactly. */
static void test_predict_csv_unlabelled(void **state) {
  (void)state;
  loom_model *m = deploy_cnn();
  float *x;
  loom_dataset *ds = samples(2, deploy_cnn_shape(), true, &x);
  assert_false(loom_dataset_is_labelled(ds));
  int64_t width;
  float *want = expected(m, x, 2, deploy_cnn_shape(), &width);
  assert_int_equal(width, 5);
  loom_loader *l = loom_loader_create(ds, &(loom_loader_options){.batch_size = 3});
  char path[512];
  snprintf(path, sizeof path, "%s/pred.csv", test_dir);
  loom_predictions *p = loom_predictions_create(path);
  assert_int_equal(loom_predict(m, l, "infer_new", p), 0);
  assert_int_equal(loom_predictions_close(p), 0);
  int64_t indices[N];
  float outputs[N * 5];
  int64_t n = read_csv(path, "infer_new", width, indices, outputs);
  for (int i = 0; i < N; i++)
    assert_int_equal(indices[i], i); /* sequential */
  check_outputs(indices, outputs, n, want, width, 1e-6);
  free(want);
  free(x);
  loom_loader_destroy(l);
  loom_model_destroy(m);
}

/* An HDF5 file with "images" only (no labels). */
static void write_unlabelled_h5(const char *path, const float *x, int64_t features) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hsize_t dims[2] = {N, (hsize_t)features};
  hid_t space = H5Screate_simple(2, dims, NULL);
  hid_t d = H5Dcreate2(f, "images", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) >= 0);
  H5Dclose(d);
  H5Sclose(space);
  H5Fclose(f);
}

static const char *config_text = "{\"experiment\": {\"name\": \"p\", \"seed\": 1, \"logdir\": \"%s/logs\"},"
                                 " \"datasets\": {\"d\": {\"type\": \"csv\", \"file\": \"%s\"}},"
                                 " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 4},"
                                 "               \"infer\": {\"dataset\": \"d\", \"batch_size\": 3}},"
                                 " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 5, 3]},"
                                 " \"stages\": {\"s\": {\"num_epochs\": 1, \"loaders\": [\"train\"],"
                                 "   \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1}}}}";

static loom_config *tiny_config(void) {
  char csv[512], text[2048];
  snprintf(csv, sizeof csv, "%s/d.csv", test_dir);
  FILE *f = fopen(csv, "w");
  for (int i = 0; i < N; i++)
    fprintf(f, "%g,%g,%g,%g,%d\n", i * 0.1, 1 - i * 0.05, (i % 4) * 0.25, -0.3 * i, i % 3);
  fclose(f);
  snprintf(text, sizeof text, config_text, test_dir, csv);
  return loom_config_parse(text, "tiny.json");
}

/* loom predict's C side: weights from a file, the config's infer loader
 * (which no stage runs) and an unlabelled HDF5 file given as --dataset. */
static void test_predict_config(void **state) {
  (void)state;
  /* Weights unlike the config's initialisation, saved to a file. */
  loom_config *c = tiny_config();
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), 0);
  assert_non_null(loom_config_loader(c, "infer"));
  loom_model *m = loom_config_model(c);
  deploy_randomize(m, 7);
  char weights[512], out[512], h5[512];
  snprintf(weights, sizeof weights, "%s/w.h5", test_dir);
  assert_int_equal(loom_model_save_weights(m, weights), 0);
  float x[N * 4];
  deploy_fill(x, N * 4, 9, 1.0f);
  int64_t width, features = 4;
  float *want = expected(m, x, 1, &features, &width);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);

  snprintf(h5, sizeof h5, "%s/new.h5", test_dir);
  write_unlabelled_h5(h5, x, 4);
  snprintf(out, sizeof out, "%s/pred_config.h5", test_dir);
  c = tiny_config();
  char used[512];
  loom_predict_options o = {.resume = weights, .dataset = h5, .out = out};
  assert_int_equal(loom_predict_config(c, &o, used, sizeof used), 0);
  assert_string_equal(used, weights);
  loom_config_destroy(c);
  int64_t indices[N], n;
  float outputs[N * 3];
  int out_ndim;
  read_h5(out, "infer_dataset", indices, outputs, &n, &out_ndim);
  check_outputs(indices, outputs, n, want, width, 1e-6);
  free(want);

  /* Without --dataset: the config's infer loader, over the CSV's features. */
  c = tiny_config();
  o.dataset = NULL;
  assert_int_equal(loom_predict_config(c, &o, NULL, 0), 0);
  loom_config_destroy(c);
  read_h5(out, "infer", indices, outputs, &n, &out_ndim);
  assert_int_equal(n, N);

  /* No checkpoint in the logdir: the error says where it looked. */
  c = tiny_config();
  o.resume = "best";
  assert_true(loom_predict_config(c, &o, NULL, 0) < 0);
  assert_non_null(strstr(loom_last_error(), "no \"best\" checkpoint"));
  loom_config_destroy(c);
}

/* IDX files of N 2x2 byte images and labels, big-endian headers. */
static void write_idx(const char *images, const char *labels) {
  FILE *f = fopen(images, "wb");
  assert_non_null(f);
  const unsigned char head[] = {0, 0, 8, 3, 0, 0, 0, N, 0, 0, 0, 2, 0, 0, 0, 2};
  fwrite(head, 1, sizeof head, f);
  for (int i = 0; i < N * 4; i++)
    fputc((i * 37 + 11) % 256, f);
  fclose(f);
  f = fopen(labels, "wb");
  assert_non_null(f);
  const unsigned char lhead[] = {0, 0, 8, 1, 0, 0, 0, N};
  fwrite(lhead, 1, sizeof lhead, f);
  for (int i = 0; i < N; i++)
    fputc(i % 3, f);
  fclose(f);
}

/* The README's flow: a config trained on IDX files predicts the HDF5 file
 * loom convert idx made of them, and gets the outputs it gets for the IDX
 * files themselves (the bytes scaled by 1/255 as the IDX dataset does, the
 * loader's normalize applied). */
static void test_predict_converted_idx(void **state) {
  (void)state;
  char images[512], labels[512], h5[512], weights[512], out[512], text[2048];
  snprintf(images, sizeof images, "%s/img.idx", test_dir);
  snprintf(labels, sizeof labels, "%s/lab.idx", test_dir);
  snprintf(h5, sizeof h5, "%s/conv/converted.h5", test_dir);
  snprintf(weights, sizeof weights, "%s/w_idx.h5", test_dir);
  snprintf(out, sizeof out, "%s/pred_idx.h5", test_dir);
  write_idx(images, labels);
  assert_int_equal(loom_idx_to_hdf5(images, labels, h5), 0);
  snprintf(text, sizeof text,
           "{\"experiment\": {\"name\": \"p\", \"seed\": 1, \"logdir\": \"%s/logs_idx\"},"
           " \"datasets\": {\"d\": {\"type\": \"idx\", \"images\": \"%s\", \"labels\": \"%s\"}},"
           " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 4},"
           "   \"infer\": {\"dataset\": \"d\", \"batch_size\": 3,"
           "     \"transforms\": [{\"type\": \"normalize\", \"mean\": 0.3, \"std\": 0.4}]}},"
           " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 5, 3]},"
           " \"stages\": {\"s\": {\"num_epochs\": 1, \"loaders\": [\"train\"],"
           "   \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1}}}}",
           test_dir, images, labels);
  loom_config *c = loom_config_parse(text, "idx.json");
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), 0);
  deploy_randomize(loom_config_model(c), 3);
  assert_int_equal(loom_model_save_weights(loom_config_model(c), weights), 0);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);

  int64_t idx_a[N], idx_b[N], n;
  float out_a[N * 3], out_b[N * 3];
  int out_ndim;
  c = loom_config_parse(text, "idx.json");
  loom_predict_options o = {.resume = weights, .out = out};
  assert_int_equal(loom_predict_config(c, &o, NULL, 0), 0); /* the IDX files */
  loom_config_destroy(c);
  read_h5(out, "infer", idx_a, out_a, &n, &out_ndim);
  assert_int_equal(n, N);
  c = loom_config_parse(text, "idx.json");
  o.dataset = h5;
  assert_int_equal(loom_predict_config(c, &o, NULL, 0), 0); /* their HDF5 conversion */
  loom_config_destroy(c);
  read_h5(out, "infer_dataset", idx_b, out_b, &n, &out_ndim);
  float want[N * 3];
  for (int i = 0; i < N; i++)
    memcpy(want + idx_a[i] * 3, out_a + i * 3, 3 * sizeof *want);
  check_outputs(idx_b, out_b, n, want, 3, 1e-6);
}

/* A stage that trains on an unlabelled dataset is refused by name. */
static void test_train_unlabelled_refused(void **state) {
  (void)state;
  float *x;
  int64_t features = 4;
  loom_dataset *ds = samples(1, &features, true, &x);
  free(x);
  loom_experiment *exp = loom_experiment_create("u");
  char logdir[512];
  snprintf(logdir, sizeof logdir, "%s/u", test_dir);
  loom_experiment_set_logdir(exp, logdir);
  loom_stage *s = loom_experiment_add_stage(exp, "s", 1);
  loom_stage_set_model(s, loom_mlp_create((int64_t[]){4, 3}, 2, 1));
  loom_stage_set_criterion(s, loom_cross_entropy_create());
  loom_stage_set_optimizer(s, loom_sgd_create(&(loom_sgd_options){.lr = 0.1}));
  loom_stage_add_loader(s, "train", loom_loader_create(ds, &(loom_loader_options){.batch_size = 4}));
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "loader \"train\" has an unlabelled dataset"));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* The weights file: one dataset per tensor, PyTorch's names and shapes,
 * the values; the architecture beside it. */
static void test_export_weights(void **state) {
  (void)state;
  loom_model *m = deploy_cnn();
  char path[512], arch[512];
  snprintf(path, sizeof path, "%s/cnn.h5", test_dir);
  snprintf(arch, sizeof arch, "%s/cnn.json", test_dir);
  assert_int_equal(loom_export_weights(m, "{\"type\": \"sequential\"}", path), 0);
  assert_int_equal(loom_export_architecture(m, "{\"type\": \"sequential\"}", arch), 0);
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "conv2.weight", H5P_DEFAULT);
  assert_true(d >= 0);
  hid_t space = H5Dget_space(d), type = H5Dget_type(d);
  hsize_t dims[4];
  assert_int_equal(H5Sget_simple_extent_dims(space, dims, NULL), 4);
  assert_true(dims[0] == 4 && dims[1] == 4 && dims[2] == 3 && dims[3] == 3);
  assert_true(H5Tequal(type, H5T_IEEE_F32LE) > 0);
  float w[4 * 4 * 9];
  H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, w);
  size_t off, count;
  loom_model_layer_params(m, 4, &off, &count);
  assert_int_equal(count, 4 * 4 * 9); /* no bias */
  assert_memory_equal(w, loom_model_params(m) + off, sizeof w);
  H5Tclose(type), H5Sclose(space), H5Dclose(d);
  assert_int_equal(H5Lexists(f, "conv2.bias", H5P_DEFAULT), 0);
  d = H5Dopen2(f, "bn3.running_var", H5P_DEFAULT);
  float var[6];
  H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, var);
  loom_model_layer_buffers(m, 10, &off, &count);
  assert_int_equal(count, 12);
  assert_memory_equal(var, loom_model_buffers(m) + off + 6, sizeof var);
  H5Dclose(d);
  assert_true(H5Aexists(f, "architecture") > 0);
  H5Fclose(f);
  json_t *doc = json_load_file(arch, 0, NULL);
  assert_non_null(doc);
  json_t *layers = json_object_get(doc, "layers");
  assert_int_equal(json_array_size(layers), 13);
  json_t *fc = json_array_get(layers, 12);
  assert_string_equal(json_string_value(json_object_get(fc, "type")), "Linear");
  json_t *t = json_array_get(json_object_get(fc, "tensors"), 0);
  assert_string_equal(json_string_value(json_object_get(t, "name")), "fc.weight");
  assert_string_equal(json_string_value(json_object_get(t, "dtype")), "float32");
  assert_int_equal(json_integer_value(json_array_get(json_object_get(t, "shape"), 1)), 6);
  assert_string_equal(json_string_value(json_object_get(json_object_get(doc, "model"), "type")), "sequential");
  json_decref(doc);
  loom_model_destroy(m);
}

/* Whether `dir` holds a file whose name contains ".tmp". */
static bool has_temp_file(const char *dir) {
  char cmd[700];
  snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q '\\.tmp'", dir);
  return system(cmd) == 0;
}

/* Predictions, weights, architecture and ONNX written to a directory that
 * does not exist yet create it (as loom convert does); one that cannot be
 * created is an error naming the file and the reason, leaving nothing. */
static void test_export_creates_directories(void **state) {
  (void)state;
  loom_model *m = deploy_cnn();
  char dir[512], path[600], want[1400];
  snprintf(dir, sizeof dir, "%s/new/sub", test_dir);
  snprintf(path, sizeof path, "%s/w.h5", dir);
  assert_int_equal(loom_export_weights(m, NULL, path), 0);
  snprintf(path, sizeof path, "%s/arch/w.json", dir);
  assert_int_equal(loom_export_architecture(m, NULL, path), 0);
  assert_int_equal(access(path, F_OK), 0);
  snprintf(path, sizeof path, "%s/p/preds.csv", dir);
  loom_predictions *p = loom_predictions_create(path);
  assert_int_equal(loom_predictions_close(p), 0);
  assert_int_equal(access(path, F_OK), 0);
  if (loom_onnx_available()) {
    snprintf(path, sizeof path, "%s/onnx/m.onnx", dir);
    assert_int_equal(loom_export_onnx(m, path), 0);
    assert_int_equal(access(path, F_OK), 0);
  }
  assert_false(has_temp_file(dir));
  /* A file where the directory should be: each error names the final file once. */
  snprintf(path, sizeof path, "%s/w.h5/x.h5", dir);
  assert_int_equal(loom_export_weights(m, NULL, path), LOOM_EIO);
  snprintf(want, sizeof want, "cannot write the weights %s: \"%s/w.h5\" exists but is not a directory; choose "
                              "another path", path, dir);
  assert_string_equal(loom_last_error(), want);
  snprintf(path, sizeof path, "%s/w.h5/x.json", dir);
  assert_int_equal(loom_export_architecture(m, NULL, path), LOOM_EIO);
  assert_non_null(strstr(loom_last_error(), "cannot write the architecture"));
  snprintf(path, sizeof path, "%s/w.h5/x.h5", dir);
  p = loom_predictions_create(path);
  assert_int_equal(loom_predictions_close(p), LOOM_EIO);
  assert_non_null(strstr(loom_last_error(), "cannot write the predictions"));
  if (loom_onnx_available()) {
    snprintf(path, sizeof path, "%s/w.h5/x.onnx", dir);
    assert_int_equal(loom_export_onnx(m, path), LOOM_EIO);
    snprintf(want, sizeof want, "cannot write the ONNX model %s: \"%s/w.h5\" exists but is not a directory; choose "
                                "another path", path, dir);
    assert_string_equal(loom_last_error(), want);
  }
  assert_false(has_temp_file(dir));
  loom_model_destroy(m);
}

static int same_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)data;
  *out_ndim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *in);
  return 0;
}

static int copy_forward(void *data, const loom_tensor *in, loom_tensor *out, bool train, loom_rng *rng) {
  (void)data, (void)train, (void)rng;
  return loom_tensor_copy(out, in);
}

static int copy_backward(void *data, const loom_tensor *in, const loom_tensor *out, const loom_tensor *dout,
                         loom_tensor *din, bool param_grads) {
  (void)data, (void)in, (void)out, (void)param_grads;
  return din ? loom_tensor_copy(din, dout) : 0;
}

/* A layer ONNX has no operator for is named; without protobuf-c the error
 * says what to install. */
static void test_export_onnx_errors(void **state) {
  (void)state;
  static const loom_layer_ops mine = {.type = "MyLayer", .output_shape = same_shape, .forward = copy_forward,
                                      .backward = copy_backward};
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(4, 4, true)), 0);
  assert_int_equal(loom_model_add(m, "mine", loom_layer_create(&mine, NULL)), 0);
  assert_int_equal(loom_model_build(m, 1, (int64_t[]){4}, 1), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/mine.onnx", test_dir);
  int rc = loom_export_onnx(m, path);
  if (loom_onnx_available()) {
    assert_int_equal(rc, LOOM_ENOTSUP);
    assert_non_null(strstr(loom_last_error(), "layer \"mine\" (MyLayer) has no ONNX mapping"));
  } else {
    assert_int_equal(rc, LOOM_ENOTSUP);
    assert_non_null(strstr(loom_last_error(), "built without ONNX export"));
  }
  assert_int_equal(access(path, F_OK), -1); /* nothing left behind */
  loom_model_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_predict_hdf5),         cmocka_unit_test(test_predict_csv_unlabelled),
      cmocka_unit_test(test_predict_config),       cmocka_unit_test(test_predict_converted_idx),
      cmocka_unit_test(test_train_unlabelled_refused),
      cmocka_unit_test(test_export_weights),       cmocka_unit_test(test_export_creates_directories),
      cmocka_unit_test(test_export_onnx_errors),
  };
  return cmocka_run_group_tests(tests, test_dir_setup, test_dir_teardown);
}
