/* A grid's results: reading results*.jsonl, filtering, grouping,
 * aggregating and sorting (loom/grid_results.h). */
#define _DEFAULT_SOURCE /* scandir, alphasort */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "grid/results_internal.h"

/* --- reading --- */

/* Adds the complete lines of `path` (a last one without its newline is being
 * written: left out) to r, a later row of an id replacing the earlier. */
static int read_rows(loom_grid_results *r, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "grid results: cannot read %s: %s", path,
                          strerror(errno));
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  int rc = 0;
  for (long no = 1; rc == 0 && (len = getline(&line, &cap, f)) > 0; no++) {
    if (line[len - 1] != '\n')
      break; /* still being written */
    if (strspn(line, " \t\r\n") == (size_t)len)
      continue;
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    const char *id = json_string_value(json_object_get(row, "id"));
    if (!json_is_object(row) || !id) {
      rc = loom_error_set(LOOM_EFORMAT, "grid results: %s:%ld: %s", path, no,
                          row ? "not a JSON object with a string \"id\"" : err.text);
    } else {
      json_t *at = json_object_get(r->index, id);
      if (at)
        rc = json_array_set(r->rows, (size_t)json_integer_value(at), row);
      else
        rc = json_object_set_new(r->index, id, json_integer((json_int_t)json_array_size(r->rows))) ||
             json_array_append(r->rows, row);
      if (rc)
        rc = loom_error_oom("a grid results row");
    }
    json_decref(row);
  }
  free(line);
  fclose(f);
  return rc;
}

static int is_shard(const struct dirent *e) { return fnmatch("results-shard-*-of-*.jsonl", e->d_name, 0) == 0; }

int loom_grid_results_load(const char *dir, loom_grid_results **out) {
  *out = NULL;
  loom_grid_results *r = calloc(1, sizeof *r);
  if (!r || !(r->rows = json_array()) || !(r->index = json_object())) {
    loom_grid_results_destroy(r);
    return loom_error_oom("the grid results");
  }
  char path[4096];
  int files = 0, rc = 0;
  snprintf(path, sizeof path, "%s/results.jsonl", dir);
  rc = read_rows(r, path);
  if (rc == 0)
    files++;
  else if (rc == LOOM_ENOENT)
    rc = 0;
  struct dirent **shards = NULL;
  int n = rc == 0 ? scandir(dir, &shards, is_shard, alphasort) : 0;
  if (n < 0)
    rc = loom_error_set(LOOM_ENOENT, "grid results: cannot read the directory %s: %s", dir, strerror(errno));
  for (int i = 0; i < n; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, shards[i]->d_name);
    if (rc == 0 && (rc = read_rows(r, path)) == 0)
      files++;
    free(shards[i]);
  }
  free(shards);
  if (rc == 0 && files == 0)
    rc = loom_error_set(LOOM_ENOENT,
                        "grid results: %s has no results.jsonl nor results-shard-*-of-*.jsonl (is it a grid's "
                        "directory, and has an experiment finished?)",
                        dir);
  if (rc < 0) {
    loom_grid_results_destroy(r);
    return rc;
  }
  *out = r;
  return 0;
}

void loom_grid_results_destroy(loom_grid_results *r) {
  if (!r)
    return;
  json_decref(r->rows);
  json_decref(r->index);
  free(r);
}

size_t loom_grid_results_count(const loom_grid_results *r) { return json_array_size(r->rows); }

void loom_grid_format_number(double x, char *buf, size_t size) {
  for (int digits = 1; digits <= 17; digits++) {
    snprintf(buf, size, "%.*g", digits, x);
    if (strtod(buf, NULL) == x)
      return;
  }
}

/* --- keys --- */

/* Adds each key of `obj` not yet in `keys` (an array of strings), in order. */
static void union_keys(json_t *keys, const json_t *obj) {
  const char *k;
  json_t *v;
  json_object_foreach((json_t *)obj, k, v) {
    bool seen = false;
    size_t i;
    json_t *x;
    json_array_foreach(keys, i, x) seen |= strcmp(json_string_value(x), k) == 0;
    if (!seen)
      json_array_append_new(keys, json_string(k));
  }
}

json_t *loom_grid_option_keys(const json_t *rows) {
  json_t *keys = json_array();
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) union_keys(keys, json_object_get(row, "options"));
  return keys;
}

