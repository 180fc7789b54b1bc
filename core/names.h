/* A copied list of names (loader names of an event filter, layers of a
 * parameter group): the public API takes lists as arrays of strings. */
#ifndef LOOM_CORE_NAMES_H
#define LOOM_CORE_NAMES_H

#include <stdbool.h>
#include <stddef.h>

typedef struct loom_names {
  char **names;
  size_t count;
} loom_names;

/* *out = a copy of names[0, n); on failure *out is empty and an error is
 * set that names `what`. Any old contents of *out are not freed. */
int loom_names_copy(loom_names *out, const char *const *names, size_t n, const char *what);
void loom_names_free(loom_names *list);
/* Whether `name` is in names[0, n), or in the list. */
bool loom_names_contain(const char *const *names, size_t n, const char *name);
bool loom_names_has(const loom_names *list, const char *name);
/* Whether `s` is valid UTF-8 (no overlong forms, surrogates or code points
 * past U+10FFFF: what JSON writers accept); if not, *bad (when given) is
 * the offset of the first byte that is not. Names that reach metrics.jsonl,
 * metrics.csv and TensorBoard (metrics, loaders, stages) must be. */
bool loom_name_is_utf8(const char *s, size_t *bad);

#endif
