#ifndef LOOM_TESTS_FUZZ_FETCH_H
#define LOOM_TESTS_FUZZ_FETCH_H

#include "fuzz.h"
#include "loom/data.h"

/* Fetches every sample of a dataset that opened (up to a few MB of them). */
static inline void fuzz_fetch_all(loom_dataset *ds) {
  int64_t sample = 1, target = 1, n = loom_dataset_length(ds);
  for (int d = 0; d < loom_dataset_sample_ndim(ds) && sample <= (1 << 20); d++)
    sample *= loom_dataset_sample_shape(ds)[d] > (1 << 20) ? (1 << 21) : loom_dataset_sample_shape(ds)[d];
  for (int d = 0; d < loom_dataset_target_ndim(ds) && target <= (1 << 20); d++)
    target *= loom_dataset_target_shape(ds)[d] > (1 << 20) ? (1 << 21) : loom_dataset_target_shape(ds)[d];
  if (n <= 0 || sample <= 0 || target <= 0 || n > 4096 || sample > (1 << 20) || target > (1 << 20))
    return;
  float *x = malloc((size_t)(n * sample) * sizeof *x), *y = malloc((size_t)(n * target) * sizeof *y);
  int64_t *idx = malloc((size_t)n * sizeof *idx);
  for (int64_t i = 0; i < n; i++)
    idx[i] = n - 1 - i;
  fuzz_expect_clean_error(loom_dataset_fetch(ds, idx, n, x, y));
  free(idx), free(x), free(y);
}

#endif
