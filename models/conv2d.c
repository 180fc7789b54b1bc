/* Conv2d over [C, H, W] samples: im2col, then one sgemm per sample;
 * backward through the same columns (col2im for the input gradient). One
 * sample's columns stay in cache; an im2col of the whole batch was measured
 * slower (bench/NOTES.md). 3x3 convolutions of stride 1 between enough
 * channels take Winograd's F(2x2, 3x3) instead (models/winograd.h), with
 * 2.25x fewer multiplications. The batch is split over the cores
 * (core/parallel.h), each part with its own scratch and its own partial
 * weight gradient, summed in part order afterwards. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "backends/cpu/gemm.h"
#include "models/layer_internal.h"
#include "backends/cpu/winograd.h"

typedef struct conv {
  int64_t cin, cout, kh, kw, sh, sw, ph, pw, dh, dw;
  bool has_bias;
  loom_conv_algorithm algorithm; /* as asked */
  bool wino;                     /* as built: Winograd, else im2col */
  loom_wino geo;
  int64_t h, w, oh, ow;
  float *wt, *b, *dwt, *db;
  float *U; /* Winograd: the transformed filters [16][cout][cin] */
  /* Per part: the work area (im2col's columns [cin kh kw, oh ow] or
   * Winograd's tiles), then the partial weight gradient ([cout, cin kh kw],
   * or [16][cout][cin] transformed) and bias gradient [cout]. */
  float *scratch;
  int64_t scratch_cap, col_len, dw_len, part_len;
  /* The BatchNorm right after, whose batch statistics this layer computes
   * from each output plane while it is in cache (loom_conv_fuse_moments),
   * and where they go in the current training forward (else NULL). */
  loom_layer *bn;
  double *moments;
  /* The current pass, for the parts. */
  const float *x, *dy;
  float *y, *dx;
  bool param_grads;
} conv;

