/* The CPU backend's elementwise kernels (backends/cpu/activations.c). */
#ifndef LOOM_BACKENDS_CPU_KERNELS_H
#define LOOM_BACKENDS_CPU_KERNELS_H

#include <stdint.h>

#include "loom/backend.h"

/* y = f(x) and dx = dy f'(x) over n elements; ReLU is cut over the pool
 * when large enough to pay for the hand-off. */
void loom_cpu_act_forward(loom_activation act, float param, const float *x, float *y, int64_t n);
void loom_cpu_act_backward(loom_activation act, float param, const float *x, const float *y, const float *dy,
                           float *dx, int64_t n);

#endif
