#include "loom/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/names.h"

struct loom_metrics {
  char **names; /* names[0..capacity) stay allocated across clears */
  double *values;
  size_t count;
  size_t allocated; /* slots whose name is allocated */
  size_t capacity;
};

loom_metrics *loom_metrics_create(void) {
  loom_metrics *m = calloc(1, sizeof *m);
  if (!m)
    loom_error_oom("a metrics store");
  return m;
}

void loom_metrics_destroy(loom_metrics *m) {
  if (!m)
    return;
  for (size_t i = 0; i < m->allocated; i++)
    free(m->names[i]);
  free(m->names);
  free(m->values);
  free(m);
}

static int grow(loom_metrics *m) {
  size_t cap = m->capacity ? m->capacity * 2 : 8;
  char **names = realloc(m->names, cap * sizeof *names);
  if (!names)
    return loom_error_oom("metric names");
  m->names = names;
  double *values = realloc(m->values, cap * sizeof *values);
  if (!values)
    return loom_error_oom("metric values");
  m->values = values;
  m->capacity = cap;
  return 0;
}

int loom_metrics_set(loom_metrics *m, const char *name, double value) {
  for (size_t i = 0; i < m->count; i++) {
    if (strcmp(m->names[i], name) == 0) {
      m->values[i] = value;
      return 0;
    }
  }
  /* A new name: the loggers write it to JSON, CSV and TensorBoard as is. */
  size_t bad;
  if (!loom_name_is_utf8(name, &bad))
    return loom_error_set(LOOM_EINVAL, "metric name \"%.*s...\" is not valid UTF-8 (byte %zu); metric names are "
                                       "UTF-8 text",
                          (int)bad, name, bad + 1);
  size_t i = m->count;
  if (i < m->allocated && strcmp(m->names[i], name) != 0) {
    /* The slot held another name before the last clear: reuse its memory
     * only when it fits, which is the common case of a fixed set of names. */
    size_t len = strlen(name);
    if (strlen(m->names[i]) < len) {
      char *copy = malloc(len + 1);
      if (!copy)
        return loom_error_oom("a metric name");
      free(m->names[i]);
      m->names[i] = copy;
    }
    memcpy(m->names[i], name, len + 1);
  } else if (i == m->allocated) {
    if (i == m->capacity && grow(m) < 0)
      return LOOM_ENOMEM;
    size_t len = strlen(name);
    m->names[i] = malloc(len + 1);
    if (!m->names[i])
      return loom_error_oom("a metric name");
    memcpy(m->names[i], name, len + 1);
    m->allocated++;
  }
  m->values[i] = value;
  m->count++;
  return 0;
}

bool loom_metrics_get(const loom_metrics *m, const char *name, double *value) {
  for (size_t i = 0; i < m->count; i++) {
    if (strcmp(m->names[i], name) == 0) {
      if (value)
        *value = m->values[i];
      return true;
    }
  }
  return false;
}

size_t loom_metrics_count(const loom_metrics *m) { return m->count; }
const char *loom_metrics_name(const loom_metrics *m, size_t i) { return i < m->count ? m->names[i] : NULL; }
double loom_metrics_value(const loom_metrics *m, size_t i) { return i < m->count ? m->values[i] : 0.0; }
void loom_metrics_clear(loom_metrics *m) { m->count = 0; }

int loom_metrics_copy(loom_metrics *dst, const loom_metrics *src, const char *prefix, bool append) {
  if (!append)
    loom_metrics_clear(dst);
  char *name = NULL;
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < src->count && rc == 0; i++) {
    const char *key = src->names[i];
    if (prefix) { /* "{prefix}/{name}" whole, however long */
      size_t need = strlen(prefix) + strlen(key) + 2;
      if (need > cap) {
        char *grown = realloc(name, need);
        if (!grown) {
          rc = loom_error_oom("a metric name");
          break;
        }
        name = grown, cap = need;
      }
      snprintf(name, cap, "%s/%s", prefix, src->names[i]);
      key = name;
    }
    rc = loom_metrics_set(dst, key, src->values[i]);
  }
  free(name);
  return rc;
}
