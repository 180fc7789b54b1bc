#include "core/tensor_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"

static int check_shape(int ndim, const int64_t *shape, int64_t *numel) {
  if (ndim < 1 || ndim > LOOM_MAX_DIMS)
    return loom_error_set(LOOM_EINVAL, "tensor: %d dimensions requested; loom tensors have 1 to %d",
                          ndim, LOOM_MAX_DIMS);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0)
      return loom_error_set(LOOM_EINVAL, "tensor: dimension %d has negative size %lld", i,
                            (long long)shape[i]);
    n *= shape[i];
  }
  *numel = n;
  return 0;
}

static void set_shape(loom_tensor *t, int ndim, const int64_t *shape, int64_t numel) {
  t->ndim = ndim;
  memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  t->numel = numel;
}

loom_tensor *loom_tensor_create(int ndim, const int64_t *shape) {
  int64_t numel = 0;
  if (check_shape(ndim, shape, &numel) < 0)
    return NULL;
  loom_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("a tensor");
    return NULL;
  }
  /* 64-byte alignment keeps AVX-512 loads aligned for BLAS and our loops. */
  size_t bytes = ((size_t)(numel ? numel : 1) * sizeof(float) + 63) & ~(size_t)63;
  t->data = aligned_alloc(64, bytes);
  if (!t->data) {
    free(t);
    loom_error_oom("tensor data");
    return NULL;
  }
  memset(t->data, 0, bytes);
  set_shape(t, ndim, shape, numel);
  t->capacity = (int64_t)(bytes / sizeof(float));
  t->owns = true;
  return t;
}

loom_tensor *loom_tensor_view(float *data, int ndim, const int64_t *shape) {
  int64_t numel = 0;
  if (check_shape(ndim, shape, &numel) < 0)
    return NULL;
  loom_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("a tensor view");
    return NULL;
  }
  t->data = data;
  set_shape(t, ndim, shape, numel);
  t->capacity = numel;
  t->owns = false;
  return t;
}

void loom_tensor_destroy(loom_tensor *t) {
  if (!t)
    return;
  if (t->owns)
    free(t->data);
  free(t);
}

int loom_tensor_resize(loom_tensor *t, int ndim, const int64_t *shape) {
  int64_t numel = 0;
  int rc = check_shape(ndim, shape, &numel);
  if (rc < 0)
    return rc;
  if (numel > t->capacity) {
    if (!t->owns)
      return loom_error_set(LOOM_ESTATE, "tensor: cannot grow a view from %lld to %lld elements",
                            (long long)t->capacity, (long long)numel);
    size_t bytes = ((size_t)numel * sizeof(float) + 63) & ~(size_t)63;
    float *data = aligned_alloc(64, bytes);
    if (!data)
      return loom_error_oom("tensor data");
    free(t->data);
    t->data = data;
    t->capacity = (int64_t)(bytes / sizeof(float));
  }
  set_shape(t, ndim, shape, numel);
  return 0;
}

float *loom_tensor_data(const loom_tensor *t) { return t->data; }
int loom_tensor_ndim(const loom_tensor *t) { return t->ndim; }
const int64_t *loom_tensor_shape(const loom_tensor *t) { return t->shape; }
int64_t loom_tensor_numel(const loom_tensor *t) { return t->numel; }

int64_t loom_tensor_dim(const loom_tensor *t, int i) {
  if (i < 0)
    i += t->ndim;
  return (i >= 0 && i < t->ndim) ? t->shape[i] : 0;
}

void loom_tensor_zero(loom_tensor *t) { memset(t->data, 0, (size_t)t->numel * sizeof(float)); }

int loom_tensor_copy(loom_tensor *dst, const loom_tensor *src) {
  int rc = loom_tensor_resize(dst, src->ndim, src->shape);
  if (rc < 0)
    return rc;
  memcpy(dst->data, src->data, (size_t)src->numel * sizeof(float));
  return 0;
}

char *loom_tensor_shape_str(const loom_tensor *t, char *buf, int size) {
  int off = snprintf(buf, (size_t)size, "[");
  for (int i = 0; i < t->ndim && off < size; i++)
    off += snprintf(buf + off, (size_t)(size - off), i ? ", %lld" : "%lld", (long long)t->shape[i]);
  if (off < size)
    snprintf(buf + off, (size_t)(size - off), "]");
  return buf;
}
