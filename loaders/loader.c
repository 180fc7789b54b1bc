/* Collates batches in the sampler's order into two tensors it owns. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/data.h"

struct loom_loader {
  loom_dataset *ds;
  loom_sampler *sampler;
  int64_t batch_size, length, pos;
  bool drop_last;
  int64_t *order;
  loom_tensor *x, *y;
};

static int64_t num_batches(const loom_loader *l) {
  return l->drop_last ? l->length / l->batch_size : (l->length + l->batch_size - 1) / l->batch_size;
}

void loom_loader_destroy(loom_loader *l) {
  if (!l)
    return;
  loom_dataset_destroy(l->ds);
  loom_sampler_destroy(l->sampler);
  free(l->order);
  loom_tensor_destroy(l->x);
  loom_tensor_destroy(l->y);
  free(l);
}

static loom_tensor *batch_tensor(int64_t batch, int ndim, const int64_t *shape) {
  int64_t full[LOOM_MAX_DIMS] = {batch};
  memcpy(full + 1, shape, (size_t)ndim * sizeof *shape);
  return loom_tensor_create(ndim + 1, full);
}

loom_loader *loom_loader_create(loom_dataset *ds, const loom_loader_options *o) {
  loom_sampler *given = o ? o->sampler : NULL;
  if (!ds || !o || o->batch_size < 1) {
    loom_dataset_destroy(ds);
    loom_sampler_destroy(given);
    loom_error_set(LOOM_EINVAL, "loom_loader_create: need a dataset and a batch_size >= 1 (got %lld)",
                   o ? (long long)o->batch_size : 0LL);
    return NULL;
  }
  loom_loader *l = calloc(1, sizeof *l);
  if (!l) {
    loom_dataset_destroy(ds);
    loom_sampler_destroy(given);
    loom_error_oom("a loader");
    return NULL;
  }
  l->ds = ds;
  l->batch_size = o->batch_size;
  l->drop_last = o->drop_last;
  l->length = loom_dataset_length(ds);
  l->sampler = given ? given : o->shuffle ? loom_random_sampler_create() : loom_sequential_sampler_create();
  l->order = malloc((size_t)(l->length ? l->length : 1) * sizeof *l->order);
  l->x = batch_tensor(l->batch_size, loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds));
  l->y = batch_tensor(l->batch_size, loom_dataset_target_ndim(ds), loom_dataset_target_shape(ds));
  if (!l->sampler || !l->order || !l->x || !l->y) {
    loom_loader_destroy(l);
    loom_error_oom("a loader's buffers");
    return NULL;
  }
  l->pos = l->length; /* no epoch started */
  return l;
}

loom_dataset *loom_loader_dataset(const loom_loader *l) { return l->ds; }
int64_t loom_loader_batch_size(const loom_loader *l) { return l->batch_size; }
int64_t loom_loader_num_batches(const loom_loader *l) { return num_batches(l); }
int64_t loom_loader_num_samples(const loom_loader *l) { return l->length; }
const int64_t *loom_loader_order(const loom_loader *l) { return l->order; }

int loom_loader_start_epoch(loom_loader *l, uint64_t seed) {
  int rc = loom_sampler_order(l->sampler, l->length, seed, l->order);
  if (rc < 0)
    return rc;
  l->pos = 0;
  return 0;
}

int loom_loader_next(loom_loader *l, loom_tensor **x, loom_tensor **y) {
  int64_t left = l->length - l->pos;
  if (left <= 0 || (l->drop_last && left < l->batch_size))
    return 0;
  int64_t n = left < l->batch_size ? left : l->batch_size;
  int64_t sx[LOOM_MAX_DIMS], sy[LOOM_MAX_DIMS];
  memcpy(sx, l->x->shape, sizeof sx);
  memcpy(sy, l->y->shape, sizeof sy);
  sx[0] = sy[0] = n;
  int rc = loom_tensor_resize(l->x, l->x->ndim, sx);
  if (rc == 0)
    rc = loom_tensor_resize(l->y, l->y->ndim, sy);
  if (rc == 0)
    rc = loom_dataset_fetch(l->ds, l->order + l->pos, n, l->x->data, l->y->data);
  if (rc < 0)
    return loom_error_wrap(rc, "fetching samples %lld..%lld", (long long)l->pos, (long long)(l->pos + n - 1));
  l->pos += n;
  *x = l->x;
  *y = l->y;
  return 1;
}

int loom_loader_seek(loom_loader *l, int64_t batches) {
  if (batches < 0 || batches > num_batches(l))
    return loom_error_set(LOOM_EINVAL, "loader: cannot skip %lld batches of %lld", (long long)batches,
                          (long long)num_batches(l));
  l->pos = batches * l->batch_size < l->length ? batches * l->batch_size : l->length;
  return 0;
}
