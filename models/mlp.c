#include <stdio.h>

#include "core/error_internal.h"
#include "loom/model.h"
#include "models/layer_internal.h"

loom_model *loom_mlp_layers(const int64_t *sizes, int n) {
  if (!sizes || n < 2) {
    loom_error_set(LOOM_EINVAL, "loom_mlp_create: an MLP needs at least 2 sizes (inputs and outputs), got %d", n);
    return NULL;
  }
  loom_model *m = loom_model_create();
  if (!m)
    return NULL;
  char name[32];
  for (int i = 1; i < n; i++) {
    snprintf(name, sizeof name, "fc%d", i);
    if (loom_model_add(m, name, loom_linear_create(sizes[i - 1], sizes[i], true)) < 0)
      goto fail;
    if (i < n - 1) {
      snprintf(name, sizeof name, "relu%d", i);
      if (loom_model_add(m, name, loom_relu_create()) < 0)
        goto fail;
    }
  }
  return m;
fail:
  loom_model_destroy(m);
  return NULL;
}

loom_model *loom_mlp_create(const int64_t *sizes, int n, uint64_t seed) {
  loom_model *m = loom_mlp_layers(sizes, n);
  if (m && loom_model_build(m, 1, &sizes[0], seed) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  return m;
}