/* True when `key` is `full` or ends it after a '.' ("lr" of "a.optimizer.lr"). */
static bool key_ends(const char *full, const char *key) {
  size_t n = strlen(full), k = strlen(key);
  return n == k ? strcmp(full, key) == 0 : n > k && full[n - k - 1] == '.' && strcmp(full + n - k, key) == 0;
}

/* The option key `key` names (itself, or the one option key path it ends),
 * or NULL: none, or several (an error says which). */
static const char *resolve_option(const json_t *options, const char *key, const char *what, int *rc) {
  const char *found = NULL;
  size_t i, count = 0;
  json_t *x;
  json_array_foreach(options, i, x) {
    if (strcmp(json_string_value(x), key) == 0)
      return json_string_value(x);
  }
  json_array_foreach(options, i, x) {
    if (key_ends(json_string_value(x), key))
      found = json_string_value(x), count++;
  }
  if (count > 1)
    *rc = loom_error_set(LOOM_EINVAL, "grid results: %s \"%s\" could be any of several options: write the whole key path",
                         what, key);
  return count == 1 ? found : NULL;
}

/* Where a key's value is in a row: an option, a field of the row, or a
 * final metric. */
typedef struct key_ref {
  enum { KEY_OPTION, KEY_FIELD, KEY_METRIC } kind;
  const char *name;
} key_ref;

static bool any_metric(const json_t *rows, const char *name) {
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) {
    if (json_object_get(json_object_get(row, "final"), name))
      return true;
  }
  return false;
}

static void list_options(char *out, size_t size, const json_t *options) {
  size_t i, n = 0;
  json_t *x;
  out[0] = '\0';
  json_array_foreach(options, i, x) {
    int w = snprintf(out + n, size - n, "%s%s", i ? ", " : "", json_string_value(x));
    if (w < 0 || (size_t)w >= size - n)
      break;
    n += (size_t)w;
  }
}

static int resolve_key(const json_t *rows, const json_t *options, const char *key, bool metrics_too, const char *what,
                       key_ref *out) {
  int rc = 0;
  const char *option = resolve_option(options, key, what, &rc);
  if (rc < 0)
    return rc;
  if (option) {
    *out = (key_ref){KEY_OPTION, option};
    return 0;
  }
  static const char *const fields[] = {"rep", "status", "seed", "id"};
  for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
    if (strcmp(key, fields[i]) == 0) {
      *out = (key_ref){KEY_FIELD, fields[i]};
      return 0;
    }
  if (metrics_too && any_metric(rows, key)) {
    *out = (key_ref){KEY_METRIC, key};
    return 0;
  }
  char list[2048];
  list_options(list, sizeof list, options);
  return loom_error_set(LOOM_EINVAL, "grid results: %s \"%s\" is no option%s of the grid (options: %s; also rep, "
                                     "status, seed%s)",
                        what, key, metrics_too ? " nor final metric" : "", list[0] ? list : "none",
                        metrics_too ? ", and the final metrics" : "");
}

static json_t *key_value(const json_t *row, const key_ref *k) {
  switch (k->kind) {
  case KEY_OPTION:
    return json_object_get(json_object_get(row, "options"), k->name);
  case KEY_FIELD:
    return json_object_get(row, k->name);
  default:
    return json_object_get(json_object_get(row, "final"), k->name);
  }
}

/* --- filters --- */

typedef struct filter {
  key_ref key;
  enum filter_op { OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE } op;
  const char *text; /* the value as written */
  double number;
  bool is_number;
  char name[256]; /* the key as written (a metric's key.name points here) */
} filter;

