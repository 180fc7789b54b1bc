/* The op log (loom/backend.h, "Step graphs"): between loom_backend_log_begin
 * and loom_backend_log_end the core's op wrappers record each device op,
 * its arguments by value, instead of calling the backend. One table below
 * lists every logged op with its arguments in its slot's order; the record
 * structs, the packing in the wrappers (LOOM_RUN_OP), the call of the slot,
 * the comparison of two logs and the copies of what a slot takes by pointer
 * are all made from it. */
#ifndef LOOM_CORE_OP_LOG_H
#define LOOM_CORE_OP_LOG_H

#include "loom/backend.h"
#include "loom/comm.h"

/* The logged ops: each backend op named as its slot in loom_backend_ops,
 * then a device communicator's sum started or waited for (loom/comm.h),
 * logged among the backend's ops so that a step's graph holds its
 * all-reduce. */
#define LOOM_LOG_OPS(X) LOOM_LOG_SLOT_OPS(X) X(comm)
#define LOOM_LOG_SLOT_OPS(X)                                                                                           \
  X(gemm) X(fill_rows) X(sum_rows) X(act_forward) X(act_backward) X(xent_forward) X(xent_backward) X(loss_forward)     \
  X(loss_backward) X(dropout_forward) X(mul) X(add) X(conv_forward) X(conv_backward) X(pool_forward)                   \
  X(pool_backward) X(batchnorm_forward) X(batchnorm_backward) X(block_forward) X(block_backward) X(sgd_update)         \
  X(adam_update) X(rmsprop_update) X(update_ranges) X(scale) X(clamp) X(flag_nonfinite) X(set_if) X(round) X(copy)   \
  X(zero) X(gemm_lowp)

/* Each op's arguments after ctx: F_(type, name) a value as the slot takes
 * it; S_(type, name) a struct the slot takes by pointer, copied into the
 * record; V_(type, name, count) an array the slot takes by pointer, copied
 * (count: its length, an expression in the wrapper's scope). The wrappers'
 * own variables carry these names (mul's and add's second operand is c:
 * b is the backend there). */
#define LOOM_LOG_ARGS_gemm(F_, S_, V_)                                                                                 \
  F_(bool, ta) F_(bool, tb) F_(int64_t, M) F_(int64_t, N) F_(int64_t, K) F_(float, alpha) F_(const float *, A)        \
  F_(int64_t, lda) F_(const float *, B) F_(int64_t, ldb) F_(float, beta) F_(float *, C) F_(int64_t, ldc)
#define LOOM_LOG_ARGS_gemm_lowp(F_, S_, V_) F_(loom_precision, prec) LOOM_LOG_ARGS_gemm(F_, S_, V_)
#define LOOM_LOG_ARGS_fill_rows(F_, S_, V_) F_(float *, y) F_(const float *, row) F_(int64_t, rows) F_(int64_t, cols)
#define LOOM_LOG_ARGS_sum_rows(F_, S_, V_) F_(float *, sum) F_(const float *, x) F_(int64_t, rows) F_(int64_t, cols)
#define LOOM_LOG_ARGS_act_forward(F_, S_, V_)                                                                          \
  F_(loom_activation, act) F_(float, param) F_(const float *, x) F_(float *, y) F_(int64_t, n)
#define LOOM_LOG_ARGS_act_backward(F_, S_, V_)                                                                         \
  F_(loom_activation, act) F_(float, param) F_(const float *, x) F_(const float *, y) F_(const float *, dy)           \
  F_(float *, dx) F_(int64_t, n)
#define LOOM_LOG_ARGS_xent_forward(F_, S_, V_)                                                                         \
  F_(const float *, logits) F_(const float *, targets) F_(const float *, weights) F_(float, smoothing) F_(int64_t, n)  \
  F_(int64_t, c) F_(float *, probs) F_(double *, sums)
#define LOOM_LOG_ARGS_xent_backward(F_, S_, V_)                                                                        \
  F_(const float *, probs) F_(const float *, targets) F_(const float *, weights) F_(float, smoothing)                 \
  F_(float, scale) F_(int64_t, n) F_(int64_t, c) F_(float *, dlogits)
#define LOOM_LOG_ARGS_loss_forward(F_, S_, V_)                                                                         \
  F_(loom_pointwise_loss, loss) F_(float, param) F_(const float *, out) F_(const float *, target) F_(int64_t, n)       \
  F_(double *, sum)
