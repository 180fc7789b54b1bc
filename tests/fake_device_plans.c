/* The fake device's planned ops and fused blocks: plans that wrap the
 * CPU's, with what they were made for (the extents the ops check). */
#include "fake_device_impl.h"

#include <stdlib.h>
#include <string.h>

#include <loom/backend_cpu.h>

#define PLAN_MAGIC 0xFA4EB1A7u
#define MAX_BLOCK_LAYERS 32

/* A plan of this device: the CPU's plan and what it was made for (the
 * extents the ops check). */
typedef struct fake_plan {
  uint32_t magic;
  loom_layer_kind kind; /* LOOM_LAYER_OTHER: a block */
  int count;            /* layers: 1, or the block's */
  loom_layer_desc layers[MAX_BLOCK_LAYERS];
  loom_plan *cpu;
} fake_plan;

static fake_plan *new_plan(fake_device *d, loom_layer_kind kind, int count, const loom_layer_desc *layers) {
  fake_plan *p = calloc(1, sizeof *p);
  if (!p)
    fake_die("plan", "out of host memory");
  pthread_mutex_lock(&d->lock);
  d->counts.plans++;
  pthread_mutex_unlock(&d->lock);
  p->magic = PLAN_MAGIC, p->kind = kind, p->count = count;
  memcpy(p->layers, layers, (size_t)count * sizeof *layers);
  return p;
}

/* The plan behind `plan`, which must be this device's, made for `kind`. */
static fake_plan *own_plan(const char *op, loom_plan *plan, loom_layer_kind kind) {
  fake_plan *p = (fake_plan *)plan;
  if (!p || p->magic != PLAN_MAGIC)
    fake_die(op, "a plan this device did not make (%p): a plan of another backend kept across a move?", (void *)plan);
  if (p->kind != kind)
    fake_die(op, "a plan made for layer kind %d, used for kind %d", (int)p->kind, (int)kind);
  return p;
}

static int wrap_plan(fake_device *d, loom_layer_kind kind, const loom_layer_desc *desc, int rc, loom_plan *cpu_plan,
                     loom_plan **plan) {
  if (rc < 0)
    return rc;
  fake_plan *p = new_plan(d, kind, 1, desc);
  p->cpu = cpu_plan;
  *plan = (loom_plan *)p;
  return 0;
}

int fake_conv_plan(void *ctx, const loom_conv_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_conv_plan(fake_cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_CONV, &(loom_layer_desc){.kind = LOOM_LAYER_CONV, .conv = *desc}, rc, c, plan);
}

int fake_pool_plan(void *ctx, const loom_pool_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_pool_plan(fake_cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_POOL, &(loom_layer_desc){.kind = LOOM_LAYER_POOL, .pool = *desc}, rc, c, plan);
}

int fake_batchnorm_plan(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_batchnorm_plan(fake_cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_BATCHNORM, &(loom_layer_desc){.kind = LOOM_LAYER_BATCHNORM, .batchnorm = *desc}, rc, c,
                   plan);
}

void fake_plan_destroy(void *ctx, loom_plan *plan) {
  fake_device *d = ctx;
  fake_plan *p = (fake_plan *)plan;
  if (!p)
    return;
  if (p->magic != PLAN_MAGIC)
    fake_die("plan_destroy", "a plan this device did not make (%p)", (void *)plan);
  pthread_mutex_lock(&d->lock);
  d->counts.plans--;
  pthread_mutex_unlock(&d->lock);
  loom_backend_plan_destroy(loom_backend_cpu(), p->cpu);
  p->magic = 0;
  free(p);
}

int fake_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                      int64_t n) {
  const loom_conv_desc *c = &own_plan("conv_forward", plan, LOOM_LAYER_CONV)->layers[0].conv;
  x = fake_real(ctx, "conv_forward", "x", x, F(n * c->cin * c->h * c->w));
  w = fake_real(ctx, "conv_forward", "w", w, F(c->cout * c->cin * c->kh * c->kw));
  bias = fake_real(ctx, "conv_forward", "bias", bias, F(c->cout));
  y = fake_real(ctx, "conv_forward", "y", y, F(n * c->cout * c->oh * c->ow));
  return CPU_OP(ctx, fake_cpu(ctx, false), conv_forward, ((fake_plan *)plan)->cpu, x, w, bias, y, n);
}

