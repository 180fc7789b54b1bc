/* Elementwise layers: the activations (ReLU, LeakyReLU, GELU, Tanh, Sigmoid),
 * Flatten and Dropout. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

int loom_same_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)data;
  *out_ndim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *in);
  return 0;
}

/* One layer type per activation, each a loom_activation of the backend:
 * y = f(x), dx = dy f'(x, y). */
typedef struct activation {
  loom_activation act;
  float param; /* LeakyReLU's slope */
} activation;

static int act_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  const activation *a = data;
  return loom_backend_act_forward(loom_backend_of(x), a->act, a->param, x->data, y->data, x->numel);
}

static int act_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                        loom_tensor *dx, bool param_grads) {
  (void)param_grads;
  if (!dx)
    return 0;
  const activation *a = data;
  return loom_backend_act_backward(loom_backend_of(x), a->act, a->param, x->data, y->data, dy->data, dx->data,
                                   x->numel);
}

#define ACTIVATION_OPS(name) \
  {.type = name, .output_shape = loom_same_shape, .forward = act_forward, .backward = act_backward, .destroy = free, \
   .macs = loom_no_macs}
static const loom_layer_ops act_ops[LOOM_ACT_COUNT] = {
    [LOOM_ACT_RELU] = ACTIVATION_OPS("ReLU"), [LOOM_ACT_LEAKY_RELU] = ACTIVATION_OPS("LeakyReLU"),
    [LOOM_ACT_GELU] = ACTIVATION_OPS("GELU"), [LOOM_ACT_TANH] = ACTIVATION_OPS("Tanh"),
    [LOOM_ACT_SIGMOID] = ACTIVATION_OPS("Sigmoid")};

static bool act_describe(const void *data, loom_layer_desc *d) {
  const activation *a = data;
  *d = (loom_layer_desc){.kind = LOOM_LAYER_ACT, .act = {.act = a->act, .param = a->param}};
  return true;
}

static loom_layer *activation_create(loom_activation act, float param) {
  activation *a = malloc(sizeof *a);
  if (!a) {
    loom_error_oom(act_ops[act].type);
    return NULL;
  }
  *a = (activation){act, param};
  loom_layer *layer = loom_layer_create(&act_ops[act], a);
  if (layer)
    layer->describe = act_describe;
  return layer;
}

loom_layer *loom_relu_create(void) { return activation_create(LOOM_ACT_RELU, 0.0f); }
loom_layer *loom_leaky_relu_create(float slope) { return activation_create(LOOM_ACT_LEAKY_RELU, slope); }
loom_layer *loom_gelu_create(void) { return activation_create(LOOM_ACT_GELU, 0.0f); }
loom_layer *loom_tanh_create(void) { return activation_create(LOOM_ACT_TANH, 0.0f); }
loom_layer *loom_sigmoid_create(void) { return activation_create(LOOM_ACT_SIGMOID, 0.0f); }

/* Flatten: [N, ...] -> [N, prod(...)]; the values do not move. */
static int flatten_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)data;
  out[0] = 1;
  for (int i = 0; i < ndim; i++)
    out[0] *= in[i];
  *out_ndim = 1;
  return 0;
}

/* A copy within the backend's memory (the CPU's: memcpy). */
static int copy_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)data, (void)train, (void)rng;
  return loom_backend_copy(loom_backend_of(x), y->data, x->data, (size_t)x->numel * sizeof(float));
}

static int copy_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)data, (void)x, (void)y, (void)param_grads;
  return dx ? loom_backend_copy(loom_backend_of(dy), dx->data, dy->data, (size_t)dy->numel * sizeof(float)) : 0;
}

static const loom_layer_ops flatten_ops = {.type = "Flatten", .output_shape = flatten_shape,
                                           .forward = copy_forward, .backward = copy_backward, .macs = loom_no_macs};

loom_layer *loom_flatten_create(void) { return loom_layer_create(&flatten_ops, NULL); }

/* Dropout: in training each value is kept with probability 1 - p and scaled
 * by 1/(1 - p); in evaluation it is the identity. The mask is the
 * backend's dropout_forward under one key drawn from the runner's stream
 * per forward (the counter rule of loom/backend.h), so runs and resumes
 * repeat it whatever the number of cores. */
typedef struct dropout {
  float p;
  loom_tensor *mask; /* of the last training forward: 0 or 1/(1-p) per element */
} dropout;

static int dropout_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  dropout *d = data;
  if (!train || d->p == 0.0f)
    return copy_forward(data, x, y, train, rng);
  if (!rng)
    return loom_error_set(LOOM_ESTATE, "Dropout in training needs a random stream (loom_model_set_rng)");
  int rc = loom_tensor_move_to(d->mask, x->backend);
  if (rc == 0)
    rc = loom_tensor_resize(d->mask, x->ndim, x->shape);
  return rc < 0 ? rc
                : loom_backend_dropout_forward(loom_backend_of(x), loom_rng_next(rng), d->p, x->data, y->data,
                                               d->mask->data, x->numel);
}

static int dropout_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                            loom_tensor *dx, bool param_grads) {
  dropout *d = data;
  if (!dx)
    return 0;
  if (d->p == 0.0f || dy->numel != d->mask->numel)
    return copy_backward(data, x, y, dy, dx, param_grads);
  return loom_backend_mul(loom_backend_of(dy), dy->data, d->mask->data, dx->data, dy->numel);
}

/* The mask follows the input's backend; back to host memory when the
 * model moves. */
static int dropout_release(void *data) { return loom_tensor_move_to(((dropout *)data)->mask, NULL); }

static void dropout_destroy(void *data) {
  dropout *d = data;
  loom_tensor_destroy(d->mask);
  free(d);
}

static const loom_layer_ops dropout_ops = {.type = "Dropout", .output_shape = loom_same_shape,
                                           .forward = dropout_forward, .backward = dropout_backward,
                                           .destroy = dropout_destroy, .macs = loom_no_macs};

loom_layer *loom_dropout_create(float p) {
  if (!(p >= 0.0f && p < 1.0f)) {
    loom_error_set(LOOM_EINVAL, "Dropout: p must be in [0, 1), got %g", (double)p);
    return NULL;
  }
  dropout *d = calloc(1, sizeof *d);
  const int64_t one = 1;
  if (d)
    d->mask = loom_tensor_create(1, &one);
  if (!d || !d->mask) {
    free(d);
    loom_error_oom("a Dropout layer");
    return NULL;
  }
  d->p = p;
  loom_layer *layer = loom_layer_create(&dropout_ops, d);
  if (layer)
    layer->release = dropout_release;
  return layer;
}
