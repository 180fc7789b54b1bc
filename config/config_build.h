/* Building an experiment from a config, in two files: config_build.c (the
 * build, its top-level sections and the model) and config_stages.c (the
 * stages). What the two share. */
#ifndef LOOM_CONFIG_CONFIG_BUILD_H
#define LOOM_CONFIG_CONFIG_BUILD_H

#include "config/config_internal.h"

#define LOOM_CONFIG_MAX_NAMED 64

/* A dataset or loader the build made, by its name in the config; used: a
 * stage runs it. */
typedef struct loom_named {
  const char *name;
  void *object;
  bool used;
} loom_named;

/* What the build has made so far. */
typedef struct loom_builder {
  loom_config *c;
  loom_experiment *exp;
  loom_named datasets[LOOM_CONFIG_MAX_NAMED], loaders[LOOM_CONFIG_MAX_NAMED];
  int num_datasets, num_loaders;
  loom_model *model;
} loom_builder;

/* The object at `key` of p (required or not); *obj NULL if absent. */
int loom_config_section(loom_params *p, const char *key, bool required, json_t **obj);
/* The entry of list named `name`, or NULL. */
loom_named *loom_named_find(loom_named *list, int n, const char *name);
/* An error for a name that is not among list's, with "did you mean". */
int loom_named_unknown(loom_params *p, const char *key, const char *what, const char *name, loom_named *list, int n);
/* The model, built for the samples of the first stage's first loader (b->model). */
int loom_config_build_model(loom_builder *b, loom_params *root, loom_loader *first);
/* Every stage of "stages", in order; the first builds the model. */
int loom_config_build_stages(loom_builder *b, loom_params *root);

#endif
