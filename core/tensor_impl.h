#ifndef LOOM_CORE_TENSOR_IMPL_H
#define LOOM_CORE_TENSOR_IMPL_H

#include <stdbool.h>

#include "loom/backend.h"
#include "loom/tensor.h"

/* The layout, visible inside the library so hot loops read fields directly. */
struct loom_tensor {
  float *data; /* in the backend's memory (host memory when backend is NULL) */
  int ndim;
  int64_t shape[LOOM_MAX_DIMS];
  int64_t numel;
  int64_t capacity;
  bool owns;
  loom_backend *backend; /* NULL: host memory from the C allocator */
  float *host;           /* device tensors: loom_tensor_host_data's copy */
  int64_t host_capacity;
};

/* Moves t's contents to `backend`'s memory (NULL: host memory); nothing to
 * do if it is there already. Not for views. */
int loom_tensor_move_to(loom_tensor *t, loom_backend *backend);

#endif
