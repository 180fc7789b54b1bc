/* BatchNorm over the channel dimension of [C] or [C, H, W] samples:
 * batch statistics in training (running ones updated), running statistics
 * in evaluation, as torch.nn.BatchNorm1d/2d. Channels are independent, so
 * they are split over the cores (core/parallel.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "models/layer_internal.h"

typedef struct bn {
  int64_t c, spatial;
  float eps, momentum;
  float *gamma, *beta, *dgamma, *dbeta;
  float *running_mean, *running_var; /* buffers */
  float *mean, *invstd;              /* of the last training forward */
  bool last_train;
  bool relu; /* fused with the ReLU after it (loom_layer_ops.fuse_relu) */
  /* A pooling layer whose forward and backward this one takes
   * (loom_batchnorm_fuse_pool): each output plane is pooled from a part's
   * own buffer straight into pool_out, and dy is the pool's output
   * gradient, from which a channel's gradient is built in a part's buffer
   * of n S floats. */
  const loom_layer *pool;
  float *pool_out, *planes;
  int64_t planes_cap, pool_out_numel, pooled; /* pooled: the pool's values per plane */
  /* Per-plane moments [n][c][3] (loom_plane_moments), handed over by the
   * convolution before this layer (loom_batchnorm_moments) for its next
   * training forward, which then reads no plane for its statistics. */
  double *moments;
  int64_t moments_cap, moments_n; /* moments_n: the batch they were handed over for, until used (0: none) */
  bool use_moments;               /* the current forward, for the parts */
  /* The current pass, for the parts. */
  const float *x, *dy;
  float *y, *dx;
  int64_t n;
  bool param_grads;
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
  return loom_same_shape(data, ndim, in, out_ndim, out);
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

void loom_plane_moments(const float *x, int64_t S, double m[3]) {
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
  bn *b = ctx;
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
        if (b->use_moments)
          p = b->moments + 3 * q;
        else
          loom_plane_moments(b->x + q * S, S, pm);
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
      loom_pool_plane_forward(b->pool, q, plane, b->pool_out + q * b->pooled);
    }
  }
}

/* Room for `planes` planes of S floats for each part. */
static int reserve_planes(bn *b, int64_t planes) {
  const int64_t need = loom_parallel_parts() * planes * b->spatial;
  if (need <= b->planes_cap)
    return 0;
  float *grown = realloc(b->planes, (size_t)need * sizeof *grown);
  if (!grown)
    return loom_error_oom("BatchNorm's planes for its fused pool");
  b->planes = grown, b->planes_cap = need;
  return 0;
}

static int bn_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)rng;
  bn *b = data;
  b->last_train = train;
  b->x = x->data, b->y = y->data, b->n = x->shape[0];
  /* Moments from the convolution before, if it computed them for this batch. */
  b->use_moments = train && b->moments_n == b->n;
  b->moments_n = 0;
  if (b->pool) {
    int rc = reserve_planes(b, 1);
    if (rc == 0)
      rc = loom_pool_reserve(b->pool, b->n);
    if (rc < 0)
      return rc;
    b->pooled = b->n ? b->pool_out_numel / (b->n * b->c) : 0;
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
static const float *channel_grad(const bn *b, int part, int64_t ch, int64_t *stride) {
  const int64_t S = b->spatial;
  if (!b->pool) {
    *stride = b->c * S;
    return b->dy + ch * S;
  }
  float *d = b->planes + part * b->n * S;
  for (int64_t i = 0; i < b->n; i++) {
    const int64_t q = i * b->c + ch;
    loom_pool_plane_backward(b->pool, q, b->dy + q * b->pooled, d + i * S);
  }
  *stride = S;
  return d;
}

static void backward_channels(void *ctx, int part, int64_t first, int64_t last) {
  bn *b = ctx;
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

static int bn_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                       loom_tensor *dx, bool param_grads) {
  (void)y; /* a fused ReLU's mask is recomputed from x (relu_mask) */
  bn *b = data;
  b->x = x->data, b->dy = dy->data, b->dx = dx ? dx->data : NULL, b->n = x->shape[0], b->param_grads = param_grads;
  if (b->pool) {
    b->pooled = b->n ? dy->numel / (b->n * b->c) : 0;
    int rc = reserve_planes(b, b->n);
    if (rc < 0)
      return rc;
  }
  loom_parallel_for(b->c, backward_channels, b);
  return 0;
}

bool loom_batchnorm_fuse_pool(loom_layer *layer, const loom_layer *pool) {
  if (!loom_layer_is_batchnorm(layer) || !loom_layer_is_pool(pool))
    return false;
  ((bn *)layer->data)->pool = pool;
  return true;
}

bool loom_layer_is_batchnorm(const loom_layer *layer) {
  return layer->ops.forward == bn_forward && layer->ops.backward == bn_backward;
}

double *loom_batchnorm_moments(loom_layer *layer, int64_t n) {
  bn *b = layer->data;
  const int64_t need = 3 * n * b->c;
  if (need > b->moments_cap) {
    double *grown = realloc(b->moments, (size_t)need * sizeof *grown);
    if (!grown) {
      loom_error_oom("BatchNorm's plane moments");
      return NULL;
    }
    b->moments = grown, b->moments_cap = need;
  }
  b->moments_n = n;
  return b->moments;
}

void loom_batchnorm_pool_output(loom_layer *layer, loom_tensor *out) {
  bn *b = layer->data;
  b->pool_out = out->data, b->pool_out_numel = out->numel;
}

static bool bn_fuse_relu(void *data) {
  ((bn *)data)->relu = true;
  return true;
}

static void bn_destroy(void *data) {
  bn *b = data;
  free(b->mean);
  free(b->planes);
  free(b->moments);
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
    .fuse_relu = bn_fuse_relu,
};

loom_layer *loom_batchnorm_create(int64_t channels, float eps, float momentum) {
  if (channels < 1 || !(eps > 0) || !(momentum >= 0 && momentum <= 1)) {
    loom_error_set(LOOM_EINVAL, "BatchNorm: channels >= 1, eps > 0, momentum in [0, 1]");
    return NULL;
  }
  bn *b = calloc(1, sizeof *b);
  if (b)
    b->mean = malloc((size_t)(2 * channels) * sizeof *b->mean);
  if (!b || !b->mean) {
    free(b);
    loom_error_oom("a BatchNorm layer");
    return NULL;
  }
  b->invstd = b->mean + channels;
  b->c = channels, b->eps = eps, b->momentum = momentum;
  return loom_layer_create(&bn_ops, b);
}
