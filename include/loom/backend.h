/* loom/backend.h - where tensors live and what computes on them.
 *
 * A backend is a table of functions plus a context, as a communicator is:
 * memory (allocate, free, copy to and from the host, synchronize) and the
 * ops that layers, criteria and optimizers need. Every op slot is optional;
 * loom_backend_supports says which a backend has, and calling one it lacks
 * is LOOM_ENOTSUP with a message naming both. The CPU backend
 * (loom_backend_cpu, backends/cpu/) has every op; another backend joins by
 * filling the slots it can, and tests/test_backend_ops.c checks each slot of
 * each backend against double-precision references.
 *
 * Pointers handed to ops are the backend's own memory (from its alloc, or
 * the data of tensors created on it). Ops run in order on the backend's
 * stream; results reach the host through loom_backend_to_host or
 * loom_tensor_host_data, which wait for them. */
#ifndef LOOM_BACKEND_H
#define LOOM_BACKEND_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_backend loom_backend;

typedef enum loom_device_kind {
  LOOM_DEVICE_CPU,  /* host memory: data pointers are the host's */
  LOOM_DEVICE_CUDA, /* device memory: reach it through the copy calls */
} loom_device_kind;

/* Elementwise activations, forward and backward (NaN in, NaN out). */
typedef enum loom_activation {
  LOOM_ACT_RELU,
  LOOM_ACT_LEAKY_RELU, /* param: the negative slope */
  LOOM_ACT_GELU,       /* exact: x Phi(x) */
  LOOM_ACT_TANH,
  LOOM_ACT_SIGMOID,
  LOOM_ACT_COUNT
} loom_activation;

/* Losses taken elementwise against a target of the output's size
 * (PyTorch's definitions). */
typedef enum loom_pointwise_loss {
  LOOM_LOSS_BCE_WITH_LOGITS,
  LOOM_LOSS_MSE,
  LOOM_LOSS_L1,
  LOOM_LOSS_SMOOTH_L1, /* param: beta > 0 */
  LOOM_LOSS_COUNT
} loom_pointwise_loss;

/* The ops, for loom_backend_supports; each names the slot of the same name. */
typedef enum loom_op {
  LOOM_OP_GEMM,
  LOOM_OP_FILL_ROWS,
  LOOM_OP_SUM_ROWS,
  LOOM_OP_ACT_FORWARD,
  LOOM_OP_ACT_BACKWARD,
  LOOM_OP_XENT_FORWARD,
  LOOM_OP_XENT_BACKWARD,
  LOOM_OP_LOSS_FORWARD,
  LOOM_OP_LOSS_BACKWARD,
  LOOM_OP_DROPOUT_FORWARD,
  LOOM_OP_MUL,
  LOOM_OP_COUNT
} loom_op;

