/* What the fake device's files share (fake_device.h is its interface):
 * its state, the blocks of its arena, the checks of an op's operands
 * (fake_device.c) and its slots, which fake_device.c's table names. Test
 * code. */
#ifndef LOOM_TESTS_FAKE_DEVICE_IMPL_H
#define LOOM_TESTS_FAKE_DEVICE_IMPL_H

#include "fake_device.h"

#include <pthread.h>
#include <stdint.h>

#define TAG ((uintptr_t)1 << 62)

typedef struct block {
  size_t off, len;
  bool used;
  const void *pending; /* the upload slot whose copy into it no upload_wait has ordered yet */
  bool scratch;        /* an op's own memory (fake_op_scratch), not the core's */
} block;

/* Pinned host memory handed out (host_alloc), for the uploads' checks. */
typedef struct pinned {
  unsigned char *p;
  size_t bytes;
} pinned;

struct fake_device {
  unsigned char *arena;
  size_t size;
  block *blocks; /* sorted by offset, covering the arena */
  size_t count, cap;
  pthread_mutex_t lock;
  fake_device_counts counts;
  pinned *pinned;
  size_t num_pinned, cap_pinned;
  int64_t fail_upload; /* the upload_start (counted in counts.uploads, from 1) that fails; 0: none */
  loom_backend_ops ops;  /* its own table, for graph_launch */
  bool capturing;        /* between graph_begin and graph_end: ops are checked, not run */
  int64_t op_calls;      /* ops run (not captured), for fail_op */
  int64_t fail_op;       /* the op (counted in op_calls) that fails; 0: none */
  int64_t captured_calls, refuse_op; /* ops seen under capture; the one that refuses it (0: none) */
  int held_rc;           /* what a held op returns */
  void **capture_scratch; /* taken by ops under the capture under way: the graph's to keep */
  size_t num_capture_scratch, cap_capture_scratch;
};

/* The checks (fake_device.c, which says what each does). */
_Noreturn void fake_die(const char *op, const char *fmt, ...);
block *fake_find(fake_device *d, size_t off);
void *fake_real_for(fake_device *d, const char *op, const char *what, const void *p, size_t bytes, const void *upload);
void *fake_real(fake_device *d, const char *op, const char *what, const void *p, size_t bytes);
void fake_host(const char *op, const char *what, const void *p);
bool fake_held(fake_device *d, const char *op);
/* The CPU backend, the op counted (fake_device_ops.c). */
loom_backend *fake_cpu(fake_device *d, bool host_result);

/* The CPU's op `op` on the checked operands, unless held. */
#define CPU_OP(ctx, cpu_backend, op, ...)                                                                              \
  (fake_held(ctx, #op) ? ((fake_device *)(ctx))->held_rc : loom_backend_##op(cpu_backend, __VA_ARGS__))

#define F(n) ((size_t)(n) * sizeof(float))

/* An op's own memory, and its end (fake_device.c). */
void *fake_op_scratch(fake_device *d, size_t bytes);
void fake_op_scratch_done(fake_device *d, void *p);

/* The slots of loom_backend_ops, by file. */
/* fake_device.c */
void *fake_alloc(void *ctx, size_t bytes);
void fake_free(void *ctx, void *p);
int fake_to_host(void *ctx, void *dst, const void *src, size_t bytes);
int fake_from_host(void *ctx, void *dst, const void *src, size_t bytes);
int fake_copy(void *ctx, void *dst, const void *src, size_t bytes);
int fake_zero(void *ctx, void *p, size_t bytes);
void fake_destroy(void *ctx);
/* fake_device_uploads.c */
void *fake_host_alloc(void *ctx, size_t bytes);
void fake_host_free(void *ctx, void *p);
int fake_upload_create(void *ctx, loom_upload **out);
void fake_upload_destroy(void *ctx, loom_upload *u);
int fake_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count);
int fake_upload_wait(void *ctx, loom_upload *u);
int fake_upload_release(void *ctx, loom_upload *u);
/* fake_device_ops.c */
int fake_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
              int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
int fake_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols);
int fake_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols);
int fake_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n);
int fake_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                      const float *dy, float *dx, int64_t n);
int fake_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                      float smoothing, int64_t n, int64_t c, float *probs, double *sums);
int fake_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                       float smoothing, float scale, int64_t n, int64_t c, float *dlogits);
int fake_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                      int64_t n, double *sum);
int fake_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out,
                       const float *target, float scale, int64_t n, float *dout);
int fake_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n);
int fake_mul(void *ctx, const float *a, const float *b, float *y, int64_t n);
int fake_add(void *ctx, const float *a, const float *b, float *y, int64_t n);
int fake_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n);
int fake_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                   int64_t ldc);
int fake_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n);
int fake_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                     int64_t n);
int fake_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                        float *avg, int64_t n);
int fake_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
                       float *p, const float *g, float *state, int64_t total);
int fake_sum_squares(void *ctx, const float *x, int64_t n, double *sum);
int fake_scale(void *ctx, float *x, float a, int64_t n);
int fake_clamp(void *ctx, float *x, float limit, int64_t n);
int fake_all_finite(void *ctx, const float *x, int64_t n, bool *finite);
int fake_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag);
int fake_set_if(void *ctx, const int *flag, float *x, float value);
int fake_gemm_checked(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                      const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                      int64_t ldc, bool *finite);
int fake_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                   int nk, int64_t *hits, int64_t *bad);
/* fake_device_plans.c */
int fake_conv_plan(void *ctx, const loom_conv_desc *desc, loom_plan **plan);
int fake_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                      int64_t n);
int fake_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                       float *dbias, float *dx, int64_t n);
int fake_pool_plan(void *ctx, const loom_pool_desc *desc, loom_plan **plan);
int fake_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n);
int fake_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n);
int fake_batchnorm_plan(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan);
int fake_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                           const float *beta, float *running_mean, float *running_var, float *y, int64_t n);
int fake_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                            const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n);
void fake_plan_destroy(void *ctx, loom_plan *plan);
int fake_plan_block(void *ctx, const loom_layer_desc *layers, int count, loom_block *block);
int fake_block_forward(void *ctx, loom_plan *plan, bool train, const float *x, const loom_block_io *io,
                       int64_t n);
int fake_block_backward(void *ctx, loom_plan *plan, int first, const float *x, const loom_block_io *io,
                        float *dx, int64_t n);
/* fake_device_graphs.c */
int fake_graph_begin(void *ctx);
int fake_graph_end(void *ctx, const loom_op_log *captured, loom_graph **graph);
int fake_graph_launch(void *ctx, loom_graph *g, const loom_op_log *now);
void fake_graph_destroy(void *ctx, loom_graph *g);
#endif
