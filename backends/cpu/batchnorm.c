/* BatchNorm on the CPU over the channels of [n][c][spatial]: batch
 * statistics in training (running ones updated), running statistics in
 * evaluation, as torch.nn.BatchNorm1d/2d. Channels are independent, so they
 * are split over the cores (parallel.h). A block (block.c) fuses the ReLU
 * after it, the pool after those, and takes the statistics from the
 * convolution before it (loom_cpu_bn_fusion). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/nn.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "core/error_internal.h"

typedef struct cpu_bn {
  struct loom_plan base;
  int64_t c, spatial;
  float eps, momentum;
  float *mean, *invstd; /* of the last forward */
  bool last_train;
  /* Per part, with a fused pool: one plane in the forward, n in the
   * backward (a channel's gradient, built from the pool's). */
  float *planes;
  int64_t planes_cap;
  double *moment_buf; /* loom_cpu_batchnorm_moments' */
  int64_t moments_cap;
  /* The current pass, for the parts. */
  const float *x, *dy, *gamma, *beta;
  float *y, *dx, *dgamma, *dbeta, *running_mean, *running_var;
  int64_t n;
  bool param_grads;
  bool relu;                /* fused: the ReLU after this one */
  loom_plan *pool;          /* fused: the pool after, writing pool_out */
  float *pool_out;
  int64_t pooled;           /* the pool's values per plane */
  const double *moments;    /* training: the planes' moments from the convolution before (else NULL) */
} cpu_bn;

int loom_cpu_batchnorm_plan(const loom_batchnorm_desc *d, loom_plan **plan) {
  *plan = NULL;
  if (d->c < 1 || d->spatial < 1 || !(d->eps > 0) || !(d->momentum >= 0 && d->momentum <= 1))
    return loom_error_set(LOOM_EINVAL, "batchnorm_plan: channels and spatial size >= 1, eps > 0, momentum in [0, 1]");
  cpu_bn *b = calloc(1, sizeof *b);
  float *stats = malloc((size_t)(2 * d->c) * sizeof *stats);
  if (!b || !stats) {
    free(b), free(stats);
    return loom_error_oom("a BatchNorm plan");
  }
  *b = (cpu_bn){.base = {CPU_PLAN_BATCHNORM}, .c = d->c, .spatial = d->spatial, .eps = d->eps,
                .momentum = d->momentum, .mean = stats, .invstd = stats + d->c};
  *plan = &b->base;
  return 0;
}

void loom_cpu_batchnorm_destroy(loom_plan *plan) {
  cpu_bn *b = (cpu_bn *)plan;
  free(b->mean);
  free(b->planes);
  free(b->moment_buf);
  free(b);
}

double *loom_cpu_batchnorm_moments(loom_plan *plan, int64_t n) {
  cpu_bn *b = (cpu_bn *)plan;
  const int64_t need = 3 * n * b->c;
  if (need > b->moments_cap) {
    double *grown = realloc(b->moment_buf, (size_t)need * sizeof *grown);
    if (!grown) {
      loom_error_oom("BatchNorm's plane moments");
      return NULL;
    }
    b->moment_buf = grown, b->moments_cap = need;
  }
  return b->moment_buf;
}

/* The pass's fusions. */
static void set_fusion(cpu_bn *b, const loom_cpu_bn_fusion *f) {
  b->relu = f && f->relu;
  b->pool = f ? f->pool : NULL;
  b->pool_out = f ? f->pool_y : NULL;
  b->moments = f ? f->moments : NULL;
}

/* Sums over one channel's row of S values, in 8 float lanes (core/simd.h,
 * so every clone keeps the same lanes and the same results); rows
 * add up in double. With g = dy, or x - center without dy:
 * *a += sum g, *b += sum g (x - center). */
typedef loom_f8 lanes;
typedef loom_i8 mask_lanes;
#define LANES LOOM_F8_LANES

#define LOAD(dst, p) memcpy(&(dst), (p), sizeof(dst))
#define ADD_LANES(la, lb, a, b)                                                                                        \
  for (int j = 0; j < LANES; j++)                                                                                      \
  *(a) += (la)[j], *(b) += (lb)[j]

LOOM_HOT static void stat_sums(const float *x, int64_t S, float center, double *a, double *b) {
  const lanes c = center - (lanes){0};
  lanes la = {0}, lb = {0};
  int64_t k = 0;
  for (; k + LANES <= S; k += LANES) {
    lanes d;
    LOAD(d, x + k);
    d -= c;
    la += d, lb += d * d;
  }
  for (; k < S; k++) {
    float d = x[k] - center;
    la[0] += d, lb[0] += d * d;
  }
  ADD_LANES(la, lb, a, b);
}

/* A fused ReLU's mask, recomputed from x exactly as the forward computed
 * the output (the same float operations, so the same signs), rather than
 * read back from the stored output: one stream of memory less per pass. */
