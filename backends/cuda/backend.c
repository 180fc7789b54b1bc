/* The CUDA module (libloom_cuda.so, module.h): the CUDA backend's table,
 * device memory from the device's caching allocator, copies and ops in
 * order on the backend's stream, products on cuBLAS (gemm.c), the rest as
 * the kernels of kernels.cu (ops.c, updates.c), uploads on a copy stream
 * (upload.c), and with cuDNN the planned ops (cudnn*.c). It calls
 * libloom only through `libloom`, the table libloom gives its entry point:
 * errors, the allocator, the backend wrapper. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backends/cuda/context.h"
#include "backends/cuda/kernels.h"

const loom_cuda_host *libloom;

/* cuBLAS's workspace, given from the allocator (NVIDIA's advice for Hopper). */
#define BLAS_WORKSPACE ((size_t)32 << 20)

/* The error for a failed CUDA runtime call: out of memory, a machine or
 * build that cannot run it (no driver, no device, no kernel for this GPU),
 * or anything else as an I/O failure of the device. */
int loom_cuda_error(cudaError_t e, int device, const char *what) {
  int code = LOOM_EIO;
  if (e == cudaErrorMemoryAllocation)
    code = LOOM_ENOMEM;
  else if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorNoKernelImageForDevice)
    code = LOOM_ENOTSUP;
  return libloom->error_set(code, "CUDA backend (device %d): %s failed: %s (%s)", device, what,
                            cudaGetErrorString(e), cudaGetErrorName(e));
}

int loom_cuda_blas_error(cublasStatus_t st, int device, const char *what) {
  return libloom->error_set(st == CUBLAS_STATUS_ALLOC_FAILED ? LOOM_ENOMEM : LOOM_EIO,
                            "CUDA backend (device %d): %s failed: %s (%s)", device, what, cublasGetStatusString(st),
                            cublasGetStatusName(st));
}

/* --- one caching allocator per device, shared by its backends --- */

typedef struct device_entry {
  loom_caching_alloc *alloc;
  int backends;
} device_entry;

static device_entry devices[LOOM_CUDA_MAX_DEVICES];
static uv_mutex_t devices_lock;
static uv_once_t devices_once = UV_ONCE_INIT;
static void devices_init(void) { uv_mutex_init(&devices_lock); }

static void *raw_alloc(void *ctx, size_t bytes) {
  const int device = (int)(intptr_t)ctx;
  void *p = NULL;
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess)
    e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError(); /* an allocation failure is not sticky: clear it */
    loom_cuda_error(e, device, "cudaMalloc");
    return NULL;
  }
  return p;
}

static void raw_free(void *ctx, void *ptr) {
  if (cudaSetDevice((int)(intptr_t)ctx) == cudaSuccess)
    cudaFree(ptr);
}

static void raw_synchronize(void *ctx) {
  if (cudaSetDevice((int)(intptr_t)ctx) == cudaSuccess)
    cudaDeviceSynchronize();
}

/* The allocator of `device`, made on its first backend; NULL with the error. */
static loom_caching_alloc *device_acquire(int device) {
  uv_once(&devices_once, devices_init);
  uv_mutex_lock(&devices_lock);
  device_entry *d = &devices[device];
  if (!d->alloc) {
    const loom_caching_alloc_hooks hooks = {raw_alloc, raw_free, raw_synchronize, (void *)(intptr_t)device};
    d->alloc = libloom->alloc_create(&hooks);
  }
  if (d->alloc)
    d->backends++;
  loom_caching_alloc *a = d->alloc;
  uv_mutex_unlock(&devices_lock);
  return a;
}

/* The last backend of a device gives its memory back. */
static void device_release(int device) {
  uv_mutex_lock(&devices_lock);
  device_entry *d = &devices[device];
  if (--d->backends == 0) {
    libloom->alloc_destroy(d->alloc);
    d->alloc = NULL;
  }
  uv_mutex_unlock(&devices_lock);
}

