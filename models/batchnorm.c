/* BatchNorm over the channel dimension of [C] or [C, H, W] samples:
 * batch statistics in training (running ones updated), running statistics
 * in evaluation, as torch.nn.BatchNorm1d/2d. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct bn {
  int64_t c, spatial;
  float eps, momentum;
  float *gamma, *beta, *dgamma, *dbeta;
  float *running_mean, *running_var; /* buffers */
  float *mean, *invstd;              /* of the last training forward */
  bool last_train;
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

static int bn_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)rng;
  bn *b = data;
  const int64_t n = x->shape[0], S = b->spatial, M = n * S;
  b->last_train = train;
  for (int64_t ch = 0; ch < b->c; ch++) {
    float mean, invstd;
    if (train) {
      double s = 0, ss = 0;
      for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < S; k++)
          s += x->data[(i * b->c + ch) * S + k];
      double m = s / (double)M;
      for (int64_t i = 0; i < n; i++)
        for (int64_t k = 0; k < S; k++) {
          double d = x->data[(i * b->c + ch) * S + k] - m;
          ss += d * d;
        }
      double var = ss / (double)M;
      mean = (float)m;
      invstd = (float)(1.0 / sqrt(var + b->eps));
      b->mean[ch] = mean, b->invstd[ch] = invstd;
      /* The running variance is the unbiased estimate, as PyTorch keeps it. */
      b->running_mean[ch] = (1 - b->momentum) * b->running_mean[ch] + b->momentum * mean;
      b->running_var[ch] = (1 - b->momentum) * b->running_var[ch] +
                           b->momentum * (float)(M > 1 ? var * (double)M / (double)(M - 1) : var);
    } else {
      mean = b->running_mean[ch];
      invstd = 1.0f / sqrtf(b->running_var[ch] + b->eps);
      b->mean[ch] = mean, b->invstd[ch] = invstd;
    }
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < S; k++) {
        int64_t at = (i * b->c + ch) * S + k;
        y->data[at] = b->gamma[ch] * (x->data[at] - mean) * invstd + b->beta[ch];
      }
  }
  return 0;
}

static int bn_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                       loom_tensor *dx, bool param_grads) {
  (void)y;
  bn *b = data;
  const int64_t n = x->shape[0], S = b->spatial, M = n * S;
  for (int64_t ch = 0; ch < b->c; ch++) {
    const float mean = b->mean[ch], invstd = b->invstd[ch];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < S; k++) {
        int64_t at = (i * b->c + ch) * S + k;
        sum_dy += dy->data[at];
        sum_dy_xhat += dy->data[at] * (x->data[at] - mean) * invstd;
      }
    if (param_grads) {
      b->dgamma[ch] += (float)sum_dy_xhat;
      b->dbeta[ch] += (float)sum_dy;
    }
    if (!dx)
      continue;
    const float scale = b->gamma[ch] * invstd;
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < S; k++) {
        int64_t at = (i * b->c + ch) * S + k;
        if (!b->last_train) { /* fixed statistics: an affine map */
          dx->data[at] = dy->data[at] * scale;
          continue;
        }
        float xhat = (x->data[at] - mean) * invstd;
        dx->data[at] = scale * (dy->data[at] - (float)(sum_dy / (double)M) - xhat * (float)(sum_dy_xhat / (double)M));
      }
  }
  return 0;
}

static void bn_destroy(void *data) {
  bn *b = data;
  free(b->mean);
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
