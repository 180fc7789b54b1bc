/* Conv2d over [C, H, W] samples: shapes, parameters and initialisation;
 * the convolution itself is the backend's (conv_plan, conv_forward,
 * conv_backward; the CPU's in backends/cpu/conv.c). */
#include <math.h>
#include <stdlib.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct conv {
  int64_t cin, cout, kh, kw, sh, sw, ph, pw, dh, dw;
  bool has_bias;
  loom_conv_algorithm algorithm; /* as asked; the backend resolves AUTO */
  int64_t h, w, oh, ow;
  float *wt, *b, *dwt, *db;
  loom_layer_plan plan;
  loom_layer_scratch rounded[3]; /* autocast's copies of x, the weights, dy */
} conv;

/* SIZE_MAX when the count does not fit (the kernel and channels are
 * counted before a shape check bounds them: loom_model_plan of samples of
 * unknown shape), for the model to refuse. */
static size_t conv_num_params(void *data) {
  const conv *c = data;
  size_t n;
  if (__builtin_mul_overflow((size_t)c->cout, (size_t)c->cin, &n) || __builtin_mul_overflow(n, (size_t)c->kh, &n) ||
      __builtin_mul_overflow(n, (size_t)c->kw, &n) || __builtin_add_overflow(n, c->has_bias ? (size_t)c->cout : 0, &n))
    return SIZE_MAX;
  return n;
}

static size_t conv_num_decayed(void *data) {
  const conv *c = data;
  return (size_t)(c->cout * c->cin * c->kh * c->kw);
}

static bool winograd_applies(const conv *c) {
  return c->kh == 3 && c->kw == 3 && c->sh == 1 && c->sw == 1 && c->dh == 1 && c->dw == 1;
}

static int conv_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  conv *c = data;
  if (ndim != 2 && ndim != 3)
    return loom_error_set(LOOM_ESHAPE, "Conv2d expects [channels, height, width] or [height, width] samples, got %d "
                                       "dimensions",
                          ndim);
  /* [H, W] is one channel: the same memory as [1, H, W]. */
  int64_t channels = ndim == 3 ? in[0] : 1;
  if (c->cin == 0)
    c->cin = channels;
  if (channels != c->cin)
    return loom_error_set(LOOM_ESHAPE, "Conv2d expects %lld input channels, got %lld", (long long)c->cin,
                          (long long)channels);
  c->h = in[ndim - 2], c->w = in[ndim - 1];
  c->oh = (c->h + 2 * c->ph - c->dh * (c->kh - 1) - 1) / c->sh + 1;
  c->ow = (c->w + 2 * c->pw - c->dw * (c->kw - 1) - 1) / c->sw + 1;
  if (c->oh < 1 || c->ow < 1)
    return loom_error_set(LOOM_ESHAPE, "Conv2d: a %lldx%lld input is smaller than the %lldx%lld kernel", (long long)c->h,
                          (long long)c->w, (long long)c->kh, (long long)c->kw);
  loom_layer_plan_drop(&c->plan); /* made for other shapes */
  *out_ndim = 3;
  out[0] = c->cout, out[1] = c->oh, out[2] = c->ow;
  return 0;
}

static bool conv_describe(const void *data, loom_layer_desc *d) {
  const conv *c = data;
  *d = (loom_layer_desc){.kind = LOOM_LAYER_CONV,
                         .conv = {.cin = c->cin, .h = c->h, .w = c->w, .cout = c->cout, .oh = c->oh, .ow = c->ow,
                                  .kh = c->kh, .kw = c->kw, .sh = c->sh, .sw = c->sw, .ph = c->ph, .pw = c->pw,
                                  .dh = c->dh, .dw = c->dw, .bias = c->has_bias, .algorithm = c->algorithm}};
  return true;
}

static void conv_bind(void *data, float *params, float *grads, float *buffers) {
  (void)buffers;
  conv *c = data;
  int64_t nw = c->cout * c->cin * c->kh * c->kw;
  c->wt = params, c->dwt = grads;
  c->b = c->has_bias ? params + nw : NULL;
  c->db = c->has_bias ? grads + nw : NULL;
}

static void conv_fans(void *data, int64_t *fan_in, int64_t *fan_out) {
  const conv *c = data;
  *fan_in = c->cin * c->kh * c->kw, *fan_out = c->cout * c->kh * c->kw;
}

static void conv_init(void *data, loom_rng *rng) {
  conv *c = data;
  /* PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for both. */
  float bound = 1.0f / sqrtf((float)(c->cin * c->kh * c->kw));
  for (int64_t i = 0; i < c->cout * c->cin * c->kh * c->kw; i++)
    c->wt[i] = (2.0f * loom_rng_uniform(rng) - 1.0f) * bound;
  for (int64_t i = 0; c->has_bias && i < c->cout; i++)
    c->b[i] = (2.0f * loom_rng_uniform(rng) - 1.0f) * bound;
}

/* The plan on `backend`, made on first use there. */
static int plan_on(conv *c, loom_backend *backend) {
  loom_layer_desc d;
  conv_describe(c, &d);
  return loom_layer_plan_on(&c->plan, backend, &d);
}

