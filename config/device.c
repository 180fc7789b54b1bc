/* A device by name: experiment.device in a config, loom_device_open in C.
 * "NAME" or "NAME:INDEX" ("cuda:1") is short for {"type": NAME, "index":
 * INDEX}; the object may hold the backend's other keys ({"type": "cuda",
 * "tf32": true}). NAME is a backend of the registry (LOOM_KIND_BACKEND). */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/registry.h"

#define EXPECTED "a device such as \"cpu\", \"cuda\" or \"cuda:1\" (NAME or NAME:INDEX)"

/* *spec := the object a "NAME[:INDEX]" string stands for (new), or NULL
 * with *bad set when the text is no such name. */
static int spec_of(const char *text, json_t **spec, bool *bad) {
  const char *colon = strchr(text, ':');
  size_t len = colon ? (size_t)(colon - text) : strlen(text);
  char *end = NULL;
  errno = 0;
  long long index = colon ? strtoll(colon + 1, &end, 10) : 0;
  *spec = NULL;
  *bad = len == 0 || (colon && (!isdigit((unsigned char)colon[1]) || *end || errno || index > INT_MAX));
  if (*bad)
    return 0;
  *spec = json_pack("{s:s%}", "type", text, len);
  if (!*spec || (colon && json_object_set_new(*spec, "index", json_integer(index)) < 0)) {
    json_decref(*spec);
    *spec = NULL;
    return loom_error_oom("the device's parameters");
  }
  return 0;
}

int loom_config_device(loom_params *p, const char *key, bool validate_only, loom_backend **out) {
  *out = NULL;
  loom_params_known(p, key);
  json_t *v = json_object_get(p->object, key), *spec = NULL;
  bool bad = false;
  int rc = 0;
  if (json_is_string(v)) {
    if ((rc = spec_of(json_string_value(v), &spec, &bad)) < 0)
      return rc;
    if (bad)
      return loom_params_error(p, key, LOOM_EINVAL, "expected " EXPECTED ", got \"%s\"", json_string_value(v));
    v = spec;
  } else if (!json_is_object(v)) {
    return loom_params_error(p, key, LOOM_EINVAL, "expected " EXPECTED ", or an object {\"type\": \"cuda\", "
                                                  "\"index\": 1, \"tf32\": false}");
  }
  char path[sizeof p->path];
  loom_path_child(path, sizeof path, loom_params_path(p), key);
  loom_params dp;
  loom_params_init(&dp, p->config, v, path);
  loom_backend_context ctx = {.validate_only = validate_only};
  void *made;
  rc = loom_params_build(&dp, LOOM_KIND_BACKEND, &ctx, &made);
  if (rc == 0 && (rc = loom_params_check_unknown(&dp)) < 0)
    loom_component_destroy(LOOM_KIND_BACKEND, made);
  json_decref(spec);
  if (rc == 0 && made != loom_backend_cpu())
    *out = made; /* the CPU's, the process's: host memory, no backend to own */
  return rc;
}

/* The name of the document loom_device_open makes, in its messages. */
#define WHERE "loom_device_open"

int loom_device_open(const char *device, loom_backend **out) {
  *out = NULL;
  if (!device)
    return loom_error_set(LOOM_EINVAL, "loom_device_open: a device name is required");
  json_t *name = json_string(device); /* NULL: not UTF-8 */
  if (!name)
    return loom_error_set(LOOM_EINVAL, "loom_device_open: the device name is not valid UTF-8");
  char *text = json_dumps(name, JSON_ENCODE_ANY);
  char doc[1200];
  int rc = text ? 0 : loom_error_oom("a device name");
  if (rc == 0 && snprintf(doc, sizeof doc, "{\"device\": %s}", text) >= (int)sizeof doc)
    rc = loom_error_set(LOOM_EINVAL, "loom_device_open: the device name is too long");
  loom_config *c = rc == 0 ? loom_config_parse(doc, WHERE) : NULL;
  if (rc == 0 && !c)
    rc = loom_last_error_code();
  if (rc == 0) {
    loom_params p;
    loom_params_init(&p, c, c->root, "");
    rc = loom_config_device(&p, "device", false, out);
  }
  /* Without the made-up document's line and column. */
  const char *msg = loom_last_error();
  if (rc < 0 && strncmp(msg, WHERE ":", strlen(WHERE ":")) == 0) {
    msg += strspn(msg + strlen(WHERE ":"), "0123456789:") + strlen(WHERE ":");
    char kept[LOOM_ERROR_MAX];
    snprintf(kept, sizeof kept, "%s", msg + strspn(msg, " "));
    loom_error_set(rc, "%s", kept);
  }
  loom_config_destroy(c);
  free(text);
  json_decref(name);
  return rc;
}
