/* Activations, forward and backward. A NaN input gives a NaN output and
 * passes its gradient on, as PyTorch's do (loom's non-finite policy then
 * sees it). */
#include "backends/cpu/kernels.h"

#include <math.h>

#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"

/* Elementwise, so cut over the in-layer pool when large enough to pay. */
#define PARALLEL_ELEMS 65536

typedef struct relu_job {
  const float *x, *y, *dy;
  float *out;
} relu_job;

LOOM_HOT static void relu_forward_range(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const relu_job *j = ctx;
  const float *restrict in = j->x;
  float *restrict out = j->out;
  for (int64_t i = begin; i < end; i++)
    out[i] = in[i] <= 0.0f ? 0.0f : in[i]; /* NaN stays NaN, as PyTorch's relu */
}

LOOM_HOT static void relu_backward_range(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const relu_job *j = ctx;
  const float *restrict y = j->y, *restrict g = j->dy;
  float *restrict d = j->out;
  for (int64_t i = begin; i < end; i++)
    d[i] = y[i] <= 0.0f ? 0.0f : g[i]; /* PyTorch's threshold_backward: a NaN output passes dy */
}

LOOM_HOT static void leaky_forward(float a, const float *restrict in, float *restrict out, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    out[i] = in[i] > 0.0f ? in[i] : a * in[i];
}

LOOM_HOT static void leaky_backward(float a, const float *restrict in, const float *restrict g, float *restrict d,
                                    int64_t n) {
  for (int64_t i = 0; i < n; i++)
    d[i] = in[i] > 0.0f ? g[i] : a * g[i];
}

/* GELU, exact: x Phi(x); derivative Phi(x) + x phi(x). */
static void gelu_forward(const float *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678f));
}

static void gelu_backward(const float *x, const float *dy, float *dx, int64_t n) {
  for (int64_t i = 0; i < n; i++) {
    float v = x[i];
    float cdf = 0.5f * (1.0f + erff(v * 0.70710678f)), pdf = 0.39894228f * expf(-0.5f * v * v);
    dx[i] = dy[i] * (cdf + v * pdf);
  }
}

/* Tanh and Sigmoid differentiate from their output. */
LOOM_HOT static void tanh_backward(const float *restrict out, const float *restrict g, float *restrict d, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    d[i] = g[i] * (1.0f - out[i] * out[i]);
}

LOOM_HOT static void sigmoid_backward(const float *restrict out, const float *restrict g, float *restrict d,
                                      int64_t n) {
  for (int64_t i = 0; i < n; i++)
    d[i] = g[i] * out[i] * (1.0f - out[i]);
}

void loom_cpu_act_forward(loom_activation act, float param, const float *x, float *y, int64_t n) {
  switch (act) {
  case LOOM_ACT_RELU: {
    relu_job j = {.x = x, .out = y};
    loom_parallel_for_large(n, PARALLEL_ELEMS, relu_forward_range, &j);
    break;
  }
  case LOOM_ACT_LEAKY_RELU: leaky_forward(param, x, y, n); break;
  case LOOM_ACT_GELU: gelu_forward(x, y, n); break;
  case LOOM_ACT_TANH:
    for (int64_t i = 0; i < n; i++)
      y[i] = tanhf(x[i]);
    break;
  case LOOM_ACT_SIGMOID:
    for (int64_t i = 0; i < n; i++)
      y[i] = 1.0f / (1.0f + expf(-x[i]));
    break;
  case LOOM_ACT_COUNT: break;
  }
}

void loom_cpu_act_backward(loom_activation act, float param, const float *x, const float *y, const float *dy,
                           float *dx, int64_t n) {
  switch (act) {
  case LOOM_ACT_RELU: {
    relu_job j = {.y = y, .dy = dy, .out = dx};
    loom_parallel_for_large(n, PARALLEL_ELEMS, relu_backward_range, &j);
    break;
  }
  case LOOM_ACT_LEAKY_RELU: leaky_backward(param, x, dy, dx, n); break;
  case LOOM_ACT_GELU: gelu_backward(x, dy, dx, n); break;
  case LOOM_ACT_TANH: tanh_backward(y, dy, dx, n); break;
  case LOOM_ACT_SIGMOID: sigmoid_backward(y, dy, dx, n); break;
  case LOOM_ACT_COUNT: break;
  }
}