static int memory_stats_get(int device, loom_cuda_memory_stats *stats) {
  *stats = (loom_cuda_memory_stats){0};
  uv_once(&devices_once, devices_init);
  uv_mutex_lock(&devices_lock);
  if (devices[device].alloc)
    libloom->alloc_stats(devices[device].alloc, stats);
  uv_mutex_unlock(&devices_lock);
  return 0;
}

static int release_cached(int device) {
  uv_once(&devices_once, devices_init);
  uv_mutex_lock(&devices_lock);
  if (devices[device].alloc)
    libloom->alloc_release(devices[device].alloc);
  uv_mutex_unlock(&devices_lock);
  return 0;
}

/* --- the backend --- */

/* A reduction's scratch: two first passes, then two results. */
#define PARTIALS (2 * LOOM_CUDA_REDUCE_BLOCKS + 2)
/* The largest result read back: a reduction's double. */
#define HOST_BYTES sizeof(double)

static void *cuda_alloc(void *ctx, size_t bytes) {
  cuda_ctx *c = ctx;
  return libloom->alloc_get(c->alloc, bytes, c->stream);
}

static void cuda_free(void *ctx, void *ptr) { loom_cuda_put(ctx, ptr); }

static int cuda_synchronize(void *ctx) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
}

/* Waits for the ops before it: the copy is on the stream, then the stream. */
static int cuda_to_host(void *ctx, void *host, const void *src, size_t bytes) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0 && bytes)
    rc = launched(c, cudaMemcpyAsync(host, src, bytes, cudaMemcpyDeviceToHost, c->stream), "cudaMemcpyAsync (to host)");
  return rc < 0 ? rc : cuda_synchronize(c);
}

/* From pageable memory the copy has left `host` when the call returns. */
static int cuda_from_host(void *ctx, void *dst, const void *host, size_t bytes) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0 || !bytes)
    return rc;
  return launched(c, cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, c->stream), "cudaMemcpyAsync (from host)");
}

static int cuda_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0 || !bytes)
    return rc;
  return launched(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream), "cudaMemcpyAsync");
}

static int cuda_zero(void *ctx, void *ptr, size_t bytes) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0 || !bytes)
    return rc;
  return launched(c, cudaMemsetAsync(ptr, 0, bytes, c->stream), "cudaMemsetAsync");
}

/* Frees what was made, in reverse; any part may be missing. */
static void cuda_destroy(void *ctx) {
  cuda_ctx *c = ctx;
  if (!c)
    return;
  cudaSetDevice(c->device);
  loom_cuda_capture_abandon(c);
  if (c->stream)
    cudaStreamSynchronize(c->stream);
#ifdef LOOM_HAVE_CUDNN
  loom_cudnn_release(c);
#endif
  if (c->blas)
    cublasDestroy(c->blas);
  if (c->alloc) {
    libloom->alloc_put(c->alloc, c->workspace);
    libloom->alloc_put(c->alloc, c->partials);
    libloom->alloc_put(c->alloc, c->flag);
    libloom->alloc_put(c->alloc, c->table);
    if (c->stream)
      libloom->alloc_forget_stream(c->alloc, c->stream);
    device_release(c->device);
  }
  if (c->copy_stream) {
    cudaStreamSynchronize(c->copy_stream);
    cudaStreamDestroy(c->copy_stream);
  }
  if (c->stream)
    cudaStreamDestroy(c->stream);
  if (c->host)
    cudaFreeHost(c->host);
  free(c);
}

