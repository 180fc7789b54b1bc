/* A dataset that standardises another's samples: x' = (x - mean) / std. */
#include <stdlib.h>

#include "core/error_internal.h"
#include "backends/cpu/simd.h"
#include "loom/data.h"

typedef struct normalize {
  loom_dataset *inner;
  float mean, inv_std;
  int64_t sample_size;
} normalize;

static int64_t normalize_length(void *data) { return loom_dataset_length(((normalize *)data)->inner); }

LOOM_HOT static int normalize_fetch(void *data, const int64_t *indices, int64_t n, float *x, float *y) {
  const normalize *d = data;
  int rc = loom_dataset_fetch(d->inner, indices, n, x, y);
  if (rc < 0)
    return rc;
  const float mean = d->mean, inv = d->inv_std;
  float *restrict v = x;
  for (int64_t i = 0; i < n * d->sample_size; i++)
    v[i] = (v[i] - mean) * inv;
  return 0;
}

static void normalize_destroy(void *data) {
  normalize *d = data;
  loom_dataset_release(d->inner);
  free(d);
}

static const loom_dataset_ops normalize_ops = {"normalize", normalize_length, normalize_fetch, normalize_destroy};

loom_dataset *loom_normalize_dataset_create(loom_dataset *inner, float mean, float std) {
  /* No dataset: its constructor failed inside the call, and its message
   * (a missing file) is the one to keep. */
  if (!inner && loom_last_error_code() < 0) {
    loom_error_wrap(loom_last_error_code(), "normalize: no dataset to normalize");
    return NULL;
  }
  if (!inner || !(std > 0.0f)) {
    loom_dataset_release(inner);
    loom_error_set(LOOM_EINVAL, "normalize: needs a dataset and std > 0 (got %g)", (double)std);
    return NULL;
  }
  normalize *d = calloc(1, sizeof *d);
  if (!d) {
    loom_dataset_release(inner);
    loom_error_oom("a normalizing dataset");
    return NULL;
  }
  d->inner = inner;
  d->mean = mean;
  d->inv_std = 1.0f / std;
  int ndim = loom_dataset_sample_ndim(inner);
  const int64_t *shape = loom_dataset_sample_shape(inner);
  d->sample_size = 1;
  for (int i = 0; i < ndim; i++)
    d->sample_size *= shape[i];
  return loom_dataset_create(&normalize_ops, d, ndim, shape, loom_dataset_target_ndim(inner),
                             loom_dataset_target_shape(inner));
}
