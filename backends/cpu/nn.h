/* The CPU backend's planned ops (loom/backend.h): convolution (conv.c),
 * pooling (pool.c), BatchNorm (batchnorm.c) and the fused blocks of them
 * (block.c). Every plan starts with its kind, so that plan_destroy and
 * the block can tell them apart. */
#ifndef LOOM_BACKENDS_CPU_NN_H
#define LOOM_BACKENDS_CPU_NN_H

#include <stdbool.h>
#include <stdint.h>

#include "loom/backend.h"

typedef enum { CPU_PLAN_CONV = 1, CPU_PLAN_POOL, CPU_PLAN_BATCHNORM, CPU_PLAN_BLOCK } cpu_plan_kind;
struct loom_plan {
  cpu_plan_kind kind;
};

/* conv.c. With `moments` (training, a BatchNorm right after), each output
 * plane's moments go there as loom_cpu_plane_moments writes them,
 * [n][cout][3], computed while the plane is still in cache. */
int loom_cpu_conv_plan(const loom_conv_desc *desc, loom_plan **plan);
int loom_cpu_conv_forward(loom_plan *plan, const float *x, const float *w, const float *bias, float *y, int64_t n,
                          double *moments);
int loom_cpu_conv_backward(loom_plan *plan, const float *x, const float *w, const float *dy, float *dw, float *dbias,
                           float *dx, int64_t n);
void loom_cpu_conv_destroy(loom_plan *plan);

/* pool.c. Plane q is sample i's channel c, q = i C + c: a BatchNorm
 * before the pool runs it plane by plane on planes in cache, after
 * loom_cpu_pool_reserve makes room for a batch of n. */
int loom_cpu_pool_plan(const loom_pool_desc *desc, loom_plan **plan);
int loom_cpu_pool_forward(loom_plan *plan, const float *x, float *y, int64_t n);
int loom_cpu_pool_backward(loom_plan *plan, const float *dy, float *dx, int64_t n);
int loom_cpu_pool_reserve(loom_plan *plan, int64_t n);
int64_t loom_cpu_pool_plane_out(const loom_plan *plan); /* outputs per plane */
void loom_cpu_pool_plane_forward(const loom_plan *plan, int64_t q, const float *in, float *out);
void loom_cpu_pool_plane_backward(const loom_plan *plan, int64_t q, const float *g, float *d);
void loom_cpu_pool_destroy(loom_plan *plan);

/* batchnorm.c. The batch statistics come from each plane's moments about
 * its first value, m = {x[0], sum (x - x[0]), sum (x - x[0])^2}, merged
 * over samples; a convolution before can compute them (into the buffer
 * loom_cpu_batchnorm_moments returns, NULL: out of memory), and then the
 * BatchNorm reads no plane for them, with the same results bit for bit. */
typedef struct loom_cpu_bn_fusion {
  bool relu;             /* writes relu(y), and masks dy as the ReLU's backward would */
  loom_plan *pool;       /* pools each output plane in cache into pool_y; dy is then the pool's */
  float *pool_y;
  const double *moments; /* training: the planes' moments, [n][c][3] */
} loom_cpu_bn_fusion;
void loom_cpu_plane_moments(const float *x, int64_t S, double m[3]);
int loom_cpu_batchnorm_plan(const loom_batchnorm_desc *desc, loom_plan **plan);
double *loom_cpu_batchnorm_moments(loom_plan *plan, int64_t n);
int loom_cpu_batchnorm_forward(loom_plan *plan, bool train, const float *x, const float *gamma, const float *beta,
                               float *running_mean, float *running_var, float *y, int64_t n,
                               const loom_cpu_bn_fusion *fusion);
int loom_cpu_batchnorm_backward(loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n,
                                const loom_cpu_bn_fusion *fusion);
void loom_cpu_batchnorm_destroy(loom_plan *plan);

/* block.c */
int loom_cpu_plan_block(const loom_layer_desc *layers, int count, loom_block *block);
int loom_cpu_block_forward(loom_plan *plan, bool train, const float *x, const loom_block_io *io, int64_t n);
int loom_cpu_block_backward(loom_plan *plan, int first, const float *x, const loom_block_io *io, float *dx,
                            int64_t n);
void loom_cpu_block_destroy(loom_plan *plan);
/* The plane moments a block's convolution handed to its BatchNorm in the
 * last training forward, [n][c][3] (NULL: the block has no such pair);
 * for tests. */
const double *loom_cpu_block_moments(const loom_plan *plan);

#endif