int fake_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                       float *dbias, float *dx, int64_t n) {
  const loom_conv_desc *c = &own_plan("conv_backward", plan, LOOM_LAYER_CONV)->layers[0].conv;
  x = fake_real(ctx, "conv_backward", "x", x, F(n * c->cin * c->h * c->w));
  w = fake_real(ctx, "conv_backward", "w", w, F(c->cout * c->cin * c->kh * c->kw));
  dy = fake_real(ctx, "conv_backward", "dy", dy, F(n * c->cout * c->oh * c->ow));
  dw = fake_real(ctx, "conv_backward", "dw", dw, F(c->cout * c->cin * c->kh * c->kw));
  dbias = fake_real(ctx, "conv_backward", "dbias", dbias, F(c->cout));
  dx = fake_real(ctx, "conv_backward", "dx", dx, F(n * c->cin * c->h * c->w));
  return CPU_OP(ctx, fake_cpu(ctx, false), conv_backward, ((fake_plan *)plan)->cpu, x, w, dy, dw, dbias, dx, n);
}

int fake_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n) {
  const loom_pool_desc *p = &own_plan("pool_forward", plan, LOOM_LAYER_POOL)->layers[0].pool;
  x = fake_real(ctx, "pool_forward", "x", x, F(n * p->c * p->h * p->w));
  y = fake_real(ctx, "pool_forward", "y", y, F(n * p->c * p->oh * p->ow));
  return CPU_OP(ctx, fake_cpu(ctx, false), pool_forward, ((fake_plan *)plan)->cpu, x, y, n);
}

int fake_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  const loom_pool_desc *p = &own_plan("pool_backward", plan, LOOM_LAYER_POOL)->layers[0].pool;
  dy = fake_real(ctx, "pool_backward", "dy", dy, F(n * p->c * p->oh * p->ow));
  dx = fake_real(ctx, "pool_backward", "dx", dx, F(n * p->c * p->h * p->w));
  return CPU_OP(ctx, fake_cpu(ctx, false), pool_backward, ((fake_plan *)plan)->cpu, dy, dx, n);
}

int fake_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                           const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  const loom_batchnorm_desc *b = &own_plan("batchnorm_forward", plan, LOOM_LAYER_BATCHNORM)->layers[0].batchnorm;
  const char *op = "batchnorm_forward";
  x = fake_real(ctx, op, "x", x, F(n * b->c * b->spatial));
  gamma = fake_real(ctx, op, "gamma", gamma, F(b->c)), beta = fake_real(ctx, op, "beta", beta, F(b->c));
  running_mean = fake_real(ctx, op, "running_mean", running_mean, F(b->c));
  running_var = fake_real(ctx, op, "running_var", running_var, F(b->c));
  y = fake_real(ctx, op, "y", y, F(n * b->c * b->spatial));
  return CPU_OP(ctx, fake_cpu(ctx, false), batchnorm_forward, ((fake_plan *)plan)->cpu, train, x, gamma, beta,
                                             running_mean, running_var, y, n);
}

int fake_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                            const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n) {
  const loom_batchnorm_desc *b = &own_plan("batchnorm_backward", plan, LOOM_LAYER_BATCHNORM)->layers[0].batchnorm;
  const char *op = "batchnorm_backward";
  x = fake_real(ctx, op, "x", x, F(n * b->c * b->spatial));
  gamma = fake_real(ctx, op, "gamma", gamma, F(b->c)), beta = fake_real(ctx, op, "beta", beta, F(b->c));
  dy = fake_real(ctx, op, "dy", dy, F(n * b->c * b->spatial));
  dgamma = fake_real(ctx, op, "dgamma", dgamma, F(b->c)), dbeta = fake_real(ctx, op, "dbeta", dbeta, F(b->c));
  dx = fake_real(ctx, op, "dx", dx, F(n * b->c * b->spatial));
  return CPU_OP(ctx, fake_cpu(ctx, false), batchnorm_backward, ((fake_plan *)plan)->cpu, x, gamma, beta, dy, dgamma,
                dbeta, dx, n);
}

/* --- blocks --- */