typedef struct relu_mask {
  bool on;
  float scale, mean, shift;
} relu_mask;

void loom_cpu_plane_moments(const float *x, int64_t S, double m[3]) {
  m[0] = x[0], m[1] = m[2] = 0;
  stat_sums(x, S, x[0], &m[1], &m[2]);
}

/* With the mask on, dy counts only where the output was not <= 0 (positive
 * or NaN): the same values the ReLU layer's backward would have passed down. */
LOOM_HOT static void grad_sums(const float *x, const float *dy, relu_mask r, int64_t S, float center, double *a,
                               double *b) {
  const lanes c = center - (lanes){0}, zero = {0}, scale = r.scale - zero, mean = r.mean - zero,
              shift = r.shift - zero;
  lanes la = {0}, lb = {0};
  int64_t k = 0;
  for (; k + LANES <= S; k += LANES) {
    lanes g, v;
    LOAD(g, dy + k), LOAD(v, x + k);
    if (r.on)
      g = (lanes)((mask_lanes)g & ~(scale * (v - mean) + shift <= zero));
    la += g, lb += g * (v - c);
  }
  for (; k < S; k++) {
    float g = r.on && r.scale * (x[k] - r.mean) + r.shift <= 0.0f ? 0.0f : dy[k];
    la[0] += g, lb[0] += g * (x[k] - center);
  }
  ADD_LANES(la, lb, a, b);
}

LOOM_HOT static void affine(const float *x, float *y, int64_t S, float scale, float mean, float shift, bool relu) {
  if (relu)
    for (int64_t k = 0; k < S; k++) {
      float v = scale * (x[k] - mean) + shift;
      y[k] = v <= 0.0f ? 0.0f : v; /* as the ReLU layer: NaN stays NaN */
    }
  else
    for (int64_t k = 0; k < S; k++)
      y[k] = scale * (x[k] - mean) + shift;
}

static void forward_channels(void *ctx, int part, int64_t first, int64_t last) {
  cpu_bn *b = ctx;
  const int64_t n = b->n, S = b->spatial, M = n * S;
  for (int64_t ch = first; ch < last; ch++) {
    float mean, invstd;
    if (b->last_train) {
      /* Each plane's moments about its own first value (within the data's
       * spread, so the shifted sums do not cancel), merged in sample order
       * (Chan et al.), in double. */
      double m = 0, m2 = 0, pm[3];
      for (int64_t i = 0; i < n; i++) {
        const int64_t q = i * b->c + ch;
        const double *p = pm;
        if (b->moments)
          p = b->moments + 3 * q;
        else
          loom_cpu_plane_moments(b->x + q * S, S, pm);
        const double mean_q = p[0] + p[1] / (double)S, m2_q = fmax(p[2] - p[1] * p[1] / (double)S, 0.0);
        const double seen = (double)(i * S), delta = mean_q - m, total = seen + (double)S;
        m += delta * (double)S / total;
        m2 += m2_q + delta * delta * seen * (double)S / total;
      }
      const double var = m2 / (double)M;
      mean = (float)m;
      invstd = (float)(1.0 / sqrt(var + b->eps));
      /* The running variance is the unbiased estimate, as PyTorch keeps it. */
      b->running_mean[ch] = (1 - b->momentum) * b->running_mean[ch] + b->momentum * mean;
      b->running_var[ch] = (1 - b->momentum) * b->running_var[ch] +
                           b->momentum * (float)(M > 1 ? var * (double)M / (double)(M - 1) : var);
    } else {
      mean = b->running_mean[ch];
      invstd = 1.0f / sqrtf(b->running_var[ch] + b->eps);
    }
    b->mean[ch] = mean, b->invstd[ch] = invstd;
    const float scale = b->gamma[ch] * invstd, shift = b->beta[ch];
    for (int64_t i = 0; i < n; i++) {
      const int64_t q = i * b->c + ch;
      if (!b->pool) {
        affine(b->x + q * S, b->y + q * S, S, scale, mean, shift, b->relu);
        continue;
      }
      float *plane = b->planes + part * S; /* never written to memory: pooled while in cache */
      affine(b->x + q * S, plane, S, scale, mean, shift, b->relu);
      loom_cpu_pool_plane_forward(b->pool, q, plane, b->pool_out + q * b->pooled);
    }
  }
}

/* Room for `planes` planes of S floats for each part. */
static int reserve_planes(cpu_bn *b, int64_t planes) {
  const int64_t need = loom_parallel_parts() * planes * b->spatial;
  if (need <= b->planes_cap)
    return 0;
  float *grown = realloc(b->planes, (size_t)need * sizeof *grown);
  if (!grown)
    return loom_error_oom("BatchNorm's planes for its fused pool");
  b->planes = grown, b->planes_cap = need;
  return 0;
}

