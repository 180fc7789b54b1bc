/* The CUDA module (libloom_cuda.so, module.h): the CUDA backend's table,
 * device memory from the device's caching allocator, copies and ops in
 * order on the backend's stream, products on cuBLAS, the rest as the
 * kernels of kernels.cu, and with cuDNN the planned ops (cudnn.c). It calls
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

static int blas_error(cublasStatus_t st, int device, const char *what) {
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

/* --- asynchronous uploads: pinned host memory, the copy stream, a slot's events --- */

/* An upload slot (loom/backend.h): `copied` is recorded on the copy stream
 * after its copies, `released` on the compute stream after the last op
 * that read its memory. */
struct loom_upload {
  cudaEvent_t copied, released;
};

static void *cuda_host_alloc(void *ctx, size_t bytes) {
  cuda_ctx *c = ctx;
  void *p = NULL;
  if (enter(c) < 0)
    return NULL;
  /* Portable: pinned for every device's context, as the loader's buffers
   * outlive no backend but may serve another device's after a move. */
  cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError(); /* not sticky */
    loom_cuda_error(e, c->device, "cudaHostAlloc (pinned batch memory)");
    return NULL;
  }
  return p;
}

static void cuda_host_free(void *ctx, void *ptr) {
  (void)ctx;
  cudaFreeHost(ptr);
}

static void cuda_upload_destroy(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  if (!u)
    return;
  if (enter(c) == 0) {
    if (u->copied) {
      cudaEventSynchronize(u->copied);
      cudaEventDestroy(u->copied);
    }
    if (u->released) {
      cudaEventSynchronize(u->released);
      cudaEventDestroy(u->released);
    }
  }
  free(u);
}

static int cuda_upload_create(void *ctx, loom_upload **out) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  loom_upload *u = calloc(1, sizeof *u);
  if (!u)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory for an upload slot");
  cudaError_t e = cudaEventCreateWithFlags(&u->copied, cudaEventDisableTiming);
  if (e == cudaSuccess)
    e = cudaEventCreateWithFlags(&u->released, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    rc = loom_cuda_error(e, c->device, "cudaEventCreate (an upload slot)");
    cuda_upload_destroy(c, u);
    return rc;
  }
  *out = u;
  return 0;
}

/* On the copy stream, after the compute stream's last release of the slot
 * (an event never recorded is complete): the copies, then `copied`. */
static int cuda_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaStreamWaitEvent(c->copy_stream, u->released, 0), "cudaStreamWaitEvent (copy stream)");
  for (int i = 0; rc == 0 && i < count; i++)
    if (copies[i].bytes)
      rc = launched(c, cudaMemcpyAsync(copies[i].dst, copies[i].host, copies[i].bytes, cudaMemcpyHostToDevice,
                                       c->copy_stream),
                    "cudaMemcpyAsync (upload on the copy stream)");
  return rc < 0 ? rc : launched(c, cudaEventRecord(u->copied, c->copy_stream), "cudaEventRecord (upload copied)");
}

static int cuda_upload_wait(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, cudaStreamWaitEvent(c->stream, u->copied, 0), "cudaStreamWaitEvent (upload)");
}

/* The compute stream's ops so far are the last readers; the host waits for
 * the copies (done already once the compute that waited for them was). */
static int cuda_upload_release(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaEventRecord(u->released, c->stream), "cudaEventRecord (upload released)");
  return rc < 0 ? rc : launched(c, cudaEventSynchronize(u->copied), "cudaEventSynchronize (upload copied)");
}

/* Row-major C = alpha op(A) op(B) + beta C is column-major
 * C^T = alpha op(B)^T op(A)^T + beta C^T, and a row-major matrix read
 * column-major is its transpose: cuBLAS gets B first, then A, unchanged. */
static int gemm_sizes(const char *op, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int64_t ldc) {
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX || lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX)
    return libloom->error_set(LOOM_EINVAL,
                              "CUDA backend: %s of %lldx%lldx%lld (or its leading dimensions) is past cuBLAS's "
                              "int sizes",
                              op, (long long)M, (long long)N, (long long)K);
  return 0;
}