static int parse_filter(const json_t *rows, const json_t *options, const char *spec, filter *f) {
  char *key = f->name;
  size_t size = sizeof f->name;
  static const struct {
    const char *s;
    enum filter_op op;
  } ops[] = {{"!=", OP_NE}, {"<=", OP_LE}, {">=", OP_GE}, {"=", OP_EQ}, {"<", OP_LT}, {">", OP_GT}};
  size_t at = strcspn(spec, "!=<>");
  for (size_t i = 0; spec[at] && i < sizeof ops / sizeof *ops; i++)
    if (strncmp(spec + at, ops[i].s, strlen(ops[i].s)) == 0) {
      f->op = ops[i].op;
      f->text = spec + at + strlen(ops[i].s);
      break;
    }
  if (!spec[at] || at == 0 || at >= size || !f->text || !f->text[0])
    return loom_error_set(LOOM_EINVAL, "grid results: --filter \"%s\": write KEY=VALUE, KEY!=VALUE, KEY<V, KEY<=V, "
                                       "KEY>V or KEY>=V (e.g. lr=0.003, valid/accuracy>0.8)",
                          spec);
  memcpy(key, spec, at);
  key[at] = '\0';
  char *end;
  f->number = strtod(f->text, &end);
  f->is_number = end != f->text && *end == '\0';
  if (f->op != OP_EQ && f->op != OP_NE && !f->is_number)
    return loom_error_set(LOOM_EINVAL, "grid results: --filter \"%s\": %s compares numbers, and \"%s\" is not one",
                          spec, f->op == OP_LT ? "<" : f->op == OP_LE ? "<=" : f->op == OP_GT ? ">" : ">=", f->text);
  return resolve_key(rows, options, key, true, "--filter key", &f->key);
}

/* The written value without surrounding double quotes. */
static bool text_equals(const char *written, const char *s) {
  size_t n = strlen(written);
  if (n >= 2 && written[0] == '"' && written[n - 1] == '"')
    return strlen(s) == n - 2 && strncmp(written + 1, s, n - 2) == 0;
  return strcmp(written, s) == 0;
}

static bool passes(const json_t *row, const filter *f) {
  json_t *v = key_value(row, &f->key);
  if (!v)
    return false;
  if (f->op == OP_EQ || f->op == OP_NE) {
    bool eq;
    if (json_is_number(v))
      eq = f->is_number && json_number_value(v) == f->number;
    else if (json_is_string(v))
      eq = text_equals(f->text, json_string_value(v));
    else if (json_is_boolean(v))
      eq = strcmp(f->text, json_is_true(v) ? "true" : "false") == 0;
    else
      eq = json_is_null(v) && strcmp(f->text, "null") == 0;
    return f->op == OP_EQ ? eq : !eq;
  }
  if (!json_is_number(v))
    return false;
  double x = json_number_value(v);
  switch (f->op) {
  case OP_LT:
    return x < f->number;
  case OP_LE:
    return x <= f->number;
  case OP_GT:
    return x > f->number;
  default:
    return x >= f->number;
  }
}

/* --- the table --- */

static void stat_add(loom_grid_stat *s, double *m2, double x) {
  /* Welford: one pass, no cancellation. */
  s->n++;
  double d = x - s->mean;
  s->mean += d / (double)s->n;
  *m2 += d * (x - s->mean);
}

static int group_of(loom_grid_table *t, json_t *values_json) {
  for (size_t g = 0; g < t->num_groups; g++)
    if (json_equal(t->groups[g].key, values_json))
      return (int)g;
  if (loom_array_reserve((void **)&t->groups, &t->cap_groups, t->num_groups + 1, sizeof *t->groups, "groups") < 0)
    return LOOM_ENOMEM;
  grid_group *g = &t->groups[t->num_groups];
  *g = (grid_group){.key = json_incref(values_json)};
  g->values = calloc(t->num_keys ? t->num_keys : 1, sizeof *g->values);
  g->stats = calloc(t->num_metrics ? t->num_metrics : 1, sizeof *g->stats);
  g->m2 = calloc(t->num_metrics ? t->num_metrics : 1, sizeof *g->m2);
  if (!g->values || !g->stats || !g->m2) {
    free(g->values), free(g->stats), free(g->m2);
    json_decref(g->key);
    return loom_error_oom("a group");
  }
  for (size_t k = 0; k < t->num_keys; k++) {
    g->values[k] = loom_grid_value_text(json_array_get(values_json, k), false);
    if (!g->values[k]) {
      t->num_groups++; /* freed with the table */
      return loom_error_oom("a group's value");
    }
  }
  for (size_t m = 0; m < t->num_metrics; m++)
    g->stats[m].mean = NAN;
  return (int)t->num_groups++;
}