int loom_cpu_batchnorm_forward(loom_plan *plan, bool train, const float *x, const float *gamma, const float *beta,
                               float *running_mean, float *running_var, float *y, int64_t n,
                               const loom_cpu_bn_fusion *fusion) {
  cpu_bn *b = (cpu_bn *)plan;
  set_fusion(b, fusion);
  if (!train)
    b->moments = NULL;
  b->last_train = train;
  b->x = x, b->y = y, b->n = n, b->gamma = gamma, b->beta = beta;
  b->running_mean = running_mean, b->running_var = running_var;
  if (b->pool) {
    int rc = reserve_planes(b, 1);
    if (rc == 0)
      rc = loom_cpu_pool_reserve(b->pool, n);
    if (rc < 0)
      return rc;
    b->pooled = loom_cpu_pool_plane_out(b->pool);
  }
  loom_parallel_for(b->c, forward_channels, b);
  return 0;
}

/* dx = scale (dy - mean_dy - (x - mean) k), k = invstd mean(dy xhat). */
LOOM_HOT static void bn_dx(const float *x, const float *dy, relu_mask r, float *dx, int64_t S, float scale,
                           float mean, float k, float mean_dy) {
  if (r.on)
    for (int64_t j = 0; j < S; j++) {
      float g = r.scale * (x[j] - r.mean) + r.shift <= 0.0f ? 0.0f : dy[j];
      dx[j] = scale * (g - mean_dy - (x[j] - mean) * k);
    }
  else
    for (int64_t j = 0; j < S; j++)
      dx[j] = scale * (dy[j] - mean_dy - (x[j] - mean) * k);
}

/* The channel's output gradient, one plane per sample at a stride of S:
 * with a fused pool, built from the pool's output gradient into the part's
 * buffer (n planes, in cache for both passes over them). */
static const float *channel_grad(const cpu_bn *b, int part, int64_t ch, int64_t *stride) {
  const int64_t S = b->spatial;
  if (!b->pool) {
    *stride = b->c * S;
    return b->dy + ch * S;
  }
  float *d = b->planes + part * b->n * S;
  for (int64_t i = 0; i < b->n; i++) {
    const int64_t q = i * b->c + ch;
    loom_cpu_pool_plane_backward(b->pool, q, b->dy + q * b->pooled, d + i * S);
  }
  *stride = S;
  return d;
}

static void backward_channels(void *ctx, int part, int64_t first, int64_t last) {
  cpu_bn *b = ctx;
  const int64_t n = b->n, S = b->spatial, M = n * S;
  for (int64_t ch = first; ch < last; ch++) {
    const float mean = b->mean[ch], invstd = b->invstd[ch];
    double sum_dy = 0, sum_dy_xhat = 0;
    const relu_mask mask = {b->relu, b->gamma[ch] * invstd, mean, b->beta[ch]}; /* as forward_channels */
    int64_t gs;
    const float *g = channel_grad(b, part, ch, &gs);
    for (int64_t i = 0; i < n; i++) {
      const int64_t at = (i * b->c + ch) * S;
      grad_sums(b->x + at, g + i * gs, mask, S, mean, &sum_dy, &sum_dy_xhat);
    }
    sum_dy_xhat *= invstd;
    if (b->param_grads) {
      b->dgamma[ch] += (float)sum_dy_xhat;
      b->dbeta[ch] += (float)sum_dy;
    }
    if (!b->dx)
      continue;
    /* Training: through the batch statistics; else fixed ones, an affine map. */
    const float scale = b->gamma[ch] * invstd, mean_dy = b->last_train ? (float)(sum_dy / (double)M) : 0.0f,
                mean_dy_xhat = b->last_train ? (float)(sum_dy_xhat / (double)M) : 0.0f;
    for (int64_t i = 0; i < n; i++) {
      const int64_t at = (i * b->c + ch) * S;
      bn_dx(b->x + at, g + i * gs, mask, b->dx + at, S, scale, mean, invstd * mean_dy_xhat, mean_dy);
    }
  }
}

int loom_cpu_batchnorm_backward(loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n,
                                const loom_cpu_bn_fusion *fusion) {
  cpu_bn *b = (cpu_bn *)plan; /* a fused ReLU's mask is recomputed from x (relu_mask) */
  set_fusion(b, fusion);
  b->x = x, b->dy = dy, b->dx = dx, b->n = n, b->gamma = gamma, b->beta = beta;
  b->dgamma = dgamma, b->dbeta = dbeta, b->param_grads = dgamma != NULL;
  if (b->pool) {
    b->pooled = loom_cpu_pool_plane_out(b->pool);
    int rc = reserve_planes(b, n);
    if (rc < 0)
      return rc;
  }
  loom_parallel_for(b->c, backward_channels, b);
  return 0;
}