#define LOOM_LOG_ARGS_loss_backward(F_, S_, V_)                                                                        \
  F_(loom_pointwise_loss, loss) F_(float, param) F_(const float *, out) F_(const float *, target) F_(float, scale)     \
  F_(int64_t, n) F_(float *, dout)
#define LOOM_LOG_ARGS_dropout_forward(F_, S_, V_)                                                                      \
  F_(uint64_t, key) F_(float, p) F_(const float *, x) F_(float *, y) F_(float *, mask) F_(int64_t, n)
#define LOOM_LOG_ARGS_mul(F_, S_, V_) F_(const float *, a) F_(const float *, c) F_(float *, y) F_(int64_t, n)
#define LOOM_LOG_ARGS_add(F_, S_, V_) LOOM_LOG_ARGS_mul(F_, S_, V_)
#define LOOM_LOG_ARGS_conv_forward(F_, S_, V_)                                                                         \
  F_(loom_plan *, plan) F_(const float *, x) F_(const float *, w) F_(const float *, bias) F_(float *, y)              \
  F_(int64_t, n)
#define LOOM_LOG_ARGS_conv_backward(F_, S_, V_)                                                                        \
  F_(loom_plan *, plan) F_(const float *, x) F_(const float *, w) F_(const float *, dy) F_(float *, dw)               \
  F_(float *, dbias) F_(float *, dx) F_(int64_t, n)
#define LOOM_LOG_ARGS_pool_forward(F_, S_, V_) F_(loom_plan *, plan) F_(const float *, x) F_(float *, y) F_(int64_t, n)
#define LOOM_LOG_ARGS_pool_backward(F_, S_, V_)                                                                        \
  F_(loom_plan *, plan) F_(const float *, dy) F_(float *, dx) F_(int64_t, n)
#define LOOM_LOG_ARGS_batchnorm_forward(F_, S_, V_)                                                                    \
  F_(loom_plan *, plan) F_(bool, train) F_(const float *, x) F_(const float *, gamma) F_(const float *, beta)         \
  F_(float *, running_mean) F_(float *, running_var) F_(float *, y) F_(int64_t, n)
#define LOOM_LOG_ARGS_batchnorm_backward(F_, S_, V_)                                                                   \
  F_(loom_plan *, plan) F_(const float *, x) F_(const float *, gamma) F_(const float *, beta) F_(const float *, dy)    \
  F_(float *, dgamma) F_(float *, dbeta) F_(float *, dx) F_(int64_t, n)
#define LOOM_LOG_ARGS_block_forward(F_, S_, V_)                                                                        \
  F_(loom_plan *, plan) F_(bool, train) F_(const float *, x) V_(const loom_block_io *, io, layers) F_(int64_t, n)
#define LOOM_LOG_ARGS_block_backward(F_, S_, V_)                                                                       \
  F_(loom_plan *, plan) F_(int, first) F_(const float *, x) V_(const loom_block_io *, io, layers) F_(float *, dx)     \
  F_(int64_t, n)
#define LOOM_LOG_ARGS_sgd_update(F_, S_, V_)                                                                           \
  S_(loom_sgd_step, step) F_(float *, p) F_(const float *, g) F_(float *, buf) F_(int64_t, n)
#define LOOM_LOG_ARGS_adam_update(F_, S_, V_)                                                                          \
  S_(loom_adam_step, step) F_(float *, p) F_(const float *, g) F_(float *, m) F_(float *, v) F_(int64_t, n)
#define LOOM_LOG_ARGS_rmsprop_update(F_, S_, V_)                                                                       \
  S_(loom_rmsprop_step, step) F_(float *, p) F_(const float *, g) F_(float *, sq) F_(float *, buf) F_(float *, avg)   \
  F_(int64_t, n)
#define LOOM_LOG_ARGS_update_ranges(F_, S_, V_)                                                                        \
  S_(loom_update_step, step) V_(const loom_update_range *, ranges, nranges) F_(int, nranges) F_(float *, p)           \
  F_(const float *, g) F_(float *, state) F_(int64_t, total)
#define LOOM_LOG_ARGS_scale(F_, S_, V_) F_(float *, x) F_(float, a) F_(int64_t, n)
#define LOOM_LOG_ARGS_clamp(F_, S_, V_) F_(float *, x) F_(float, limit) F_(int64_t, n)
#define LOOM_LOG_ARGS_flag_nonfinite(F_, S_, V_)                                                                       \
  F_(const float *, x) F_(int64_t, n) F_(const double *, d) F_(int64_t, nd) F_(int *, flag)
