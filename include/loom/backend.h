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
 * loom_tensor_host_data, which wait for them.
 *
 * Convolution, pooling and BatchNorm are planned as cuDNN's are: a
 * descriptor (geometry, algorithm, eps and momentum) becomes a plan once
 * the shapes are known; the plan is the backend's and holds what the op
 * keeps between calls (scratch, Winograd's transformed filters, the max
 * pool's positions, BatchNorm's saved statistics); forward and backward
 * take the plan and the tensors' memory. Fusion is the backend's business
 * too: given the descriptors of consecutive layers, plan_block says how
 * many of them it runs as one block (the CPU backend's: a Conv2d computing
 * the next BatchNorm's statistics, BatchNorm with its ReLU and with the
 * pool after them), and the model runs the block through block_forward and
 * block_backward. A backend without plan_block runs the layers one by one,
 * with the same results. */
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

/* How a convolution computes. AUTO lets the backend choose (the CPU
 * backend: Winograd's F(2x2, 3x3) for 3x3 kernels of stride and dilation 1
 * between at least 8 input and 8 output channels, whose results differ
 * from im2col's by float rounding, about 1e-6 relative; im2col + sgemm
 * otherwise). */
typedef enum loom_conv_algorithm {
  LOOM_CONV_AUTO = 0,
  LOOM_CONV_IM2COL,
  LOOM_CONV_WINOGRAD, /* only for 3x3 kernels of stride and dilation 1 */
} loom_conv_algorithm;

/* A 2-d convolution of n samples x[n][cin][h][w] with weights
 * w[cout][cin][kh][kw] and an optional bias[cout] into y[n][cout][oh][ow]
 * (PyTorch's Conv2d; oh = (h + 2 ph - dh (kh - 1) - 1) / sh + 1, ow
 * alike). */
typedef struct loom_conv_desc {
  int64_t cin, h, w, cout, oh, ow;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw; /* kernel, stride, padding, dilation */
  bool bias;
  loom_conv_algorithm algorithm;
} loom_conv_desc;

typedef enum loom_pool_mode {
  LOOM_POOL_MAX,        /* a NaN is its window's max (the last NaN gets the gradient) */
  LOOM_POOL_AVG,        /* padding counts in the divisor (count_include_pad) */
  LOOM_POOL_GLOBAL_AVG, /* [c][h][w] -> [c]: k, s, p unused, oh = ow = 1 */
} loom_pool_mode;

/* Pooling of x[n][c][h][w] by k x k windows of stride s, padding p, into
 * y[n][c][oh][ow], oh = (h + 2 p - k) / s + 1, ow alike. */
typedef struct loom_pool_desc {
  loom_pool_mode mode;
  int64_t c, h, w, oh, ow, k, s, p;
} loom_pool_desc;

/* BatchNorm over the channels of x[n][c][spatial]: in training the batch's
 * statistics, with the running ones updated (running = (1 - momentum)
 * running + momentum batch, the variance unbiased); in evaluation the
 * running ones (torch.nn.BatchNorm1d/2d). */
typedef struct loom_batchnorm_desc {
  int64_t c, spatial;
  float eps, momentum;
} loom_batchnorm_desc;

/* What a layer computes, for plan_block. */
typedef enum loom_layer_kind {
  LOOM_LAYER_OTHER, /* none the backend plans: it ends a block */
  LOOM_LAYER_CONV,
  LOOM_LAYER_POOL,
  LOOM_LAYER_BATCHNORM,
  LOOM_LAYER_ACT,
} loom_layer_kind;

typedef struct loom_layer_desc {
  loom_layer_kind kind;
  union {
    loom_conv_desc conv;
    loom_pool_desc pool;
    loom_batchnorm_desc batchnorm;
    struct {
      loom_activation act;
      float param;
    } act;
  };
} loom_layer_desc;

/* A backend's plan: made by a *_plan slot or plan_block, freed by
 * plan_destroy; only the backend that made it reads it. */
typedef struct loom_plan loom_plan;

/* The memory of one layer of a block. A Conv2d's parameters are its
 * weights then its bias, a BatchNorm's gamma then beta and its buffers the
 * running mean then the running variance. */
