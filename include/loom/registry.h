/* loom/registry.h - components by name, for configs.
 *
 * A constructor reads its parameters with the loom_params_* getters (which
 * report errors with FILE:LINE:COL), builds nested components with
 * loom_params_component, resolves file names with loom_params_file, and
 * returns a new object, or NULL after loom_params_error / loom_error_set.
 * Built-ins register the same way, with nothing a user's constructor
 * lacks, on first use of the registry; a name is unique within its kind.
 * Every optimizer built from a config also takes "param_groups" and
 * "no_decay_bias_norm" (docs/config.md), read after its constructor. */
#ifndef LOOM_REGISTRY_H
#define LOOM_REGISTRY_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>

#include "loom/config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum loom_kind {
  LOOM_KIND_MODEL,     /* returns loom_model *, built (under loom_config_validate, whose context
                        * has ndim 0: unbuilt, its size checked with loom_model_plan);
                        * context: const loom_model_context * */
  LOOM_KIND_LAYER,     /* returns loom_layer *; context: NULL */
  LOOM_KIND_CRITERION, /* returns loom_criterion * */
  LOOM_KIND_OPTIMIZER, /* returns loom_optimizer *; context: const loom_model * it will step */
  LOOM_KIND_SCHEDULER, /* returns loom_scheduler * */
  LOOM_KIND_CALLBACK,  /* returns loom_callback * */
  LOOM_KIND_DATASET,   /* returns loom_dataset * */
  LOOM_KIND_TRANSFORM, /* returns loom_transform * (per sample, run by the loader's workers) */
  LOOM_KIND_BACKEND,   /* returns loom_backend * (experiment.device, docs/config.md);
                        * context: const loom_backend_context * */
  LOOM_KIND_COUNT
} loom_kind;

/* What a model constructor builds for. */
typedef struct loom_model_context {
  int ndim;                    /* sample dimensions of the first loader's dataset; 0
                                * (sample_shape NULL) under loom_config_validate, which
                                * reads no data */
  const int64_t *sample_shape;
  uint64_t seed;               /* the experiment's: initialise from it */
} loom_model_context;

/* What a backend constructor builds for. A device named "NAME:INDEX" in
 * the config reaches it as {"type": NAME, "index": INDEX}. Under loom_config_validate it
 * touches no device (the config may be meant for another machine): it
 * checks its keys and returns loom_backend_cpu(). The experiment built
 * from the config owns what it returns (loom_experiment_own_backend). */
typedef struct loom_backend_context {
  bool validate_only;
} loom_backend_context;
typedef void *(*loom_ctor)(loom_params *params, const void *context, void *user);

/* Nested components, as the built-ins build theirs (a sequential model's
 * "layers", a loss_metric's "criterion"):
 *   loom_params_component(p, "optimizer", LOOM_KIND_OPTIMIZER, model, true, (void **)&opt)
 * builds the component the object at `key` (or "key[i]") describes through
 * the registry: its "type" names a constructor of `kind`, which gets
 * `context`; its keys are checked, and every error carries the nested
 * key's path, line and column. *out is NULL (and 0 returned) when the key
 * is absent and not required. The caller owns *out. */
LOOM_API int loom_params_component(loom_params *p, const char *key, loom_kind kind, const void *context, bool required,
                                   void **out);
/* The same in steps, to read more keys of the component's object (a
 * layer's "name"): build the object `child` (from loom_params_open)
 * describes, then read, loom_params_check_unknown and loom_params_close. */
LOOM_API int loom_params_build(loom_params *child, loom_kind kind, const void *context, void **out);
/* Destroys a component of `kind` (as loom_params_build returned it). */
LOOM_API void loom_component_destroy(loom_kind kind, void *component);

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
