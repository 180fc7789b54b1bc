/* A dataset over arrays the user hands in from C; they are copied. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/data.h"

typedef struct memory_dataset {
  float *x, *y;
  int64_t n, sample_size, target_size;
} memory_dataset;

static int64_t memory_length(void *data) { return ((memory_dataset *)data)->n; }

static int memory_fetch(void *data, const int64_t *indices, int64_t n, float *x, float *y) {
  const memory_dataset *d = data;
  for (int64_t i = 0; i < n; i++) {
    int64_t k = indices[i];
    if (k < 0 || k >= d->n)
      return loom_error_set(LOOM_EINVAL, "memory dataset: index %lld out of range [0, %lld)", (long long)k,
                            (long long)d->n);
    memcpy(x + i * d->sample_size, d->x + k * d->sample_size, (size_t)d->sample_size * sizeof *x);
    memcpy(y + i * d->target_size, d->y + k * d->target_size, (size_t)d->target_size * sizeof *y);
  }
  return 0;
}

static void memory_destroy(void *data) {
  memory_dataset *d = data;
  free(d->x);
  free(d->y);
  free(d);
}

static const loom_dataset_ops memory_ops = {"memory", memory_length, memory_fetch, memory_destroy};

static int64_t product(int ndim, const int64_t *shape) {
  int64_t p = 1;
  for (int i = 0; i < ndim; i++)
    p *= shape[i];
  return p;
}

loom_dataset *loom_memory_dataset_create(const float *x, const float *y, int64_t n, int sample_ndim,
                                         const int64_t *sample_shape, int target_ndim,
                                         const int64_t *target_shape) {
  static const int64_t no_targets[1] = {0};
  if (!y) /* unlabelled: targets of shape [0] */
    target_ndim = 1, target_shape = no_targets;
  if (!x || n < 1 || sample_ndim < 1 || sample_ndim >= LOOM_MAX_DIMS || target_ndim < 0 ||
      target_ndim >= LOOM_MAX_DIMS) {
    loom_error_set(LOOM_EINVAL, "loom_memory_dataset_create: need data, at least one sample, 1-3 sample "
                                "dimensions and 0-3 target dimensions");
    return NULL;
  }
  memory_dataset *d = calloc(1, sizeof *d);
  if (!d) {
    loom_error_oom("a memory dataset");
    return NULL;
  }
  d->n = n;
  d->sample_size = product(sample_ndim, sample_shape);
  d->target_size = product(target_ndim, target_shape);
  d->x = malloc((size_t)(n * d->sample_size) * sizeof *d->x);
  d->y = malloc((size_t)(n * d->target_size + 1) * sizeof *d->y); /* + 1: never malloc(0) */
  if (!d->x || !d->y) {
    memory_destroy(d);
    loom_error_oom("a memory dataset's arrays");
    return NULL;
  }
  memcpy(d->x, x, (size_t)(n * d->sample_size) * sizeof *d->x);
  if (y)
    memcpy(d->y, y, (size_t)(n * d->target_size) * sizeof *d->y);
  return loom_dataset_create(&memory_ops, d, sample_ndim, sample_shape, target_ndim, target_shape);
}
