/* Grid files: read with the config code (positions, unknown keys, the size
 * limit), expanded into points (products of the options, a union over
 * "sets") and experiments (points x repetitions). */
#define _GNU_SOURCE /* realpath */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/array.h"
#include "core/error_internal.h"
#include "grid/grid_internal.h"

/* Keys the grid sets itself: an option may not. */
static const char *const reserved[] = {"experiment.seed", "experiment.logdir"};

static int check_option(loom_params *p, const char *key, json_t *values) {
  if (!*key || strchr(key, '='))
    return loom_params_key_error(p, key, "an option is a key path such as \"stages.train.optimizer.lr\"");
  for (size_t i = 0; i < sizeof reserved / sizeof *reserved; i++)
    if (strcmp(key, reserved[i]) == 0)
      return loom_params_key_error(p, key, "the grid sets %s itself (its \"seed\" and directory): leave it out",
                                   key);
  if (!json_is_array(values) || json_array_size(values) == 0)
    return loom_params_error(p, key, LOOM_EINVAL,
                             "expected a non-empty list of values, e.g. [0.001, 0.003] (one value: [0.001])");
  return 0;
}

/* options -> {key: [values]} and {key: "where[i]"} lists, appended to *keys / *where. */
static int add_options(loom_params *p, json_t *object, json_t *keys, json_t *where) {
  const char *key;
  json_t *values;
  json_object_foreach(object, key, values) {
    int rc = check_option(p, key, values);
    if (rc < 0)
      return rc;
    if (json_object_get(keys, key))
      return loom_params_key_error(p, key, "already an option of the grid (in \"options\" or --grid): give it once");
    json_object_set(keys, key, values);
    char path[1024];
    loom_path_child(path, sizeof path, loom_params_path(p), key);
    json_object_set_new(where, key, json_string(path));
  }
  return 0;
}

/* "a,[1,2],\"x,y\"" -> its top-level comma-separated parts, each JSON if it
 * parses, else a string. */
static json_t *split_values(const char *text) {
  json_t *list = json_array();
  int depth = 0;
  bool quoted = false;
  const char *start = text;
  for (const char *c = text;; c++) {
    if (*c == '"' && (c == text || c[-1] != '\\'))
      quoted = !quoted;
    else if (!quoted && (*c == '[' || *c == '{'))
      depth++;
    else if (!quoted && (*c == ']' || *c == '}'))
      depth--;
    if (*c == '\0' || (*c == ',' && depth == 0 && !quoted)) {
      char *part = strndup(start, (size_t)(c - start));
      json_t *v = part ? json_loads(part, JSON_DECODE_ANY, NULL) : NULL;
      if (!v && part)
        v = json_string(part);
      free(part);
      if (!v || json_array_append_new(list, v) < 0) {
        json_decref(list);
        return NULL;
      }
      if (*c == '\0')
        return list;
      start = c + 1;
    }
  }
}