typedef struct loom_block_io {
  const float *params;
  float *grads;   /* accumulated (+=); NULL: no parameter gradients (frozen) */
  float *buffers; /* updated by a training forward */
  float *y, *dy;  /* the output and its gradient, when kept (loom_block) */
} loom_block_io;

/* plan_block's answer for the layers it was given from the first. */
typedef struct loom_block {
  int count;     /* layers run as one block; < 2: none, the first layer runs alone */
  uint32_t kept; /* bit k: layer k's output and its gradient are in memory
                  * (the block writes y and reads dy there); the last
                  * layer's always are, the others' are never touched */
  loom_plan *plan;
} loom_block;

/* The most values of k one topk_hits call counts. */
#define LOOM_TOPK_MAX 8

/* A number format for the operands of products (loom_backend_autocast):
 * FP32 leaves them as they are; BF16 and FP16 round each operand to the
 * nearest value of that format (ties to even; past FP16's range, an
 * infinity), the product then accumulating in fp32 as a Tensor Core's
 * does. */
typedef enum loom_precision {
  LOOM_PRECISION_FP32,
  LOOM_PRECISION_BF16,
  LOOM_PRECISION_FP16,
} loom_precision;

/* The ops, for loom_backend_supports; each names the slot of the same name
 * (a planned op's also needs its *_plan slot and plan_destroy; BLOCK is
 * plan_block, block_forward and block_backward). */
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
  LOOM_OP_ADD,
  LOOM_OP_CONV_FORWARD,
  LOOM_OP_CONV_BACKWARD,
  LOOM_OP_POOL_FORWARD,
  LOOM_OP_POOL_BACKWARD,
  LOOM_OP_BATCHNORM_FORWARD,
  LOOM_OP_BATCHNORM_BACKWARD,
  LOOM_OP_BLOCK,
  LOOM_OP_SGD_UPDATE,
  LOOM_OP_ADAM_UPDATE,
  LOOM_OP_RMSPROP_UPDATE,
  LOOM_OP_SUM_SQUARES,
  LOOM_OP_SCALE,
  LOOM_OP_CLAMP,
  LOOM_OP_ALL_FINITE,
  LOOM_OP_GEMM_CHECKED,
  LOOM_OP_TOPK_HITS,
  LOOM_OP_ROUND,
  LOOM_OP_FLAG_NONFINITE,
  LOOM_OP_UPDATE_RANGES,
  LOOM_OP_SET_IF,
  LOOM_OP_COUNT
} loom_op;

/* An upload slot: what a backend keeps to copy one batch from pinned host
 * memory into device memory on its copy stream while the compute stream
 * works on another batch (a CUDA stream and two events: the copy done, the
 * compute done with the slot's memory). A slot is used in a cycle:
 *
 *   upload_start   (any thread) the copies are issued on the copy stream,
 *                  after the compute stream's last release of the slot;
 *   upload_wait    the compute stream's later ops wait for the copies;
 *                  the device memory is then the batch's;
 *   upload_release the compute stream's ops issued so far are the last to
 *                  read the destinations, so the next upload_start may
 *                  overwrite them; and the host waits until the copies have
 *                  read the host memory, so it may be refilled.
 *
 * A slot whose upload was never waited for (a batch prefetched and not
 * used) is released the same way. The host memory must stay unchanged
 * from upload_start to upload_release, and the destinations untouched by
 * other ops from upload_start to upload_wait. */
typedef struct loom_upload loom_upload;
typedef struct loom_upload_copy {
  void *dst;        /* the backend's memory */
  const void *host; /* from host_alloc (pinned), for a copy that overlaps */
  size_t bytes;
} loom_upload_copy;

/* The optimizers' updates, elementwise over a range of parameters p,
 * gradients g and state, with torch.optim's formulas (models/sgd.c,
 * adam.c, rmsprop.c state them). A non-NULL gate (an int in the backend's
 * memory) holds the update back when it is not 0: nothing is written. */
