/* Kaiming and Xavier initialisation of a built model's weights, with
 * torch.nn.init's formulas (model.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/names.h"
#include "models/layer_internal.h"

static int check(const loom_model *model, const loom_init *init, const char *const *layers, size_t n) {
  if (!init || init->scheme < LOOM_INIT_KAIMING_UNIFORM || init->scheme > LOOM_INIT_XAVIER_NORMAL ||
      !(init->gain >= 0) || !isfinite(init->negative_slope))
    return loom_error_set(LOOM_EINVAL, "init: a scheme of loom_init_scheme, gain >= 0, a finite negative_slope");
  if (!loom_model_is_built(model))
    return loom_error_set(LOOM_ESTATE, "init: build the model first (loom_model_build)");
  if (n && !layers)
    return loom_error_set(LOOM_EINVAL, "init: %zu layer names given as NULL", n);
  for (size_t i = 0; i < n; i++)
    if (!layers[i] || !loom_model_find_layer(model, layers[i]))
      return loom_error_set(LOOM_EINVAL, "init: the model has no layer \"%s\"", layers[i] ? layers[i] : "(null)");
  return 0;
}

/* The weights of `l` (its first num_decayed parameters) from its fans, its
 * biases zeroed if asked; a layer made of layers, each of them. */
static void init_layer(const loom_layer *l, float *params, size_t count, const loom_init *init, loom_rng *rng) {
  const loom_layer *sub;
  size_t sub_offset;
  for (size_t k = 0; l->inner && l->inner(l->data, k, &sub, &sub_offset); k++)
    init_layer(sub, params + sub_offset, loom_layer_num_params(sub), init, rng);
  if (!l->ops.fans)
    return;
  int64_t fan_in, fan_out;
  l->ops.fans(l->data, &fan_in, &fan_out);
  const size_t weights = l->ops.num_decayed ? l->ops.num_decayed(l->data) : count;
  bool kaiming = init->scheme <= LOOM_INIT_KAIMING_NORMAL;
  bool uniform = init->scheme == LOOM_INIT_KAIMING_UNIFORM || init->scheme == LOOM_INIT_XAVIER_UNIFORM;
  double gain = init->gain > 0 ? init->gain : 1.0, std;
  if (kaiming)
    std = sqrt(2.0 / (1.0 + init->negative_slope * init->negative_slope)) / sqrt((double)(init->fan_out ? fan_out : fan_in));
  else
    std = gain * sqrt(2.0 / (double)(fan_in + fan_out));
  /* U(-b, b) has std b / sqrt(3). */
  for (size_t k = 0; k < weights; k++)
    params[k] = uniform ? (float)((2.0 * loom_rng_uniform(rng) - 1.0) * std * sqrt(3.0)) : (float)(loom_rng_normal(rng) * std);
  if (init->zero_bias)
    memset(params + weights, 0, (count - weights) * sizeof *params);
}

int loom_model_init_weights(loom_model *model, const loom_init *init, const char *const *layers, size_t num_layers,
                            uint64_t seed) {
  int rc = check(model, init, layers, num_layers);
  if (rc < 0)
    return rc;
  loom_rng rng;
  loom_rng_seed(&rng, seed, 0, loom_rng_stream_id("init_weights"));
  /* In host memory: written where they are; on a backend: through a host
   * copy, one transfer each way. */
  const bool staged = loom_model_backend(model) != loom_backend_cpu();
  float *params = staged ? malloc((loom_model_num_params(model) + 1) * sizeof *params) : loom_model_params(model);
  if (!params)
    return loom_error_oom("a host copy of the model's parameters");
  if (staged && (rc = loom_model_params_to_host(model, params)) < 0) {
    free(params);
    return rc;
  }
  for (size_t i = 0; i < loom_model_num_layers(model); i++) {
    if (num_layers && !loom_names_contain(layers, num_layers, loom_model_layer_name(model, i)))
      continue;
    size_t offset, count;
    loom_model_layer_params(model, i, &offset, &count);
    init_layer(loom_model_layer(model, i), params + offset, count, init, &rng);
  }
  if (staged) {
    rc = loom_model_params_from_host(model, params);
    free(params);
  }
  return rc;
}
