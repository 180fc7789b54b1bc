#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/data.h"

struct loom_dataset {
  loom_dataset_ops ops;
  void *data;
  int refs;
  int sample_ndim, target_ndim;
  int64_t sample_shape[LOOM_MAX_DIMS], target_shape[LOOM_MAX_DIMS];
};

loom_dataset *loom_dataset_create(const loom_dataset_ops *ops, void *data, int sample_ndim,
                                  const int64_t *sample_shape, int target_ndim, const int64_t *target_shape) {
  const char *bad = NULL;
  if (!ops || !ops->type || !ops->length || !ops->fetch)
    bad = "a dataset needs type, length and fetch";
  else if (sample_ndim < 1 || sample_ndim >= LOOM_MAX_DIMS || target_ndim < 0 || target_ndim >= LOOM_MAX_DIMS)
    bad = "samples need 1 to 3 dimensions and targets 0 to 3";
  loom_dataset *ds = bad ? NULL : calloc(1, sizeof *ds);
  if (!ds) {
    if (ops && ops->destroy)
      ops->destroy(data);
    if (bad)
      loom_error_set(LOOM_EINVAL, "loom_dataset_create: %s", bad);
    else
      loom_error_oom("a dataset");
    return NULL;
  }
  ds->ops = *ops;
  ds->data = data;
  ds->refs = 1;
  ds->sample_ndim = sample_ndim;
  ds->target_ndim = target_ndim;
  memcpy(ds->sample_shape, sample_shape, (size_t)sample_ndim * sizeof *sample_shape);
  if (target_ndim)
    memcpy(ds->target_shape, target_shape, (size_t)target_ndim * sizeof *target_shape);
  return ds;
}

loom_dataset *loom_dataset_retain(loom_dataset *ds) {
  if (ds)
    ds->refs++;
  return ds;
}

void loom_dataset_release(loom_dataset *ds) {
  if (!ds || --ds->refs > 0)
    return;
  if (ds->ops.destroy)
    ds->ops.destroy(ds->data);
  free(ds);
}

int64_t loom_dataset_length(const loom_dataset *ds) { return ds->ops.length(ds->data); }
int loom_dataset_sample_ndim(const loom_dataset *ds) { return ds->sample_ndim; }
const int64_t *loom_dataset_sample_shape(const loom_dataset *ds) { return ds->sample_shape; }
int loom_dataset_target_ndim(const loom_dataset *ds) { return ds->target_ndim; }
bool loom_dataset_is_labelled(const loom_dataset *ds) {
  for (int i = 0; i < ds->target_ndim; i++)
    if (ds->target_shape[i] == 0)
      return false;
  return true;
}
const int64_t *loom_dataset_target_shape(const loom_dataset *ds) { return ds->target_shape; }

int loom_dataset_fetch(loom_dataset *ds, const int64_t *indices, int64_t n, float *x, float *y) {
  return ds->ops.fetch(ds->data, indices, n, x, y);
}