static const loom_backend_ops cuda_ops = {
    .name = "cuda",
    .device = LOOM_DEVICE_CUDA,
    .alloc = cuda_alloc,
    .free = cuda_free,
    .to_host = cuda_to_host,
    .from_host = cuda_from_host,
    .copy = cuda_copy,
    .zero = cuda_zero,
    .synchronize = cuda_synchronize,
    .host_alloc = loom_cuda_host_alloc,
    .host_free = loom_cuda_host_free,
    .upload_create = loom_cuda_upload_create,
    .upload_destroy = loom_cuda_upload_destroy,
    .upload_start = loom_cuda_upload_start,
    .upload_wait = loom_cuda_upload_wait,
    .upload_release = loom_cuda_upload_release,
    .gemm = loom_cuda_op_gemm,
    .fill_rows = loom_cuda_op_fill_rows,
    .sum_rows = loom_cuda_op_sum_rows,
    .act_forward = loom_cuda_op_act_forward,
    .act_backward = loom_cuda_op_act_backward,
    .xent_forward = loom_cuda_op_xent_forward,
    .xent_backward = loom_cuda_op_xent_backward,
    .loss_forward = loom_cuda_op_loss_forward,
    .loss_backward = loom_cuda_op_loss_backward,
    .dropout_forward = loom_cuda_op_dropout_forward,
    .mul = loom_cuda_op_mul,
    .add = loom_cuda_op_add,
    .sgd_update = loom_cuda_op_sgd_update,
    .adam_update = loom_cuda_op_adam_update,
    .rmsprop_update = loom_cuda_op_rmsprop_update,
    .update_ranges = loom_cuda_op_update_ranges,
    .sum_squares = loom_cuda_op_sum_squares,
    .scale = loom_cuda_op_scale,
    .round = loom_cuda_op_round,
    .gemm_lowp = loom_cuda_op_gemm_lowp,
    .clamp = loom_cuda_op_clamp,
    .all_finite = loom_cuda_op_all_finite,
    .flag_nonfinite = loom_cuda_op_flag_nonfinite,
    .set_if = loom_cuda_op_set_if,
    .graph_begin = loom_cuda_graph_begin,
    .graph_end = loom_cuda_graph_end,
    .graph_launch = loom_cuda_graph_launch,
    .graph_destroy = loom_cuda_graph_destroy,
    .topk_hits = loom_cuda_op_topk_hits,
#ifdef LOOM_HAVE_CUDNN
    .conv_plan = loom_cudnn_conv_plan,
    .conv_forward = loom_cudnn_conv_forward,
    .conv_backward = loom_cudnn_conv_backward,
    .pool_plan = loom_cudnn_pool_plan,
    .pool_forward = loom_cudnn_pool_forward,
    .pool_backward = loom_cudnn_pool_backward,
    .batchnorm_plan = loom_cudnn_batchnorm_plan,
    .batchnorm_forward = loom_cudnn_batchnorm_forward,
    .batchnorm_backward = loom_cudnn_batchnorm_backward,
    .plan_destroy = loom_cudnn_plan_destroy,
#endif
    .destroy = cuda_destroy,
};

static int device_count(int *count) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice) {
    cudaGetLastError();
    *count = 0;
    return 0;
  }
  return e == cudaSuccess ? 0 : loom_cuda_error(e, -1, "cudaGetDeviceCount");
}