static size_t conv_num_params(void *data) {
  const conv *c = data;
  return (size_t)(c->cout * c->cin * c->kh * c->kw + (c->has_bias ? c->cout : 0));
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
  /* Winograd pays where the products dominate: not for a first layer's
   * single channel (bench/NOTES.md). */
  c->wino = c->algorithm == LOOM_CONV_WINOGRAD ||
            (c->algorithm == LOOM_CONV_AUTO && winograd_applies(c) && c->cin >= 8 && c->cout >= 8);
  if (c->wino)
    loom_wino_init(&c->geo, c->cin, c->cout, c->h, c->w, c->ph, c->pw, c->oh, c->ow);
  *out_ndim = 3;
  out[0] = c->cout, out[1] = c->oh, out[2] = c->ow;
  return 0;
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

/* The parts' scratch, then Winograd's transformed filters. */
static int ensure_scratch(conv *c) {
  const int64_t K = c->cin * c->kh * c->kw, filters = c->wino ? 16 * c->cout * c->cin : 0;
  c->col_len = c->wino ? loom_wino_scratch(&c->geo) : K * c->oh * c->ow;
  c->dw_len = c->wino ? filters : c->cout * K;
  c->part_len = c->col_len + c->dw_len + c->cout;
  int64_t need = c->part_len * loom_parallel_parts() + filters;
  if (need > c->scratch_cap) {
    float *grown = realloc(c->scratch, (size_t)need * sizeof *grown);
    if (!grown)
      return loom_error_oom("Conv2d scratch");
    c->scratch = grown;
    c->scratch_cap = need;
  }
  c->U = c->wino ? c->scratch + c->part_len * loom_parallel_parts() : NULL;
  if (c->wino) /* from the current weights, in forward and backward alike */
    loom_wino_filters(&c->geo, c->wt, c->U);
  return 0;
}

/* The outputs ox in [*lo, *hi) whose input column ix = ox sw - pw + kj dw
 * falls inside the image; the rest read padding. */
static void valid_cols(const conv *c, int64_t kj, int64_t *lo, int64_t *hi) {
  int64_t off = kj * c->dw - c->pw; /* ix = ox sw + off */
  *lo = off >= 0 ? 0 : (-off + c->sw - 1) / c->sw;
  *hi = c->w - off <= 0 ? 0 : (c->w - off + c->sw - 1) / c->sw;
  if (*hi > c->ow)
    *hi = c->ow;
  if (*lo > *hi)
    *lo = *hi;
}

/* dst[0, n) = src[0, n) in 8-float moves; a run of 8 or more ends with
 * a move that overlaps the one before, instead of a scalar tail. */
LOOM_INLINE void copy_run(float *dst, const float *src, int64_t n) {
  loom_f8 v;
  if (n < LOOM_F8_LANES) {
    for (int64_t k = 0; k < n; k++)
      dst[k] = src[k];
    return;
  }
  for (int64_t k = 0; k + LOOM_F8_LANES < n; k += LOOM_F8_LANES) {
    memcpy(&v, src + k, sizeof v);
    memcpy(dst + k, &v, sizeof v);
  }
  memcpy(&v, src + n - LOOM_F8_LANES, sizeof v);
  memcpy(dst + n - LOOM_F8_LANES, &v, sizeof v);
}

/* dst[0, n) += src[0, n), 8 lanes at a time (adds must not overlap). */
LOOM_INLINE void add_run(float *dst, const float *src, int64_t n) {
  int64_t k = 0;
  for (; k + LOOM_F8_LANES <= n; k += LOOM_F8_LANES) {
    loom_f8 a, b;
    memcpy(&a, dst + k, sizeof a);
    memcpy(&b, src + k, sizeof b);
    a += b;
    memcpy(dst + k, &a, sizeof a);
  }
  for (; k < n; k++)
    dst[k] += src[k];
}

/* col[(ci kh + ki) kw + kj][oy ow + ox] = x[ci][oy sh - ph + ki dh][ox sw - pw + kj dw] (0 outside). */
LOOM_HOT static void im2col(const conv *c, const float *x, float *col) {
  const int64_t L = c->oh * c->ow;
  for (int64_t kj = 0; kj < c->kw; kj++) {
    int64_t lo, hi, off = kj * c->dw - c->pw;
    valid_cols(c, kj, &lo, &hi);
    for (int64_t ci = 0; ci < c->cin; ci++)
      for (int64_t ki = 0; ki < c->kh; ki++) {
        float *row = col + ((ci * c->kh + ki) * c->kw + kj) * L;
        for (int64_t oy = 0; oy < c->oh; oy++) {
          int64_t iy = oy * c->sh - c->ph + ki * c->dh;
          float *out = row + oy * c->ow;
          if (iy < 0 || iy >= c->h) {
            memset(out, 0, (size_t)c->ow * sizeof *out);
            continue;
          }
          /* Rows are a few dozen floats, too short for memcpy calls or
           * gcc's 16-wide loops: copy in 8-lane moves. */
          const float *in = x + (ci * c->h + iy) * c->w + off;
          int64_t ox = 0;
          for (; ox < lo; ox++)
            out[ox] = 0.0f;
          if (c->sw == 1) {
            copy_run(out + lo, in + lo, hi - lo);
            ox = hi;
          } else
            for (; ox < hi; ox++)
              out[ox] = in[ox * c->sw];
          for (; ox < c->ow; ox++)
            out[ox] = 0.0f;
        }
      }
  }
}

/* The adjoint of im2col: columns added back into dx. */
LOOM_HOT static void col2im(const conv *c, const float *col, float *dx) {
  const int64_t L = c->oh * c->ow;
  for (int64_t kj = 0; kj < c->kw; kj++) {
    int64_t lo, hi, off = kj * c->dw - c->pw;
    valid_cols(c, kj, &lo, &hi);
    for (int64_t ci = 0; ci < c->cin; ci++)
      for (int64_t ki = 0; ki < c->kh; ki++) {
        const float *row = col + ((ci * c->kh + ki) * c->kw + kj) * L;
        for (int64_t oy = 0; oy < c->oh; oy++) {
          int64_t iy = oy * c->sh - c->ph + ki * c->dh;
          if (iy < 0 || iy >= c->h)
            continue;
          float *d = dx + (ci * c->h + iy) * c->w + off;
          const float *src = row + oy * c->ow;
          if (c->sw == 1)
            add_run(d + lo, src + lo, hi - lo);
          else
            for (int64_t ox = lo; ox < hi; ox++)
              d[ox * c->sw] += src[ox];
        }
      }
  }
}

/* The moments of samples [i, i + n)'s output planes, for the BatchNorm after. */
static void plane_moments(const conv *c, int64_t i, int64_t n) {
  const int64_t L = c->oh * c->ow;
  for (int64_t q = i * c->cout; c->moments && q < (i + n) * c->cout; q++)
    loom_plane_moments(c->y + q * L, L, c->moments + 3 * q);
}

static void forward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const conv *c = ctx;
  const int64_t K = c->cin * c->kh * c->kw, L = c->oh * c->ow;
  float *col = c->scratch + part * c->part_len;
  for (int64_t i = begin; c->wino && i < end; i += c->geo.chunk) {
    const int64_t n = end - i < c->geo.chunk ? end - i : c->geo.chunk;
    loom_wino_forward(&c->geo, c->U, c->b, c->x + i * c->cin * c->h * c->w, n, c->y + i * c->cout * L, col);
    plane_moments(c, i, n);
  }
  for (int64_t i = begin; !c->wino && i < end; i++) {
    float *out = c->y + i * c->cout * L;
    for (int64_t o = 0; c->has_bias && o < c->cout; o++) /* without a bias, the product overwrites */
      for (int64_t l = 0; l < L; l++)
        out[o * L + l] = c->b[o];
    im2col(c, c->x + i * c->cin * c->h * c->w, col);
    loom_gemm_here(false, false, c->cout, L, K, 1.0f, c->wt, K, col, L, c->has_bias ? 1.0f : 0.0f, out, L);
    plane_moments(c, i, 1);
  }
}

