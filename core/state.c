/* Typed key/value records: what every component saves into a checkpoint. */
#include "core/state_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/array.h"
#include "core/error_internal.h"

loom_state *loom_state_create(void) {
  loom_state *s = calloc(1, sizeof *s);
  if (!s)
    loom_error_oom("a state");
  return s;
}

static void entry_free(loom_state_entry *e) {
  free(e->key);
  free(e->str);
  free(e->data);
}

void loom_state_destroy(loom_state *s) {
  if (!s)
    return;
  for (size_t i = 0; i < s->count; i++)
    entry_free(&s->entries[i]);
  free(s->entries);
  free(s);
}

const loom_state_entry *loom_state_find(const loom_state *s, const char *key) {
  for (size_t i = 0; i < s->count; i++)
    if (strcmp(s->entries[i].key, key) == 0)
      return &s->entries[i];
  return NULL;
}

/* A fresh entry for key (replacing an old one), or NULL on OOM. */
static loom_state_entry *slot(loom_state *s, const char *key, loom_value_type type) {
  loom_state_entry *e = (loom_state_entry *)loom_state_find(s, key);
  if (e) {
    free(e->str);
    free(e->data);
    e->str = NULL;
    e->data = NULL;
  } else {
    if (loom_array_reserve((void **)&s->entries, &s->cap, s->count + 1, sizeof *s->entries, "a state entry") < 0)
      return NULL;
    char *copy = strdup(key);
    if (!copy) {
      loom_error_oom("a state key");
      return NULL;
    }
    e = &s->entries[s->count++];
    memset(e, 0, sizeof *e);
    e->key = copy;
  }
  e->type = type;
  e->n = 0;
  return e;
}

int loom_state_set_i64(loom_state *s, const char *key, int64_t value) {
  loom_state_entry *e = slot(s, key, LOOM_VALUE_I64);
  if (!e)
    return LOOM_ENOMEM;
  e->i64 = value;
  return 0;
}

int loom_state_set_f64(loom_state *s, const char *key, double value) {
  loom_state_entry *e = slot(s, key, LOOM_VALUE_F64);
  if (!e)
    return LOOM_ENOMEM;
  e->f64 = value;
  return 0;
}

int loom_state_set_str(loom_state *s, const char *key, const char *value) {
  loom_state_entry *e = slot(s, key, LOOM_VALUE_STR);
  if (!e)
    return LOOM_ENOMEM;
  if (!(e->str = strdup(value ? value : "")))
    return loom_error_oom("a state string");
  return 0;
}

size_t loom_value_size(loom_value_type type) {
  return type == LOOM_VALUE_F32_ARRAY ? sizeof(float) : sizeof(double);
}

int loom_state_set_array(loom_state *s, const char *key, loom_value_type type, const void *values, size_t n) {
  loom_state_entry *e = slot(s, key, type);
  if (!e)
    return LOOM_ENOMEM;
  size_t bytes = n * loom_value_size(type);
  if (!(e->data = malloc(bytes ? bytes : 1)))
    return loom_error_oom("a state array");
  if (bytes)
    memcpy(e->data, values, bytes);
  e->n = n;
  return 0;
}

int loom_state_set_f32_array(loom_state *s, const char *key, const float *v, size_t n) {
  return loom_state_set_array(s, key, LOOM_VALUE_F32_ARRAY, v, n);
}
int loom_state_set_f64_array(loom_state *s, const char *key, const double *v, size_t n) {
  return loom_state_set_array(s, key, LOOM_VALUE_F64_ARRAY, v, n);
}
int loom_state_set_i64_array(loom_state *s, const char *key, const int64_t *v, size_t n) {
  return loom_state_set_array(s, key, LOOM_VALUE_I64_ARRAY, v, n);
}

int loom_state_copy(loom_state *to, const loom_state *from) {
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < from->count; i++) {
    const loom_state_entry *e = &from->entries[i];
    switch (e->type) {
    case LOOM_VALUE_I64: rc = loom_state_set_i64(to, e->key, e->i64); break;
    case LOOM_VALUE_F64: rc = loom_state_set_f64(to, e->key, e->f64); break;
    case LOOM_VALUE_STR: rc = loom_state_set_str(to, e->key, e->str); break;
    default: rc = loom_state_set_array(to, e->key, e->type, e->data, e->n); break;
    }
  }
  return rc;
}

static const char *type_name(loom_value_type t) {
  static const char *names[] = {"an integer", "a double", "a string", "a float32 array", "a float64 array",
                                "an int64 array"};
  return names[t];
}

static const loom_state_entry *typed(const loom_state *s, const char *key, loom_value_type type, int *rc) {
  const loom_state_entry *e = loom_state_find(s, key);
  if (!e)
    *rc = loom_error_set(LOOM_ENOENT, "saved state has no \"%s\"", key);
  else if (e->type != type)
    *rc = loom_error_set(LOOM_EFORMAT, "saved state \"%s\" is %s, expected %s", key, type_name(e->type),
                         type_name(type));
  else
    *rc = 0;
  return *rc ? NULL : e;
}

int loom_state_get_i64(const loom_state *s, const char *key, int64_t *value) {
  int rc;
  const loom_state_entry *e = typed(s, key, LOOM_VALUE_I64, &rc);
  if (e)
    *value = e->i64;
  return rc;
}

int loom_state_get_f64(const loom_state *s, const char *key, double *value) {
  int rc;
  const loom_state_entry *e = typed(s, key, LOOM_VALUE_F64, &rc);
  if (e)
    *value = e->f64;
  return rc;
}

int loom_state_get_str(const loom_state *s, const char *key, const char **value) {
  int rc;
  const loom_state_entry *e = typed(s, key, LOOM_VALUE_STR, &rc);
  if (e)
    *value = e->str;
  return rc;
}

static int get_array(const loom_state *s, const char *key, loom_value_type type, void *out, size_t n) {
  int rc;
  const loom_state_entry *e = typed(s, key, type, &rc);
  if (!e)
    return rc;
  if (e->n != n)
    return loom_error_set(LOOM_EFORMAT, "saved array \"%s\" has %zu values, expected %zu (was it saved from a "
                                        "different model or configuration?)",
                          key, e->n, n);
  if (n)
    memcpy(out, e->data, n * loom_value_size(type));
  return 0;
}

int loom_state_get_f32_array(const loom_state *s, const char *key, float *out, size_t n) {
  return get_array(s, key, LOOM_VALUE_F32_ARRAY, out, n);
}
int loom_state_get_f64_array(const loom_state *s, const char *key, double *out, size_t n) {
  return get_array(s, key, LOOM_VALUE_F64_ARRAY, out, n);
}
int loom_state_get_i64_array(const loom_state *s, const char *key, int64_t *out, size_t n) {
  return get_array(s, key, LOOM_VALUE_I64_ARRAY, out, n);
}

size_t loom_state_array_length(const loom_state *s, const char *key) {
  const loom_state_entry *e = loom_state_find(s, key);
  return (e && e->type >= LOOM_VALUE_F32_ARRAY) ? e->n : 0;
}

bool loom_state_has(const loom_state *s, const char *key) { return loom_state_find(s, key) != NULL; }
size_t loom_state_count(const loom_state *s) { return s->count; }
const char *loom_state_key(const loom_state *s, size_t i) { return i < s->count ? s->entries[i].key : NULL; }
loom_value_type loom_state_type(const loom_state *s, size_t i) { return s->entries[i].type; }
