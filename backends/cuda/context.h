/* The CUDA backend's context and what the module's files share of it:
 * backend.c (the devices, the context, the table, memory and copies),
 * upload.c (the upload slots), gemm.c (cuBLAS's products), ops.c and
 * updates.c (the kernels of kernels.cu), graph.c (step graphs) and, when
 * CMake found cuDNN (LOOM_HAVE_CUDNN), cudnn*.c (the planned ops).
 * Internal to the module, whose symbols are hidden but its entry point. */
#ifndef LOOM_BACKENDS_CUDA_CONTEXT_H
#define LOOM_BACKENDS_CUDA_CONTEXT_H

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <stdbool.h>

#include "backends/cuda/module.h"

/* libloom's side, from the entry point on (module.h). */
extern const loom_cuda_host *libloom;

struct cudnnContext; /* cuDNN's handle, cudnnHandle_t, without cudnn.h */
struct cuda_capture; /* graph.c: what a capture under way collects */

typedef struct cuda_ctx {
  int device;
  bool tf32; /* loom_cuda_options.tf32: TF32 products in cuBLAS and cuDNN */
  bool conv_heuristics; /* loom_cuda_options.conv_heuristics: no timed search */
  cudaStream_t stream;      /* the ops, in order */
  cudaStream_t copy_stream; /* asynchronous uploads (loom_upload), ordered against `stream` by events */
  cublasHandle_t blas;
  struct cudnnContext *dnn; /* made by the first plan that needs it (cudnn.c), NULL before */
  loom_caching_alloc *alloc;
  void *workspace;  /* cuBLAS's */
  double *partials; /* device: a reduction's first pass(es), then its results (PARTIALS) */
  int *flag;        /* device: all_finite's */
  void *host;       /* pinned: small results read back (HOST_BYTES in backend.c) */
  void *table;      /* device: update_ranges's table of ranges, grown as needed */
  size_t table_bytes;
  struct cuda_capture *capture; /* between graph_begin and graph_end (graph.c) */
} cuda_ctx;

/* The context of `backend` if it is a CUDA backend of this module, else
 * NULL (backend.c). */
cuda_ctx *loom_cuda_ctx_of(const loom_backend *backend);

/* Gives memory back to the device's allocator; during a capture the graph
 * keeps it instead (its launches write there) (graph.c). */
void loom_cuda_put(cuda_ctx *c, void *ptr);
/* Under a capture: a value the graph takes from each launch's log,
 * `bytes` from `host` now, into device memory of the graph's copied from a
 * pinned buffer of its own that graph_launch rewrites (graph.c):
 * update_ranges's table (has_state: SGD's scalars depend on a momentum
 * buffer), or dropout's key. */
typedef enum graph_value { GRAPH_TABLE, GRAPH_KEY } graph_value;
int loom_cuda_capture_value(cuda_ctx *c, graph_value kind, const void *host, size_t bytes, bool has_state,
                            void **device);
/* update_ranges's table for these ranges into `out` (NULL: none); its
 * size in bytes (updates.c). */
size_t loom_cuda_ranges_table(const loom_update_step *s, const loom_update_range *ranges, int nranges, bool has_state,
                              void *out);
/* Ends a capture left under way (the backend's destroy): nothing of it ran. */
void loom_cuda_capture_abandon(cuda_ctx *c);
/* The graph slots (graph.c; loom/backend.h, "Step graphs"). */
int loom_cuda_graph_begin(void *ctx);
int loom_cuda_graph_end(void *ctx, const loom_op_log *captured, loom_graph **graph);
int loom_cuda_graph_launch(void *ctx, loom_graph *graph, const loom_op_log *now);
void loom_cuda_graph_destroy(void *ctx, loom_graph *graph);

/* The error for a failed CUDA runtime call, naming the call and the device. */
int loom_cuda_error(cudaError_t e, int device, const char *what);
/* The same for a failed cuBLAS call (backend.c). */
int loom_cuda_blas_error(cublasStatus_t st, int device, const char *what);

/* The upload slots (upload.c): the slots of loom_backend_ops of the same
 * names, with their contracts (loom/backend.h). */