static int add_row(loom_grid_table *t, const json_t *row, const key_ref *keys) {
  json_t *values = json_array();
  for (size_t k = 0; values && k < t->num_keys; k++) {
    json_t *v = key_value(row, &keys[k]);
    json_array_append(values, v ? v : json_null());
  }
  int g = values ? group_of(t, values) : loom_error_oom("a group's values");
  json_decref(values);
  if (g < 0)
    return g;
  grid_group *grp = &t->groups[g];
  const char *status = json_string_value(json_object_get(row, "status"));
  bool done = status && strcmp(status, "done") == 0;
  if (done)
    grp->done++;
  else if (status && strcmp(status, "failed") == 0)
    grp->failed++;
  else
    grp->other++;
  json_t *final = json_object_get(row, "final");
  for (size_t m = 0; done && m < t->num_metrics; m++) {
    json_t *v = json_object_get(final, t->metrics[m]);
    if (json_is_number(v)) {
      if (grp->stats[m].n == 0)
        grp->stats[m].mean = 0;
      stat_add(&grp->stats[m], &grp->m2[m], json_number_value(v));
    }
  }
  return 0;
}

static void finish_stats(loom_grid_table *t) {
  for (size_t g = 0; g < t->num_groups; g++)
    for (size_t m = 0; m < t->num_metrics; m++) {
      loom_grid_stat *s = &t->groups[g].stats[m];
      s->std = s->n >= 2 ? sqrt(t->groups[g].m2[m] / (double)(s->n - 1)) : NAN;
    }
}

/* The sort metric and its direction, from --metric and the rows. */
static int sort_metric(loom_grid_table *t, const json_t *rows, const char *spec) {
  const char *colon = spec ? strrchr(spec, ':') : NULL;
  int dir = -1; /* -1: not given */
  if (colon && (strcmp(colon, ":min") == 0 || strcmp(colon, ":max") == 0))
    dir = strcmp(colon, ":min") == 0;
  else
    colon = NULL;
  size_t i;
  json_t *row;
  const char *name = NULL;
  if (spec && !(t->sort = strndup(spec, colon ? (size_t)(colon - spec) : strlen(spec))))
    return loom_error_oom("the sort metric");
  json_array_foreach(rows, i, row) {
    json_t *main = json_object_get(row, "main_metric");
    name = json_string_value(json_object_get(main, "name"));
    const char *direction = json_string_value(json_object_get(main, "direction"));
    if (!name || !direction)
      continue;
    if (!t->sort && !(t->sort = strdup(name)))
      return loom_error_oom("the sort metric");
    if (dir < 0 && strcmp(t->sort, name) == 0)
      dir = strcmp(direction, "min") == 0;
  }
  t->minimize = dir != 0; /* min unless said otherwise */
  if (t->sort && spec && !any_metric(rows, t->sort))
    return loom_error_set(LOOM_EINVAL, "grid results: --metric \"%s\": no row has the final metric \"%s\"", spec,
                          t->sort);
  return 0;
}

/* Every final metric of the kept rows, the sort metric first. */
static int collect_metrics(loom_grid_table *t, const json_t *rows) {
  json_t *names = json_array();
  if (!names)
    return loom_error_oom("the metrics");
  if (t->sort)
    json_array_append_new(names, json_string(t->sort));
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) union_keys(names, json_object_get(row, "final"));
  t->metrics = calloc(json_array_size(names) + 1, sizeof *t->metrics);
  int rc = t->metrics ? 0 : loom_error_oom("the metrics");
  json_array_foreach(names, i, row) {
    if (rc == 0 && !(t->metrics[t->num_metrics++] = strdup(json_string_value(row))))
      rc = loom_error_oom("a metric's name");
  }
  json_decref(names);
  return rc;
}

/* a before b: the better sort metric first, groups without it last, else
 * the order first seen. */
static bool before(const loom_grid_table *t, const grid_group *a, const grid_group *b) {
  const loom_grid_stat *x = &a->stats[0], *y = &b->stats[0];
  if (t->sort && (x->n > 0) != (y->n > 0))
    return x->n > 0;
  if (t->sort && x->n > 0 && x->mean != y->mean)
    return (x->mean < y->mean) == t->minimize;
  return a->order < b->order;
}

/* Insertion sort: stable, and a table has few groups. */
static void sort_groups(loom_grid_table *t) {
  for (size_t i = 1; i < t->num_groups; i++) {
    grid_group g = t->groups[i];
    size_t j = i;
    for (; j > 0 && before(t, &g, &t->groups[j - 1]); j--)
      t->groups[j] = t->groups[j - 1];
    t->groups[j] = g;
  }
}

