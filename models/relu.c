#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/simd.h"
#include "models/layer_internal.h"


LOOM_HOT static int relu_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  (void)data, (void)train, (void)rng;
  const float *restrict in = x->data;
  float *restrict out = y->data;
  for (int64_t i = 0; i < x->numel; i++)
    out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  return 0;
}

LOOM_HOT static int relu_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                                  loom_tensor *dx, bool param_grads) {
  (void)data, (void)x, (void)param_grads;
  if (!dx)
    return 0;
  const float *restrict out = y->data, *restrict g = dy->data;
  float *restrict d = dx->data;
  for (int64_t i = 0; i < y->numel; i++)
    d[i] = out[i] > 0.0f ? g[i] : 0.0f;
  return 0;
}

static const loom_layer_ops relu_ops = {
    .type = "ReLU",
    .output_shape = loom_same_shape,
    .forward = relu_forward,
    .backward = relu_backward,
};

loom_layer *loom_relu_create(void) { return loom_layer_create(&relu_ops, NULL); }
