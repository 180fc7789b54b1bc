/* The CUDA backend's pooling (cudnn.c): kernels of kernels.cu, not
 * cuDNN's. */
#include <stdlib.h>

#include "backends/cuda/cudnn_plan.h"
#include "backends/cuda/kernels.h"

int loom_cudnn_pool_plan(void *ctx, const loom_pool_desc *d, loom_plan **plan) {
  (void)ctx;
  *plan = NULL;
  const bool global = d->mode == LOOM_POOL_GLOBAL_AVG;
  if (d->mode > LOOM_POOL_GLOBAL_AVG || d->c < 1 || d->h < 1 || d->w < 1 || d->h * d->w > INT32_MAX ||
      (!global &&
       (d->k < 1 || d->s < 1 || d->p < 0 || d->p > d->k / 2 || d->oh != (d->h + 2 * d->p - d->k) / d->s + 1 ||
        d->ow != (d->w + 2 * d->p - d->k) / d->s + 1 || d->oh < 1 || d->ow < 1)))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: pool_plan: a known mode, sizes >= 1 (a plane of at most "
                                           "2^31 - 1 values), kernel and stride >= 1, 0 <= padding <= kernel/2, and "
                                           "oh, ow the output's size for them");
  dnn_pool *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a pooling plan");
  p->base.kind = PLAN_POOL;
  p->d = *d;
  if (global)
    p->d.oh = p->d.ow = 1;
  *plan = &p->base;
  return 0;
}

int loom_cudnn_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_pool *p = (dnn_pool *)plan;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  const int64_t need = p->d.mode == LOOM_POOL_MAX ? n * p->d.c * p->d.oh * p->d.ow : 0;
  if (need > p->cap) {
    /* At least double, so that few blocks retire. */
    const int64_t cap = need > 2 * p->cap ? need : 2 * p->cap;
    void **retired = p->argmax ? realloc(p->retired, (size_t)(p->nretired + 1) * sizeof *retired) : p->retired;
    if (p->argmax && !retired)
      return libloom->error_set(LOOM_ENOMEM, "CUDA backend: no host memory to keep a max pool's outgrown positions");
    p->retired = retired;
    int32_t *grown = libloom->alloc_get(c->alloc, (size_t)cap * sizeof *grown, c->stream);
    if (!grown)
      return libloom->last_error_code();
    if (p->argmax)
      p->retired[p->nretired++] = p->argmax;
    p->argmax = grown, p->cap = cap;
  }
  return launched(c, loom_cuda_pool_forward(c->stream, p->d, x, y, p->argmax, n), "pool_forward");
}

int loom_cudnn_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_pool *p = (dnn_pool *)plan;
  if (p->d.mode == LOOM_POOL_MAX && n * p->d.c * p->d.oh * p->d.ow > p->cap)
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: pool_backward of %lld samples without a forward of them "
                                           "before (the max's positions are the forward's)",
                              (long long)n);
  int rc = enter(c);
  if (rc < 0)
    return rc;
  return launched(c, loom_cuda_pool_backward(c->stream, p->d, dy, p->argmax, dx, n), "pool_backward");
}
