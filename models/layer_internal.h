#ifndef LOOM_MODELS_LAYER_INTERNAL_H
#define LOOM_MODELS_LAYER_INTERNAL_H

#include "loom/model.h"

#include "core/autocast.h"
#include "core/tensor_impl.h"
#include "loom/backend_cpu.h"

struct loom_layer {
  loom_layer_ops ops;
  void *data;
  /* Built-in layers only: what the layer computes, once its shapes are
   * known (after output_shape), for the backend to plan fused blocks of
   * consecutive layers (loom_backend_plan_block; the model asks it when it
   * first runs on a backend, and runs a block through block_forward and
   * block_backward instead of the layers' own ops). False, or NULL as for
   * every layer made with loom_layer_create: a layer the backend does not
   * know, which runs by its own ops and ends any block. The model matches
   * no type names: which layers fuse is the backend's choice. */
  bool (*describe)(const void *data, loom_layer_desc *desc);
  /* Built-in layers only: lets go of what the layer keeps on the backend
   * it last ran on (a plan, Dropout's mask), when the model moves to
   * another backend (loom_model_set_backend), so that nothing is left on
   * the old one. NULL: nothing kept. */
  int (*release)(void *data);
  /* Layers made of layers only (a residual block): its inner layer i and
   * the offset of that layer's parameters in its own, in the order it binds
   * them; false past the last. For what reaches into them
   * (loom_model_init_weights). NULL: none. */
  bool (*inner)(const void *data, size_t i, const loom_layer **layer, size_t *offset);
};

size_t loom_layer_num_params(const loom_layer *layer);

/* loom_mlp_create's layers, unbuilt (for loom_model_plan). */
loom_model *loom_mlp_layers(const int64_t *sizes, int n);

/* A built-in layer's backward, once it has accumulated its parameter
 * gradients: whether they are all finite, checked where they were computed
 * (loom_backend_gemm_checked), so that the model need not read them again
 * (loom_model_grads_checked). A layer that does not report is checked by
 * the model right after its backward. */
void loom_layer_report_grads(bool finite);

/* The gradient buffer, for models/ code that keeps track of what it writes
 * (loom_model_grads makes the model forget what it knew of them). */
float *loom_model_grad_buffer(loom_model *model);
/* After models/ code rewrote the gradients: finite_kept when what was
 * finite stays finite (scaling by at most 1 in magnitude). */
void loom_model_grads_rewritten(loom_model *model, bool finite_kept);

/* dst on `to` = src on `from` (NULL: host memory), n floats: memcpy, one
 * transfer, or between two backends through the host. */
int loom_array_copy(loom_backend *to, float *dst, loom_backend *from, const float *src, size_t n);

/* The backend that computes on `t`: its own, or the CPU's for host memory. */
static inline loom_backend *loom_backend_of(const loom_tensor *t) {
  return t->backend ? t->backend : loom_backend_cpu();
}
/* output_shape of shape-preserving layers. */
int loom_same_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out);
/* macs of layers without multiply-adds (elementwise functions, copies,
 * max pooling), and of those with one per output element (a BatchNorm's
 * scale and shift). */
int64_t loom_no_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out);
int64_t loom_macs_per_output(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out);
/* The product of shape[0, ndim). */
int64_t loom_shape_numel(int ndim, const int64_t *shape);

/* Elements per sample of a [batch, ...] tensor. */
static inline int64_t loom_per_sample(const loom_tensor *t) { return t->shape[0] ? t->numel / t->shape[0] : 0; }

/* A layer's memory for one rounded operand under autocast, kept from call
 * to call (an allocation per call fragments the host's heap: the CNN's
 * peak RSS was 1 GB instead of 0.2), grown as needed, on the backend it
 * was last used on. */
typedef struct loom_layer_scratch {
  loom_backend *on;
  float *p;
  size_t cap; /* floats */
} loom_layer_scratch;
/* Under autocast (core/autocast.h), *use = x rounded into s; else *use = x. */
int loom_autocast_input(loom_layer_scratch *s, loom_backend *b, const float *x, int64_t n, const float **use);
void loom_layer_scratch_free(loom_layer_scratch *s);

/* A planned layer's plan (Conv2d, the pools, BatchNorm, when run alone):
 * made from its descriptor on the backend it runs on, made again when that
 * backend changes, dropped when the shapes change (loom_layer_plan_drop). */
typedef struct loom_layer_plan {
  loom_backend *backend;
  loom_plan *plan;
  loom_precision precision; /* the autocast it was made under (a backend may choose its math by it) */
} loom_layer_plan;
int loom_layer_plan_on(loom_layer_plan *p, loom_backend *backend, const loom_layer_desc *desc);
void loom_layer_plan_drop(loom_layer_plan *p);

/* The plan of the fused block that starts at layer i (NULL: none), once
 * the model has run a forward; for tests. */
loom_plan *loom_model_block_plan(const loom_model *model, size_t i);

#endif