/* Per-sample sizes of a layer's input and output (an activation's are the
 * layer before's output; 0: unknown, only the start is checked), its
 * parameters' and its buffers'. */
static void layer_sizes(const loom_layer_desc *l, int64_t prev_out, int64_t *in, int64_t *out, int64_t *params,
                        int64_t *buffers) {
  *params = *buffers = 0;
  switch (l->kind) {
  case LOOM_LAYER_CONV:
    *in = l->conv.cin * l->conv.h * l->conv.w, *out = l->conv.cout * l->conv.oh * l->conv.ow;
    *params = l->conv.cout * l->conv.cin * l->conv.kh * l->conv.kw + (l->conv.bias ? l->conv.cout : 0);
    break;
  case LOOM_LAYER_POOL:
    *in = l->pool.c * l->pool.h * l->pool.w, *out = l->pool.c * l->pool.oh * l->pool.ow;
    break;
  case LOOM_LAYER_BATCHNORM:
    *in = *out = l->batchnorm.c * l->batchnorm.spatial;
    *params = *buffers = 2 * l->batchnorm.c;
    break;
  default: *in = *out = prev_out; break;
  }
}

/* io with real addresses, each checked for its layer's extents; *in_of[k]
 * is layer k's input size per sample. */
static void real_io(fake_device *d, const char *op, const fake_plan *p, const loom_block_io *io, int64_t n,
                    bool backward, loom_block_io *out, int64_t *in_of) {
  int64_t prev = 0;
  for (int k = 0; k < p->count; k++) {
    int64_t in, o, np, nb;
    layer_sizes(&p->layers[k], prev, &in, &o, &np, &nb);
    in_of[k] = in, prev = o;
    out[k] = (loom_block_io){
        .params = fake_real(d, op, "io.params", io[k].params, F(np)),
        .grads = fake_real(d, op, "io.grads", io[k].grads, backward ? F(np) : 0), /* forward: not touched */
        .buffers = fake_real(d, op, "io.buffers", io[k].buffers, F(nb)),
        .y = fake_real(d, op, "io.y", io[k].y, F(n * o)),
        .dy = fake_real(d, op, "io.dy", io[k].dy, backward ? F(n * o) : 0),
    };
  }
}

int fake_plan_block(void *ctx, const loom_layer_desc *layers, int count, loom_block *block) {
  int rc = loom_backend_plan_block(fake_cpu(ctx, false), layers, count, block);
  if (rc < 0 || block->count < 2)
    return rc;
  if (block->count > MAX_BLOCK_LAYERS)
    fake_die("plan_block", "a block of %d layers", block->count);
  fake_plan *p = new_plan(ctx, LOOM_LAYER_OTHER, block->count, layers);
  p->cpu = block->plan;
  block->plan = (loom_plan *)p;
  return 0;
}

int fake_block_forward(void *ctx, loom_plan *plan, bool train, const float *x, const loom_block_io *io,
                       int64_t n) {
  const fake_plan *p = own_plan("block_forward", plan, LOOM_LAYER_OTHER);
  loom_block_io rio[MAX_BLOCK_LAYERS];
  int64_t in_of[MAX_BLOCK_LAYERS];
  real_io(ctx, "block_forward", p, io, n, false, rio, in_of);
  x = fake_real(ctx, "block_forward", "x", x, F(n * in_of[0]));
  return CPU_OP(ctx, fake_cpu(ctx, false), block_forward, p->cpu, train, x, rio, n);
}

int fake_block_backward(void *ctx, loom_plan *plan, int first, const float *x, const loom_block_io *io,
                        float *dx, int64_t n) {
  const fake_plan *p = own_plan("block_backward", plan, LOOM_LAYER_OTHER);
  loom_block_io rio[MAX_BLOCK_LAYERS];
  int64_t in_of[MAX_BLOCK_LAYERS];
  real_io(ctx, "block_backward", p, io, n, true, rio, in_of);
  /* x is the block's input (layer first > 0 reads the kept y before it) */
  x = fake_real(ctx, "block_backward", "x", x, F(n * in_of[0]));
  dx = fake_real(ctx, "block_backward", "dx", dx, F(n * in_of[0]));
  return CPU_OP(ctx, fake_cpu(ctx, false), block_backward, p->cpu, first, x, rio, dx, n);
}
