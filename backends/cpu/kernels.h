/* The CPU backend's kernels behind loom/backend.h's ops, by file:
 * activations.c, losses.c, dropout.c. */
#ifndef LOOM_BACKENDS_CPU_KERNELS_H
#define LOOM_BACKENDS_CPU_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

#include "loom/backend.h"

/* y = f(x) and dx = dy f'(x) over n elements; ReLU is cut over the pool
 * when large enough to pay for the hand-off. */
void loom_cpu_act_forward(loom_activation act, float param, const float *x, float *y, int64_t n);
void loom_cpu_act_backward(loom_activation act, float param, const float *x, const float *y, const float *dy,
                           float *dx, int64_t n);

/* losses.c: the ops' contracts are in loom/backend.h. */
void loom_cpu_xent_forward(const float *logits, const float *targets, const float *weights, float smoothing, int64_t n,
                           int64_t c, float *probs, double *loss_sum, double *weight_sum);
void loom_cpu_xent_backward(const float *probs, const float *targets, const float *weights, float smoothing,
                            float scale, int64_t n, int64_t c, float *dlogits);
double loom_cpu_loss_forward(loom_pointwise_loss loss, float param, const float *out, const float *target, int64_t n);
void loom_cpu_loss_backward(loom_pointwise_loss loss, float param, const float *out, const float *target, float scale,
                            int64_t n, float *dout);
void loom_cpu_topk_hits(const float *scores, const float *targets, int64_t n, int64_t c, const int *ks, int nk,
                        int64_t *hits, int64_t *bad);

/* round.c: y = x rounded to p (y may be x). */
void loom_cpu_round(loom_precision p, const float *x, float *y, int64_t n);

/* dropout.c */
void loom_cpu_dropout_forward(uint64_t key, float p, const float *x, float *y, float *mask, int64_t n);
void loom_cpu_mul(const float *a, const float *b, float *y, int64_t n);
/* y = a + b; y may be a or b. */
void loom_cpu_add(const float *a, const float *b, float *y, int64_t n);

/* optim.c: the optimizers' updates, cut over the pool. */
void loom_cpu_sgd_update(const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n);
void loom_cpu_adam_update(const loom_adam_step *s, float *p, const float *g, float *m, float *v, int64_t n);
void loom_cpu_rmsprop_update(const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf, float *avg,
                             int64_t n);

/* grads.c */
double loom_cpu_sum_squares(const float *x, int64_t n);
void loom_cpu_scale(float *x, float a, int64_t n);
void loom_cpu_clamp(float *x, float limit, int64_t n);
bool loom_cpu_all_finite(const float *x, int64_t n);
/* The same on the calling thread alone (a block a part has just written). */
bool loom_cpu_finite_here(const float *x, int64_t n);

#endif