typedef struct loom_sgd_step {
  double lr, weight_decay, momentum, dampening;
  bool nesterov;
  bool first; /* the first step: buf = d */
  const int *gate; /* see loom_backend_set_update_gate; NULL: none */
} loom_sgd_step;
typedef struct loom_adam_step {
  double lr, weight_decay, beta1, beta2, eps;
  int64_t step;   /* from 1, for the bias corrections */
  bool decoupled; /* AdamW: p shrinks by lr wd instead of wd p joining g */
  const int *gate;
} loom_adam_step;
typedef struct loom_rmsprop_step {
  double lr, weight_decay, alpha, eps, momentum;
  bool centered;
  const int *gate;
} loom_rmsprop_step;

/* One step of a rule over several ranges of one parameter buffer at once
 * (update_ranges): the rule's scalars, whose lr and weight_decay each
 * range replaces with its own (parameter groups, no decay on biases). */
typedef enum loom_update_rule { LOOM_RULE_SGD, LOOM_RULE_ADAM, LOOM_RULE_RMSPROP } loom_update_rule;
typedef struct loom_update_step {
  loom_update_rule rule;
  union {
    loom_sgd_step sgd;
    loom_adam_step adam;
    loom_rmsprop_step rmsprop;
  } u;
} loom_update_step;
typedef struct loom_update_range {
  int64_t off, len; /* parameters [off, off + len) of the buffer */
  double lr, wd;
} loom_update_range;