static int cuda_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  cuda_ctx *c = ctx;
  int rc = gemm_sizes("gemm", M, N, K, lda, ldb, ldc);
  if (rc < 0 || M == 0 || N == 0 || (rc = enter(c)) < 0)
    return rc;
  /* (Under autocast the core calls cuda_gemm_lowp instead.) */
  cublasStatus_t st =
      cublasSgemm(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K,
                  &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
  return st == CUBLAS_STATUS_SUCCESS ? 0 : blas_error(st, c->device, "cublasSgemm");
}

/* A rows x cols block of x (stride ld) as packed bf16 or fp16 of the
 * device's memory (*out; loom_cuda_put when done). */
static int lowp_copy(cuda_ctx *c, loom_precision p, const float *x, int64_t rows, int64_t cols, int64_t ld,
                     uint16_t **out) {
  if (!(*out = libloom->alloc_get(c->alloc, (size_t)(rows * cols) * sizeof **out, c->stream)))
    return libloom->last_error_code();
  return launched(c, loom_cuda_to_lowp(c->stream, p, x, rows, cols, ld, *out), "to_lowp (autocast's operands)");
}

/* Autocast's product with operands stored as p: each rounded into a
 * packed copy of half fp32's bytes, then cublasGemmEx on them (the
 * Tensor Cores' bf16 or fp16 rate) accumulating in fp32, into C's fp32.
 * Operands swapped as in cuda_gemm. */
static int cuda_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                          int64_t ldc) {
  cuda_ctx *c = ctx;
  int rc = gemm_sizes("gemm_lowp", M, N, K, lda, ldb, ldc);
  if (rc < 0 || M == 0 || N == 0 || (rc = enter(c)) < 0)
    return rc;
  uint16_t *a = NULL, *b = NULL;
  const int64_t acols = ta ? M : K, bcols = tb ? K : N;
  rc = lowp_copy(c, p, A, ta ? K : M, acols, lda, &a);
  if (rc == 0)
    rc = lowp_copy(c, p, B, tb ? N : K, bcols, ldb, &b);
  const cudaDataType type = p == LOOM_PRECISION_BF16 ? CUDA_R_16BF : CUDA_R_16F;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  if (rc == 0)
    st = cublasGemmEx(c->blas, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, (int)N, (int)M, (int)K,
                      &alpha, b, type, (int)bcols, a, type, (int)acols, &beta, C, CUDA_R_32F, (int)ldc,
                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (rc == 0 && st != CUBLAS_STATUS_SUCCESS)
    rc = blas_error(st, c->device, "cublasGemmEx (autocast)");
  loom_cuda_put(c, a); /* stream-ordered: the product's reads come first (a capture's graph keeps them) */
  loom_cuda_put(c, b);
  return rc;
}

static int cuda_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_fill_rows(c->stream, y, row, rows, cols), "fill_rows");
}

static int cuda_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_sum_rows(c->stream, sum, x, rows, cols), "sum_rows");
}

static int cuda_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_act_forward(c->stream, act, param, x, y, n), "act_forward");
}

static int cuda_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                             const float *dy, float *dx, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_act_backward(c->stream, act, param, x, y, dy, dx, n), "act_backward");
}

/* Under a capture the key is the graph's, in device memory, rewritten
 * before each launch (graph.c): a batch's mask is its own key's. */
static int cuda_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0 || !c->capture)
    return rc < 0 ? rc : launched(c, loom_cuda_dropout_forward(c->stream, key, p, x, y, mask, n), "dropout_forward");
  void *device;
  if ((rc = loom_cuda_capture_value(c, GRAPH_KEY, &key, sizeof key, false, &device)) < 0)
    return rc;
  return launched(c, loom_cuda_dropout_forward_at(c->stream, device, p, x, y, mask, n), "dropout_forward");
}

static int cuda_mul(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_mul(c->stream, a, b, y, n), "mul");
}

static int cuda_add(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_add(c->stream, a, b, y, n), "add");
}

/* The scalars of backends/cpu/optim.c, computed as it does. */
static loom_cuda_sgd sgd_scalars(const loom_sgd_step *s, bool buf) {
  return (loom_cuda_sgd){.lr = (float)s->lr, .wd = (float)s->weight_decay, .mu = (float)s->momentum,
                         .damp = (float)(1.0 - s->dampening), .momentum = buf && (float)s->momentum != 0.0f,
                         .first = s->first, .nesterov = s->nesterov, .gate = s->gate};
}

