/* Pooling over [C, H, W] samples: max, average, and global average. */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "models/layer_internal.h"

typedef struct pool {
  bool max, global;
  int64_t k, s, p;
  int64_t c, h, w, oh, ow;
  int32_t *argmax; /* per output element of the last forward (max) */
  int64_t cap;
  const float *x, *dy; /* the current pass, for the parts */
  float *y, *dx;
} pool;

static int pool_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  pool *p = data;
  if (ndim != 2 && ndim != 3)
    return loom_error_set(LOOM_ESHAPE, "pooling expects [channels, height, width] or [height, width] samples, got %d "
                                       "dimensions",
                          ndim);
  p->c = ndim == 3 ? in[0] : 1, p->h = in[ndim - 2], p->w = in[ndim - 1];
  if (p->global) {
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

/* The common 2x2, stride 2 max pool without the general loop's bounds
 * checks, branch-free, eight outputs at a time: two 8-lane loads per input
 * row, split into even and odd columns. A row of 8 or more outputs ends
 * with a chunk that overlaps the one before (the same values written
 * twice) rather than a scalar tail. Ties keep the first window position,
 * and a NaN always wins (the last NaN of the window), as in the general loop
 * and PyTorch's max_pool2d. */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector) /* gcc 12, clang; else the scalar loop */
#define CHUNKS 1
#endif
#endif

/* v takes the max from best: greater, or NaN (PyTorch's max_pool2d). Scalars
 * and lanes alike. */
#define BEATS(v, best) (((v) > (best)) | ((v) != (v)))

#ifdef CHUNKS
#define EVENS 0, 2, 4, 6, 8, 10, 12, 14
#define ODDS 1, 3, 5, 7, 9, 11, 13, 15
#define PICK(m, a, b) (((m) & (a)) | (~(m) & (b))) /* a where m, else b */
static const loom_i8 iota = {0, 1, 2, 3, 4, 5, 6, 7};

LOOM_INLINE void max2x2_chunk(const float *r0, const float *r1, int64_t ox, int32_t w, int32_t base, float *out,
                                int32_t *arg) {
  loom_f8 p0, p1, q0, q1;
  memcpy(&p0, r0 + 2 * ox, sizeof p0), memcpy(&p1, r0 + 2 * ox + 8, sizeof p1);
  memcpy(&q0, r1 + 2 * ox, sizeof q0), memcpy(&q1, r1 + 2 * ox + 8, sizeof q1);
  loom_f8 a = __builtin_shufflevector(p0, p1, EVENS), b = __builtin_shufflevector(p0, p1, ODDS);
  loom_f8 c = __builtin_shufflevector(q0, q1, EVENS), d = __builtin_shufflevector(q0, q1, ODDS);
  loom_f8 best = a;
  loom_i8 at = {0}, m;
  m = BEATS(b, best), at = PICK(m, 1, at), best = (loom_f8)PICK(m, (loom_i8)b, (loom_i8)best);
  m = BEATS(c, best), at = PICK(m, w, at), best = (loom_f8)PICK(m, (loom_i8)c, (loom_i8)best);
  m = BEATS(d, best), at = PICK(m, w + 1, at), best = (loom_f8)PICK(m, (loom_i8)d, (loom_i8)best);
  loom_i8 where = base + 2 * ((int32_t)ox + iota) + at;
  memcpy(out + ox, &best, sizeof best), memcpy(arg + ox, &where, sizeof where);
}
#endif