/* A recorded step (loom_backend_log_begin) and a backend's graph of one. */
typedef struct loom_op_log loom_op_log;
typedef struct loom_graph loom_graph;
/* A communicator between ranks (loom/comm.h). */
typedef struct loom_comm loom_comm;

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

  /* Asynchronous uploads (optional, all seven or none; see loom_upload
   * above): pinned host memory, and per upload slot a copy on the
   * backend's copy stream that overlaps the compute stream's ops.
   * host_alloc: `bytes` of page-locked host memory, 64-byte aligned (NULL
   * after loom_error_set); host_free(NULL) does nothing. upload_create
   * makes a slot's events; upload_destroy waits for its copies and for the
   * compute that read its memory, then frees it (NULL: nothing).
   * upload_start, upload_wait and upload_release are
   * loom_backend_upload_*'s contracts; upload_start may be called from any
   * thread, the others from the thread that issues the ops. */
  void *(*host_alloc)(void *ctx, size_t bytes);
  void (*host_free)(void *ctx, void *ptr);
  int (*upload_create)(void *ctx, loom_upload **upload);
  void (*upload_destroy)(void *ctx, loom_upload *upload);
  int (*upload_start)(void *ctx, loom_upload *upload, const loom_upload_copy *copies, int count);
  int (*upload_wait)(void *ctx, loom_upload *upload);
  int (*upload_release)(void *ctx, loom_upload *upload);

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
   * targets[n] (floats holding integers), with class weights (NULL: all
   * 1) and label smoothing e: with q = (1 - e) onehot(y) + e / c, it
   * writes probs = softmax(logits) and, in the backend's memory, sums[0] =
   * sum_i sum_j w_j q_ij (logsumexp_i - logit_ij) and sums[1] = sum_i
   * w_{y_i} (both in double). The sums stay where they are, so a device
   * need not wait: the criterion reads them back when it needs the loss
   * (loom_criterion_forward_deferred). A target that is not a class in
   * [0, c) makes both sums NaN and reads nothing out of range: the
   * criterion checks device targets on the host only then, not every
   * batch. */
  int (*xent_forward)(void *ctx, const float *logits, const float *targets, const float *weights, float smoothing,
                      int64_t n, int64_t c, float *probs, double *sums);
  /* dlogits_ij = ((sum_k w_k q_ik) probs_ij - w_j q_ij) scale. */
  int (*xent_backward)(void *ctx, const float *probs, const float *targets, const float *weights, float smoothing,
                       float scale, int64_t n, int64_t c, float *dlogits);
  /* *sum (in the backend's memory, in double, as xent_forward's sums) =
   * the sum over n elements of the loss of out against target. */
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
  /* y = a + b, elementwise; y may be a or b (a residual block's sum, and
   * its input's gradient from both branches). */
  int (*add)(void *ctx, const float *a, const float *b, float *y, int64_t n);

  /* Planned ops. *_plan checks the descriptor (LOOM_EINVAL with a message
   * if the backend cannot run it) and makes *plan; a plan serves one layer,
   * forward then backward, for any batch size n. */
  int (*conv_plan)(void *ctx, const loom_conv_desc *desc, loom_plan **plan);
  /* y = conv(x, w) + bias (bias NULL: none). */
  int (*conv_forward)(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                      int64_t n);
  /* From dy: dw += the weights' gradient (NULL: no parameter gradients)
   * and dbias += the bias's (NULL also for a convolution without bias),
   * dx = the input's (NULL: none). */
  int (*conv_backward)(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                       float *dbias, float *dx, int64_t n);
  int (*pool_plan)(void *ctx, const loom_pool_desc *desc, loom_plan **plan);
  int (*pool_forward)(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n);
  /* dx = the input's gradient from dy, after the plan's last forward (a max
   * pool's positions are the plan's). */
  int (*pool_backward)(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n);
  int (*batchnorm_plan)(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan);
  /* y = gamma (x - mean) invstd + beta with the batch's statistics
   * (updating running_mean and running_var) when train, else the running
   * ones; the plan keeps mean and invstd for the backward. */
  int (*batchnorm_forward)(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                           const float *beta, float *running_mean, float *running_var, float *y, int64_t n);
  /* After the plan's last forward, from dy: dgamma and dbeta += (both or
   * neither NULL), dx = the input's gradient, through the batch statistics
   * if that forward trained (NULL: none). */
  int (*batchnorm_backward)(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                            const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n);
  /* Frees a plan of this backend (NULL: nothing). */
  void (*plan_destroy)(void *ctx, loom_plan *plan);

  /* Fusion. Of the `count` layers layers[0..count), how many this backend
   * runs as one block, and its plan (block->count < 2: none; then
   * block->plan is NULL). Results are those of the layers run one by one,
   * bit for bit. */
  int (*plan_block)(void *ctx, const loom_layer_desc *layers, int count, loom_block *block);
  /* The block's layers on x[n]: each layer's y where kept (io[k]), the
   * last's always; parameters and buffers as each layer's own op. */
  int (*block_forward)(void *ctx, loom_plan *plan, bool train, const float *x, const loom_block_io *io, int64_t n);
  /* After the block's last forward, from the last layer's dy: the layers'
   * backward from the last down to layer `first` (whose input is x when it
   * is 0, else the kept y of the layer before), parameter gradients where
   * io[k].grads, the kept layers' dy in between, and dx = the gradient of
   * layer first's input (NULL: none; always NULL when first > 0). */
  int (*block_backward)(void *ctx, loom_plan *plan, int first, const float *x, const loom_block_io *io, float *dx,
                        int64_t n);

  /* The optimizers' updates (buf: SGD's momentum buffer, NULL without
   * momentum; RMSprop's sq, buf and avg: its [v | b | c] state). */
  int (*sgd_update)(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n);
  int (*adam_update)(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v, int64_t n);
  int (*rmsprop_update)(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                        float *avg, int64_t n);
  /* The step over ranges[0..nranges) (host memory; sorted, disjoint) of
   * the buffer p[total] in one go (a device: one kernel), each range as
   * the rule's own op would update it with the range's lr and wd. The
   * state is the optimizer's: k arrays of `total` one after the other
   * (SGD [buf], Adam [m | v], RMSprop [sq | buf | avg]; NULL for plain
   * SGD). Optional: without it the wrapper calls the rule's op per range. */
  int (*update_ranges)(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges, float *p,
                       const float *g, float *state, int64_t total);
  /* Whole-buffer reductions and updates of the gradients: *sum (host) =
   * sum of x_i^2 in double, in index order; x *= a; x = clamp(x, -limit,
   * limit); *finite (host) = no Inf or NaN among x. */
  int (*sum_squares)(void *ctx, const float *x, int64_t n, double *sum);
  int (*scale)(void *ctx, float *x, float a, int64_t n);
  int (*clamp)(void *ctx, float *x, float limit, int64_t n);
  int (*all_finite)(void *ctx, const float *x, int64_t n, bool *finite);
  /* *flag (an int in the backend's memory) = 1 if any of x[0..n) or
   * d[0..nd) is Inf or NaN, else left as it is: the deferred step's gate
   * over the gradients and the loss's sums, decided without a wait. */
  int (*flag_nonfinite)(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag);
  /* x[0] = value if *flag (an int in the backend's memory) is not 0: a
   * rank's non-finite loss put into the gradients it sums with the other
   * ranks', decided on the device. */
  int (*set_if)(void *ctx, const int *flag, float *x, float value);
  /* gemm, then *finite (host) = no Inf or NaN in the M x N block of C: a
   * parameter gradient checked where it is computed, while in cache (the
   * non-finite policy's check, loom_model_grads_checked). Optional: without
   * it the wrapper runs gemm, then all_finite over C's rows. */
  int (*gemm_checked)(void *ctx, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc,
                      bool *finite);

  /* Classification hits (the accuracy callback's): the rank of sample i's
   * class targets[i] among its scores[i][0..c) is the count of classes
   * scoring higher, or equal and earlier; hits[k] = the samples whose rank
   * is below ks[k], for k < nk <= LOOM_TOPK_MAX; *bad = the first sample
   * whose target is no class in [0, c), or -1 (the others are counted all
   * the same). hits and bad are in the backend's memory, as
   * xent_forward's sums: a device need not wait, and the counts reach the
   * host with the batch's other results (loom_runner_add_batch_result), a
   * few bytes instead of the scores and the targets. ks is on the host. */
  int (*topk_hits)(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks, int nk,
                   int64_t *hits, int64_t *bad);

  /* y = x rounded to format p, stored as floats (y may be x). Autocast's
   * rounding of products' operands (loom_backend_autocast); optional:
   * without it a backend computes in fp32 whatever autocast says. */
  int (*round)(void *ctx, loom_precision p, const float *x, float *y, int64_t n);
  /* gemm under autocast with operands stored in format p (bf16 or fp16):
   * op(A) and op(B) rounded as round does into operands of that format
   * (half the bytes of fp32 copies), multiplied with fp32 accumulation
   * (cuBLAS's Tensor Cores at that format's rate). C is the product of the
   * rounded operands, exact per term, its sums in the backend's order.
   * Optional (with round): without it the gemm wrappers round into fp32
   * copies and call gemm. */
  int (*gemm_lowp)(void *ctx, loom_precision p, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                   float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                   int64_t ldc);

  /* Optional: frees ctx. */
  void (*destroy)(void *ctx);

  /* Step graphs (optional, all four or none; "Step graphs" below). Between
   * graph_begin and graph_end the backend records the ops it is given
   * into a graph instead of running them (CUDA: stream capture); nothing
   * runs. graph_end ends the capture even after an op failed in it, and
   * makes *graph from what was recorded (`captured`: the log those ops
   * came from); an error from graph_begin, from an op under the capture
   * or from graph_end means "cannot capture": that log then runs op by op
   * (where a real error of an op shows again). graph_launch runs the graph once
   * with the arguments of `now`, a log equal to the captured one (the same
   * ops, pointers, sizes and static scalars) except for what
   * update_ranges's table carries: each update_ranges op's rule scalars
   * (lr, weight_decay, momentum, dampening, first, betas, eps, step, alpha)
   * and its ranges' lr and wd, and each dropout_forward's key, which the
   * backend must take from `now` (loom_op_log_update, loom_op_log_dropout)
   * before launching. graph_destroy frees a graph
   * (after the launches issued so far). */
  int (*graph_begin)(void *ctx);
  int (*graph_end)(void *ctx, const loom_op_log *captured, loom_graph **graph);
  int (*graph_launch)(void *ctx, loom_graph *graph, const loom_op_log *now);
  void (*graph_destroy)(void *ctx, loom_graph *graph);
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

