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

/* Zeroes the whole buffer, capacity included. */
static int zero_all(loom_tensor *t) {
  size_t bytes = (size_t)t->capacity * sizeof(float);
  if (t->backend)
    return loom_backend_zero(t->backend, t->data, bytes);
  memset(t->data, 0, bytes);
  return 0;
}

static void set_shape(loom_tensor *t, int ndim, const int64_t *shape, int64_t numel) {
  t->ndim = ndim;
  memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  t->numel = numel;
}

/* Backend memory (host memory without one), rounded up to 64 bytes. */
static float *alloc_data(loom_backend *b, int64_t numel, int64_t *capacity) {
  size_t bytes = ((size_t)(numel ? numel : 1) * sizeof(float) + 63) & ~(size_t)63;
  /* 64-byte alignment keeps AVX-512 loads aligned for BLAS and our loops. */
  float *data = b ? loom_backend_alloc(b, bytes) : aligned_alloc(64, bytes);
  if (!data) {
    if (!b)
      loom_error_oom("tensor data");
    return NULL;
  }
  *capacity = (int64_t)(bytes / sizeof(float));
  return data;
}

static void free_data(loom_backend *b, float *data) {
  if (b)
    loom_backend_free(b, data);
  else
    free(data);
}

loom_tensor *loom_tensor_create_on(loom_backend *backend, int ndim, const int64_t *shape) {
  int64_t numel = 0;
  if (check_shape(ndim, shape, &numel) < 0)
    return NULL;
  loom_tensor *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("a tensor");
    return NULL;
  }
  t->backend = backend;
  t->data = alloc_data(backend, numel, &t->capacity);
  if (!t->data || zero_all(t) < 0) {
    free_data(backend, t->data);
    free(t);
    return NULL;
  }
  set_shape(t, ndim, shape, numel);
  t->owns = true;
  return t;
}

loom_tensor *loom_tensor_create(int ndim, const int64_t *shape) { return loom_tensor_create_on(NULL, ndim, shape); }

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
    free_data(t->backend, t->data);
  free(t->host);
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
    int64_t capacity;
    float *data = alloc_data(t->backend, numel, &capacity);
    if (!data)
      return LOOM_ENOMEM;
    free_data(t->backend, t->data);
    t->data = data;
    t->capacity = capacity;
  }
  set_shape(t, ndim, shape, numel);
  return 0;
}

float *loom_tensor_data(const loom_tensor *t) { return t->data; }
loom_backend *loom_tensor_backend(const loom_tensor *t) { return t->backend; }

static bool on_host(const loom_tensor *t) { return !t->backend || loom_backend_device(t->backend) == LOOM_DEVICE_CPU; }

const float *loom_tensor_host_data(const loom_tensor *ct) {
  if (on_host(ct))
    return ct->data;
  loom_tensor *t = (loom_tensor *)ct; /* the host copy is a cache: logically const */
  if (t->numel > t->host_capacity) {
    float *host = realloc(t->host, (size_t)t->numel * sizeof *host);
    if (!host) {
      loom_error_oom("a tensor's host copy");
      return NULL;
    }
    t->host = host;
    t->host_capacity = t->numel;
  }
  if (loom_backend_to_host(t->backend, t->host, t->data, (size_t)t->numel * sizeof(float)) < 0)
    return NULL;
  return t->host;
}

int loom_tensor_ndim(const loom_tensor *t) { return t->ndim; }
const int64_t *loom_tensor_shape(const loom_tensor *t) { return t->shape; }
int64_t loom_tensor_numel(const loom_tensor *t) { return t->numel; }

int64_t loom_tensor_dim(const loom_tensor *t, int i) {
  if (i < 0)
    i += t->ndim;
  return (i >= 0 && i < t->ndim) ? t->shape[i] : 0;
}

int loom_tensor_zero(loom_tensor *t) {
  size_t bytes = (size_t)t->numel * sizeof(float);
  if (t->backend)
    return loom_backend_zero(t->backend, t->data, bytes);
  memset(t->data, 0, bytes);
  return 0;
}

int loom_tensor_move_to(loom_tensor *t, loom_backend *backend) {
  if (t->backend == backend)
    return 0;
  if (!t->owns)
    return loom_error_set(LOOM_ESTATE, "tensor: a view cannot move to another backend");
  loom_tensor *moved = loom_tensor_create_on(backend, t->ndim, t->shape);
  if (!moved)
    return loom_last_error_code();
  int rc = loom_tensor_copy(moved, t);
  if (rc < 0) {
    loom_tensor_destroy(moved);
    return rc;
  }
  free_data(t->backend, t->data);
  free(t->host);
  t->data = moved->data, t->capacity = moved->capacity, t->backend = backend;
  t->host = NULL, t->host_capacity = 0;
  moved->owns = false;
  loom_tensor_destroy(moved);
  return 0;
}

/* Between host memory and a backend, or within one; across two devices,
 * through the host. */
int loom_tensor_copy(loom_tensor *dst, const loom_tensor *src) {
  int rc = loom_tensor_resize(dst, src->ndim, src->shape);
  if (rc < 0)
    return rc;
  size_t bytes = (size_t)src->numel * sizeof(float);
  if (dst->backend == src->backend)
    return dst->backend ? loom_backend_copy(dst->backend, dst->data, src->data, bytes)
                        : (memcpy(dst->data, src->data, bytes), 0);
  if (on_host(src))
    return dst->backend ? loom_backend_from_host(dst->backend, dst->data, src->data, bytes)
                        : (memcpy(dst->data, src->data, bytes), 0);
  const float *host = loom_tensor_host_data(src);
  if (!host)
    return loom_last_error_code();
  return on_host(dst) ? (memcpy(dst->data, host, bytes), 0) : loom_backend_from_host(dst->backend, dst->data, host, bytes);
}

char *loom_tensor_shape_str(const loom_tensor *t, char *buf, int size) {
  int off = snprintf(buf, (size_t)size, "[");
  for (int i = 0; i < t->ndim && off < size; i++)
    off += snprintf(buf + off, (size_t)(size - off), i ? ", %lld" : "%lld", (long long)t->shape[i]);
  if (off < size)
    snprintf(buf + off, (size_t)(size - off), "]");
  return buf;
}