static int conv_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)rng;
  conv *c = data;
  int rc = ensure_scratch(c);
  if (rc < 0)
    return rc;
  c->moments = NULL;
  if (train && c->bn && !(c->moments = loom_batchnorm_moments(c->bn, x->shape[0])))
    return LOOM_ENOMEM;
  c->x = x->data, c->y = y->data;
  loom_parallel_for(x->shape[0], forward_part, c);
  return 0;
}

/* Samples [begin, end): weight and bias gradients into the part's partial
 * sums, input gradients in place. */
static void backward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const conv *c = ctx;
  const int64_t K = c->cin * c->kh * c->kw, L = c->oh * c->ow, in_len = c->cin * c->h * c->w;
  float *col = c->scratch + part * c->part_len, *dw = col + c->col_len, *db = dw + c->dw_len;
  for (int64_t i = begin; i < end; i++) {
    const float *g = c->dy + i * c->cout * L, *x = c->x + i * in_len;
    float *dx = c->dx ? c->dx + i * in_len : NULL;
    for (int64_t o = 0; c->param_grads && c->has_bias && o < c->cout; o++) { /* db += row sums of dy_i */
      float s = 0.0f;
      for (int64_t l = 0; l < L; l++)
        s += g[o * L + l];
      db[o] += s;
    }
    if (c->wino) {
      if ((i - begin) % c->geo.chunk == 0) {
        const int64_t n = end - i < c->geo.chunk ? end - i : c->geo.chunk;
        loom_wino_backward(&c->geo, c->U, x, g, n, c->param_grads ? dw : NULL, dx, col);
      }
      continue;
    }
    if (c->param_grads) { /* dW += dy_i col^T */
      im2col(c, x, col);
      loom_gemm_here(false, true, c->cout, K, L, 1.0f, g, L, col, L, 1.0f, dw, K);
    }
    if (dx) { /* columns of the input gradient: W^T dy_i, then back into place */
      memset(dx, 0, (size_t)in_len * sizeof *dx);
      loom_gemm_here(true, false, K, L, c->cout, 1.0f, c->wt, K, g, L, 0.0f, col, L);
      col2im(c, col, dx);
    }
  }
}

static int conv_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)y;
  conv *c = data;
  int rc = ensure_scratch(c);
  if (rc < 0)
    return rc;
  const int parts = loom_parallel_parts();
  for (int part = 0; param_grads && part < parts; part++) /* parts given no samples add zeros */
    memset(c->scratch + part * c->part_len + c->col_len, 0, (size_t)(c->dw_len + c->cout) * sizeof(float));
  c->x = x->data, c->dy = dy->data, c->dx = dx ? dx->data : NULL, c->param_grads = param_grads;
  loom_parallel_for(x->shape[0], backward_part, c);
  if (!param_grads)
    return 0;
  /* The parts' partial sums, in part order; Winograd's are of the
   * transformed filters, brought back to the weights once. */
  for (int part = 1; part < parts; part++) {
    float *sum = c->scratch + c->col_len;
    const float *dw = c->scratch + part * c->part_len + c->col_len;
    for (int64_t k = 0; k < c->dw_len + c->cout; k++)
      sum[k] += dw[k];
  }
  const float *dw = c->scratch + c->col_len, *db = dw + c->dw_len;
  if (c->wino)
    loom_wino_filters_adjoint(&c->geo, dw, c->dwt);
  else
    for (int64_t k = 0; k < c->dw_len; k++)
      c->dwt[k] += dw[k];
  for (int64_t o = 0; c->has_bias && o < c->cout; o++)
    c->db[o] += db[o];
  return 0;
}

static void conv_destroy(void *data) {
  conv *c = data;
  free(c->scratch);
  free(c);
}

bool loom_conv_fuse_moments(loom_layer *layer, loom_layer *bn) {
  if (layer->ops.forward != conv_forward || !loom_layer_is_batchnorm(bn))
    return false;
  ((conv *)layer->data)->bn = bn;
  return true;
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
  return loom_layer_create(&conv_ops, c);
}