/* Asynchronous uploads (loom_upload above). loom_backend_can_upload_async
 * says whether the backend has them (a backend without them takes batches
 * through loom_backend_from_host); the others are LOOM_ENOTSUP, with a
 * message, on one that lacks them (host_alloc: NULL). */
LOOM_API bool loom_backend_can_upload_async(const loom_backend *backend);
LOOM_API void *loom_backend_host_alloc(loom_backend *backend, size_t bytes);
LOOM_API void loom_backend_host_free(loom_backend *backend, void *ptr);
LOOM_API int loom_backend_upload_create(loom_backend *backend, loom_upload **upload);
LOOM_API void loom_backend_upload_destroy(loom_backend *backend, loom_upload *upload);
/* Issues copies[0..count) (host -> the backend's memory) on the copy
 * stream; returns before they complete. */
LOOM_API int loom_backend_upload_start(loom_backend *backend, loom_upload *upload, const loom_upload_copy *copies,
                                       int count);
LOOM_API int loom_backend_upload_wait(loom_backend *backend, loom_upload *upload);
LOOM_API int loom_backend_upload_release(loom_backend *backend, loom_upload *upload);

/* The ops; each is LOOM_ENOTSUP if the backend lacks it. */
LOOM_API int loom_backend_gemm(loom_backend *backend, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                               float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                               float *C, int64_t ldc);
/* gemm and the finiteness of C's M x N block (the backend's gemm_checked,
 * or gemm then all_finite by rows). */
