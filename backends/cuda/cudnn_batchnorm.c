/* The CUDA backend's BatchNorm on cuDNN (cudnn.c); the backward after
 * an evaluation forward is a kernel of kernels.cu. */
#include <stdlib.h>

#include "backends/cuda/cudnn_plan.h"
#include "backends/cuda/kernels.h"

typedef struct dnn_bn {
  struct loom_plan base;
  loom_batchnorm_desc d;
  cudnnTensorDescriptor_t x;     /* [n][c][spatial][1] */
  cudnnTensorDescriptor_t stats; /* [1][c][1][1]: gamma, beta, the statistics */
  int64_t n;                     /* x's batch size; 0: none yet */
  float *mean, *invstd;          /* device [c] each: the last forward's statistics */
  bool last_train;
} dnn_bn;

void loom_cudnn_bn_free(cuda_ctx *c, dnn_bn *p) {
  if (p->x)
    cudnnDestroyTensorDescriptor(p->x);
  if (p->stats)
    cudnnDestroyTensorDescriptor(p->stats);
  loom_cuda_put(c, p->mean);
  free(p);
}

int loom_cudnn_batchnorm_plan(void *ctx, const loom_batchnorm_desc *d, loom_plan **plan) {
  cuda_ctx *c = ctx;
  *plan = NULL;
  if (d->c < 1 || d->spatial < 1 || !loom_cudnn_fits_int(d->c) || !loom_cudnn_fits_int(d->spatial) ||
      !(d->momentum >= 0) || !(d->momentum <= 1))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: batchnorm_plan: channels and spatial size >= 1, momentum "
                                           "in [0, 1]");
  if (!(d->eps > 0) || d->eps < CUDNN_BN_MIN_EPSILON)
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: batchnorm_plan: eps is %g; cuDNN needs eps > 0 and >= %g "
                                           "(CUDNN_BN_MIN_EPSILON)",
                              (double)d->eps, (double)CUDNN_BN_MIN_EPSILON);
  int rc = loom_cudnn_enter(c);
  if (rc < 0)
    return rc;
  dnn_bn *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a BatchNorm plan");
  p->base.kind = PLAN_BATCHNORM;
  p->d = *d;
  if ((rc = loom_cudnn_ok(c, cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnCreateTensorDescriptor(&p->stats), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = loom_cudnn_set_tensor(c, p->stats, 1, d->c, 1, 1)) < 0 ||
      (rc = loom_cudnn_scratch_get(c, 2 * (size_t)d->c * sizeof(float), (void **)&p->mean)) < 0) {
    loom_cudnn_bn_free(c, p);
    return rc;
  }
  p->invstd = p->mean + d->c;
  *plan = &p->base;
  return 0;
}

static int bn_shape(const cuda_ctx *c, dnn_bn *p, int64_t n) {
  if (n == p->n)
    return 0;
  p->n = 0;
  int rc = loom_cudnn_set_tensor(c, p->x, n, p->d.c, p->d.spatial, 1);
  if (rc == 0)
    p->n = n;
  return rc;
}

/* Training: cuDNN's statistics, its running variance the unbiased one
 * with `momentum` as exponentialAverageFactor (PyTorch's update).
 * Evaluation: the running statistics, kept for the backward as mean and
 * invstd (the CPU's floats). */
int loom_cudnn_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_bn *p = (dnn_bn *)plan;
  if (n == 0)
    return 0;
  if (train && n * p->d.spatial < 2) /* the unbiased variance of one value divides by zero */
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: BatchNorm in training needs more than one value per "
                                           "channel (a batch of %lld x %lld): use larger batches",
                              (long long)n, (long long)p->d.spatial);
  int rc = loom_cudnn_enter(c);
  if (rc == 0)
    rc = bn_shape(c, p, n);
  if (rc < 0)
    return rc;
  p->last_train = train;
  if (train)
    return loom_cudnn_ok(c,
                         cudnnBatchNormalizationForwardTraining(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, p->x, x,
                                                                p->x, y, p->stats, gamma, beta, (double)p->d.momentum,
                                                                running_mean, running_var, (double)p->d.eps, p->mean,
                                                                p->invstd),
                         "cudnnBatchNormalizationForwardTraining");
  rc = loom_cudnn_ok(c,
                     cudnnBatchNormalizationForwardInference(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, p->x, x,
                                                             p->x, y, p->stats, gamma, beta, running_mean, running_var,
                                                             (double)p->d.eps),
                     "cudnnBatchNormalizationForwardInference");
  if (rc == 0)
    rc = launched(c,
                  loom_cuda_bn_eval_stats(c->stream, running_mean, running_var, p->d.eps, p->d.c, p->mean, p->invstd),
                  "batchnorm_forward (the running statistics kept)");
  return rc;
}

/* After a training forward, cuDNN's backward through the batch statistics,
 * with scratch for what the caller does not want (cuDNN writes dx, dgamma
 * and dbeta always); after an evaluation forward, the kernel. */
int loom_cudnn_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n) {
  (void)beta; /* the output's gradient does not depend on it */
  cuda_ctx *c = ctx;
  dnn_bn *p = (dnn_bn *)plan;
  const int64_t C = p->d.c, nx = n * C * p->d.spatial;
  if (n == 0 || (!dgamma && !dx))
    return 0;
  int rc = loom_cudnn_enter(c);
  if (rc == 0)
    rc = bn_shape(c, p, n);
  if (rc < 0)
    return rc;
  if (!p->last_train)
    return launched(c,
                    loom_cuda_bn_eval_backward(c->stream, x, gamma, p->mean, p->invstd, dy, dgamma, dbeta, dx, n, C,
                                               p->d.spatial),
                    "batchnorm_backward (evaluation)");
  float *scratch;
  rc = loom_cudnn_scratch_get(c, ((dx ? 0 : (size_t)nx) + (dgamma ? 0 : 2 * (size_t)C)) * sizeof(float),
                              (void **)&scratch);
  if (rc < 0)
    return rc;
  float *ddx = dx ? dx : scratch, *dg = dgamma ? dgamma : scratch + (dx ? 0 : nx), *db = dgamma ? dbeta : dg + C;
  const float param_beta = dgamma ? 1.0f : 0.0f; /* accumulate into the caller's, overwrite the scratch */
  rc = loom_cudnn_ok(c,
                     cudnnBatchNormalizationBackward(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &param_beta,
                                                     p->x, x, p->x, dy, p->x, ddx, p->stats, gamma, dg, db,
                                                     (double)p->d.eps, p->mean, p->invstd),
                     "cudnnBatchNormalizationBackward");
  loom_cuda_put(c, scratch);
  return rc;
}