static loom_cuda_adam adam_scalars(const loom_adam_step *s) {
  const double bc1 = 1.0 - pow(s->beta1, (double)s->step), bc2 = 1.0 - pow(s->beta2, (double)s->step);
  return (loom_cuda_adam){.b1 = (float)s->beta1, .b2 = (float)s->beta2, .c1 = (float)(1.0 - s->beta1),
                          .c2 = (float)(1.0 - s->beta2), .eps = (float)s->eps,
                          .l2 = s->decoupled ? 0.0f : (float)s->weight_decay,
                          .shrink = s->decoupled ? (float)(1.0 - s->lr * s->weight_decay) : 1.0f,
                          .step_size = (float)(s->lr / bc1), .inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2)),
                          .gate = s->gate};
}

static loom_cuda_rmsprop rmsprop_scalars(const loom_rmsprop_step *s) {
  return (loom_cuda_rmsprop){.a = (float)s->alpha, .ca = (float)(1.0 - s->alpha), .eps = (float)s->eps,
                             .mu = (float)s->momentum, .lr = (float)s->lr, .wd = (float)s->weight_decay,
                             .centered = s->centered, .gate = s->gate};
}

static int cuda_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_sgd_update(c->stream, sgd_scalars(s, buf), p, g, buf, n), "sgd_update");
}

static int cuda_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                            int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_adam_update(c->stream, adam_scalars(s), p, g, m, v, n), "adam_update");
}

static int cuda_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                               float *avg, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc
                : launched(c, loom_cuda_rmsprop_update(c->stream, rmsprop_scalars(s), p, g, sq, buf, avg, n),
                           "rmsprop_update");
}

/* The ranges' table, one entry per range with its own rate and decay,
 * built on the host (`bytes` each, the scalars at `k`) and copied to the
 * context's table, which grows as needed: from pageable memory the copy
 * has left the host's when cudaMemcpyAsync returns, and the table's old
 * memory goes back to the allocator in stream order. */
static int upload_table(cuda_ctx *c, const void *host, size_t bytes) {
  if (bytes > c->table_bytes) {
    void *grown = libloom->alloc_get(c->alloc, bytes, c->stream);
    if (!grown)
      return libloom->last_error_code();
    loom_cuda_put(c, c->table);
    c->table = grown, c->table_bytes = bytes;
  }
  return launched(c, cudaMemcpyAsync(c->table, host, bytes, cudaMemcpyHostToDevice, c->stream),
                  "cudaMemcpyAsync (the update's ranges)");
}

size_t loom_cuda_ranges_table(const loom_update_step *s, const loom_update_range *ranges, int nranges, bool has_state,
                              void *out) {
  const size_t entry = s->rule == LOOM_RULE_SGD    ? sizeof(loom_cuda_sgd_range)
                       : s->rule == LOOM_RULE_ADAM ? sizeof(loom_cuda_adam_range)
                                                   : sizeof(loom_cuda_rmsprop_range);
  int64_t n = 0;
  for (int i = 0; out && i < nranges; i++) {
    const loom_update_range *r = &ranges[i];
    if (s->rule == LOOM_RULE_SGD) {
      loom_sgd_step k = s->u.sgd;
      k.lr = r->lr, k.weight_decay = r->wd;
      ((loom_cuda_sgd_range *)out)[i] = (loom_cuda_sgd_range){n, r->off, sgd_scalars(&k, has_state)};
    } else if (s->rule == LOOM_RULE_ADAM) {
      loom_adam_step k = s->u.adam;
      k.lr = r->lr, k.weight_decay = r->wd;
      ((loom_cuda_adam_range *)out)[i] = (loom_cuda_adam_range){n, r->off, adam_scalars(&k)};
    } else {
      loom_rmsprop_step k = s->u.rmsprop;
      k.lr = r->lr, k.weight_decay = r->wd;
      ((loom_cuda_rmsprop_range *)out)[i] = (loom_cuda_rmsprop_range){n, r->off, rmsprop_scalars(&k)};
    }
    n += r->len;
  }
  return (size_t)nranges * entry;
}

/* One launch for every range: the rule's scalars per range, as its own op
 * computes them for that range's rate and decay. Under a capture the
 * table is the graph's (graph.c), rewritten before each launch. */
