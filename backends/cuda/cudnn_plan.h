/* What the CUDA backend's planned ops share (cudnn.c, cudnn_conv.c,
 * cudnn_pool.c, cudnn_batchnorm.c): the plans' common head, the pooling
 * plan (which plan_destroy frees), and the helpers of cudnn.c. Internal to
 * the module. */
#ifndef LOOM_BACKENDS_CUDA_CUDNN_PLAN_H
#define LOOM_BACKENDS_CUDA_CUDNN_PLAN_H

/* cuDNN 9 marks all of its descriptor API deprecated in favour of the
 * graph API (cudnn_graph.h), which has no call for these layers: each
 * would be an operation graph built from backend descriptors, many times
 * this code for the same kernels. The calls are supported throughout
 * cuDNN 9 (PyTorch makes them too), so their warnings (given when
 * CUDNN_WARN_DEPRECATED is defined) are silenced, for the planned ops'
 * files only (those that include this header). */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>
#include <stdbool.h>
#include <stdint.h>

#include "backends/cuda/context.h"
#include "backends/cuda/cudnn_api.h" /* cuDNN's calls, loaded on first use */

typedef enum { PLAN_CONV = 1, PLAN_POOL, PLAN_BATCHNORM } plan_kind;
struct loom_plan {
  plan_kind kind;
};

static const float one = 1.0f, zero = 0.0f;

/* The helpers of the ops (cudnn.c, which says what each does). */
int loom_cudnn_error(cudnnStatus_t st, int device, const char *what);
int loom_cudnn_ok(const cuda_ctx *c, cudnnStatus_t st, const char *what);
int loom_cudnn_enter(cuda_ctx *c);
bool loom_cudnn_fits_int(int64_t v);
int loom_cudnn_set_tensor(const cuda_ctx *c, cudnnTensorDescriptor_t t, int64_t n, int64_t ch, int64_t h, int64_t w);
int loom_cudnn_scratch_get(cuda_ctx *c, size_t bytes, void **out);

/* A step graph captured with the plan keeps writing its argmax, so one
 * outgrown stays the plan's (retired) until the plan goes, when the
 * core has dropped the graphs that name the plan. */

typedef struct dnn_pool {
  struct loom_plan base;
  loom_pool_desc d;
  int32_t *argmax; /* device: the max's positions of the last forward */
  int64_t cap;     /* its elements */
  void **retired; /* outgrown argmax blocks (each at least twice the last) */
  int nretired;
} dnn_pool;

/* A convolution's plan and a BatchNorm's, freed (cudnn_conv.c,
 * cudnn_batchnorm.c). */
typedef struct dnn_conv dnn_conv;
typedef struct dnn_bn dnn_bn;
void loom_cudnn_conv_free(dnn_conv *p);
void loom_cudnn_bn_free(cuda_ctx *c, dnn_bn *p);

#endif
