/* Conv2d over [C, H, W] samples: im2col, then one sgemm per sample;
 * backward through the same columns (col2im for the input gradient). One
 * sample's columns stay in cache; an im2col of the whole batch was measured
 * slower (bench/NOTES.md). The batch is split over the cores
 * (core/parallel.h), each part with its own columns and its own partial
 * weight gradient, summed in part order afterwards. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/parallel.h"
#include "core/simd.h"
#include "models/layer_internal.h"

typedef struct conv {
  int64_t cin, cout, kh, kw, sh, sw, ph, pw, dh, dw;
  bool has_bias;
  int64_t h, w, oh, ow;
  float *wt, *b, *dwt, *db;
  /* Per part: columns [cin kh kw, oh ow], then the partial weight and bias
   * gradients [cout, cin kh kw] and [cout]. */
  float *scratch;
  int64_t scratch_cap, col_len, part_len;
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

static int ensure_scratch(conv *c) {
  const int64_t K = c->cin * c->kh * c->kw;
  c->col_len = K * c->oh * c->ow;
  c->part_len = c->col_len + c->cout * K + c->cout;
  int64_t need = c->part_len * loom_parallel_parts();
  if (need <= c->scratch_cap)
    return 0;
  float *grown = realloc(c->scratch, (size_t)need * sizeof *grown);
  if (!grown)
    return loom_error_oom("Conv2d columns");
  c->scratch = grown;
  c->scratch_cap = need;
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

static void forward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const conv *c = ctx;
  const int64_t K = c->cin * c->kh * c->kw, L = c->oh * c->ow;
  float *col = c->scratch + part * c->part_len;
  for (int64_t i = begin; i < end; i++) {
    float *out = c->y + i * c->cout * L;
    for (int64_t o = 0; c->has_bias && o < c->cout; o++) /* without a bias, the product overwrites */
      for (int64_t l = 0; l < L; l++)
        out[o * L + l] = c->b[o];
    im2col(c, c->x + i * c->cin * c->h * c->w, col);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->cout, (int)L, (int)K, 1.0f, c->wt, (int)K, col,
                (int)L, c->has_bias ? 1.0f : 0.0f, out, (int)L);
  }
}

static int conv_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  conv *c = data;
  int rc = ensure_scratch(c);
  if (rc < 0)
    return rc;
  c->x = x->data, c->y = y->data;
  loom_parallel_for(x->shape[0], forward_part, c);
  return 0;
}

/* Samples [begin, end): weight and bias gradients into the part's partial
 * sums, input gradients in place. */
static void backward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const conv *c = ctx;
  const int64_t K = c->cin * c->kh * c->kw, L = c->oh * c->ow;
  float *col = c->scratch + part * c->part_len, *dw = col + c->col_len, *db = dw + c->cout * K;
  for (int64_t i = begin; i < end; i++) {
    const float *g = c->dy + i * c->cout * L;
    if (c->param_grads) {
      im2col(c, c->x + i * c->cin * c->h * c->w, col);
      /* dW += dy_i col^T; db += row sums of dy_i */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->cout, (int)K, (int)L, 1.0f, g, (int)L, col, (int)L,
                  1.0f, dw, (int)K);
      for (int64_t o = 0; c->has_bias && o < c->cout; o++) {
        float s = 0.0f;
        for (int64_t l = 0; l < L; l++)
          s += g[o * L + l];
        db[o] += s;
      }
    }
    if (c->dx) { /* columns of the input gradient: W^T dy_i, then back into place */
      float *dx = c->dx + i * c->cin * c->h * c->w;
      memset(dx, 0, (size_t)(c->cin * c->h * c->w) * sizeof *dx);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)K, (int)L, (int)c->cout, 1.0f, c->wt, (int)K, g, (int)L,
                  0.0f, col, (int)L);
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
  const int64_t n = x->shape[0], K = c->cin * c->kh * c->kw;
  const int parts = loom_parallel_parts();
  for (int part = 0; param_grads && part < parts; part++) /* parts given no samples add zeros */
    memset(c->scratch + part * c->part_len + c->col_len, 0, (size_t)(c->cout * K + c->cout) * sizeof(float));
  c->x = x->data, c->dy = dy->data, c->dx = dx ? dx->data : NULL, c->param_grads = param_grads;
  loom_parallel_for(n, backward_part, c);
  if (!param_grads)
    return 0;
  /* The parts' partial sums, in part order. */
  for (int part = 0; part < parts; part++) {
    const float *dw = c->scratch + part * c->part_len + c->col_len, *db = dw + c->cout * K;
    for (int64_t k = 0; k < c->cout * K; k++)
      c->dwt[k] += dw[k];
    for (int64_t o = 0; c->has_bias && o < c->cout; o++)
      c->db[o] += db[o];
  }
  return 0;
}

static void conv_destroy(void *data) {
  conv *c = data;
  free(c->scratch);
  free(c);
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
      o->stride[1] < 0 || o->padding[0] < 0 || o->padding[1] < 0 || o->dilation[0] < 0 || o->dilation[1] < 0) {
    loom_error_set(LOOM_EINVAL, "Conv2d: out_channels and kernel >= 1; in_channels, stride, padding, dilation >= 0");
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
  return loom_layer_create(&conv_ops, c);
}
