#include "core/names.h"

#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"

int loom_names_copy(loom_names *out, const char *const *names, size_t n, const char *what) {
  *out = (loom_names){0};
  if (n == 0)
    return 0;
  if (!names)
    return loom_error_set(LOOM_EINVAL, "%s: %zu names given as NULL", what, n);
  for (size_t i = 0; i < n; i++)
    if (!names[i] || !*names[i])
      return loom_error_set(LOOM_EINVAL, "%s: name %zu is empty", what, i);
  if (!(out->names = calloc(n, sizeof *out->names)))
    return loom_error_oom(what);
  for (out->count = 0; out->count < n; out->count++)
    if (!(out->names[out->count] = strdup(names[out->count]))) {
      loom_names_free(out);
      return loom_error_oom(what);
    }
  return 0;
}

void loom_names_free(loom_names *list) {
  for (size_t i = 0; i < list->count; i++)
    free(list->names[i]);
  free(list->names);
  *list = (loom_names){0};
}

bool loom_names_has(const loom_names *list, const char *name) {
  for (size_t i = 0; i < list->count; i++)
    if (strcmp(list->names[i], name) == 0)
      return true;
  return false;
}

bool loom_names_contain(const char *const *names, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0)
      return true;
  return false;
}
