/* loom grid validate: every point's config built as its run would build
 * it (the base config, its --set values, a seed), nothing run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "grid/grid_internal.h"

/* The option whose assignment the message names ("--set KEY=VALUE"), or
 * NULL: where the grid file gave it goes in front of the message. */
static const char *culprit(const grid_point *pt, const char *message) {
  for (size_t s = 0; s < pt->num_sets; s++) {
    char needle[1200];
    snprintf(needle, sizeof needle, "--set %s", pt->sets[s]);
    if (strstr(message, needle)) {
      const char *eq = strchr(pt->sets[s], '=');
      char key[1024];
      snprintf(key, sizeof key, "%.*s", (int)(eq - pt->sets[s]), pt->sets[s]);
      return json_string_value(json_object_get(pt->sources, key));
    }
  }
  return NULL;
}

/* The last stage's main metric ("valid/loss", minimised by default), as the
 * build resolved it. */
static int stage_metric(grid_point *pt, const loom_config *c) {
  json_t *stages = json_object_get(c->root, "stages"), *last = NULL, *stage;
  const char *name;
  json_object_foreach(stages, name, stage) last = stage;
  const char *loader = json_string_value(json_object_get(last, "valid_loader"));
  const char *metric = json_string_value(json_object_get(last, "main_metric"));
  if (!loader || !metric)
    return 0;
  size_t len = strlen(loader) + strlen(metric) + 2;
  if (!(pt->metric = malloc(len)))
    return loom_error_oom("a grid point");
  snprintf(pt->metric, len, "%s/%s", loader, metric);
  pt->maximize = json_is_false(json_object_get(last, "minimize"));
  return 0;
}

static int validate_point(loom_grid *g, size_t p) {
  const grid_experiment *e = &g->experiments[p]; /* the point's first repetition */
  grid_point *pt = &g->points[p];
  loom_config *c = loom_config_load(g->base);
  int rc = c ? 0 : loom_last_error_code();
  for (size_t s = 0; rc == 0 && s < e->num_sets; s++)
    rc = loom_config_set(c, e->sets[s]);
  loom_experiment *exp = NULL;
  if (rc == 0)
    rc = loom_config_build(c, &exp);
  loom_experiment_destroy(exp);
  if (rc == 0 && !pt->metric)
    rc = stage_metric(pt, c);
  loom_config_destroy(c);
  if (rc < 0) {
    const char *source = culprit(pt, loom_last_error());
    char where[1400] = "";
    if (source && strncmp(source, "--grid", 6) != 0)
      loom_config_where(g->file, source, false, where, sizeof where);
    if (source)
      snprintf(where + strlen(where), sizeof where - strlen(where), "%s: ", source);
    return loom_error_wrap(rc, "%sexperiment \"%s\" of %s", where, pt->name, g->path);
  }
  return 0;
}

int loom_grid_validate(loom_grid *g) {
  if (g->validated)
    return 0;
  for (size_t p = 0; p < g->num_points; p++) {
    int rc = validate_point(g, p);
    if (rc < 0)
      return rc;
  }
  g->validated = true;
  return 0;
}