LOOM_HOT static void max2x2_row(const float *restrict r0, const float *restrict r1, int64_t w, int64_t ow,
                                int32_t base, float *restrict out, int32_t *restrict arg) {
#ifdef CHUNKS
  if (ow >= LOOM_F8_LANES) {
    for (int64_t ox = 0; ox + LOOM_F8_LANES < ow; ox += LOOM_F8_LANES)
      max2x2_chunk(r0, r1, ox, (int32_t)w, base, out, arg);
    max2x2_chunk(r0, r1, ow - LOOM_F8_LANES, (int32_t)w, base, out, arg);
    return;
  }
#endif
  for (int64_t ox = 0; ox < ow; ox++) {
    float a = r0[2 * ox], b = r0[2 * ox + 1], c = r1[2 * ox], d = r1[2 * ox + 1];
    int32_t at = 0;
    float best = a;
    bool m = BEATS(b, best);
    at = m ? 1 : at, best = m ? b : best;
    m = BEATS(c, best);
    at = m ? (int32_t)w : at, best = m ? c : best;
    m = BEATS(d, best);
    at = m ? (int32_t)w + 1 : at, best = m ? d : best;
    out[ox] = best;
    arg[ox] = base + 2 * (int32_t)ox + at;
  }
}

/* Output plane q (sample i, channel c: q = i C + c) from input plane `in`,
 * and the max's positions; the same for every plane in memory or in cache. */
static void plane_forward(const pool *p, int64_t q, const float *in, float *out) {
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  if (p->global) {
    double s = 0;
    for (int64_t i = 0; i < hw; i++)
      s += in[i];
    out[0] = (float)(s / (double)hw);
    return;
  }
  int32_t *arg = p->argmax + q * ohw;
  if (p->max && p->k == 2 && p->s == 2 && p->p == 0) {
    for (int64_t oy = 0; oy < p->oh; oy++)
      max2x2_row(in + 2 * oy * p->w, in + (2 * oy + 1) * p->w, p->w, p->ow, (int32_t)(2 * oy * p->w),
                 out + oy * p->ow, arg + oy * p->ow);
    return;
  }
  for (int64_t oy = 0; oy < p->oh; oy++)
    for (int64_t ox = 0; ox < p->ow; ox++) {
      float best = -FLT_MAX, sum = 0.0f;
      int32_t at = -1;
      for (int64_t ky = 0; ky < p->k; ky++)
        for (int64_t kx = 0; kx < p->k; kx++) {
          int64_t iy = oy * p->s - p->p + ky, ix = ox * p->s - p->p + kx;
          if (iy < 0 || iy >= p->h || ix < 0 || ix >= p->w)
            continue; /* padding: never the max, zero in the average */
          float v = in[iy * p->w + ix];
          sum += v;
          if (BEATS(v, best) || at < 0)
            best = v, at = (int32_t)(iy * p->w + ix);
        }
      const int64_t o = oy * p->ow + ox;
      if (p->max) {
        out[o] = best;
        arg[o] = at;
      } else {
        out[o] = sum / (float)(p->k * p->k); /* PyTorch's count_include_pad */
      }
    }
}

static void forward_planes(void *ctx, int part, int64_t first, int64_t last) {
  (void)part;
  const pool *p = ctx;
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  for (int64_t q = first; q < last; q++)
    plane_forward(p, q, p->x + q * hw, p->y + q * ohw);
}

/* Room for the max's positions of n samples. */
static int reserve(pool *p, int64_t n) {
  const int64_t need = p->max ? n * p->c * p->oh * p->ow : 0;
  if (need <= p->cap)
    return 0;
  int32_t *grown = realloc(p->argmax, (size_t)need * sizeof *grown);
  if (!grown)
    return loom_error_oom("max-pool indices");
  p->argmax = grown;
  p->cap = need;
  return 0;
}

static int pool_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  pool *p = data;
  int rc = reserve(p, x->shape[0]);
  if (rc < 0)
    return rc;
  p->x = x->data, p->y = y->data;
  loom_parallel_for(x->shape[0] * p->c, forward_planes, p); /* planes are independent */
  return 0;
}

