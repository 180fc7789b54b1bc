#ifndef LOOM_MODELS_LAYER_INTERNAL_H
#define LOOM_MODELS_LAYER_INTERNAL_H

#include "loom/model.h"

#include "core/tensor_impl.h"
#include "loom/backend_cpu.h"

struct loom_layer {
  loom_layer_ops ops;
  void *data;
};

size_t loom_layer_num_params(const loom_layer *layer);

/* The backend that computes on `t`: its own, or the CPU's for host memory. */
static inline loom_backend *loom_backend_of(const loom_tensor *t) {
  return t->backend ? t->backend : loom_backend_cpu();
}
/* output_shape of shape-preserving layers. */
int loom_same_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out);

/* Elements per sample of a [batch, ...] tensor. */
static inline int64_t loom_per_sample(const loom_tensor *t) { return t->shape[0] ? t->numel / t->shape[0] : 0; }

/* Pooling (max, average, global average) as a backward another layer can
 * take into its own passes: d[h w], the gradient of plane q (sample i,
 * channel c: q = i C + c) of the pool's input, from g[oh ow], that plane's
 * output gradient, after the pool's last forward. */
bool loom_layer_is_pool(const loom_layer *layer);
void loom_pool_plane_backward(const loom_layer *pool, int64_t q, const float *g, float *d);
/* And its forward, plane by plane: loom_pool_reserve(pool, n) makes room for
 * the positions of a batch of n, then loom_pool_plane_forward writes plane
 * q's output from input plane `in` (in cache, say). */
int loom_pool_reserve(const loom_layer *pool, int64_t n);
void loom_pool_plane_forward(const loom_layer *pool, int64_t q, const float *in, float *out);

/* A BatchNorm (with or without its fused ReLU) whose output feeds `pool`
 * only takes the pool's forward and backward: its forward pools each output
 * plane while it is in cache into the pool's output (given before each
 * forward with loom_batchnorm_pool_output), so its own output is never
 * written; its backward receives the pool's output gradient and builds
 * each plane's input gradient in cache. False if `layer` is no BatchNorm. */
bool loom_batchnorm_fuse_pool(loom_layer *layer, const loom_layer *pool);
void loom_batchnorm_pool_output(loom_layer *layer, loom_tensor *out);

/* BatchNorm's batch statistics come from each plane's moments about its
 * first value, m = {x[0], sum (x - x[0]), sum (x - x[0])^2}, merged over
 * samples. A Conv2d right before a BatchNorm computes them for each output
 * plane while it is still in cache (loom_conv_fuse_moments), into the
 * buffer loom_batchnorm_moments(bn, n) returns for the BatchNorm's next
 * training forward (NULL: out of memory); the BatchNorm then reads no
 * plane for its statistics, and its results are the same bit for bit. */
bool loom_layer_is_batchnorm(const loom_layer *layer);
void loom_plane_moments(const float *x, int64_t S, double m[3]);
double *loom_batchnorm_moments(loom_layer *bn, int64_t n);
bool loom_conv_fuse_moments(loom_layer *conv, loom_layer *bn);

#endif
