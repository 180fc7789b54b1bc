#ifndef LOOM_MODELS_LAYER_INTERNAL_H
#define LOOM_MODELS_LAYER_INTERNAL_H

#include "loom/model.h"

#include "core/tensor_impl.h"

struct loom_layer {
  loom_layer_ops ops;
  void *data;
};

size_t loom_layer_num_params(const loom_layer *layer);
/* output_shape of shape-preserving layers. */
int loom_same_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out);

/* Elements per sample of a [batch, ...] tensor. */
static inline int64_t loom_per_sample(const loom_tensor *t) { return t->shape[0] ? t->numel / t->shape[0] : 0; }

#endif