static int cuda_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
                              float *p, const float *g, float *state, int64_t total) {
  cuda_ctx *c = ctx;
  if (nranges <= 0)
    return 0;
  const size_t bytes = loom_cuda_ranges_table(s, ranges, nranges, state != NULL, NULL);
  char *table = malloc(bytes);
  if (!table)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of host memory for %d update ranges", nranges);
  loom_cuda_ranges_table(s, ranges, nranges, state != NULL, table);
  int64_t n = 0;
  for (int i = 0; i < nranges; i++)
    n += ranges[i].len;
  const int *gate = s->rule == LOOM_RULE_SGD ? s->u.sgd.gate : s->rule == LOOM_RULE_ADAM ? s->u.adam.gate
                                                                                          : s->u.rmsprop.gate;
  void *device = NULL;
  int rc = enter(c);
  if (rc == 0 && c->capture)
    rc = loom_cuda_capture_value(c, GRAPH_TABLE, table, bytes, state != NULL, &device);
  else if (rc == 0 && (rc = upload_table(c, table, bytes)) == 0)
    device = c->table;
  free(table);
  if (rc < 0)
    return rc;
  cudaError_t e;
  if (s->rule == LOOM_RULE_SGD)
    e = loom_cuda_sgd_ranges(c->stream, device, nranges, gate, p, g, state, n);
  else if (s->rule == LOOM_RULE_ADAM)
    e = loom_cuda_adam_ranges(c->stream, device, nranges, gate, p, g, state, state + total, n);
  else
    e = loom_cuda_rmsprop_ranges(c->stream, device, nranges, gate, p, g, state, state + total, state + 2 * total, n);
  return launched(c, e, "update_ranges");
}

/* A small device result to the host: the one wait of a reduction. */
static int read_back(cuda_ctx *c, void *host, const void *dev, size_t bytes) {
  int rc = launched(c, cudaMemcpyAsync(c->host, dev, bytes, cudaMemcpyDeviceToHost, c->stream), "cudaMemcpyAsync");
  if (rc == 0)
    rc = launched(c, cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
  if (rc == 0)
    memcpy(host, c->host, bytes);
  return rc;
}

/* In double, in a fixed tree order for each n (the CPU's sums in index
 * order: the two differ by double rounding, about 1e-16 relative). */
static int cuda_sum_squares(void *ctx, const float *x, int64_t n, double *sum) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, loom_cuda_sum_squares(c->stream, x, n, c->partials, c->partials + LOOM_CUDA_REDUCE_BLOCKS),
                  "sum_squares");
  return rc < 0 ? rc : read_back(c, sum, c->partials + LOOM_CUDA_REDUCE_BLOCKS, sizeof *sum);
}

/* The criteria: the sums in double in a fixed tree (see sum_squares). */
static int cuda_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                             float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  cuda_ctx *cc = ctx;
  int rc = enter(cc);
  return rc < 0 ? rc
                : launched(cc, loom_cuda_xent_forward(cc->stream, logits, targets, weights, smoothing, n, c, probs,
                                                      cc->partials, sums),
                           "xent_forward");
}

static int cuda_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                              float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  cuda_ctx *cc = ctx;
  int rc = enter(cc);
  return rc < 0 ? rc
                : launched(cc, loom_cuda_xent_backward(cc->stream, probs, targets, weights, smoothing, scale, n, c,
                                                       dlogits),
                           "xent_backward");
}

static int cuda_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                             int64_t n, double *sum) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc
                : launched(c, loom_cuda_loss_forward(c->stream, loss, param, out, target, n, c->partials, sum),
                           "loss_forward");
}

static int cuda_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                              float scale, int64_t n, float *dout) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc
                : launched(c, loom_cuda_loss_backward(c->stream, loss, param, out, target, scale, n, dout),
                           "loss_backward");
}

/* The counts written where they are asked for (the backend's memory): no
 * wait. The first bad sample is an atomic minimum from all ones, which
 * reads as -1 when every target is a class. */