LOOM_API int loom_backend_gemm_checked(loom_backend *backend, bool trans_a, bool trans_b, int64_t M, int64_t N,
                                       int64_t K, float alpha, const float *A, int64_t lda, const float *B,
                                       int64_t ldb, float beta, float *C, int64_t ldc, bool *finite);
LOOM_API int loom_backend_fill_rows(loom_backend *backend, float *y, const float *row, int64_t rows, int64_t cols);
LOOM_API int loom_backend_sum_rows(loom_backend *backend, float *sum, const float *x, int64_t rows, int64_t cols);
LOOM_API int loom_backend_act_forward(loom_backend *backend, loom_activation act, float param, const float *x,
                                      float *y, int64_t n);
LOOM_API int loom_backend_act_backward(loom_backend *backend, loom_activation act, float param, const float *x,
                                       const float *y, const float *dy, float *dx, int64_t n);
LOOM_API int loom_backend_xent_forward(loom_backend *backend, const float *logits, const float *targets,
                                       const float *weights, float smoothing, int64_t n, int64_t c, float *probs,
                                       double *sums);
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
LOOM_API int loom_backend_add(loom_backend *backend, const float *a, const float *b, float *y, int64_t n);
LOOM_API int loom_backend_sgd_update(loom_backend *backend, const loom_sgd_step *s, float *p, const float *g, float *buf,
                                     int64_t n);
LOOM_API int loom_backend_adam_update(loom_backend *backend, const loom_adam_step *s, float *p, const float *g,
                                      float *m, float *v, int64_t n);
LOOM_API int loom_backend_rmsprop_update(loom_backend *backend, const loom_rmsprop_step *s, float *p, const float *g,
                                         float *sq, float *buf, float *avg, int64_t n);
/* The backend's update_ranges, or the rule's op range by range. */
LOOM_API int loom_backend_update_ranges(loom_backend *backend, const loom_update_step *s,
                                        const loom_update_range *ranges, int nranges, float *p, const float *g,
                                        float *state, int64_t total);
LOOM_API int loom_backend_topk_hits(loom_backend *backend, const float *scores, const float *targets, int64_t n,
                                    int64_t c, const int *ks, int nk, int64_t *hits, int64_t *bad);
LOOM_API int loom_backend_sum_squares(loom_backend *backend, const float *x, int64_t n, double *sum);
LOOM_API int loom_backend_scale(loom_backend *backend, float *x, float a, int64_t n);
LOOM_API int loom_backend_clamp(loom_backend *backend, float *x, float limit, int64_t n);
LOOM_API int loom_backend_all_finite(loom_backend *backend, const float *x, int64_t n, bool *finite);
LOOM_API int loom_backend_flag_nonfinite(loom_backend *backend, const float *x, int64_t n, const double *d, int64_t nd,
                                         int *flag);
