/* Conv2d on the CPU: im2col, then one sgemm per sample; backward through
 * the same columns (col2im for the input gradient). One sample's columns
 * stay in cache; an im2col of the whole batch was measured slower
 * (docs/performance.md). 3x3 convolutions of stride 1 take Winograd's F(2x2,
 * 3x3) instead where asked or chosen (winograd.h), with 2.25x fewer
 * multiplications. The batch is split over the cores (parallel.h), each
 * part with its own scratch and its own partial weight gradient, summed in
 * part order afterwards. */
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/nn.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "backends/cpu/winograd.h"
#include "core/error_internal.h"

typedef struct cpu_conv {
  struct loom_plan base;
  int64_t cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, h, w, oh, ow;
  bool wino; /* Winograd, else im2col */
  loom_wino geo;
  /* Per part: the work area (im2col's columns [cin kh kw, oh ow] or
   * Winograd's tiles), then the partial weight gradient ([cout, cin kh kw],
   * or [16][cout][cin] transformed) and bias gradient [cout]; after the
   * parts, Winograd's transformed filters U [16][cout][cin]. */
  float *scratch, *U;
  int64_t scratch_cap, col_len, dw_len, part_len;
  /* The current pass, for the parts. */
  const float *x, *dy, *wt, *b;
  float *y, *dx;
  double *moments;
  bool has_bias, param_grads;
} cpu_conv;

static bool winograd_applies(const loom_conv_desc *d) {
  return d->kh == 3 && d->kw == 3 && d->sh == 1 && d->sw == 1 && d->dh == 1 && d->dw == 1;
}

int loom_cpu_conv_plan(const loom_conv_desc *d, loom_plan **plan) {
  *plan = NULL;
  if (d->cin < 1 || d->cout < 1 || d->h < 1 || d->w < 1 || d->kh < 1 || d->kw < 1 || d->sh < 1 || d->sw < 1 ||
      d->ph < 0 || d->pw < 0 || d->dh < 1 || d->dw < 1 ||
      d->oh != (d->h + 2 * d->ph - d->dh * (d->kh - 1) - 1) / d->sh + 1 ||
      d->ow != (d->w + 2 * d->pw - d->dw * (d->kw - 1) - 1) / d->sw + 1 || d->oh < 1 || d->ow < 1)
    return loom_error_set(LOOM_EINVAL, "conv_plan: sizes, kernel, stride and dilation >= 1, padding >= 0, and oh, ow "
                                       "the output's size for them");
  if (d->algorithm == LOOM_CONV_WINOGRAD && !winograd_applies(d))
    return loom_error_set(LOOM_EINVAL, "conv_plan: the Winograd algorithm needs a 3x3 kernel of stride 1 and "
                                       "dilation 1; use im2col or auto");
  cpu_conv *c = calloc(1, sizeof *c);
  if (!c)
    return loom_error_oom("a convolution plan");
  *c = (cpu_conv){.base = {CPU_PLAN_CONV}, .cin = d->cin, .cout = d->cout, .kh = d->kh, .kw = d->kw, .sh = d->sh,
                  .sw = d->sw, .ph = d->ph, .pw = d->pw, .dh = d->dh, .dw = d->dw, .h = d->h, .w = d->w,
                  .oh = d->oh, .ow = d->ow};
  /* Winograd pays where the products dominate: not for a first layer's
   * single channel (docs/performance.md). */
  c->wino = d->algorithm == LOOM_CONV_WINOGRAD ||
            (d->algorithm == LOOM_CONV_AUTO && winograd_applies(d) && d->cin >= 8 && d->cout >= 8);
  if (c->wino)
    loom_wino_init(&c->geo, c->cin, c->cout, c->h, c->w, c->ph, c->pw, c->oh, c->ow);
  *plan = &c->base;
  return 0;
}

void loom_cpu_conv_destroy(loom_plan *plan) {
  cpu_conv *c = (cpu_conv *)plan;
  free(c->scratch);
  free(c);
}

/* The parts' scratch (the pool's size may have changed), then Winograd's
 * transformed filters from the current weights, in forward and backward
 * alike. */
static int ensure_scratch(cpu_conv *c, const float *wt) {
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
  if (c->wino)
    loom_wino_filters(&c->geo, wt, c->U);
  return 0;
}

/* The outputs ox in [*lo, *hi) whose input column ix = ox sw - pw + kj dw
 * falls inside the image; the rest read padding. */
static void valid_cols(const cpu_conv *c, int64_t kj, int64_t *lo, int64_t *hi) {
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
LOOM_HOT static void im2col(const cpu_conv *c, const float *x, float *col) {
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
LOOM_HOT static void col2im(const cpu_conv *c, const float *col, float *dx) {
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
static void plane_moments(const cpu_conv *c, int64_t i, int64_t n) {
  const int64_t L = c->oh * c->ow;
  for (int64_t q = i * c->cout; c->moments && q < (i + n) * c->cout; q++)
    loom_cpu_plane_moments(c->y + q * L, L, c->moments + 3 * q);
}

static void forward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const cpu_conv *c = ctx;
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

int loom_cpu_conv_forward(loom_plan *plan, const float *x, const float *w, const float *bias, float *y, int64_t n,
                          double *moments) {
  cpu_conv *c = (cpu_conv *)plan;
  int rc = ensure_scratch(c, w);
  if (rc < 0)
    return rc;
  c->x = x, c->y = y, c->wt = w, c->b = bias, c->has_bias = bias != NULL, c->moments = moments;
  loom_parallel_for(n, forward_part, c);
  return 0;
}

/* Samples [begin, end): weight and bias gradients into the part's partial
 * sums, input gradients in place. */
static void backward_part(void *ctx, int part, int64_t begin, int64_t end) {
  const cpu_conv *c = ctx;
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

int loom_cpu_conv_backward(loom_plan *plan, const float *x, const float *w, const float *dy, float *dwt, float *dbias,
                           float *dx, int64_t n) {
  cpu_conv *c = (cpu_conv *)plan;
  int rc = ensure_scratch(c, w);
  if (rc < 0)
    return rc;
  const bool param_grads = dwt != NULL;
  const int parts = loom_parallel_parts();
  for (int part = 0; param_grads && part < parts; part++) /* parts given no samples add zeros */
    memset(c->scratch + part * c->part_len + c->col_len, 0, (size_t)(c->dw_len + c->cout) * sizeof(float));
  c->x = x, c->dy = dy, c->dx = dx, c->wt = w, c->param_grads = param_grads, c->has_bias = dbias != NULL;
  loom_parallel_for(n, backward_part, c);
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
    loom_wino_filters_adjoint(&c->geo, dw, dwt);
  else
    for (int64_t k = 0; k < c->dw_len; k++)
      dwt[k] += dw[k];
  for (int64_t o = 0; c->has_bias && o < c->cout; o++)
    dbias[o] += db[o];
  return 0;
}