#define LOOM_LOG_ARGS_set_if(F_, S_, V_) F_(const int *, flag) F_(float *, x) F_(float, value)
#define LOOM_LOG_ARGS_round(F_, S_, V_) F_(loom_precision, prec) F_(const float *, x) F_(float *, y) F_(int64_t, n)
#define LOOM_LOG_ARGS_copy(F_, S_, V_) F_(void *, dst) F_(const void *, src) F_(size_t, bytes)
#define LOOM_LOG_ARGS_zero(F_, S_, V_) F_(void *, ptr) F_(size_t, bytes)
#define LOOM_LOG_ARGS_comm(F_, S_, V_) F_(loom_comm_request *, request) F_(float *, buf) F_(bool, wait)

#define LOOM_LOG_FIELD(t, n) t n;
#define LOOM_LOG_ARRAY(t, n, count) t n; int n##_count;
#define LOOM_LOG_STRUCT(op) typedef struct { LOOM_LOG_ARGS_##op(LOOM_LOG_FIELD, LOOM_LOG_FIELD, LOOM_LOG_ARRAY) } loom_args_##op;
LOOM_LOG_OPS(LOOM_LOG_STRUCT)
#undef LOOM_LOG_STRUCT

#define LOOM_LOG_ID(op) LOOM_LOGGED_##op,
typedef enum loom_logged_id { LOOM_LOG_OPS(LOOM_LOG_ID) LOOM_LOGGED_COUNT } loom_logged_id;
#undef LOOM_LOG_ID

#define LOOM_LOG_MEMBER(op) loom_args_##op op;
/* One op of a log: which, and its arguments. */
typedef struct loom_logged {
  loom_logged_id id;
  union {
    LOOM_LOG_OPS(LOOM_LOG_MEMBER)
  } u;
} loom_logged;
#undef LOOM_LOG_MEMBER

#define LOOM_LOG_PACK(t, n) a_->n = n;
#define LOOM_LOG_PACK_ARRAY(t, n, count) a_->n = n, a_->n##_count = (int)(count);
/* Runs `op` on backend b with the arguments of the same names in scope, or
 * records it while b's log is open on this thread; returns from the
 * enclosing wrapper. */
#define LOOM_RUN_OP(b, op)                                                                                             \
  do {                                                                                                                 \
    loom_logged r_ = {.id = LOOM_LOGGED_##op};                                                                         \
    loom_args_##op *a_ = &r_.u.op;                                                                                     \
    LOOM_LOG_ARGS_##op(LOOM_LOG_PACK, LOOM_LOG_PACK, LOOM_LOG_PACK_ARRAY) return loom_op_submit(b, &r_);               \
  } while (0)

/* Runs a device request's start (or wait) on buf now: core/comm.c's, for
 * a logged comm op. */
int loom_comm_request_run(loom_comm_request *request, float *buf, bool wait);

/* Runs r on b, or appends it (its arrays copied) to the log b has open on
 * this thread. */
int loom_op_submit(loom_backend *b, const loom_logged *r);
/* Before an op whose result the host needs: the open log of b (if any)
 * runs now, in order, and the rest of the step runs op by op (that step is
 * not captured). Its error, if an op failed. */
int loom_op_log_flush(loom_backend *b);
/* While b's log is open on this thread, memory and plans are freed at its
 * end (the logged ops may still use them): true if `p` (a plan when
 * `plan`) was kept for then. */
bool loom_op_log_defer_free(loom_backend *b, void *p, bool plan);
/* Block plans' layer counts (what block_forward's io holds): noted by
 * loom_backend_plan_block, forgotten by plan_destroy; 0 if unknown. */
int loom_op_log_note_block(loom_backend *b, loom_plan *plan, int layers);
void loom_op_log_forget_block(loom_backend *b, loom_plan *plan);
int loom_op_log_block_layers(loom_backend *b, loom_plan *plan);
/* Before a plan is destroyed: the logs seen and graphs made that name it
 * go (a graph holds the plan's own memory, and a plan made later at the
 * same address would make an equal log launch it). */
void loom_op_log_forget_plan(loom_backend *b, loom_plan *plan);
/* Before a device request is destroyed (loom_comm_request_destroy): the
 * logs and graphs whose sums it starts or waits for go (a graph holds the
 * request's collective, on its communicator: NCCL's, destroyed with it;
 * a request made later at the same address would make an equal log
 * launch it). */
void loom_op_log_forget_request(loom_backend *b, const loom_comm_request *request);
/* What the backend kept for its logs (graphs, the seen logs, block plans):
 * freed before the backend's context. */
void loom_op_log_backend_free(loom_backend *b);

#endif