LOOM_API int loom_backend_set_if(loom_backend *backend, const int *flag, float *x, float value);
/* While a gate (an int in the backend's memory) is set, the update
 * wrappers (loom_backend_sgd_update, ...) hand it to the op, which writes
 * nothing when it holds a non-zero value: a step decided on the device,
 * after the host has issued it (loom_optimizer_step_gated). NULL clears it. */
LOOM_API void loom_backend_set_update_gate(loom_backend *backend, const int *gate);
LOOM_API int loom_backend_round(loom_backend *backend, loom_precision p, const float *x, float *y, int64_t n);

/* Autocast, as torch.autocast: while this thread's precision is BF16 or
 * FP16, loom_backend_gemm and gemm_checked round both operands to it (into
 * memory of the backend, freed before they return) and the built-in
 * Conv2d rounds its input, weights and output gradient, on a backend that
 * has the ROUND op; the products accumulate in fp32 and everything else
 * (parameters, optimizer state, activations, losses) stays fp32. The
 * runner sets it for an experiment's precision (loom_experiment_set_precision)
 * and restores it when the run returns. Returns the previous precision. */
LOOM_API loom_precision loom_backend_set_autocast(loom_precision p);
LOOM_API loom_precision loom_backend_autocast(void);
/* "fp32", "bf16", "fp16"; and back (false for another name). */
LOOM_API const char *loom_precision_name(loom_precision p);
LOOM_API bool loom_precision_parse(const char *name, loom_precision *p);

/* Step graphs. Between loom_backend_log_begin and loom_backend_log_end
 * (on one thread: other threads' calls are not logged) the op wrappers
 * above (gemm ... round, the updates, loom_backend_copy and _zero) record
 * each op and its arguments by value (a struct or array taken by pointer is
 * copied, the update wrappers' gate included) instead of running it; they
 * return 0 or an error of their own arguments. alloc and plan creation run
 * at once; free and plan_destroy wait for the log's end (the logged ops may
 * use the memory). A call whose result the host needs (to_host, from_host,
 * synchronize, all_finite, sum_squares, gemm_checked, topk_hits,
 * upload_wait, upload_release, upload_create, upload_destroy) first runs
 * what was logged, in order (an op's error is then that call's), and the
 * rest of the step runs op by op: that step is not captured.
 *
 * loom_backend_log_end(b, true) runs the log: a log not seen before op by
 * op; the same log seen again (equal: the same ops, pointers, sizes and
 * scalars, except update_ranges's table and dropout's key, see graph_launch) is
 * captured into the backend's graph (graph_begin, the ops, graph_end) and
 * launched, and every later equal log launches that graph with its own
 * table. A different log (a last partial batch, another shape, another
 * model) runs op by op and is remembered: a backend keeps 4 logs and their
 * graphs, the least recently used evicted, destroyed with the backend
 * (and with a plan their log names: loom_backend_plan_destroy).
 * Every log runs op by op on a backend without the graph slots. An op's
 * error is the log's, naming the op's index and
 * name. loom_backend_log_end(b, false) drops the log (a failed step): no
 * op of it runs. Both free what waited for the end. */
LOOM_API bool loom_backend_can_graph(const loom_backend *backend);
LOOM_API int loom_backend_log_begin(loom_backend *backend);
LOOM_API int loom_backend_log_end(loom_backend *backend, bool run);
/* As loom_backend_log_begin, for a step that the ranks of `comm` run
 * together, whose log may hold a device communicator's sums (loom/comm.h:
 * started and waited for while the log is open, they are logged among the
 * ops). A collective captured on one rank must be captured on every rank
 * (NCCL's rule), so at loom_backend_log_end(b, true) the ranks agree, in a
 * small collective of comm's, how the step runs: each launching its graph,
 * each capturing one, or else every rank op by op (also when one rank's
 * log was flushed or did not match); and after a capture, that every
 * rank's succeeded (else each runs that log op by op from then on). Every
 * rank must end its log at the same point of its run; a rank whose step
 * failed drops its log (run false, no collective) and tells the others
 * (loom_comm_notify_failure), whose agreement then fails. A host read that
 * flushes the log (above) must come on every rank alike: a rank waiting
 * for a sum it started waits for the others' starts, which wait in their
 * logs for this agreement. */