static int cuda_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                          int nk, int64_t *hits, int64_t *bad) {
  cuda_ctx *cc = ctx;
  loom_cuda_topk k = {.nk = nk};
  memcpy(k.ks, ks, (size_t)nk * sizeof *ks);
  int rc = enter(cc);
  if (rc == 0)
    rc = launched(cc, cudaMemsetAsync(hits, 0, (size_t)nk * sizeof *hits, cc->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(cc, cudaMemsetAsync(bad, 0xff, sizeof *bad, cc->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(cc,
                  loom_cuda_topk_hits(cc->stream, scores, targets, n, c, k, (unsigned long long *)(void *)hits,
                                      (unsigned long long *)(void *)bad),
                  "topk_hits");
  return rc;
}

static int cuda_scale(void *ctx, float *x, float a, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_scale(c->stream, x, a, n), "scale");
}

static int cuda_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_round(c->stream, p, x, y, n), "round");
}

static int cuda_clamp(void *ctx, float *x, float limit, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_clamp(c->stream, x, limit, n), "clamp");
}

static int cuda_all_finite(void *ctx, const float *x, int64_t n, bool *finite) {
  cuda_ctx *c = ctx;
  int bad = 0;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaMemsetAsync(c->flag, 0, sizeof *c->flag, c->stream), "cudaMemsetAsync");
  if (rc == 0)
    rc = launched(c, loom_cuda_any_nonfinite(c->stream, x, n, c->flag), "all_finite");
  if (rc == 0)
    rc = read_back(c, &bad, c->flag, sizeof bad);
  *finite = rc == 0 && !bad;
  return rc;
}

static int cuda_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0 && n > 0)
    rc = launched(c, loom_cuda_any_nonfinite(c->stream, x, n, flag), "flag_nonfinite");
  if (rc == 0 && nd > 0)
    rc = launched(c, loom_cuda_any_nonfinite_f64(c->stream, d, nd, flag), "flag_nonfinite (doubles)");
  return rc;
}

static int cuda_set_if(void *ctx, const int *flag, float *x, float value) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_set_if(c->stream, flag, x, value), "set_if");
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
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .upload_create = cuda_upload_create,
    .upload_destroy = cuda_upload_destroy,
    .upload_start = cuda_upload_start,
    .upload_wait = cuda_upload_wait,
    .upload_release = cuda_upload_release,
    .gemm = cuda_gemm,
    .fill_rows = cuda_fill_rows,
    .sum_rows = cuda_sum_rows,
    .act_forward = cuda_act_forward,
    .act_backward = cuda_act_backward,
    .xent_forward = cuda_xent_forward,
    .xent_backward = cuda_xent_backward,
    .loss_forward = cuda_loss_forward,
    .loss_backward = cuda_loss_backward,
    .dropout_forward = cuda_dropout_forward,
    .mul = cuda_mul,
    .add = cuda_add,
    .sgd_update = cuda_sgd_update,
    .adam_update = cuda_adam_update,
    .rmsprop_update = cuda_rmsprop_update,
    .update_ranges = cuda_update_ranges,
    .sum_squares = cuda_sum_squares,
    .scale = cuda_scale,
    .round = cuda_round,
    .gemm_lowp = cuda_gemm_lowp,
    .clamp = cuda_clamp,
    .all_finite = cuda_all_finite,
    .flag_nonfinite = cuda_flag_nonfinite,
    .set_if = cuda_set_if,
    .graph_begin = loom_cuda_graph_begin,
    .graph_end = loom_cuda_graph_end,
    .graph_launch = loom_cuda_graph_launch,
    .graph_destroy = loom_cuda_graph_destroy,
    .topk_hits = cuda_topk_hits,
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
    return blas_error(st, c->device, "cublasCreate");
  }
  if ((st = cublasSetStream(c->blas, c->stream)) != CUBLAS_STATUS_SUCCESS)
    return blas_error(st, c->device, "cublasSetStream");
  if ((st = cublasSetWorkspace(c->blas, c->workspace, BLAS_WORKSPACE)) != CUBLAS_STATUS_SUCCESS)
    return blas_error(st, c->device, "cublasSetWorkspace");
  /* TF32 only when asked: full fp32 products otherwise. */
  c->tf32 = o && o->tf32;
  c->conv_heuristics = o && o->conv_heuristics;
  st = cublasSetMathMode(c->blas, c->tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH);
  return st == CUBLAS_STATUS_SUCCESS ? 0 : blas_error(st, c->device, "cublasSetMathMode");
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
