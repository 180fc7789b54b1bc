/* The grid between its files: points, experiments, what a run needs. */
#ifndef LOOM_GRID_GRID_INTERNAL_H
#define LOOM_GRID_GRID_INTERNAL_H

#include <jansson.h>

#include "loom/config.h"
#include "loom/grid.h"

/* One experiment's option values: keys in the grid's order. */
typedef struct grid_point {
  json_t *options;   /* {"stages.train.optimizer.lr": 0.003, ...} */
  json_t *sources;   /* key -> where the grid gave the value ("options.KEY[1]"), for messages */
  char **sets;       /* "KEY=VALUE" for each option, then "experiment.seed=S" (filled per experiment) */
  size_t num_sets;
  char *name;        /* "lr=0.003,layout=cna" */
  char *metric;      /* main metric "valid/accuracy", from the grid or the built config */
  bool maximize;
} grid_point;

typedef struct grid_experiment {
  size_t point;
  int rep;           /* 1-based */
  uint64_t seed;
  char id[1100];     /* "<point name>/rep<k>" */
  char seed_set[64]; /* "experiment.seed=S" */
  const char **sets; /* the point's sets then seed_set */
  size_t num_sets;
} grid_experiment;

struct loom_grid {
  char *path;        /* the grid file as given */
  loom_config *file; /* the grid file, for positions in messages */
  char *base;        /* the base config's absolute path */
  char *text;        /* the grid file's bytes, for its hash */
  size_t text_len;
  json_t *cli_options; /* the --grid options as given */
  grid_point *points;
  size_t num_points, cap_points;
  int repetitions;
  uint64_t seed;
  char *metric;      /* the grid's main_metric name, or NULL: each experiment's own */
  bool maximize;
  bool validated;
  grid_experiment *experiments;
  size_t num_experiments;
};

/* grid_names.c: each point's name from the options that vary over the grid. */
int loom_grid_name_points(loom_grid *g);
/* The text a value is set with and named by: a string as is, a real in the
 * shortest form that reads back the same (with a ".0" if it has no point
 * or exponent, so that it stays a real), anything else as compact JSON.
 * Returns a malloc'd string or NULL. `for_set`: strings are JSON-quoted. */
char *loom_grid_value_text(const json_t *value, bool for_set);
/* x in the fewest significant digits that read back as x (%.17g at most). */
void loom_grid_format_number(double x, char *buf, size_t size);

/* grid_results.c */
/* The row of an ended attempt (steals nothing); NULL on OOM. */
typedef struct grid_outcome {
  const char *status; /* "done", "failed", "interrupted" */
  int exit_code;      /* -1: none (a signal ended it) */
  int signal;         /* 0: none */
  const char *reason; /* NULL, "exit", "signal", "timeout" */
  int attempt;
  double duration_s;
  const char *stderr_tail; /* failed only */
} grid_outcome;
json_t *loom_grid_result_row(const loom_grid *g, size_t exp, const char *expdir, const grid_outcome *o);
/* Appends the row as one line with one write() and fsyncs it. */
int loom_grid_append_row(int fd, const json_t *row, const char *path);
/* {id: last row} over every results*.jsonl in dir (missing files: empty). */
int loom_grid_read_results(const char *dir, json_t **rows);
/* The last `lines` lines of the file from byte `from` on (malloc'd). */
char *loom_grid_file_tail(const char *path, long from, int lines);

/* grid_env.c: environment.json in dir. */
int loom_grid_write_environment(const loom_grid *g, const char *dir, const loom_grid_run_options *o, int threads);

#endif
