#include "models/layer_internal.h"

#include <stdlib.h>

#include "core/error_internal.h"

loom_layer *loom_layer_create(const loom_layer_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->output_shape || !ops->forward || !ops->backward) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_layer_create: a layer needs type, output_shape, forward and backward");
    return NULL;
  }
  loom_layer *layer = calloc(1, sizeof *layer);
  if (!layer) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a layer");
    return NULL;
  }
  layer->ops = *ops;
  layer->data = data;
  return layer;
}

void loom_layer_destroy(loom_layer *layer) {
  if (!layer)
    return;
  if (layer->ops.destroy)
    layer->ops.destroy(layer->data);
  free(layer);
}

const char *loom_layer_type(const loom_layer *layer) { return layer->ops.type; }
void *loom_layer_data(const loom_layer *layer) { return layer->data; }

size_t loom_layer_num_params(const loom_layer *layer) {
  return layer->ops.num_params ? layer->ops.num_params(layer->data) : 0;
}

int loom_layer_plan_on(loom_layer_plan *p, loom_backend *backend, const loom_layer_desc *d) {
  if (p->plan && p->backend == backend && p->precision == loom_backend_autocast())
    return 0;
  loom_layer_plan_drop(p);
  int rc = d->kind == LOOM_LAYER_CONV   ? loom_backend_conv_plan(backend, &d->conv, &p->plan)
           : d->kind == LOOM_LAYER_POOL ? loom_backend_pool_plan(backend, &d->pool, &p->plan)
           : d->kind == LOOM_LAYER_BATCHNORM
               ? loom_backend_batchnorm_plan(backend, &d->batchnorm, &p->plan)
               : loom_error_set(LOOM_EINVAL, "no plan for a layer of kind %d", (int)d->kind);
  p->backend = rc == 0 ? backend : NULL;
  p->precision = loom_backend_autocast();
  return rc;
}

void loom_layer_scratch_free(loom_layer_scratch *s) {
  if (s->on)
    loom_backend_free(s->on, s->p);
  *s = (loom_layer_scratch){0};
}

int loom_autocast_input(loom_layer_scratch *s, loom_backend *b, const float *x, int64_t n, const float **use) {
  *use = x;
  if (!loom_autocast_applies(b) || n == 0)
    return 0;
  if (s->on != b || s->cap < (size_t)n) {
    loom_layer_scratch_free(s);
    if (!(s->p = loom_backend_alloc(b, (size_t)n * sizeof *s->p)))
      return LOOM_ENOMEM;
    s->on = b, s->cap = (size_t)n;
  }
  int rc = loom_backend_round(b, loom_backend_autocast(), x, s->p, n);
  if (rc == 0)
    *use = s->p;
  return rc;
}

void loom_layer_plan_drop(loom_layer_plan *p) {
  loom_backend_plan_destroy(p->backend, p->plan);
  p->plan = NULL, p->backend = NULL;
}

int64_t loom_shape_numel(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  return n;
}

int64_t loom_no_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  (void)data, (void)ndim, (void)in, (void)out_ndim, (void)out;
  return 0;
}

int64_t loom_macs_per_output(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  (void)data, (void)ndim, (void)in;
  return loom_shape_numel(out_ndim, out);
}
