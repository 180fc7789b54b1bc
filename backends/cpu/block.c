/* The CPU backend's fused blocks (plan_block): the fusions that keep a
 * convolution block's large activations out of memory, each bit for bit
 * the layers run apart.
 * - A Conv2d right before a BatchNorm computes, in training, each output
 *   plane's moments while the plane is in cache (after its sgemm or its
 *   Winograd chunk); the BatchNorm merges per-plane moments either way, so
 *   it reads no plane for its statistics.
 * - A ReLU right after the BatchNorm is applied in the BatchNorm's output
 *   pass, and its mask recomputed in the BatchNorm's backward from the
 *   BatchNorm's input with the forward's own float operations: the ReLU's
 *   output and gradient are never written.
 * - A pool right after the BatchNorm (or its ReLU) pools each normalised
 *   plane while it is in cache, and the backward builds each channel's
 *   gradient planes from the pool's in a part's buffer: the pool's input
 *   and its gradient are never written. */
#include <stdlib.h>

#include "backends/cpu/nn.h"
#include "core/error_internal.h"

typedef struct cpu_block {
  struct loom_plan base;
  int count;
  int conv, bn, relu, pool; /* each layer's place in the block; -1: none */
  bool bias;                /* the convolution's */
  int64_t conv_weights;     /* its weights' count: the bias follows */
  int64_t c;                /* the BatchNorm's channels */
  loom_plan *conv_plan, *bn_plan, *pool_plan;
} cpu_block;

static bool is(const loom_layer_desc *layers, int count, int k, loom_layer_kind kind) {
  return k < count && layers[k].kind == kind;
}

/* Which layers fuse, from layers[0]: [Conv2d] BatchNorm [ReLU] [pool],
 * with shapes that chain. */
static void match(cpu_block *b, const loom_layer_desc *l, int count) {
  int k = 0;
  b->conv = b->bn = b->relu = b->pool = -1;
  if (is(l, count, 0, LOOM_LAYER_CONV) && is(l, count, 1, LOOM_LAYER_BATCHNORM) &&
      l[0].conv.cout == l[1].batchnorm.c && l[0].conv.oh * l[0].conv.ow == l[1].batchnorm.spatial)
    b->conv = k++;
  if (!is(l, count, k, LOOM_LAYER_BATCHNORM))
    return;
  const loom_batchnorm_desc *bn = &l[k].batchnorm;
  b->bn = k++;
  if (is(l, count, k, LOOM_LAYER_ACT) && l[k].act.act == LOOM_ACT_RELU)
    b->relu = k++;
  if (is(l, count, k, LOOM_LAYER_POOL) && l[k].pool.c == bn->c && l[k].pool.h * l[k].pool.w == bn->spatial)
    b->pool = k++;
  b->count = k;
}

int loom_cpu_plan_block(const loom_layer_desc *layers, int count, loom_block *block) {
  *block = (loom_block){0};
  cpu_block probe = {0};
  match(&probe, layers, count);
  if (probe.count < 2)
    return 0;
  cpu_block *b = malloc(sizeof *b);
  if (!b)
    return loom_error_oom("a fused block's plan");
  *b = probe;
  b->base.kind = CPU_PLAN_BLOCK;
  b->c = layers[b->bn].batchnorm.c;
  int rc = loom_cpu_batchnorm_plan(&layers[b->bn].batchnorm, &b->bn_plan);
  if (rc == 0 && b->conv >= 0) {
    const loom_conv_desc *d = &layers[b->conv].conv;
    b->bias = d->bias, b->conv_weights = d->cout * d->cin * d->kh * d->kw;
    rc = loom_cpu_conv_plan(d, &b->conv_plan);
  }
  if (rc == 0 && b->pool >= 0)
    rc = loom_cpu_pool_plan(&layers[b->pool].pool, &b->pool_plan);
  if (rc < 0) {
    loom_cpu_block_destroy(&b->base);
    return rc;
  }
  block->count = b->count;
  block->kept = 1u << (b->count - 1) | (b->conv >= 0 ? 1u << b->conv : 0u);
  block->plan = &b->base;
  return 0;
}

void loom_cpu_block_destroy(loom_plan *plan) {
  cpu_block *b = (cpu_block *)plan;
  if (b->conv_plan)
    loom_cpu_conv_destroy(b->conv_plan);
  if (b->bn_plan)
    loom_cpu_batchnorm_destroy(b->bn_plan);
  if (b->pool_plan)
    loom_cpu_pool_destroy(b->pool_plan);
  free(b);
}

int loom_cpu_block_forward(loom_plan *plan, bool train, const float *x, const loom_block_io *io, int64_t n) {
  cpu_block *b = (cpu_block *)plan;
  loom_cpu_bn_fusion f = {.relu = b->relu >= 0, .pool = b->pool_plan, .pool_y = b->pool >= 0 ? io[b->pool].y : NULL};
  const float *bn_x = x;
  if (b->conv >= 0) {
    const loom_block_io *c = &io[b->conv];
    double *moments = NULL;
    if (train && !(moments = loom_cpu_batchnorm_moments(b->bn_plan, n)))
      return LOOM_ENOMEM;
    int rc = loom_cpu_conv_forward(b->conv_plan, x, c->params, b->bias ? c->params + b->conv_weights : NULL, c->y, n,
                                   moments);
    if (rc < 0)
      return rc;
    f.moments = moments, bn_x = c->y;
  }
  const loom_block_io *bn = &io[b->bn];
  float *y = b->pool >= 0 ? NULL : io[b->relu >= 0 ? b->relu : b->bn].y;
  return loom_cpu_batchnorm_forward(b->bn_plan, train, bn_x, bn->params, bn->params + b->c, bn->buffers,
                                    bn->buffers + b->c, y, n, &f);
}

int loom_cpu_block_backward(loom_plan *plan, int first, const float *x, const loom_block_io *io, float *dx,
                            int64_t n) {
  cpu_block *b = (cpu_block *)plan;
  if (first > b->bn) /* only layers without parameters above it */
    return 0;
  const loom_cpu_bn_fusion f = {.relu = b->relu >= 0, .pool = b->pool_plan};
  const loom_block_io *bn = &io[b->bn], *c = b->conv >= 0 ? &io[b->conv] : NULL;
  const bool conv_runs = c && first <= b->conv;
  float *bn_dx = c ? (conv_runs ? c->dy : NULL) : dx;
  int rc = loom_cpu_batchnorm_backward(b->bn_plan, c ? c->y : x, bn->params, bn->params + b->c, io[b->count - 1].dy,
                                       bn->grads, bn->grads ? bn->grads + b->c : NULL, bn_dx, n, &f);
  if (rc < 0 || !conv_runs)
    return rc;
  float *dw = c->grads, *db = c->grads && b->bias ? c->grads + b->conv_weights : NULL;
  return loom_cpu_conv_backward(b->conv_plan, x, c->params, c->dy, dw, db, dx, n);
}

const double *loom_cpu_block_moments(const loom_plan *plan) {
  const cpu_block *b = (const cpu_block *)plan;
  return plan && plan->kind == CPU_PLAN_BLOCK && b->conv >= 0 ? loom_cpu_batchnorm_moments(b->bn_plan, 0) : NULL;
}
