/* loom export: a config's trained model as ONNX and as named weights with
 * its architecture. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "deploy/deploy_internal.h"
#include "loom/experiment.h"

/* The resolved config's "model" section as JSON text (the caller frees
 * it), or NULL when the experiment records no config. */
static char *model_section(const loom_experiment *exp) {
  const char *config = loom_experiment_config(exp);
  json_t *root = config ? json_loads(config, 0, NULL) : NULL;
  json_t *model = root ? json_object_get(root, "model") : NULL;
  char *text = model ? json_dumps(model, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
  json_decref(root);
  return text;
}

/* FILE.h5 -> FILE.json (FILE.json beside a name without an extension). */
static void architecture_path(const char *weights, char *out, size_t size) {
  const char *slash = strrchr(weights, '/'), *dot = strrchr(weights, '.');
  size_t stem = dot && (!slash || dot > slash) ? (size_t)(dot - weights) : strlen(weights);
  snprintf(out, size, "%.*s.json", (int)stem, weights);
}

int loom_export_config(loom_config *c, const loom_export_options *o, char *used, size_t used_size) {
  if (!c || !o || (!o->onnx && !o->weights))
    return loom_error_set(LOOM_EINVAL, "loom_export_config: needs a config and an ONNX or weights file to write");
  if (o->onnx && !loom_onnx_available())
    return loom_export_onnx(NULL, o->onnx); /* says why, before any work */
  loom_experiment *exp = NULL;
  int rc = loom_deploy_build(c, o->resume, &exp, used, used_size);
  loom_model *model = loom_config_model(c);
  if (rc == 0 && o->onnx)
    rc = loom_export_onnx(model, o->onnx);
  char *arch = rc == 0 && o->weights ? model_section(exp) : NULL;
  if (rc == 0 && o->weights)
    rc = loom_export_weights(model, arch, o->weights);
  if (rc == 0 && o->weights) {
    char path[4200];
    architecture_path(o->weights, path, sizeof path);
    rc = loom_export_architecture(model, arch, path);
  }
  free(arch);
  loom_experiment_destroy(exp);
  return rc;
}
