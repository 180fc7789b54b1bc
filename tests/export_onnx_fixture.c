/* Writes, for check_onnx.py, the MLP and CNN of deploy_models.h as ONNX
 * (NAME.onnx), fixed inputs (NAME.in: float32 [5, sample shape]) and loom's
 * outputs for them in evaluation mode (NAME.out: float32), into DIR. */
#include <stdio.h>
#include <string.h>

#include "deploy_models.h"

enum { BATCH = 5 };

static int write_floats(const char *dir, const char *name, const char *ext, const float *x, int64_t n) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.%s", dir, name, ext);
  FILE *f = fopen(path, "wb");
  int ok = f && fwrite(x, sizeof *x, (size_t)n, f) == (size_t)n;
  if (f)
    ok &= fclose(f) == 0;
  return ok ? 0 : -1;
}

static int one(const char *dir, const char *name, loom_model *m, const int64_t *shape) {
  if (!m)
    return -1;
  int64_t dims[3] = {BATCH, shape[0], shape[1]};
  loom_tensor *in = loom_tensor_create(3, dims);
  deploy_fill(loom_tensor_data(in), (size_t)loom_tensor_numel(in), 3, 2.0f);
  loom_model_set_train(m, false);
  const loom_tensor *out;
  char path[4096];
  snprintf(path, sizeof path, "%s/%s.onnx", dir, name);
  int rc = loom_model_forward(m, in, &out);
  if (rc == 0)
    rc = loom_export_onnx(m, path);
  if (rc == 0)
    rc = write_floats(dir, name, "in", loom_tensor_data(in), loom_tensor_numel(in));
  if (rc == 0)
    rc = write_floats(dir, name, "out", loom_tensor_host_data(out), loom_tensor_numel(out));
  if (rc < 0)
    fprintf(stderr, "export_onnx_fixture: %s: %s\n", name, loom_last_error());
  loom_tensor_destroy(in);
  loom_model_destroy(m);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: export_onnx_fixture DIR\n");
    return 2;
  }
  if (!loom_onnx_available()) {
    fprintf(stderr, "export_onnx_fixture: this loom was built without ONNX export\n");
    return 77;
  }
  return one(argv[1], "mlp", deploy_mlp(), deploy_mlp_shape()) < 0 || one(argv[1], "cnn", deploy_cnn(), deploy_cnn_shape()) < 0;
}
