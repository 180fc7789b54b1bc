/* Pooling over [C, H, W] samples (max, average, global average): shapes;
 * the pooling itself is the backend's (pool_plan, pool_forward,
 * pool_backward; the CPU's in backends/cpu/pool.c). */
#include <stdlib.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct pool {
  loom_pool_mode mode;
  int64_t k, s, p;
  int64_t c, h, w, oh, ow;
  loom_layer_plan plan;
} pool;

static int pool_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  pool *p = data;
  if (ndim != 2 && ndim != 3)
    return loom_error_set(LOOM_ESHAPE, "pooling expects [channels, height, width] or [height, width] samples, got %d "
                                       "dimensions",
                          ndim);
  p->c = ndim == 3 ? in[0] : 1, p->h = in[ndim - 2], p->w = in[ndim - 1];
  loom_layer_plan_drop(&p->plan); /* made for other shapes */
  if (p->mode == LOOM_POOL_GLOBAL_AVG) {
    *out_ndim = 1;
    out[0] = p->c;
    p->oh = p->ow = 1;
    return 0;
  }
  p->oh = (p->h + 2 * p->p - p->k) / p->s + 1;
  p->ow = (p->w + 2 * p->p - p->k) / p->s + 1;
  if (p->oh < 1 || p->ow < 1)
    return loom_error_set(LOOM_ESHAPE, "pooling: a %lldx%lld input is smaller than the %lld window", (long long)p->h,
                          (long long)p->w, (long long)p->k);
  *out_ndim = 3;
  out[0] = p->c, out[1] = p->oh, out[2] = p->ow;
  return 0;
}

static bool pool_describe(const void *data, loom_layer_desc *d) {
  const pool *p = data;
  *d = (loom_layer_desc){.kind = LOOM_LAYER_POOL,
                         .pool = {.mode = p->mode, .c = p->c, .h = p->h, .w = p->w, .oh = p->oh, .ow = p->ow,
                                  .k = p->k, .s = p->s, .p = p->p}};
  return true;
}

static int plan_on(pool *p, loom_backend *backend) {
  loom_layer_desc d;
  pool_describe(p, &d);
  return loom_layer_plan_on(&p->plan, backend, &d);
}

static int pool_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  pool *p = data;
  loom_backend *be = loom_backend_of(x);
  int rc = plan_on(p, be);
  return rc < 0 ? rc : loom_backend_pool_forward(be, p->plan.plan, x->data, y->data, x->shape[0]);
}

static int pool_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)y, (void)param_grads;
  pool *p = data;
  if (!dx)
    return 0;
  loom_backend *be = loom_backend_of(x);
  int rc = plan_on(p, be);
  return rc < 0 ? rc : loom_backend_pool_backward(be, p->plan.plan, dy->data, dx->data, x->shape[0]);
}

/* The plan is the backend's: dropped when the model moves. */
static int pool_release(void *data) {
  loom_layer_plan_drop(&((pool *)data)->plan);
  return 0;
}

static void pool_destroy(void *data) {
  pool *p = data;
  loom_layer_plan_drop(&p->plan);
  free(p);
}

/* A max takes no multiply-adds; an average sums its window (the global one:
 * every input value once). */
static int64_t pool_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  const pool *p = data;
  if (p->mode == LOOM_POOL_MAX)
    return 0;
  if (p->mode == LOOM_POOL_GLOBAL_AVG)
    return loom_shape_numel(ndim, in);
  return loom_shape_numel(out_ndim, out) * p->k * p->k;
}

#define POOL_OPS(name) \
  {.type = name, .output_shape = pool_output_shape, .forward = pool_forward, .backward = pool_backward, \
   .destroy = pool_destroy, .macs = pool_macs}
static const loom_layer_ops pool_ops[] = {
    [LOOM_POOL_MAX] = POOL_OPS("MaxPool2d"), [LOOM_POOL_AVG] = POOL_OPS("AvgPool2d"),
    [LOOM_POOL_GLOBAL_AVG] = POOL_OPS("GlobalAvgPool")};

static loom_layer *make(loom_pool_mode mode, int64_t k, int64_t s, int64_t pad) {
  if (mode != LOOM_POOL_GLOBAL_AVG && (k < 1 || s < 0 || pad < 0 || pad > k / 2)) {
    loom_error_set(LOOM_EINVAL, "pooling: kernel >= 1, stride >= 0 (0: the kernel), 0 <= padding <= kernel/2");
    return NULL;
  }
  pool *p = calloc(1, sizeof *p);
  if (!p) {
    loom_error_oom("a pooling layer");
    return NULL;
  }
  p->mode = mode, p->k = k, p->s = s ? s : k, p->p = pad;
  loom_layer *layer = loom_layer_create(&pool_ops[mode], p);
  if (layer)
    layer->describe = pool_describe, layer->release = pool_release;
  return layer;
}

loom_layer *loom_maxpool2d_create(int64_t kernel, int64_t stride, int64_t padding) {
  return make(LOOM_POOL_MAX, kernel, stride, padding);
}
loom_layer *loom_avgpool2d_create(int64_t kernel, int64_t stride, int64_t padding) {
  return make(LOOM_POOL_AVG, kernel, stride, padding);
}
loom_layer *loom_global_avgpool_create(void) { return make(LOOM_POOL_GLOBAL_AVG, 1, 1, 0); }
