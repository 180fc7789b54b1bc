/* Typed, checked access to a component's parameters in a config. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"

void loom_params_init(loom_params *p, loom_config *config, json_t *object, const char *path) {
  memset(p, 0, sizeof *p);
  p->config = config;
  p->object = object;
  snprintf(p->path, sizeof p->path, "%s", path);
}

void loom_params_known(loom_params *p, const char *key) {
  for (int i = 0; i < p->num_asked; i++)
    if (strcmp(p->asked[i], key) == 0)
      return;
  if (p->num_asked < (int)(sizeof p->asked / sizeof p->asked[0]))
    p->asked[p->num_asked++] = key;
}

const char *loom_params_path(const loom_params *p) { return p->path; }
const char *loom_params_base_dir(const loom_params *p) { return p->config->base_dir; }

/* The error serial of this thread's last positioned message (report). */
static _Thread_local unsigned positioned_serial;

bool loom_params_error_is_positioned(void) { return positioned_serial == loom_error_serial(); }

static int report(const loom_params *p, const char *key, bool at_key, int code, const char *fmt, va_list ap) {
  char path[1024], where[1200], msg[LOOM_ERROR_MAX];
  if (key)
    loom_path_child(path, sizeof path, p->path, key);
  else
    snprintf(path, sizeof path, "%s", p->path);
  loom_config_where(p->config, path, at_key, where, sizeof where);
  vsnprintf(msg, sizeof msg, fmt, ap);
  int rc = loom_error_set(code, "%s%s: %s", where, *path ? path : "(top level)", msg);
  positioned_serial = loom_error_serial();
  return rc;
}

int loom_params_error(const loom_params *p, const char *key, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = report(p, key, false, code, fmt, ap);
  va_end(ap);
  return rc;
}

int loom_params_key_error(const loom_params *p, const char *key, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int rc = report(p, key, true, LOOM_EINVAL, fmt, ap);
  va_end(ap);
  return rc;
}

static bool asked(const loom_params *p, const char *key) {
  for (int i = 0; i < p->num_asked; i++)
    if (strcmp(p->asked[i], key) == 0)
      return true;
  return false;
}

int loom_params_check_unknown(const loom_params *p) {
  const char *key;
  json_t *v;
  json_object_foreach(p->object, key, v) {
    if (asked(p, key))
      continue;
    const char *near = loom_did_you_mean(key, p->asked, (size_t)p->num_asked);
    if (near)
      return loom_params_key_error(p, key, "unknown key (did you mean \"%s\"?)", near);
    char list[512] = "";
    for (int i = 0; i < p->num_asked; i++)
      snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? ", " : "", p->asked[i]);
    return loom_params_key_error(p, key, "unknown key (known keys here: %s)", p->num_asked ? list : "none");
  }
  return 0;
}

/* "a string \"x\"", "the number 3.5", ... for messages. */
static void describe(const json_t *v, char *buf, size_t size) {
  switch (json_typeof(v)) {
  case JSON_STRING: snprintf(buf, size, "the string \"%.60s\"", json_string_value(v)); break;
  case JSON_INTEGER: snprintf(buf, size, "the integer %lld", (long long)json_integer_value(v)); break;
  case JSON_REAL: snprintf(buf, size, "the number %.17g", json_real_value(v)); break;
  case JSON_TRUE: snprintf(buf, size, "true"); break;
  case JSON_FALSE: snprintf(buf, size, "false"); break;
  case JSON_NULL: snprintf(buf, size, "null"); break;
  case JSON_ARRAY: snprintf(buf, size, "an array"); break;
  default: snprintf(buf, size, "an object"); break;
  }
}

static int wrong_type(const loom_params *p, const char *key, const json_t *v, const char *want) {
  char got[128];
  describe(v, got, sizeof got);
  return loom_params_error(p, key, LOOM_EINVAL, "expected %s, got %s", want, got);
}

/* The value `key` names: a key of the object, or "name[i]", item i of the
 * array at name. NULL if absent or null. */
static json_t *lookup(const loom_params *p, const char *key) {
  const char *bracket = strchr(key, '[');
  json_t *v;
  if (!bracket) {
    v = json_object_get(p->object, key);
  } else {
    char base[256], *end;
    snprintf(base, sizeof base, "%.*s", (int)(bracket - key), key);
    unsigned long long i = strtoull(bracket + 1, &end, 10);
    v = *end == ']' && !end[1] ? json_array_get(json_object_get(p->object, base), (size_t)i) : NULL;
  }
  return json_is_null(v) ? NULL : v;
}