/* 0 if `device` (0 or more) can run the backend, else the error naming what is missing. */
static int probe(int device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaErrorInsufficientDriver)
    return libloom->error_set(LOOM_ENOTSUP,
                              "no usable CUDA driver on this machine (cudaGetDeviceCount: %s): install the NVIDIA "
                              "driver for a CUDA 13 runtime, or use the CPU backend",
                              cudaGetErrorString(e));
  if (e == cudaErrorNoDevice || (e == cudaSuccess && count == 0))
    return libloom->error_set(LOOM_ENOTSUP, "no CUDA device on this machine (cudaGetDeviceCount: %s): use the CPU "
                                            "backend",
                              e == cudaSuccess ? "0 devices" : cudaGetErrorString(e));
  if (e != cudaSuccess)
    return loom_cuda_error(e, device, "cudaGetDeviceCount");
  if (device >= count || device >= LOOM_CUDA_MAX_DEVICES)
    return libloom->error_set(LOOM_EINVAL,
                              "CUDA device %d does not exist: this machine has %d CUDA device%s (0 to %d)", device,
                              count, count == 1 ? "" : "s", count - 1);
  struct cudaDeviceProp prop;
  if ((e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
    return loom_cuda_error(e, device, "cudaGetDeviceProperties");
  if (prop.major * 10 + prop.minor < 75)
    return libloom->error_set(LOOM_ENOTSUP,
                              "CUDA device %d (%s) has compute capability %d.%d; loom's CUDA backend needs 7.5 or "
                              "newer (Turing and later)",
                              device, prop.name, prop.major, prop.minor);
  return 0;
}

/* The context's stream, cuBLAS handle and scratch; the error on failure
 * (cuda_destroy frees what was made). */
static int ctx_init(cuda_ctx *c, const loom_cuda_options *o) {
  cudaError_t e;
  cublasStatus_t st;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess)
    return loom_cuda_error(e, c->device, "cudaStreamCreate");
  if ((e = cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking)) != cudaSuccess)
    return loom_cuda_error(e, c->device, "cudaStreamCreate (the copy stream)");
  if ((e = cudaMallocHost(&c->host, HOST_BYTES)) != cudaSuccess)
    return loom_cuda_error(e, c->device, "cudaMallocHost");
  if (!(c->alloc = device_acquire(c->device)))
    return libloom->last_error_code();
  c->workspace = libloom->alloc_get(c->alloc, BLAS_WORKSPACE, c->stream);
  c->partials = libloom->alloc_get(c->alloc, PARTIALS * sizeof(double), c->stream);
  c->flag = libloom->alloc_get(c->alloc, sizeof(int), c->stream);
  if (!c->workspace || !c->partials || !c->flag)
    return libloom->last_error_code();
  if ((st = cublasCreate(&c->blas)) != CUBLAS_STATUS_SUCCESS) {
    c->blas = NULL;
    return loom_cuda_blas_error(st, c->device, "cublasCreate");
  }
  if ((st = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
    return loom_cuda_blas_error(st, c->device, "cublasSetStream");
  if ((st = cublasSetWorkspace(c->blas, c->workspace, BLAS_WORKSPACE)) != CUBLAS_STATUS_SUCCESS)
    return loom_cuda_blas_error(st, c->device, "cublasSetWorkspace");
  /* TF32 only when asked: full fp32 products otherwise. */
  c->tf32 = o && o->tf32;
  c->conv_heuristics = o && o->conv_heuristics;
  st = cublasSetMathMode(c->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  return st == CUBLAS_STATUS_SUCCESS ? 0 : loom_cuda_blas_error(st, c->device, "cublasSetMathMode");
}

static int backend_create(int device, const loom_cuda_options *options, loom_backend **out) {
  *out = NULL;
  int rc = probe(device);
  if (rc < 0)
    return rc;
  cuda_ctx *c = calloc(1, sizeof *c);
  if (!c)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating its context");
  c->device = device;
  if ((rc = ctx_init(c, options)) < 0) {
    cuda_destroy(c);
    return rc;
  }
  *out = libloom->backend_create(&cuda_ops, c); /* destroys c on failure */
  return *out ? 0 : libloom->last_error_code();
}

cuda_ctx *loom_cuda_ctx_of(const loom_backend *backend) {
  const loom_backend_ops *ops;
  void *ctx = libloom->backend_context(backend, &ops);
  return ops->alloc == cuda_alloc ? ctx : NULL; /* this module's table */
}

static loom_cuda_module module = {
    .abi = LOOM_CUDA_MODULE_ABI,
    .size = sizeof(loom_cuda_module),
    .device_count = device_count,
    .backend_create = backend_create,
    .memory_stats_get = memory_stats_get,
    .release_cached = release_cached,
};

/* The module's one export (module.h). */
__attribute__((visibility("default"))) const loom_cuda_module *loom_cuda_module_v1(const loom_cuda_host *h);
const loom_cuda_module *loom_cuda_module_v1(const loom_cuda_host *h) {
  if (h->abi != LOOM_CUDA_MODULE_ABI || h->size != sizeof(loom_cuda_host)) {
    h->error_set(LOOM_ENOTSUP, "the CUDA module is of another loom (its interface version %d, libloom's %d): "
                 "install libloom and libloom_cuda.so of the same build side by side",
                 LOOM_CUDA_MODULE_ABI, h->abi);
    return NULL;
  }
  libloom = h;
#ifdef LOOM_HAVE_NCCL
  loom_nccl_fill(&module);
#endif
  return &module;
}
