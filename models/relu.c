#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"
#include "models/layer_internal.h"


/* Elementwise, so cut over the in-layer pool when large enough to pay. */
#define PARALLEL_ELEMS 65536

typedef struct relu_job {
  const float *x, *y, *dy;
  float *out;
} relu_job;

LOOM_HOT static void forward_range(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const relu_job *j = ctx;
  const float *restrict in = j->x;
  float *restrict out = j->out;
  for (int64_t i = begin; i < end; i++)
    out[i] = in[i] <= 0.0f ? 0.0f : in[i]; /* NaN stays NaN, as PyTorch's relu */
}

LOOM_HOT static void backward_range(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const relu_job *j = ctx;
  const float *restrict y = j->y, *restrict g = j->dy;
  float *restrict d = j->out;
  for (int64_t i = begin; i < end; i++)
    d[i] = y[i] <= 0.0f ? 0.0f : g[i]; /* PyTorch's threshold_backward: a NaN output passes dy */
}

static int relu_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)data, (void)train, (void)rng;
  relu_job j = {.x = x->data, .out = y->data};
  loom_parallel_for_large(x->numel, PARALLEL_ELEMS, forward_range, &j);
  return 0;
}

static int relu_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                         loom_tensor *dx, bool param_grads) {
  (void)data, (void)x, (void)param_grads;
  if (!dx)
    return 0;
  relu_job j = {.y = y->data, .dy = dy->data, .out = dx->data};
  loom_parallel_for_large(y->numel, PARALLEL_ELEMS, backward_range, &j);
  return 0;
}

static const loom_layer_ops relu_ops = {
    .type = "ReLU",
    .output_shape = loom_same_shape,
    .forward = relu_forward,
    .backward = relu_backward,
};

loom_layer *loom_relu_create(void) { return loom_layer_create(&relu_ops, NULL); }
