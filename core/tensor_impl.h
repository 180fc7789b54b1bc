#ifndef LOOM_CORE_TENSOR_IMPL_H
#define LOOM_CORE_TENSOR_IMPL_H

#include <stdbool.h>

#include "loom/tensor.h"

/* The layout, visible inside the library so hot loops read fields directly. */
struct loom_tensor {
  float *data;
  int ndim;
  int64_t shape[LOOM_MAX_DIMS];
  int64_t numel;
  int64_t capacity;
  bool owns;
};

#endif
