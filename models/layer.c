#include "models/layer_internal.h"

#include <stdlib.h>

#include "core/error_internal.h"

loom_layer *loom_layer_create(const loom_layer_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->output_shape || !ops->forward || !ops->backward) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_layer_create: a layer needs type, output_shape, forward and backward");
    return NULL;
  }
  loom_layer *layer = calloc(1, sizeof *layer);
  if (!layer) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a layer");
    return NULL;
  }
  layer->ops = *ops;
  layer->data = data;
  return layer;
}

void loom_layer_destroy(loom_layer *layer) {
  if (!layer)
    return;
  if (layer->ops.destroy)
    layer->ops.destroy(layer->data);
  free(layer);
}

const char *loom_layer_type(const loom_layer *layer) { return layer->ops.type; }
void *loom_layer_data(const loom_layer *layer) { return layer->data; }

size_t loom_layer_num_params(const loom_layer *layer) {
  return layer->ops.num_params ? layer->ops.num_params(layer->data) : 0;
}