/* lookup, marking the key (an item's array) as asked for. */
static json_t *ask(loom_params *p, const char *key) {
  const char *bracket = strchr(key, '[');
  if (!bracket) {
    loom_params_known(p, key);
  } else {
    char base[256];
    snprintf(base, sizeof base, "%.*s", (int)(bracket - key), key);
    void *it = json_object_iter_at(p->object, base);
    if (it) /* the object's own key outlives this call; base does not */
      loom_params_known(p, json_object_iter_key(it));
  }
  return lookup(p, key);
}

/* Writes a resolved value (a default, an absolute path) back; steals it
 * (NULL: jansson was out of memory making it). An absent array item stays
 * absent. Out of memory is an error: the resolved config must reproduce
 * the run, and a resume compares it with the checkpoint's. */
static int store(loom_params *p, const char *key, json_t *value) {
  const char *bracket = strchr(key, '[');
  if (!bracket) {
    if (json_object_set_new(p->object, key, value) < 0)
      return loom_params_error(p, key, LOOM_ENOMEM, "out of memory writing the resolved value back");
    return 0;
  }
  char base[256];
  snprintf(base, sizeof base, "%.*s", (int)(bracket - key), key);
  size_t i = (size_t)strtoull(bracket + 1, NULL, 10);
  json_t *array = json_object_get(p->object, base);
  if (json_is_array(array) && i < json_array_size(array))
    return json_array_set_new(array, i, value) < 0
               ? loom_params_error(p, key, LOOM_ENOMEM, "out of memory writing the resolved value back")
               : 0;
  json_decref(value);
  return 0;
}

/* The key of p's object, asked for by nobody, that is nearest to `key`
 * (within loom_did_you_mean's distance), or NULL. */
static const char *typo_of(const loom_params *p, const char *key) {
  const char *unknown[64], *k;
  size_t n = 0;
  json_t *v;
  json_object_foreach(p->object, k, v) {
    if (n < sizeof unknown / sizeof unknown[0] && strcmp(k, key) != 0 && !asked(p, k))
      unknown[n++] = k;
  }
  return loom_did_you_mean(key, unknown, n);
}