static int cli_options(loom_grid *g, const char *const *options, size_t n, json_t *keys, json_t *where) {
  for (size_t i = 0; i < n; i++) {
    const char *eq = strchr(options[i], '=');
    if (!eq || eq == options[i] || !eq[1])
      return loom_error_set(LOOM_EINVAL, "--grid %s: expected KEY=V1,V2,... e.g. stages.train.optimizer.lr=0.001,0.003",
                            options[i]);
    char *key = strndup(options[i], (size_t)(eq - options[i]));
    json_t *values = key ? split_values(eq + 1) : NULL;
    int rc = 0;
    if (!values)
      rc = loom_error_oom("a --grid option");
    for (size_t r = 0; rc == 0 && r < sizeof reserved / sizeof *reserved; r++)
      if (strcmp(key, reserved[r]) == 0)
        rc = loom_error_set(LOOM_EINVAL, "--grid %s: the grid sets %s itself: leave it out", options[i], key);
    if (rc == 0 && json_object_get(keys, key))
      rc = loom_error_set(LOOM_EINVAL, "--grid %s: %s is already an option of the grid: give it once", options[i], key);
    if (rc == 0) {
      char src[1200];
      snprintf(src, sizeof src, "--grid %s", options[i]);
      json_object_set(keys, key, values);
      json_object_set_new(where, key, json_string(src));
      json_array_append_new(g->cli_options, json_string(options[i]));
    }
    json_decref(values);
    free(key);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static bool seen(const loom_grid *g, const json_t *options) {
  for (size_t i = 0; i < g->num_points; i++)
    if (json_equal(g->points[i].options, options))
      return true;
  return false;
}

/* Every combination of keys' value lists (the last key varying fastest),
 * each a new point unless an earlier set made it already. */
static int expand(loom_grid *g, json_t *keys, json_t *where) {
  size_t n = json_object_size(keys), idx[64] = {0};
  if (n > 64)
    return loom_error_set(LOOM_EINVAL, "%s: %zu options in one set; a grid has at most 64", g->path, n);
  const char *names[64];
  json_t *lists[64];
  size_t k = 0;
  const char *key;
  json_t *values;
  json_object_foreach(keys, key, values) names[k] = key, lists[k++] = values;
  for (;;) {
    json_t *options = json_object(), *sources = json_object();
    for (size_t i = 0; i < n && options && sources; i++) {
      char src[1300];
      snprintf(src, sizeof src, "%s[%zu]", json_string_value(json_object_get(where, names[i])), idx[i]);
      if (strncmp(src, "--grid", 6) == 0)
        *strrchr(src, '[') = '\0';
      json_object_set(options, names[i], json_array_get(lists[i], idx[i]));
      json_object_set_new(sources, names[i], json_string(src));
    }
    if (!options || !sources ||
        loom_array_reserve((void **)&g->points, &g->cap_points, g->num_points + 1, sizeof *g->points,
                           "a grid point") < 0) {
      json_decref(options), json_decref(sources);
      return loom_error_oom("a grid point");
    }
    if (seen(g, options)) {
      json_decref(options), json_decref(sources);
    } else {
      g->points[g->num_points++] = (grid_point){.options = options, .sources = sources};
    }
    size_t i = n;
    while (i > 0 && ++idx[i - 1] == json_array_size(lists[i - 1]))
      idx[--i] = 0;
    if (i == 0)
      return 0;
  }
}

static int read_metric(loom_grid *g, loom_params *p) {
  loom_params *m;
  int rc = loom_params_open(p, "main_metric", false, &m);
  if (rc < 0 || !m)
    return rc;
  static const char *const directions[] = {"min", "max", NULL};
  const char *name;
  int dir = 0;
  rc = loom_params_string(m, "name", NULL, &name);
  if (rc == 0 && !strchr(name, '/'))
    rc = loom_params_error(m, "name", LOOM_EINVAL, "a metric of results.jsonl is \"LOADER/METRIC\", e.g. \"valid/accuracy\"");
  if (rc == 0)
    rc = loom_params_choice(m, "direction", NULL, directions, &dir);
  if (rc == 0)
    rc = loom_params_check_unknown(m);
  if (rc == 0 && !(g->metric = strdup(name)))
    rc = loom_error_oom("a grid");
  g->maximize = dir == 1;
  loom_params_close(m);
  return rc;
}

/* The keys of the file and its --grid options as points. */
static int read_grid(loom_grid *g, loom_config *c, const char *const *options, size_t num_options) {
  loom_params p;
  loom_params_init(&p, c, c->root, "");
  const char *base;
  int64_t reps = 1, seed = 0;
  int rc = loom_params_file(&p, "base", NULL, &base);
  if (rc == 0 && !(g->base = realpath(base, NULL)))
    rc = loom_params_error(&p, "base", LOOM_ENOENT, "the base config %s: %s", base, strerror(errno));
  if (rc == 0)
    rc = loom_params_int(&p, "repetitions", 1, 1, 100000, &reps);
  if (rc == 0)
    rc = loom_params_int(&p, "seed", 0, 0, INT64_MAX, &seed);
  if (rc == 0)
    rc = read_metric(g, &p);
  g->repetitions = (int)reps;
  g->seed = (uint64_t)seed;
  json_t *common = json_object(), *where = json_object();
  loom_params *opts = NULL;
  if (rc == 0 && (!common || !where))
    rc = loom_error_oom("a grid");
  if (rc == 0 && (rc = loom_params_open(&p, "options", false, &opts)) == 0 && opts)
    rc = add_options(opts, loom_params_object(opts), common, where);
  loom_params_close(opts);
  if (rc == 0)
    rc = cli_options(g, options, num_options, common, where);
  size_t num_sets = 0;
  if (rc == 0)
    rc = loom_params_array_length(&p, "sets", false, &num_sets);
  if (rc == 0)
    rc = loom_params_check_unknown(&p);
  for (size_t i = 0; rc == 0 && i < num_sets; i++) {
    char key[32];
    snprintf(key, sizeof key, "sets[%zu]", i);
    loom_params *set;
    json_t *keys = json_deep_copy(common), *set_where = json_deep_copy(where);
    if ((rc = loom_params_open(&p, key, true, &set)) == 0)
      rc = add_options(set, loom_params_object(set), keys, set_where);
    if (rc == 0)
      rc = expand(g, keys, set_where);
    loom_params_close(set);
    json_decref(keys), json_decref(set_where);
  }
  if (rc == 0 && num_sets == 0)
    rc = expand(g, common, where);
  json_decref(common), json_decref(where);
  return rc;
}

static int make_experiments(loom_grid *g) {
  g->num_experiments = g->num_points * (size_t)g->repetitions;
  g->experiments = calloc(g->num_experiments, sizeof *g->experiments);
  if (!g->experiments)
    return loom_error_oom("the grid's experiments");
  for (size_t i = 0; i < g->num_experiments; i++) {
    grid_experiment *e = &g->experiments[i];
    grid_point *pt = &g->points[i % g->num_points];
    e->point = i % g->num_points;
    e->rep = (int)(i / g->num_points) + 1;
    e->seed = loom_grid_seed(g->seed, e->rep);
    snprintf(e->id, sizeof e->id, "%s/rep%d", pt->name, e->rep);
    snprintf(e->seed_set, sizeof e->seed_set, "experiment.seed=%llu", (unsigned long long)e->seed);
    e->sets = malloc((pt->num_sets + 1) * sizeof *e->sets);
    if (!e->sets)
      return loom_error_oom("the grid's experiments");
    for (size_t s = 0; s < pt->num_sets; s++)
      e->sets[s] = pt->sets[s];
    e->sets[pt->num_sets] = e->seed_set;
    e->num_sets = pt->num_sets + 1;
  }
  return 0;
}

/* Each point's "KEY=VALUE" assignments, as --set reads them. */
static int make_sets(loom_grid *g) {
  for (size_t i = 0; i < g->num_points; i++) {
    grid_point *pt = &g->points[i];
    pt->sets = calloc(json_object_size(pt->options) + 1, sizeof *pt->sets);
    if (!pt->sets)
      return loom_error_oom("a grid point");
    const char *key;
    json_t *value;
    json_object_foreach(pt->options, key, value) {
      char *text = loom_grid_value_text(value, true);
      size_t len = strlen(key) + (text ? strlen(text) : 0) + 2;
      char *set = text ? malloc(len) : NULL;
      if (set)
        snprintf(set, len, "%s=%s", key, text);
      free(text);
      if (!set)
        return loom_error_oom("a grid point");
      pt->sets[pt->num_sets++] = set;
    }
  }
  return 0;
}

loom_grid *loom_grid_load(const char *path, const char *const *options, size_t num_options) {
  loom_config *c = loom_config_load(path);
  if (!c)
    return NULL;
  loom_grid *g = calloc(1, sizeof *g);
  if (!g) {
    loom_config_destroy(c);
    loom_error_oom("a grid");
    return NULL;
  }
  g->file = c;
  int rc = 0;
  if (!(g->path = strdup(path)) || !(g->cli_options = json_array()))
    rc = loom_error_oom("a grid");
  FILE *f = rc == 0 ? fopen(path, "rb") : NULL;
  if (rc == 0 && f) {
    /* The bytes, for environment.json's hash (the config code has checked the size). */
    g->text = malloc(LOOM_CONFIG_MAX_BYTES);
    g->text_len = g->text ? fread(g->text, 1, LOOM_CONFIG_MAX_BYTES, f) : 0;
  }
  if (f)
    fclose(f);
  if (rc == 0)
    rc = read_grid(g, c, options, num_options);
  if (rc == 0 && g->num_points == 0)
    rc = loom_error_set(LOOM_EINVAL, "%s: the grid has no experiment", path);
  if (rc == 0)
    rc = loom_grid_name_points(g);
  if (rc == 0)
    rc = make_sets(g);
  if (rc == 0)
    rc = make_experiments(g);
  if (rc < 0) {
    loom_grid_destroy(g);
    return NULL;
  }
  return g;
}

void loom_grid_destroy(loom_grid *g) {
  if (!g)
    return;
  for (size_t i = 0; i < g->num_points; i++) {
    grid_point *pt = &g->points[i];
    json_decref(pt->options);
    json_decref(pt->sources);
    for (size_t s = 0; s < pt->num_sets; s++)
      free(pt->sets[s]);
    free(pt->sets);
    free(pt->name);
    free(pt->metric);
  }
  for (size_t i = 0; g->experiments && i < g->num_experiments; i++)
    free(g->experiments[i].sets);
  free(g->experiments);
  free(g->points);
  json_decref(g->cli_options);
  free(g->path);
  free(g->base);
  free(g->text);
  free(g->metric);
  loom_config_destroy(g->file);
  free(g);
}

size_t loom_grid_num_experiments(const loom_grid *g) { return g->num_experiments; }
const char *loom_grid_experiment_id(const loom_grid *g, size_t i) { return g->experiments[i].id; }
uint64_t loom_grid_experiment_seed(const loom_grid *g, size_t i) { return g->experiments[i].seed; }

const char *const *loom_grid_experiment_sets(const loom_grid *g, size_t i, size_t *n) {
  *n = g->experiments[i].num_sets;
  return g->experiments[i].sets;
}
