/* loom/registry.h - components by name, for configs.
 *
 * A constructor reads its parameters with the loom_params_* getters (which
 * report errors with FILE:LINE:COL) and returns a new object, or NULL after
 * loom_params_error / loom_error_set. Built-ins register the same way, on
 * first use of the registry; a name is unique within its kind. */
#ifndef LOOM_REGISTRY_H
#define LOOM_REGISTRY_H

#include "loom/api.h"

#include <stdint.h>

#include "loom/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_kind {
  LOOM_KIND_MODEL,     /* returns loom_model *, built; context: const loom_model_context * */
  LOOM_KIND_LAYER,     /* returns loom_layer *; context: NULL */
  LOOM_KIND_CRITERION, /* returns loom_criterion * */
  LOOM_KIND_OPTIMIZER, /* returns loom_optimizer *; context: const loom_model * it will step */
  LOOM_KIND_SCHEDULER, /* returns loom_scheduler * */
  LOOM_KIND_CALLBACK,  /* returns loom_callback * */
  LOOM_KIND_DATASET,   /* returns loom_dataset * */
  LOOM_KIND_TRANSFORM, /* returns loom_transform * (per sample, run by the loader's workers) */
  LOOM_KIND_COUNT
} loom_kind;

/* What a model constructor builds for. */
typedef struct loom_model_context {
  int ndim;                    /* sample dimensions of the first loader's dataset */
  const int64_t *sample_shape;
  uint64_t seed;               /* the experiment's: initialise from it */
} loom_model_context;

typedef void *(*loom_ctor)(loom_params *params, const void *context, void *user);

/* Registers `name` for `kind`; an error if the name is taken. */
LOOM_API int loom_register(loom_kind kind, const char *name, loom_ctor ctor, void *user);
/* "model", "layer", ... */
LOOM_API const char *loom_kind_name(loom_kind kind);
/* The registered names of a kind, comma-separated (for messages); static. */
LOOM_API const char *loom_registry_names(loom_kind kind);

#ifdef __cplusplus
}
#endif
#endif