/* Under autocast the convolution's operands (the input, the weights and,
 * backward, the output's gradient) are rounded copies (loom/backend.h). */
typedef struct operands {
  const float *x, *w, *dy;
} operands;

static int operands_round(conv *c, loom_backend *be, const loom_tensor *x, const loom_tensor *dy, operands *o) {
  *o = (operands){.dy = dy ? dy->data : NULL};
  int rc = loom_autocast_input(&c->rounded[0], be, x->data, x->numel, &o->x);
  if (rc == 0)
    rc = loom_autocast_input(&c->rounded[1], be, c->wt, c->cout * c->cin * c->kh * c->kw, &o->w);
  if (rc == 0 && dy)
    rc = loom_autocast_input(&c->rounded[2], be, dy->data, dy->numel, &o->dy);
  return rc < 0 ? loom_error_wrap(rc, "Conv2d: rounding its operands to %s (autocast)",
                                  loom_precision_name(loom_backend_autocast()))
                : 0;
}

static void rounded_free(conv *c) {
  for (int i = 0; i < 3; i++)
    loom_layer_scratch_free(&c->rounded[i]);
}

static int conv_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  conv *c = data;
  loom_backend *be = loom_backend_of(x);
  operands o;
  int rc = plan_on(c, be);
  if (rc < 0 || (rc = operands_round(c, be, x, NULL, &o)) < 0)
    return rc;
  return loom_backend_conv_forward(be, c->plan.plan, o.x, o.w, c->b, y->data, x->shape[0]);
}

static int conv_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)y;
  conv *c = data;
  loom_backend *be = loom_backend_of(x);
  operands o;
  int rc = plan_on(c, be);
  if (rc < 0 || (rc = operands_round(c, be, x, dy, &o)) < 0)
    return rc;
  return loom_backend_conv_backward(be, c->plan.plan, o.x, o.w, o.dy, param_grads ? c->dwt : NULL,
                                    param_grads ? c->db : NULL, dx ? dx->data : NULL, x->shape[0]);
}

/* The plan is the backend's: dropped when the model moves. */
static int conv_release(void *data) {
  loom_layer_plan_drop(&((conv *)data)->plan);
  rounded_free(data);
  return 0;
}

static void conv_destroy(void *data) {
  conv *c = data;
  loom_layer_plan_drop(&c->plan);
  rounded_free(c);
  free(c);
}

/* Each output value sums cin x kh x kw products. */
static int64_t conv_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  const conv *c = data;
  (void)ndim, (void)in;
  return loom_shape_numel(out_ndim, out) * c->cin * c->kh * c->kw;
}

static const loom_layer_ops conv_ops = {
    .type = "Conv2d",
    .num_params = conv_num_params,
    .num_decayed = conv_num_decayed,
    .output_shape = conv_output_shape,
    .bind = conv_bind,
    .fans = conv_fans,
    .init = conv_init,
    .forward = conv_forward,
    .backward = conv_backward,
    .destroy = conv_destroy,
    .macs = conv_macs,
};

loom_layer *loom_conv2d_create(const loom_conv2d_options *o) {
  if (!o || o->in_channels < 0 || o->out_channels < 1 || o->kernel[0] < 1 || o->kernel[1] < 1 || o->stride[0] < 0 ||
      o->stride[1] < 0 || o->padding[0] < 0 || o->padding[1] < 0 || o->dilation[0] < 0 || o->dilation[1] < 0 ||
      o->algorithm < LOOM_CONV_AUTO || o->algorithm > LOOM_CONV_WINOGRAD) {
    loom_error_set(LOOM_EINVAL, "Conv2d: out_channels and kernel >= 1; in_channels, stride, padding, dilation >= 0; "
                                "algorithm one of loom_conv_algorithm");
    return NULL;
  }
  conv *c = calloc(1, sizeof *c);
  if (!c) {
    loom_error_oom("a Conv2d layer");
    return NULL;
  }
  c->cin = o->in_channels, c->cout = o->out_channels;
  c->kh = o->kernel[0], c->kw = o->kernel[1];
  c->sh = o->stride[0] ? o->stride[0] : 1, c->sw = o->stride[1] ? o->stride[1] : 1;
  c->ph = o->padding[0], c->pw = o->padding[1];
  c->dh = o->dilation[0] ? o->dilation[0] : 1, c->dw = o->dilation[1] ? o->dilation[1] : 1;
  c->has_bias = !o->no_bias;
  c->algorithm = o->algorithm;
  if (c->algorithm == LOOM_CONV_WINOGRAD && !winograd_applies(c)) {
    loom_error_set(LOOM_EINVAL, "Conv2d: the Winograd algorithm needs a 3x3 kernel of stride 1 and dilation 1, "
                                "not %lldx%lld of stride %lldx%lld and dilation %lldx%lld; use im2col or auto",
                   (long long)c->kh, (long long)c->kw, (long long)c->sh, (long long)c->sw, (long long)c->dh,
                   (long long)c->dw);
    free(c);
    return NULL;
  }
  loom_layer *layer = loom_layer_create(&conv_ops, c);
  if (layer)
    layer->describe = conv_describe, layer->release = conv_release;
  return layer;
}
