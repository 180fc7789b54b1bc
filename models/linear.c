/* Linear: y = x W^T + b, on the backend's gemm, fill_rows and sum_rows.
 * Inputs of any sample shape are read as flat rows of in_features. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct linear {
  int64_t in, out;
  bool has_bias;
  float *w, *b;   /* views into the model's parameters */
  float *dw, *db; /* and gradients */
} linear;

static size_t linear_num_params(void *data) {
  const linear *l = data;
  return (size_t)(l->in * l->out + (l->has_bias ? l->out : 0));
}

static size_t linear_num_decayed(void *data) {
  const linear *l = data;
  return (size_t)(l->in * l->out);
}

static int linear_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  linear *l = data;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= in[i];
  if (l->in == 0) /* created with in_features 0: take what comes */
    l->in = n;
  if (n != l->in)
    return loom_error_set(LOOM_ESHAPE, "Linear expects %lld input features per sample, got %lld",
                          (long long)l->in, (long long)n);
  *out_ndim = 1;
  out[0] = l->out;
  return 0;
}

static void linear_bind(void *data, float *params, float *grads, float *buffers) {
  (void)buffers;
  linear *l = data;
  l->w = params;
  l->dw = grads;
  l->b = l->has_bias ? params + l->in * l->out : NULL;
  l->db = l->has_bias ? grads + l->in * l->out : NULL;
}

static void linear_fans(void *data, int64_t *fan_in, int64_t *fan_out) {
  const linear *l = data;
  *fan_in = l->in, *fan_out = l->out;
}

static void linear_init(void *data, loom_rng *rng) {
  linear *l = data;
  /* PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)). */
  float bound = 1.0f / sqrtf((float)l->in);
  for (int64_t i = 0; i < l->in * l->out; i++)
    l->w[i] = (2.0f * loom_rng_uniform(rng) - 1.0f) * bound;
  for (int64_t i = 0; l->has_bias && i < l->out; i++)
    l->b[i] = (2.0f * loom_rng_uniform(rng) - 1.0f) * bound;
}

static int linear_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  const linear *l = data;
  const int64_t n = x->shape[0];
  loom_backend *be = loom_backend_of(x);
  int rc = l->has_bias ? loom_backend_fill_rows(be, y->data, l->b, n, l->out) : 0;
  if (rc < 0)
    return rc;
  return loom_backend_gemm(be, false, true, n, l->out, l->in, 1.0f, x->data, l->in, l->w, l->in,
                           l->has_bias ? 1.0f : 0.0f, y->data, l->out);
}

static int linear_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                           loom_tensor *dx, bool param_grads) {
  (void)y;
  linear *l = data;
  const int64_t n = x->shape[0];
  loom_backend *be = loom_backend_of(x);
  int rc = 0;
  /* dW += dy^T x, db += the column sums of dy, each checked for the
   * non-finite policy as it is written, on the host, where the check reads
   * what is still in cache. A device's answer would cost a wait per layer:
   * there the step checks every gradient at once (loom_model_backward). */
  const bool check = loom_backend_device(be) == LOOM_DEVICE_CPU;
  bool finite_w = true, finite_b = true;
  if (param_grads)
    rc = check ? loom_backend_gemm_checked(be, true, false, l->out, l->in, n, 1.0f, dy->data, l->out, x->data, l->in,
                                           1.0f, l->dw, l->in, &finite_w)
               : loom_backend_gemm(be, true, false, l->out, l->in, n, 1.0f, dy->data, l->out, x->data, l->in, 1.0f,
                                   l->dw, l->in);
  if (rc == 0 && param_grads && l->has_bias)
    rc = loom_backend_sum_rows(be, l->db, dy->data, n, l->out);
  if (rc == 0 && param_grads && l->has_bias && check)
    rc = loom_backend_all_finite(be, l->db, l->out, &finite_b);
  if (rc == 0 && param_grads && check)
    loom_layer_report_grads(finite_w && finite_b);
  /* dx = dy W */
  if (rc == 0 && dx)
    rc = loom_backend_gemm(be, false, false, n, l->in, l->out, 1.0f, dy->data, l->out, l->w, l->in, 0.0f, dx->data,
                           l->in);
  return rc;
}

/* One product and add per weight: in x out. */
static int64_t linear_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  (void)data;
  return loom_shape_numel(ndim, in) * loom_shape_numel(out_ndim, out);
}

static const loom_layer_ops linear_ops = {
    .type = "Linear",
    .num_params = linear_num_params,
    .num_decayed = linear_num_decayed,
    .output_shape = linear_output_shape,
    .bind = linear_bind,
    .fans = linear_fans,
    .init = linear_init,
    .forward = linear_forward,
    .backward = linear_backward,
    .destroy = free,
    .macs = linear_macs,
};

loom_layer *loom_linear_create(int64_t in_features, int64_t out_features, bool bias) {
  if (in_features < 0 || out_features < 1 || in_features > INT32_MAX || out_features > INT32_MAX) {
    loom_error_set(LOOM_EINVAL, "Linear(%lld, %lld): feature counts must be between 1 and 2^31-1 (in_features 0: "
                                "inferred when the model is built)",
                   (long long)in_features, (long long)out_features);
    return NULL;
  }
  linear *l = calloc(1, sizeof *l);
  if (!l) {
    loom_error_oom("a Linear layer");
    return NULL;
  }
  l->in = in_features;
  l->out = out_features;
  l->has_bias = bias;
  return loom_layer_create(&linear_ops, l);
}

static linear *as_linear(loom_layer *layer) {
  return (layer && strcmp(loom_layer_type(layer), "Linear") == 0) ? loom_layer_data(layer) : NULL;
}

float *loom_linear_weight(loom_layer *layer) {
  linear *l = as_linear(layer);
  return l ? l->w : NULL;
}

float *loom_linear_bias(loom_layer *layer) {
  linear *l = as_linear(layer);
  return l ? l->b : NULL;
}