void *loom_cuda_host_alloc(void *ctx, size_t bytes);
void loom_cuda_host_free(void *ctx, void *ptr);
int loom_cuda_upload_create(void *ctx, loom_upload **out);
void loom_cuda_upload_destroy(void *ctx, loom_upload *u);
int loom_cuda_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count);
int loom_cuda_upload_wait(void *ctx, loom_upload *u);
int loom_cuda_upload_release(void *ctx, loom_upload *u);

/* The compute ops: loom_cuda_op_NAME is the slot NAME of loom_backend_ops
 * (loom/backend.h; loom_cuda_NAME is its kernel's launcher, kernels.h).
 * gemm.c: cuBLAS's products. */
int loom_cuda_op_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                      int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
int loom_cuda_op_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                           const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                           int64_t ldc);
/* ops.c: elementwise, losses, reductions and checks. */
int loom_cuda_op_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols);
int loom_cuda_op_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols);
int loom_cuda_op_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n);
int loom_cuda_op_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                              const float *dy, float *dx, int64_t n);
int loom_cuda_op_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n);
int loom_cuda_op_mul(void *ctx, const float *a, const float *b, float *y, int64_t n);
int loom_cuda_op_add(void *ctx, const float *a, const float *b, float *y, int64_t n);
int loom_cuda_op_sum_squares(void *ctx, const float *x, int64_t n, double *sum);
int loom_cuda_op_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                              float smoothing, int64_t n, int64_t c, float *probs, double *sums);
int loom_cuda_op_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                               float smoothing, float scale, int64_t n, int64_t c, float *dlogits);
int loom_cuda_op_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                              int64_t n, double *sum);
int loom_cuda_op_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                               float scale, int64_t n, float *dout);
int loom_cuda_op_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                           int nk, int64_t *hits, int64_t *bad);
int loom_cuda_op_scale(void *ctx, float *x, float a, int64_t n);
int loom_cuda_op_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n);
int loom_cuda_op_clamp(void *ctx, float *x, float limit, int64_t n);
int loom_cuda_op_all_finite(void *ctx, const float *x, int64_t n, bool *finite);
int loom_cuda_op_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag);
int loom_cuda_op_set_if(void *ctx, const int *flag, float *x, float value);
/* updates.c: the optimizers' updates. */
int loom_cuda_op_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n);
int loom_cuda_op_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                             int64_t n);
int loom_cuda_op_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq,
                                float *buf, float *avg, int64_t n);
int loom_cuda_op_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
                               float *p, const float *g, float *state, int64_t total);

/* Every call runs on the backend's device, whichever thread makes it. */
static inline int enter(cuda_ctx *c) {
  cudaError_t e = cudaSetDevice(c->device);
  return e == cudaSuccess ? 0 : loom_cuda_error(e, c->device, "cudaSetDevice");
}

/* 0 for cudaSuccess (a call or a kernel's launch), else its error. */
static inline int launched(const cuda_ctx *c, cudaError_t e, const char *what) {
  return e == cudaSuccess ? 0 : loom_cuda_error(e, c->device, what);
}

#ifdef LOOM_HAVE_NCCL
/* The NCCL communicator's half in the module (backends/nccl/nccl.c): the
 * nccl_* slots of loom_cuda_module. */
void loom_nccl_fill(loom_cuda_module *module);
#endif

#ifdef LOOM_HAVE_CUDNN
/* The planned ops (cudnn.c): the slots of loom_backend_ops of the same
 * names, with their contracts (loom/backend.h). */
int loom_cudnn_conv_plan(void *ctx, const loom_conv_desc *desc, loom_plan **plan);
int loom_cudnn_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                            int64_t n);
int loom_cudnn_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                             float *dbias, float *dx, int64_t n);
int loom_cudnn_pool_plan(void *ctx, const loom_pool_desc *desc, loom_plan **plan);
int loom_cudnn_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n);
int loom_cudnn_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n);
int loom_cudnn_batchnorm_plan(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan);
int loom_cudnn_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var, float *y, int64_t n);
int loom_cudnn_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n);
void loom_cudnn_plan_destroy(void *ctx, loom_plan *plan);
/* Destroys the context's cuDNN handle, if it has one (the context's destroy). */
void loom_cudnn_release(cuda_ctx *c);
#endif

#endif
