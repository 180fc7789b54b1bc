#include "core/names.h"

#include <stdint.h>
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

bool loom_name_is_utf8(const char *s, size_t *bad) {
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; p[i];) {
    unsigned c = p[i];
    size_t n = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1F : n == 3 ? c & 0x0F : c & 0x07;
    bool ok = n > 0;
    for (size_t k = 1; ok && k < n; k++) {
      ok = (p[i + k] & 0xC0) == 0x80; /* a NUL ends the string here too */
      cp = cp << 6 | (p[i + k] & 0x3F);
    }
    static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (!ok || cp < least[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      if (bad)
        *bad = i;
      return false;
    }
    i += n;
  }
  return true;
}
