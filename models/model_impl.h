/* The sequential model's insides, shared by model.c (building, moving,
 * forward and backward) and model_state.c (host copies and checkpoints). */
#ifndef LOOM_MODELS_MODEL_IMPL_H
#define LOOM_MODELS_MODEL_IMPL_H

#include "models/layer_internal.h"

typedef enum grad_state { GRADS_UNKNOWN, GRADS_FINITE, GRADS_NONFINITE } grad_state;

typedef struct entry {
  char *name;
  loom_layer *layer;
  size_t offset, nparams, buffer_offset;
  int out_ndim; /* sample shape, without the batch dimension */
  int64_t out_shape[LOOM_MAX_DIMS];
  loom_tensor *out;  /* activation */
  loom_tensor *dout; /* its gradient */
  bool frozen;
  /* The fused block this layer belongs to starts at layers[head]; there,
   * `block` is its length (1: the layer runs alone, by its own ops),
   * `kept` which of its layers' outputs are in memory (loom_block) and
   * `plan` the backend's plan. */
  size_t head;
  int block;
  uint32_t kept;
  loom_plan *plan;
} entry;

struct loom_model {
  entry *layers;
  size_t count, cap;
  bool built, train;
  /* Where params, grads, buffers and the activations are: NULL, host
   * memory (the CPU backend's, or an input's host-memory backend). */
  loom_backend *backend;
  float *params, *grads, *buffers;
  size_t nparams, nbuffers;
  loom_rng *rng;
  int in_ndim;
  int64_t in_shape[LOOM_MAX_DIMS];
  const loom_tensor *last_input;
  /* The backend the blocks were planned on, when planned. */
  loom_backend *planned_on;
  bool planned;
  /* The autocast precision they were planned under, and whether it applied
   * (then no layer is fused). */
  loom_precision planned_precision;
  bool planned_autocast;
  /* What is known of the gradients since they were last zeroed, from the
   * checks made as backward wrote them (loom_model_grads_checked). */
  grad_state grads_state;
  /* Told after each layer's (or block's) backward (loom_model_on_grads_ready). */
  void (*ready)(void *ctx, size_t first);
  void *ready_ctx;
};

#endif