int loom_grid_results_table(const loom_grid_results *r, const loom_grid_table_options *options,
                            loom_grid_table **out) {
  static const loom_grid_table_options none = {0};
  const loom_grid_table_options *o = options ? options : &none;
  *out = NULL;
  loom_grid_table *t = calloc(1, sizeof *t);
  json_t *option_keys = loom_grid_option_keys(r->rows), *kept = json_array();
  filter *filters = calloc(o->num_filters + 1, sizeof *filters);
  size_t nkeys = o->num_group_by ? o->num_group_by : json_array_size(option_keys);
  key_ref *keys = calloc(nkeys + 1, sizeof *keys);
  int rc = t && option_keys && kept && filters && keys ? 0 : loom_error_oom("the results table");
  for (size_t i = 0; rc == 0 && i < o->num_filters; i++)
    rc = parse_filter(r->rows, option_keys, o->filters[i], &filters[i]);
  /* Filters name keys of the filter's own row, resolved before grouping. */
  size_t i;
  json_t *row;
  json_array_foreach(r->rows, i, row) {
    bool keep = rc == 0;
    for (size_t f = 0; keep && f < o->num_filters; f++)
      keep = passes(row, &filters[f]);
    if (keep)
      json_array_append(kept, row);
  }
  if (rc == 0 && !(t->keys = calloc(nkeys + 1, sizeof *t->keys)))
    rc = loom_error_oom("the table's keys");
  for (size_t k = 0; rc == 0 && k < nkeys; k++) {
    if (o->num_group_by)
      rc = resolve_key(r->rows, option_keys, o->group_by[k], false, "--group-by key", &keys[k]);
    else
      keys[k] = (key_ref){KEY_OPTION, json_string_value(json_array_get(option_keys, k))};
    if (rc == 0 && !(t->keys[t->num_keys++] = strdup(keys[k].name)))
      rc = loom_error_oom("a key");
  }
  if (rc == 0)
    rc = sort_metric(t, kept, o->metric);
  if (rc == 0)
    rc = collect_metrics(t, kept);
  json_array_foreach(kept, i, row) {
    if (rc == 0)
      rc = add_row(t, row, keys);
  }
  if (rc == 0) {
    finish_stats(t);
    for (size_t g = 0; g < t->num_groups; g++)
      t->groups[g].order = g;
    sort_groups(t);
  }
  free(filters);
  free(keys);
  json_decref(option_keys);
  json_decref(kept);
  if (rc < 0) {
    loom_grid_table_destroy(t);
    return rc;
  }
  *out = t;
  return 0;
}

void loom_grid_table_destroy(loom_grid_table *t) {
  if (!t)
    return;
  for (size_t g = 0; g < t->num_groups; g++) {
    for (size_t k = 0; k < t->num_keys; k++)
      free(t->groups[g].values[k]);
    free(t->groups[g].values);
    free(t->groups[g].stats);
    free(t->groups[g].m2);
    json_decref(t->groups[g].key);
  }
  free(t->groups);
  for (size_t k = 0; k < t->num_keys; k++)
    free(t->keys[k]);
  free(t->keys);
  for (size_t m = 0; m < t->num_metrics; m++)
    free(t->metrics[m]);
  free(t->metrics);
  free(t->sort);
  free(t);
}

size_t loom_grid_table_num_keys(const loom_grid_table *t) { return t->num_keys; }
const char *loom_grid_table_key(const loom_grid_table *t, size_t k) { return t->keys[k]; }
size_t loom_grid_table_num_metrics(const loom_grid_table *t) { return t->num_metrics; }
const char *loom_grid_table_metric(const loom_grid_table *t, size_t m) { return t->metrics[m]; }
size_t loom_grid_table_num_groups(const loom_grid_table *t) { return t->num_groups; }
const char *loom_grid_table_value(const loom_grid_table *t, size_t g, size_t k) { return t->groups[g].values[k]; }
loom_grid_stat loom_grid_table_stat(const loom_grid_table *t, size_t g, size_t m) { return t->groups[g].stats[m]; }

const char *loom_grid_table_sort_metric(const loom_grid_table *t, bool *minimize) {
  if (minimize)
    *minimize = t->minimize;
  return t->sort;
}

void loom_grid_table_counts(const loom_grid_table *t, size_t g, int64_t *done, int64_t *failed, int64_t *other) {
  *done = t->groups[g].done, *failed = t->groups[g].failed, *other = t->groups[g].other;
}
