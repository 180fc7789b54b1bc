/* loom/tensor.h - contiguous float32 tensors of up to 4 dimensions.
 *
 * A tensor either owns its buffer or views memory it does not own. Its
 * capacity only grows: resizing to a smaller batch reuses the buffer, so a
 * training loop allocates nothing per batch. A tensor lives in host memory,
 * or in a backend's memory (loom_tensor_create_on); code that reads values
 * on the host (metrics, loggers, checkpoints) goes through
 * loom_tensor_host_data, which costs nothing for host memory. */
#ifndef LOOM_TENSOR_H
#define LOOM_TENSOR_H

#include "loom/api.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_MAX_DIMS 4

typedef struct loom_tensor loom_tensor;

typedef struct loom_backend loom_backend;

/* A zero-filled tensor in host memory; NULL with loom_last_error() on failure. */
LOOM_API loom_tensor *loom_tensor_create(int ndim, const int64_t *shape);
/* The same in `backend`'s memory (NULL: host memory). */
LOOM_API loom_tensor *loom_tensor_create_on(loom_backend *backend, int ndim, const int64_t *shape);
/* A tensor that views `data` (not freed by loom_tensor_destroy). */
LOOM_API loom_tensor *loom_tensor_view(float *data, int ndim, const int64_t *shape);
LOOM_API void loom_tensor_destroy(loom_tensor *t);

/* Changes the shape; reallocates only when the new size exceeds the
 * capacity (an error for views). Contents are unspecified afterwards. */
LOOM_API int loom_tensor_resize(loom_tensor *t, int ndim, const int64_t *shape);

/* The tensor's memory: host memory for a host or CPU tensor, else the
 * backend's (not to be dereferenced on the host). */
LOOM_API float *loom_tensor_data(const loom_tensor *t);
/* Its backend; NULL for host memory. */
LOOM_API loom_backend *loom_tensor_backend(const loom_tensor *t);
/* The values on the host: the data itself for a host or CPU tensor, else a
 * copy made after the backend's pending ops, kept in the tensor and valid
 * until the tensor changes. NULL with loom_last_error() if the copy fails. */
LOOM_API const float *loom_tensor_host_data(const loom_tensor *t);
LOOM_API int loom_tensor_ndim(const loom_tensor *t);
/* Size of dimension i (negative i counts from the end). */
LOOM_API int64_t loom_tensor_dim(const loom_tensor *t, int i);
LOOM_API const int64_t *loom_tensor_shape(const loom_tensor *t);
LOOM_API int64_t loom_tensor_numel(const loom_tensor *t);

LOOM_API int loom_tensor_zero(loom_tensor *t);
/* Copies src's contents into dst, resizing dst to src's shape. */
LOOM_API int loom_tensor_copy(loom_tensor *dst, const loom_tensor *src);

/* Writes "[128, 784]" into buf; returns buf. */
LOOM_API char *loom_tensor_shape_str(const loom_tensor *t, char *buf, int size);

#ifdef __cplusplus
}
#endif
#endif
