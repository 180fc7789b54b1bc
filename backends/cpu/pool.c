/* Pooling on the CPU: max, average and global average, plane by plane
 * (planes are independent, split over the cores). */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/nn.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "core/error_internal.h"

typedef struct cpu_pool {
  struct loom_plan base;
  bool max, global;
  int64_t k, s, p;
  int64_t c, h, w, oh, ow;
  int32_t *argmax; /* per output element of the last forward (max) */
  int64_t cap;
  const float *x, *dy; /* the current pass, for the parts */
  float *y, *dx;
} cpu_pool;

int loom_cpu_pool_plan(const loom_pool_desc *d, loom_plan **plan) {
  *plan = NULL;
  const bool global = d->mode == LOOM_POOL_GLOBAL_AVG;
  if (d->mode > LOOM_POOL_GLOBAL_AVG || d->c < 1 || d->h < 1 || d->w < 1 ||
      (!global &&
       (d->k < 1 || d->s < 1 || d->p < 0 || d->p > d->k / 2 || d->oh != (d->h + 2 * d->p - d->k) / d->s + 1 ||
        d->ow != (d->w + 2 * d->p - d->k) / d->s + 1 || d->oh < 1 || d->ow < 1)))
    return loom_error_set(LOOM_EINVAL, "pool_plan: a known mode, sizes >= 1, kernel and stride >= 1, 0 <= padding "
                                       "<= kernel/2, and oh, ow the output's size for them");
  cpu_pool *p = calloc(1, sizeof *p);
  if (!p)
    return loom_error_oom("a pooling plan");
  *p = (cpu_pool){.base = {CPU_PLAN_POOL}, .max = d->mode == LOOM_POOL_MAX, .global = global, .k = d->k, .s = d->s,
                  .p = d->p, .c = d->c, .h = d->h, .w = d->w, .oh = global ? 1 : d->oh, .ow = global ? 1 : d->ow};
  *plan = &p->base;
  return 0;
}

void loom_cpu_pool_destroy(loom_plan *plan) {
  cpu_pool *p = (cpu_pool *)plan;
  free(p->argmax);
  free(p);
}

int64_t loom_cpu_pool_plane_out(const loom_plan *plan) {
  const cpu_pool *p = (const cpu_pool *)plan;
  return p->oh * p->ow;
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
void loom_cpu_pool_plane_forward(const loom_plan *plan, int64_t q, const float *in, float *out) {
  const cpu_pool *p = (const cpu_pool *)plan;
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
  const cpu_pool *p = ctx;
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  for (int64_t q = first; q < last; q++)
    loom_cpu_pool_plane_forward(&p->base, q, p->x + q * hw, p->y + q * ohw);
}

/* Room for the max's positions of n samples. */
int loom_cpu_pool_reserve(loom_plan *plan, int64_t n) {
  cpu_pool *p = (cpu_pool *)plan;
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

int loom_cpu_pool_forward(loom_plan *plan, const float *x, float *y, int64_t n) {
  cpu_pool *p = (cpu_pool *)plan;
  int rc = loom_cpu_pool_reserve(plan, n);
  if (rc < 0)
    return rc;
  p->x = x, p->y = y;
  loom_parallel_for(n * p->c, forward_planes, p);
  return 0;
}

/* d[h w] from g[oh ow] for plane q (sample i, channel c: q = i C + c). */
void loom_cpu_pool_plane_backward(const loom_plan *plan, int64_t q, const float *g, float *d) {
  const cpu_pool *p = (const cpu_pool *)plan;
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
  const cpu_pool *p = ctx;
  const int64_t hw = p->h * p->w, ohw = p->oh * p->ow;
  for (int64_t q = first; q < last; q++)
    loom_cpu_pool_plane_backward(&p->base, q, p->dy + q * ohw, p->dx + q * hw);
}

int loom_cpu_pool_backward(loom_plan *plan, const float *dy, float *dx, int64_t n) {
  cpu_pool *p = (cpu_pool *)plan;
  p->dy = dy, p->dx = dx;
  loom_parallel_for(n * p->c, backward_planes, p);
  return 0;
}