int loom_params_missing(const loom_params *p, const char *key, const char *fmt, ...) {
  /* The object's keys are not all asked for yet, so a key near the missing
   * one may only be one a later read would take; the typo is still the
   * likelier story, and the message says the key is required either way. */
  const char *typo = typo_of(p, key);
  if (typo)
    return loom_params_key_error(p, typo, "unknown key (did you mean \"%s\"? it is required)", key);
  char why[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  return loom_params_error(p, key, LOOM_EINVAL, "missing required key (%s)", why);
}

static int missing(const loom_params *p, const char *key, const char *want) {
  return loom_params_missing(p, key, "expected %s", want);
}

bool loom_params_has(loom_params *p, const char *key) { return ask(p, key) != NULL; }
bool loom_params_is_array(loom_params *p, const char *key) { return json_is_array(ask(p, key)); }

int loom_params_array_length(loom_params *p, const char *key, bool required, size_t *n) {
  *n = 0;
  json_t *v = ask(p, key);
  if (!v)
    return required ? missing(p, key, "an array") : 0;
  if (!json_is_array(v))
    return wrong_type(p, key, v, "an array");
  *n = json_array_size(v);
  return 0;
}

int loom_params_strings(loom_params *p, const char *key, bool required, const char ***names, size_t *n) {
  *names = NULL;
  int rc = loom_params_array_length(p, key, required, n);
  if (rc < 0)
    return rc;
  if (*n == 0) /* absent, or [] */
    return json_is_array(lookup(p, key)) ? loom_params_error(p, key, LOOM_EINVAL, "expected a non-empty array of names")
                                         : 0;
  const char **list = calloc(*n, sizeof *list);
  if (!list)
    return loom_error_oom("a list of names");
  for (size_t i = 0; i < *n && rc == 0; i++) {
    char item[160];
    snprintf(item, sizeof item, "%s[%zu]", key, i);
    if ((rc = loom_params_string(p, item, NULL, &list[i])) == 0 && !*list[i])
      rc = loom_params_error(p, item, LOOM_EINVAL, "expected a name, got an empty string");
  }
  if (rc < 0) {
    free(list);
    *n = 0;
    return rc;
  }
  *names = list;
  return 0;
}

int loom_params_file(loom_params *p, const char *key, const char *def, const char **out) {
  const char *given;
  int rc = loom_params_string(p, key, def, &given);
  if (rc < 0)
    return rc;
  char joined[PATH_MAX], absolute[PATH_MAX];
  const char *base = p->config->base_dir;
  if (given[0] == '/' || strcmp(base, ".") == 0)
    snprintf(joined, sizeof joined, "%s", given);
  else
    snprintf(joined, sizeof joined, "%s/%s", base, given);
  if (!realpath(joined, absolute)) /* missing: the reader reports it */
    snprintf(absolute, sizeof absolute, "%s", joined);
  rc = store(p, key, json_string(absolute));
  *out = json_string_value(lookup(p, key));
  return rc;
}

int loom_params_open(loom_params *p, const char *key, bool required, loom_params **child) {
  *child = NULL;
  json_t *v = ask(p, key);
  if (!v)
    return required ? missing(p, key, "an object") : 0;
  if (!json_is_object(v))
    return wrong_type(p, key, v, "an object");
  loom_params *c = malloc(sizeof *c);
  if (!c)
    return loom_error_oom("a config object's parameters");
  char path[sizeof c->path];
  loom_path_child(path, sizeof path, p->path, key);
  loom_params_init(c, p->config, v, path);
  *child = c;
  return 0;
}

void loom_params_close(loom_params *child) { free(child); }

/* Bounds at or past these read as "no upper bound" in messages. */
#define OPEN_INT INT32_MAX
#define OPEN_NUMBER 1e300

static void int_range(char *buf, size_t size, int64_t min, int64_t max) {
  if (max >= OPEN_INT)
    snprintf(buf, size, "an integer >= %lld", (long long)min);
  else
    snprintf(buf, size, "an integer in [%lld, %lld]", (long long)min, (long long)max);
}

static void number_range(char *buf, size_t size, double min, double max) {
  if (max >= OPEN_NUMBER && min <= -OPEN_NUMBER)
    snprintf(buf, size, "a number");
  else if (max >= OPEN_NUMBER)
    snprintf(buf, size, "a number >= %g", min);
  else
    snprintf(buf, size, "a number in [%g, %g]", min, max);
}

int loom_params_int(loom_params *p, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out) {
  json_t *v = ask(p, key);
  char want[96];
  int_range(want, sizeof want, min, max);
  if (!v) {
    if (def == LOOM_REQUIRED_INT)
      return missing(p, key, want);
    *out = def;
    return store(p, key, json_integer(def));
  }
  if (!json_is_integer(v))
    return wrong_type(p, key, v, want);
  int64_t x = json_integer_value(v);
  if (x < min || x > max)
    return loom_params_error(p, key, LOOM_EINVAL, "%lld is out of range (expected %s)", (long long)x, want);
  *out = x;
  return 0;
}

int loom_params_number(loom_params *p, const char *key, double def, double min, double max, double *out) {
  json_t *v = ask(p, key);
  char want[96];
  number_range(want, sizeof want, min, max);
  if (!v) {
    if (isnan(def))
      return missing(p, key, want);
    *out = def;
    return store(p, key, json_real(def));
  }
  if (!json_is_number(v))
    return wrong_type(p, key, v, want);
  double x = json_number_value(v);
  if (!(x >= min && x <= max))
    return loom_params_error(p, key, LOOM_EINVAL, "%g is out of range (expected %s)", x, want);
  *out = x;
  return 0;
}

int loom_params_bool(loom_params *p, const char *key, bool def, bool *out) {
  json_t *v = ask(p, key);
  if (!v) {
    *out = def;
    return store(p, key, json_boolean(def));
  }
  if (!json_is_boolean(v))
    return wrong_type(p, key, v, "true or false");
  *out = json_is_true(v);
  return 0;
}

int loom_params_string(loom_params *p, const char *key, const char *def, const char **out) {
  json_t *v = ask(p, key);
  if (!v) {
    if (!def)
      return missing(p, key, "a string");
    int rc = store(p, key, json_string(def));
    *out = lookup(p, key) ? json_string_value(lookup(p, key)) : def;
    return rc;
  }
  if (!json_is_string(v))
    return wrong_type(p, key, v, "a string");
  *out = json_string_value(v);
  return 0;
}

int loom_params_choice(loom_params *p, const char *key, const char *def, const char *const *choices, int *index) {
  size_t n = 0;
  char list[256] = "";
  for (; choices[n]; n++)
    snprintf(list + strlen(list), sizeof list - strlen(list), "%s\"%s\"", n ? ", " : "", choices[n]);
  const char *s;
  char want[300];
  snprintf(want, sizeof want, "one of %s", list);
  json_t *v = ask(p, key);
  if (!v && !def)
    return missing(p, key, want);
  if (v && !json_is_string(v))
    return wrong_type(p, key, v, want);
  if (!v && store(p, key, json_string(def)) < 0)
    return LOOM_ENOMEM;
  s = v ? json_string_value(v) : def;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(s, choices[i]) == 0) {
      *index = (int)i;
      return 0;
    }
  }
  const char *near = loom_did_you_mean_value(s, choices, n);
  if (near)
    return loom_params_error(p, key, LOOM_EINVAL, "\"%s\" is not %s (did you mean \"%s\"?)", s, want, near);
  return loom_params_error(p, key, LOOM_EINVAL, "\"%s\" is not %s", s, want);
}

