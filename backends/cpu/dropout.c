/* Dropout's mask by the documented counter rule (loom/backend.h): one key
 * per forward and SplitMix64 over the element index, so any part of the
 * mask can be drawn on any core and it does not depend on their number;
 * and the elementwise mul (its backward) and add (a residual sum). */
#include "backends/cpu/kernels.h"

#include "backends/cpu/parallel.h"

/* SplitMix64's finaliser of key + (i + 1) golden-ratio steps, top 24 bits. */
static inline float counter_uniform(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * 0x1.0p-24f;
}

/* A draw is three multiplies: below this many, one core is quicker. */
#define PARALLEL_DRAWS 16384

typedef struct dropout_job {
  uint64_t key;
  float p;
  const float *x;
  float *y, *mask;
} dropout_job;

static void dropout_range(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const dropout_job *d = ctx;
  const float keep = 1.0f / (1.0f - d->p);
  for (int64_t i = begin; i < end; i++) {
    d->mask[i] = counter_uniform(d->key, (uint64_t)i) < d->p ? 0.0f : keep;
    d->y[i] = d->x[i] * d->mask[i];
  }
}

void loom_cpu_dropout_forward(uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  dropout_job j = {key, p, x, y, mask};
  loom_parallel_for_large(n, PARALLEL_DRAWS, dropout_range, &j);
}

void loom_cpu_mul(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = a[i] * b[i];
}

void loom_cpu_add(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = a[i] + b[i];
}