typedef struct loom_backend_ops {
  const char *name; /* "cpu", "cuda", ... */
  loom_device_kind device;
  /* Memory: `bytes` of the backend's memory, 64-byte aligned; NULL after
   * loom_error_set on failure. free(NULL) does nothing. */
  void *(*alloc)(void *ctx, size_t bytes);
  void (*free)(void *ctx, void *ptr);
  /* Copies between the host and the backend's memory; to_host waits for
   * the ops before it. For a CPU backend both are memcpy. */
  int (*to_host)(void *ctx, void *host, const void *src, size_t bytes);
  int (*from_host)(void *ctx, void *dst, const void *host, size_t bytes);
  /* Within the backend's memory: dst = src, and ptr = 0. */
  int (*copy)(void *ctx, void *dst, const void *src, size_t bytes);
  int (*zero)(void *ctx, void *ptr, size_t bytes);
  /* Waits until every op issued so far has finished. Optional. */
  int (*synchronize)(void *ctx);

  /* C = alpha op(A) op(B) + beta C, row-major, op(A) M x K, op(B) K x N
   * (cblas_sgemm's contract). */
  int (*gemm)(void *ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
  /* y[i, :] = row for each of `rows` rows of `cols` (a bias before a
   * product that accumulates into y). */
  int (*fill_rows)(void *ctx, float *y, const float *row, int64_t rows, int64_t cols);
  /* sum[j] += sum over i of x[i, j] (a bias's gradient). */
  int (*sum_rows)(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols);
  /* y = f(x) over n elements; `param` as loom_activation says. */
  int (*act_forward)(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n);
  /* dx = dy f'(x) over n elements, from the forward's input x and output
   * y (a backend reads whichever its formula needs). */
  int (*act_backward)(void *ctx, loom_activation act, float param, const float *x, const float *y, const float *dy,
                      float *dx, int64_t n);

  /* Softmax cross-entropy of logits [n, c] against class indices
   * targets[n] (floats holding integers, already checked), with class
   * weights (NULL: all 1) and label smoothing e: with q = (1 - e) onehot(y)
   * + e / c, it writes probs = softmax(logits) and, on the host,
   * *loss_sum = sum_i sum_j w_j q_ij (logsumexp_i - logit_ij) and
   * *weight_sum = sum_i w_{y_i} (both in double). */
  int (*xent_forward)(void *ctx, const float *logits, const float *targets, const float *weights, float smoothing,
                      int64_t n, int64_t c, float *probs, double *loss_sum, double *weight_sum);
  /* dlogits_ij = ((sum_k w_k q_ik) probs_ij - w_j q_ij) scale. */
  int (*xent_backward)(void *ctx, const float *probs, const float *targets, const float *weights, float smoothing,
                       float scale, int64_t n, int64_t c, float *dlogits);
  /* *sum (on the host, in double) = the sum over n elements of the loss of
   * out against target. */
  int (*loss_forward)(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                      int64_t n, double *sum);
  /* dout = scale dloss/dout, elementwise. */
  int (*loss_backward)(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                       float scale, int64_t n, float *dout);
  /* Inverted dropout: mask_i = 0 if u_i < p else 1 / (1 - p), y = x mask,
   * where u_i is the uniform of counter i under `key`: SplitMix64's
   * finaliser of key + (i + 1) 0x9E3779B97F4A7C15, its top 24 bits over
   * 2^24. Every backend draws this same mask, so a mask is reproducible. */
  int (*dropout_forward)(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n);
  /* y = a b, elementwise (Dropout's backward: dx = dy mask). */
  int (*mul)(void *ctx, const float *a, const float *b, float *y, int64_t n);

  /* Optional: frees ctx. */
  void (*destroy)(void *ctx);
} loom_backend_ops;

/* Wraps a backend; `ops` is copied, `ctx` is owned from here on (freed by
 * ops->destroy, also on failure). NULL with loom_last_error() if one of the
 * memory slots (alloc, free, to_host, from_host, copy, zero) is missing. */
LOOM_API loom_backend *loom_backend_create(const loom_backend_ops *ops, void *ctx);
LOOM_API void loom_backend_destroy(loom_backend *backend);
LOOM_API const char *loom_backend_name(const loom_backend *backend);
LOOM_API loom_device_kind loom_backend_device(const loom_backend *backend);
LOOM_API bool loom_backend_supports(const loom_backend *backend, loom_op op);
/* "gemm", "fill_rows", ...; "?" past the table. */
LOOM_API const char *loom_op_name(loom_op op);

LOOM_API void *loom_backend_alloc(loom_backend *backend, size_t bytes);
LOOM_API void loom_backend_free(loom_backend *backend, void *ptr);
LOOM_API int loom_backend_to_host(loom_backend *backend, void *host, const void *src, size_t bytes);
LOOM_API int loom_backend_from_host(loom_backend *backend, void *dst, const void *host, size_t bytes);
LOOM_API int loom_backend_copy(loom_backend *backend, void *dst, const void *src, size_t bytes);
LOOM_API int loom_backend_zero(loom_backend *backend, void *ptr, size_t bytes);
LOOM_API int loom_backend_synchronize(loom_backend *backend);

/* The ops; each is LOOM_ENOTSUP if the backend lacks it. */
LOOM_API int loom_backend_gemm(loom_backend *backend, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                               float *C, int64_t ldc);
LOOM_API int loom_backend_fill_rows(loom_backend *backend, float *y, const float *row, int64_t rows, int64_t cols);
LOOM_API int loom_backend_sum_rows(loom_backend *backend, float *sum, const float *x, int64_t rows, int64_t cols);
LOOM_API int loom_backend_act_forward(loom_backend *backend, loom_activation act, float param, const float *x,
                                      float *y, int64_t n);
LOOM_API int loom_backend_act_backward(loom_backend *backend, loom_activation act, float param, const float *x,
                                       const float *y, const float *dy, float *dx, int64_t n);
LOOM_API int loom_backend_xent_forward(loom_backend *backend, const float *logits, const float *targets,
                                       const float *weights, float smoothing, int64_t n, int64_t c, float *probs,
                                       double *loss_sum, double *weight_sum);
LOOM_API int loom_backend_xent_backward(loom_backend *backend, const float *probs, const float *targets,
                                        const float *weights, float smoothing, float scale, int64_t n, int64_t c,
                                        float *dlogits);
LOOM_API int loom_backend_loss_forward(loom_backend *backend, loom_pointwise_loss loss, float param, const float *out,
                                       const float *target, int64_t n, double *sum);
LOOM_API int loom_backend_loss_backward(loom_backend *backend, loom_pointwise_loss loss, float param,
                                        const float *out, const float *target, float scale, int64_t n, float *dout);
LOOM_API int loom_backend_dropout_forward(loom_backend *backend, uint64_t key, float p, const float *x, float *y,
                                          float *mask, int64_t n);
LOOM_API int loom_backend_mul(loom_backend *backend, const float *a, const float *b, float *y, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
