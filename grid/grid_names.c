/* Experiment names: "lr=0.003,layout=cna" from the options whose value
 * changes over the grid, each by its key's last part (the whole key when
 * two such parts are alike), made safe as one directory name and told
 * apart by "~2", "~3" when two points still come out the same. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "grid/grid_internal.h"

char *loom_grid_value_text(const json_t *value, bool for_set) {
  if (json_is_string(value) && !for_set)
    return strdup(json_string_value(value));
  if (json_is_real(value) && isfinite(json_real_value(value))) {
    char buf[64];
    loom_grid_format_number(json_real_value(value), buf, sizeof buf - 2);
    if (!strpbrk(buf, ".eEn"))
      strcat(buf, ".0"); /* stays a real when it reads back as JSON */
    return strdup(buf);
  }
  return json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(17));
}

/* Whether `key` takes two values over the grid (or is absent somewhere). */
static bool varies(const loom_grid *g, const char *key) {
  const json_t *first = json_object_get(g->points[0].options, key);
  for (size_t i = 1; i < g->num_points; i++) {
    const json_t *v = json_object_get(g->points[i].options, key);
    if (!first || !v || !json_equal(first, v))
      return true;
  }
  return !first;
}

/* "stages.train.callbacks[3].action" -> "action". */
static void last_part(char *out, size_t size, const char *key) {
  const char *dot = strrchr(key, '.');
  snprintf(out, size, "%s", dot ? dot + 1 : key);
  char *bracket = strchr(out, '[');
  if (bracket && bracket != out)
    *bracket = '\0';
}

/* A name for a directory: path separators and anything a shell or a file
 * system minds become '_'; ".." cannot result from a leading '.'. */
static void sanitize(char *s) {
  for (char *c = s; *c; c++)
    if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._=,+-~", *c))
      *c = '_';
  if (s[0] == '.')
    s[0] = '_';
}

/* The short label of `key` among the grid's varying keys. */
static void label(const json_t *varying, const char *key, char *out, size_t size) {
  last_part(out, size, key);
  const char *other;
  json_t *unused;
  json_object_foreach((json_t *)varying, other, unused) {
    char part[256];
    last_part(part, sizeof part, other);
    if (strcmp(other, key) != 0 && strcmp(part, out) == 0) {
      snprintf(out, size, "%s", key);
      return;
    }
  }
}

static int name_point(loom_grid *g, grid_point *pt, const json_t *varying) {
  char name[1000] = "";
  size_t len = 0;
  const char *key;
  json_t *value;
  json_object_foreach(pt->options, key, value) {
    if (!json_object_get(varying, key))
      continue;
    char lab[256], *text = loom_grid_value_text(value, false);
    if (!text)
      return loom_error_oom("an experiment name");
    label(varying, key, lab, sizeof lab);
    len += (size_t)snprintf(name + len, len < sizeof name ? sizeof name - len : 0, "%s%s=%s", len ? "," : "", lab,
                            text);
    free(text);
  }
  if (len >= 200) /* a directory name stays well under NAME_MAX */
    name[200] = '\0';
  if (!name[0])
    snprintf(name, sizeof name, "base");
  sanitize(name);
  /* Told apart from an earlier point with the same name. */
  char unique[1100];
  snprintf(unique, sizeof unique, "%s", name);
  for (int n = 2;; n++) {
    bool taken = false;
    for (grid_point *q = g->points; q < pt && !taken; q++)
      taken = strcmp(q->name, unique) == 0;
    if (!taken)
      break;
    snprintf(unique, sizeof unique, "%s~%d", name, n);
  }
  return (pt->name = strdup(unique)) ? 0 : loom_error_oom("an experiment name");
}

int loom_grid_name_points(loom_grid *g) {
  json_t *varying = json_object();
  if (!varying)
    return loom_error_oom("experiment names");
  for (size_t i = 0; i < g->num_points; i++) {
    const char *key;
    json_t *value;
    json_object_foreach(g->points[i].options, key, value) if (varies(g, key)) json_object_set(varying, key, json_true());
  }
  int rc = 0;
  for (size_t i = 0; i < g->num_points && rc == 0; i++)
    rc = name_point(g, &g->points[i], varying);
  json_decref(varying);
  return rc;
}
