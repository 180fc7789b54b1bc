/* The CUDA backend's planned ops (loom/backend.h): convolution and
 * BatchNorm on cuDNN 9, pooling as kernels of kernels.cu. Built into the
 * module only when CMake found cuDNN's headers (LOOM_HAVE_CUDNN); backend.c
 * wires the slots, which stay empty (LOOM_ENOTSUP) otherwise. cuDNN itself
 * is loaded by the first convolution or BatchNorm (cudnn_api.h).
 *
 * - A plan serves one layer for any batch size: the tensor descriptors
 *   (and a convolution's algorithms) are set for the n of a call and kept
 *   until another n comes (a loader's last short batch, an evaluation's).
 * - A convolution's algorithms are cuDNN's search's (cudnnFind*Ex: timed
 *   on the call's buffers), made on a plan's first call for an n and kept
 *   for the process by shape (conv_cache.h), so that same-shape layers
 *   search once. The search is not capturable into a CUDA graph: capture
 *   after warm-up steps that met every shape (a call under capture, or
 *   whose search fails, takes the heuristics' choice instead).
 * - Workspaces and scratch come from the device's caching allocator for
 *   one call and go back after it: stream order makes that safe.
 * - Numerics: no TF32 unless loom_cuda_options.tf32 or autocast (a
 *   convolution's math type is CUDNN_FMA_MATH otherwise: cuDNN's default
 *   uses TF32 on Ampere and later), and deterministic algorithms only, so that a run repeats
 *   bit for bit.
 * - Pooling is not cuDNN's: cudnnPoolingBackward needs the forward's x and
 *   y, which pool_backward does not get (the plan keeps the max's
 *   positions instead), and finds a max by comparing x with y, which a NaN
 *   never equals. The kernels compute what backends/cpu/pool.c does, bit
 *   for bit.
 * - BatchNorm's backward after an evaluation forward (fixed statistics) has
 *   no cuDNN call: it is a kernel (loom_cuda_bn_eval_backward).
 *
 * This file: the context's cuDNN handle, the helpers the ops share
 * (cudnn_plan.h) and plan_destroy; the ops in cudnn_conv.c, cudnn_pool.c
 * and cudnn_batchnorm.c. */

#include <limits.h>
#include <stdlib.h>

#include "backends/cuda/cudnn_plan.h"

/* The error for a failed cuDNN call, with cuDNN's own account of it. */
int loom_cudnn_error(cudnnStatus_t st, int device, const char *what) {
char detail[256] = "";
cudnnGetLastErrorString(detail, sizeof detail);
int code = LOOM_EIO;
if (st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    code = LOOM_ENOMEM;
  else if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED)
    code = LOOM_ENOTSUP;
  else if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_BAD_PARAM)
    code = LOOM_EINVAL;
  return libloom->error_set(code, "CUDA backend (device %d): %s failed: %s%s%s", device, what,
                            cudnnGetErrorString(st), detail[0] ? ": " : "", detail);
}

/* 0, or the error of a failed call. */
int loom_cudnn_ok(const cuda_ctx *c, cudnnStatus_t st, const char *what) {
return st == CUDNN_STATUS_SUCCESS ? 0 : loom_cudnn_error(st, c->device, what);
}

/* The context's cuDNN handle, made on first use: a program that runs no
 * convolution or BatchNorm never loads cuDNN (cudnn_api.h). */
static int dnn_handle(cuda_ctx *c) {
  if (c->dnn)
    return 0;
  int loaded = loom_cudnn_load();
  if (loaded < 0)
    return loaded;
  cudnnHandle_t h;
  cudnnStatus_t st = cudnnCreate(&h);
  if (st != CUDNN_STATUS_SUCCESS)
    return libloom->error_set(st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? LOOM_ENOMEM : LOOM_ENOTSUP,
                              "CUDA backend (device %d): cudnnCreate failed: %s: convolution and BatchNorm need "
                              "cuDNN 9's libraries (libcudnn*.so.9, all of one version) where the loader finds them",
                              c->device, cudnnGetErrorString(st));
  int rc = loom_cudnn_ok(c, cudnnSetStream(h, c->stream), "cudnnSetStream");
  if (rc < 0) {
    cudnnDestroy(h);
    return rc;
  }
  c->dnn = h;
  return 0;
}

void loom_cudnn_release(cuda_ctx *c) {
  if (c->dnn)
    cudnnDestroy(c->dnn);
  c->dnn = NULL;
}

/* The device and the handle, for a plan's first call. */
int loom_cudnn_enter(cuda_ctx *c) {
int rc = enter(c);
return rc < 0 ? rc : dnn_handle(c);
}

bool loom_cudnn_fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* A 4-d float tensor, sizes checked against cuDNN's ints. */
int loom_cudnn_set_tensor(const cuda_ctx *c, cudnnTensorDescriptor_t t, int64_t n, int64_t ch, int64_t h, int64_t w) {
if (!loom_cudnn_fits_int(n) || !loom_cudnn_fits_int(ch * h * w) || !loom_cudnn_fits_int(n * ch * h * w))
return libloom->error_set(LOOM_EINVAL,
                       "CUDA backend: a tensor of %lld x %lld x %lld x %lld floats is past cuDNN's int sizes: "
                       "use smaller batches",
                       (long long)n, (long long)ch, (long long)h, (long long)w);
  return loom_cudnn_ok(c,
                       cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)n, (int)ch, (int)h,
                                                  (int)w),
                       "cudnnSetTensor4dDescriptor");
}

/* `bytes` of scratch for the call (none for 0); NULL only with the error. */
int loom_cudnn_scratch_get(cuda_ctx *c, size_t bytes, void **out) {
*out = NULL;
if (bytes && !(*out = libloom->alloc_get(c->alloc, bytes, c->stream)))
return libloom->last_error_code();
  return 0;
}

void loom_cudnn_plan_destroy(void *ctx, loom_plan *plan) {
  cuda_ctx *c = ctx;
  if (!plan)
    return;
  switch (plan->kind) {
  case PLAN_CONV: loom_cudnn_conv_free((dnn_conv *)plan); break;
  case PLAN_POOL: {
    dnn_pool *p = (dnn_pool *)plan;
    loom_cuda_put(c, p->argmax);
    for (int i = 0; i < p->nretired; i++)
      loom_cuda_put(c, p->retired[i]);
    free(p->retired);
    free(plan);
    break;
  }
  case PLAN_BATCHNORM: loom_cudnn_bn_free(c, (dnn_bn *)plan); break;
  }
}