/* d[h w] from g[oh ow] for plane q (sample i, channel c: q = i C + c). */
static void plane_backward(const pool *p, int64_t q, const float *g, float *d) {
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  if (p->global) {
    for (int64_t i = 0; i < hw; i++)
      d[i] = g[0] / (float)hw;
    return;
  }
  memset(d, 0, (size_t)hw * sizeof *d);
  if (p->max) {
    for (int64_t o = 0; o < ohw; o++)
      d[p->argmax[q * ohw + o]] += g[o];
    return;
  }
  for (int64_t oy = 0; oy < p->oh; oy++)
    for (int64_t ox = 0; ox < p->ow; ox++) {
      const float share = g[oy * p->ow + ox] / (float)(p->k * p->k);
      for (int64_t ky = 0; ky < p->k; ky++)
        for (int64_t kx = 0; kx < p->k; kx++) {
          int64_t iy = oy * p->s - p->p + ky, ix = ox * p->s - p->p + kx;
          if (iy >= 0 && iy < p->h && ix >= 0 && ix < p->w)
            d[iy * p->w + ix] += share;
        }
    }
}

static void backward_planes(void *ctx, int part, int64_t first, int64_t last) {
  (void)part;
  const pool *p = ctx;
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  for (int64_t q = first; q < last; q++)
    plane_backward(p, q, p->dy + q * ohw, p->dx + q * hw);
}

static int pool_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)y, (void)param_grads;
  pool *p = data;
  if (!dx)
    return 0;
  p->dy = dy->data, p->dx = dx->data;
  loom_parallel_for(x->shape[0] * p->c, backward_planes, p); /* planes are independent */
  return 0;
}

bool loom_layer_is_pool(const loom_layer *layer) { return layer->ops.backward == pool_backward; }

void loom_pool_plane_backward(const loom_layer *layer, int64_t q, const float *g, float *d) {
  plane_backward(layer->data, q, g, d);
}

int loom_pool_reserve(const loom_layer *layer, int64_t n) { return reserve(layer->data, n); }

void loom_pool_plane_forward(const loom_layer *layer, int64_t q, const float *in, float *out) {
  plane_forward(layer->data, q, in, out);
}

static void pool_destroy(void *data) {
  pool *p = data;
  free(p->argmax);
  free(p);
}

static const loom_layer_ops max_ops = {.type = "MaxPool2d", .output_shape = pool_output_shape,
                                       .forward = pool_forward, .backward = pool_backward, .destroy = pool_destroy};
static const loom_layer_ops avg_ops = {.type = "AvgPool2d", .output_shape = pool_output_shape,
                                       .forward = pool_forward, .backward = pool_backward, .destroy = pool_destroy};
static const loom_layer_ops global_ops = {.type = "GlobalAvgPool", .output_shape = pool_output_shape,
                                          .forward = pool_forward, .backward = pool_backward, .destroy = pool_destroy};

static loom_layer *make(const loom_layer_ops *ops, bool max, bool global, int64_t k, int64_t s, int64_t pad) {
  if (!global && (k < 1 || s < 0 || pad < 0 || pad > k / 2)) {
    loom_error_set(LOOM_EINVAL, "pooling: kernel >= 1, stride >= 0 (0: the kernel), 0 <= padding <= kernel/2");
    return NULL;
  }
  pool *p = calloc(1, sizeof *p);
  if (!p) {
    loom_error_oom("a pooling layer");
    return NULL;
  }
  p->max = max, p->global = global, p->k = k, p->s = s ? s : k, p->p = pad;
  return loom_layer_create(ops, p);
}

loom_layer *loom_maxpool2d_create(int64_t kernel, int64_t stride, int64_t padding) {
  return make(&max_ops, true, false, kernel, stride, padding);
}
loom_layer *loom_avgpool2d_create(int64_t kernel, int64_t stride, int64_t padding) {
  return make(&avg_ops, false, false, kernel, stride, padding);
}
loom_layer *loom_global_avgpool_create(void) { return make(&global_ops, false, true, 1, 1, 0); }
