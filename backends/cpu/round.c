/* The ROUND op on the CPU: backends/cpu/round_math.h over an array. */
#include "backends/cpu/kernels.h"
#include "backends/cpu/round_math.h"

void loom_cpu_round(loom_precision p, const float *x, float *y, int64_t n) {
  if (p == LOOM_PRECISION_BF16)
    for (int64_t i = 0; i < n; i++)
      y[i] = loom_round_bf16(x[i]);
  else if (p == LOOM_PRECISION_FP16)
    for (int64_t i = 0; i < n; i++)
      y[i] = loom_round_fp16(x[i]);
  else if (x != y)
    memcpy(y, x, (size_t)n * sizeof *y);
}
