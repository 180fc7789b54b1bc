/* BatchNorm over the channel dimension of [C] or [C, H, W] samples:
 * parameters (gamma, beta), buffers (the running statistics) and shapes;
 * the normalisation is the backend's (batchnorm_plan, batchnorm_forward,
 * batchnorm_backward; the CPU's in backends/cpu/batchnorm.c). */
#include <stdlib.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct bn {
  int64_t c, spatial;
  float eps, momentum;
  float *gamma, *beta, *dgamma, *dbeta;
  float *running_mean, *running_var; /* buffers */
  loom_layer_plan plan;              /* holds the statistics of the last forward */
} bn;

static size_t bn_num_params(void *data) { return (size_t)(2 * ((bn *)data)->c); }
static size_t bn_num_buffers(void *data) { return (size_t)(2 * ((bn *)data)->c); }
static size_t bn_num_decayed(void *data) { (void)data; return 0; /* scales and shifts */ }

static int bn_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  bn *b = data;
  if (ndim != 1 && ndim != 3)
    return loom_error_set(LOOM_ESHAPE, "BatchNorm expects [channels] or [channels, height, width] samples");
  if (in[0] != b->c)
    return loom_error_set(LOOM_ESHAPE, "BatchNorm has %lld channels, the input %lld", (long long)b->c, (long long)in[0]);
  b->spatial = ndim == 3 ? in[1] * in[2] : 1;
  loom_layer_plan_drop(&b->plan); /* made for other shapes */
  return loom_same_shape(data, ndim, in, out_ndim, out);
}

static bool bn_describe(const void *data, loom_layer_desc *d) {
  const bn *b = data;
  *d = (loom_layer_desc){.kind = LOOM_LAYER_BATCHNORM,
                         .batchnorm = {.c = b->c, .spatial = b->spatial, .eps = b->eps, .momentum = b->momentum}};
  return true;
}

static void bn_bind(void *data, float *params, float *grads, float *buffers) {
  bn *b = data;
  b->gamma = params, b->beta = params + b->c;
  b->dgamma = grads, b->dbeta = grads + b->c;
  b->running_mean = buffers, b->running_var = buffers + b->c;
}

static void bn_init(void *data, loom_rng *rng) {
  (void)rng;
  bn *b = data;
  for (int64_t i = 0; i < b->c; i++)
    b->gamma[i] = 1.0f, b->beta[i] = 0.0f, b->running_mean[i] = 0.0f, b->running_var[i] = 1.0f;
}

static int plan_on(bn *b, loom_backend *backend) {
  loom_layer_desc d;
  bn_describe(b, &d);
  return loom_layer_plan_on(&b->plan, backend, &d);
}

static int bn_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)rng;
  bn *b = data;
  loom_backend *be = loom_backend_of(x);
  int rc = plan_on(b, be);
  return rc < 0 ? rc
                : loom_backend_batchnorm_forward(be, b->plan.plan, train, x->data, b->gamma, b->beta, b->running_mean,
                                                 b->running_var, y->data, x->shape[0]);
}

static int bn_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                       loom_tensor *dx, bool param_grads) {
  (void)y;
  bn *b = data;
  loom_backend *be = loom_backend_of(x);
  int rc = plan_on(b, be);
  return rc < 0 ? rc
                : loom_backend_batchnorm_backward(be, b->plan.plan, x->data, b->gamma, b->beta, dy->data,
                                                  param_grads ? b->dgamma : NULL, param_grads ? b->dbeta : NULL,
                                                  dx ? dx->data : NULL, x->shape[0]);
}

/* The plan is the backend's: dropped when the model moves. */
static int bn_release(void *data) {
  loom_layer_plan_drop(&((bn *)data)->plan);
  return 0;
}

static void bn_destroy(void *data) {
  bn *b = data;
  loom_layer_plan_drop(&b->plan);
  free(b);
}

static const loom_layer_ops bn_ops = {
    .type = "BatchNorm",
    .num_params = bn_num_params,
    .num_buffers = bn_num_buffers,
    .num_decayed = bn_num_decayed,
    .output_shape = bn_output_shape,
    .bind = bn_bind,
    .init = bn_init,
    .forward = bn_forward,
    .backward = bn_backward,
    .destroy = bn_destroy,
    .macs = loom_macs_per_output,
};

loom_layer *loom_batchnorm_create(int64_t channels, float eps, float momentum) {
  if (channels < 1 || !(eps > 0) || !(momentum >= 0 && momentum <= 1)) {
    loom_error_set(LOOM_EINVAL, "BatchNorm: channels >= 1, eps > 0, momentum in [0, 1]");
    return NULL;
  }
  bn *b = calloc(1, sizeof *b);
  if (!b) {
    loom_error_oom("a BatchNorm layer");
    return NULL;
  }
  b->c = channels, b->eps = eps, b->momentum = momentum;
  loom_layer *layer = loom_layer_create(&bn_ops, b);
  if (layer)
    layer->describe = bn_describe, layer->release = bn_release;
  return layer;
}