LOOM_API int loom_backend_log_begin_over(loom_backend *backend, loom_comm *comm);
/* What became of the logs ended with run true on `backend` since it was
 * made: `logs` of them, `captures` captured into a graph, `launches`
 * launched a graph (each capture's step included); the others ran op by
 * op (a first sight, a flushed step, a log that could not be captured,
 * or a backend without the graph slots). How a run tells that its steps
 * are graphs. */
typedef struct loom_graph_counts {
  int64_t logs, captures, launches;
} loom_graph_counts;
LOOM_API loom_graph_counts loom_backend_graph_counts(const loom_backend *backend);
/* Whether this thread's ops on `backend` are being logged now. */
LOOM_API bool loom_backend_logging(const loom_backend *backend);
/* For a backend's graph slots: runs log's ops through ops (with ctx), in
 * order (the fake device's graph_launch); an op's error names its index and
 * name. */
LOOM_API int loom_op_log_run(const loom_op_log *log, const loom_backend_ops *ops, void *ctx);
LOOM_API int loom_op_log_length(const loom_op_log *log);
/* Op i's name ("gemm", ..., "copy", "zero"); "?" past the log. */
LOOM_API const char *loom_op_log_op_name(const loom_op_log *log, int i);
/* If op i is update_ranges: its table (the step's scalars and the ranges,
 * valid while the log is) and true. */
LOOM_API bool loom_op_log_update(const loom_op_log *log, int i, const loom_update_step **step,
                                 const loom_update_range **ranges, int *nranges);
/* If op i is dropout_forward: its key (new every batch, so a graph takes
 * it from the log it is launched with) and true. */
LOOM_API bool loom_op_log_dropout(const loom_op_log *log, int i, uint64_t *key);

/* The planned ops. A plan is made on one backend and used and destroyed
 * there; *plan is NULL on failure. */
LOOM_API int loom_backend_conv_plan(loom_backend *backend, const loom_conv_desc *desc, loom_plan **plan);
LOOM_API int loom_backend_conv_forward(loom_backend *backend, loom_plan *plan, const float *x, const float *w,
                                       const float *bias, float *y, int64_t n);
LOOM_API int loom_backend_conv_backward(loom_backend *backend, loom_plan *plan, const float *x, const float *w,
                                        const float *dy, float *dw, float *dbias, float *dx, int64_t n);
LOOM_API int loom_backend_pool_plan(loom_backend *backend, const loom_pool_desc *desc, loom_plan **plan);
LOOM_API int loom_backend_pool_forward(loom_backend *backend, loom_plan *plan, const float *x, float *y, int64_t n);
LOOM_API int loom_backend_pool_backward(loom_backend *backend, loom_plan *plan, const float *dy, float *dx,
                                        int64_t n);
LOOM_API int loom_backend_batchnorm_plan(loom_backend *backend, const loom_batchnorm_desc *desc, loom_plan **plan);
LOOM_API int loom_backend_batchnorm_forward(loom_backend *backend, loom_plan *plan, bool train, const float *x,
                                            const float *gamma, const float *beta, float *running_mean,
                                            float *running_var, float *y, int64_t n);
LOOM_API int loom_backend_batchnorm_backward(loom_backend *backend, loom_plan *plan, const float *x,
                                             const float *gamma, const float *beta, const float *dy, float *dgamma,
                                             float *dbeta, float *dx, int64_t n);
LOOM_API void loom_backend_plan_destroy(loom_backend *backend, loom_plan *plan);
/* The block of layers[0..count) (see plan_block); a backend without the
 * BLOCK op answers block->count 0, not an error. */
LOOM_API int loom_backend_plan_block(loom_backend *backend, const loom_layer_desc *layers, int count,
                                     loom_block *block);
LOOM_API int loom_backend_block_forward(loom_backend *backend, loom_plan *plan, bool train, const float *x,
                                        const loom_block_io *io, int64_t n);
LOOM_API int loom_backend_block_backward(loom_backend *backend, loom_plan *plan, int first, const float *x,
                                         const loom_block_io *io, float *dx, int64_t n);

#ifdef __cplusplus
}
#endif
#endif
