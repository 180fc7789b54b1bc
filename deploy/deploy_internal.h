#ifndef LOOM_DEPLOY_DEPLOY_INTERNAL_H
#define LOOM_DEPLOY_DEPLOY_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/deploy.h"
#include "loom/tensor.h"

/* One of a layer's parameter or buffer tensors, under PyTorch's name. */
typedef struct loom_named_tensor {
  char name[300]; /* "fc1.weight" */
  int ndim;
  int64_t shape[LOOM_MAX_DIMS + 1];
  const float *data;
} loom_named_tensor;

enum { LOOM_LAYER_MAX_TENSORS = 4 };

/* Layer i's tensors: a Linear's or Conv2d's weight (PyTorch's layout) and
 * bias, a BatchNorm's weight (gamma), bias (beta), running_mean and
 * running_var; another layer's parameters and buffers as flat "params" and
 * "buffers". *n of them (at most LOOM_LAYER_MAX_TENSORS). */
int loom_deploy_layer_tensors(loom_model *model, size_t i, loom_named_tensor *out, int *n);

/* Builds the config (*exp: the experiment, the caller's to destroy, also
 * after a failure) and loads the weights `resume` names ("best", "last":
 * in the experiment's logdir; else a checkpoint or weights file; NULL:
 * "best") into its model; `used` gets the file read. */
int loom_deploy_build(loom_config *config, const char *resume, loom_experiment **exp, char *used, size_t used_size);

/* Before writing the file `path` (the `what`: "ONNX model", "weights", ...)
 * under a temporary name renamed at the end: creates path's directory
 * (mkdir -p) and the empty temporary file, whose name `tmp` gets. An error
 * names `path` and the system's reason; no file is left behind. */
int loom_deploy_temp(const char *path, const char *what, char *tmp, size_t tmp_size);

#endif