/* Reads an array of numbers (integers when `integers`). */
static int read_array(loom_params *p, const char *key, bool integers, double min, double max, double *out,
                      size_t out_max, size_t *n, bool *present) {
  json_t *v = ask(p, key);
  const char *want = integers ? "an array of integers" : "an array of numbers";
  *present = v != NULL;
  if (!v)
    return 0;
  if (!json_is_array(v))
    return wrong_type(p, key, v, want);
  if (json_array_size(v) > out_max)
    return loom_params_error(p, key, LOOM_EINVAL, "has %zu items; at most %zu are allowed", json_array_size(v), out_max);
  size_t i;
  json_t *item;
  json_array_foreach(v, i, item) {
    char sub[64];
    snprintf(sub, sizeof sub, "%s[%zu]", key, i);
    if (integers ? !json_is_integer(item) : !json_is_number(item))
      return wrong_type(p, sub, item, integers ? "an integer" : "a number");
    out[i] = json_number_value(item);
    char range[96];
    if (integers)
      int_range(range, sizeof range, (int64_t)min, max >= 9e18 ? INT64_MAX : (int64_t)max);
    else
      number_range(range, sizeof range, min, max);
    if (!(out[i] >= min && out[i] <= max))
      return loom_params_error(p, sub, LOOM_EINVAL, "%g is out of range (expected %s)", out[i], range);
  }
  *n = json_array_size(v);
  return 0;
}

int loom_params_int_array(loom_params *p, const char *key, const int64_t *def, size_t def_n, int64_t min, int64_t max,
                          int64_t *out, size_t out_max, size_t *n) {
  double tmp[256];
  bool present;
  int rc = read_array(p, key, true, (double)min, (double)max, tmp, out_max < 256 ? out_max : 256, n, &present);
  if (rc < 0)
    return rc;
  if (!present) {
    if (!def)
      return missing(p, key, "an array of integers");
    json_t *a = json_array();
    bool full = a != NULL;
    for (size_t i = 0; i < def_n; i++)
      full = full && json_array_append_new(a, json_integer(def[i])) == 0, out[i] = def[i];
    if (!full) {
      json_decref(a);
      a = NULL;
    }
    if (store(p, key, a) < 0)
      return LOOM_ENOMEM;
    *n = def_n;
    return 0;
  }
  for (size_t i = 0; i < *n; i++)
    out[i] = (int64_t)tmp[i];
  return 0;
}

int loom_params_number_array(loom_params *p, const char *key, const double *def, size_t def_n, double *out,
                             size_t out_max, size_t *n) {
  bool present;
  int rc = read_array(p, key, false, -HUGE_VAL, HUGE_VAL, out, out_max, n, &present);
  if (rc < 0 || present)
    return rc;
  if (!def)
    return missing(p, key, "an array of numbers");
  json_t *a = json_array();
  bool full = a != NULL;
  for (size_t i = 0; i < def_n; i++)
    full = full && json_array_append_new(a, json_real(def[i])) == 0, out[i] = def[i];
  if (!full) {
    json_decref(a);
    a = NULL;
  }
  if (store(p, key, a) < 0)
    return LOOM_ENOMEM;
  *n = def_n;
  return 0;
}
