/* What grid/results*.c share: the results read and the table built. */
#ifndef LOOM_GRID_RESULTS_INTERNAL_H
#define LOOM_GRID_RESULTS_INTERNAL_H

#include <jansson.h>

#include "core/array.h"
#include "grid/grid_internal.h"
#include "loom/grid_results.h"

struct loom_grid_results {
  json_t *rows;  /* the row objects, one per id, in the order first read */
  json_t *index; /* id -> its index in rows */
};

typedef struct grid_group {
  json_t *key;            /* the values of the table's keys, an array */
  char **values;          /* each as JSON text */
  int64_t done, failed, other;
  loom_grid_stat *stats;  /* per metric */
  double *m2;             /* per metric: Welford's sum of squared deviations */
  size_t order;           /* first seen */
} grid_group;

struct loom_grid_table {
  char **keys;
  size_t num_keys;
  char **metrics; /* the sort metric first */
  size_t num_metrics;
  char *sort; /* NULL: no sort metric */
  bool minimize;
  grid_group *groups;
  size_t num_groups, cap_groups;
};


/* Every option key of the rows, in the order first seen (an array of
 * strings; NULL when out of memory). */
json_t *loom_grid_option_keys(const json_t *rows);

#endif
