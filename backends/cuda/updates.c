/* The CUDA backend's optimizer updates: SGD, Adam and RMSprop, one array
 * at a time or a step's every range in one launch (update_ranges). */
#include <math.h>
#include <stdlib.h>

#include "backends/cuda/context.h"
#include "backends/cuda/kernels.h"

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

int loom_cuda_op_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_sgd_update(c->stream, sgd_scalars(s, buf), p, g, buf, n), "sgd_update");
}

int loom_cuda_op_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                             int64_t n) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, loom_cuda_adam_update(c->stream, adam_scalars(s), p, g, m, v, n), "adam_update");
}

int loom_cuda_op_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
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
int loom_cuda_op_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
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
