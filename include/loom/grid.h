/* loom/grid.h - a grid of experiments: one base config, options with lists
 * of values multiplied together (and unions of such products), repetitions
 * with derived seeds, run as child processes of the loom command over a
 * pool of workers. docs/grid.md describes the grid file, the directory
 * layout and results.jsonl. */
#ifndef LOOM_GRID_H
#define LOOM_GRID_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_grid loom_grid;

/* Reads a grid file and expands it into experiments. `options` (may be
 * NULL) are command-line options "KEY=V1,V2,...", multiplied into every
 * set of the file (each value read as JSON if it parses, else as a string).
 * Errors carry "FILE:LINE:COL: key.path: ". Nothing is built yet. */
LOOM_API loom_grid *loom_grid_load(const char *path, const char *const *options, size_t num_options);
LOOM_API void loom_grid_destroy(loom_grid *grid);

/* Experiments: points (distinct option values) x repetitions, repetition
 * major (every point's rep1, then every point's rep2, ...). */
LOOM_API size_t loom_grid_num_experiments(const loom_grid *grid);
/* "lr=0.003,layout=cna/rep1": also its directory under the grid's. */
LOOM_API const char *loom_grid_experiment_id(const loom_grid *grid, size_t i);
/* The seed experiment i runs with (its "experiment.seed"). */
LOOM_API uint64_t loom_grid_experiment_seed(const loom_grid *grid, size_t i);
/* The --set assignments of experiment i (its options, then its seed),
 * borrowed; *n gets their number. */
LOOM_API const char *const *loom_grid_experiment_sets(const loom_grid *grid, size_t i, size_t *n);

/* The seed of repetition `rep` (1-based) of a grid seeded `grid_seed`:
 * splitmix64's output for the state grid_seed + rep * 0x9E3779B97F4A7C15
 * (z ^= z >> 30, z *= 0xBF58476D1CE4E5B9, z ^= z >> 27,
 * z *= 0x94D049BB133111EB, z ^= z >> 31), shifted right by one so that it
 * fits a config's seed (0 .. INT64_MAX). */
LOOM_API uint64_t loom_grid_seed(uint64_t grid_seed, int rep);

/* Builds every point's config (the base config with its values set as
 * --set does, and its seed) without running anything. The first failure is
 * returned, its message naming the experiment and, where the grid file
 * gave the value, its position. */
LOOM_API int loom_grid_validate(loom_grid *grid);

/* What loom_grid_run reports to its progress function. */
typedef enum loom_grid_event {
  LOOM_GRID_STARTED,  /* experiment `id` started (attempt `attempt`) */
  LOOM_GRID_FINISHED, /* experiment `id` ended with `status` */
  LOOM_GRID_TICK,     /* about once a second, nothing else new */
  LOOM_GRID_STOPPING, /* SIGINT: running experiments are being interrupted */
} loom_grid_event;

typedef struct loom_grid_progress {
  loom_grid_event event;
  const char *id, *status; /* the event's experiment; status "done", "failed" or "interrupted" */
  const char *reason;      /* a failure's: "exit", "signal", "timeout"; else NULL */
  int attempt;
  double duration_s;       /* a finished experiment's */
  size_t total, done, failed, running, left; /* this run's (or shard's) experiments */
  double elapsed_s, eta_s; /* eta_s < 0: not known yet */
  const char *metric;      /* main metric name, NULL if none */
  bool has_best;
  double best;             /* best main metric over the done experiments */
  const char *best_id;
} loom_grid_progress;

typedef void (*loom_grid_progress_fn)(const loom_grid_progress *progress, void *user);

typedef struct loom_grid_run_options {
  const char *dir;         /* the grid directory; NULL: ./<grid file name without .json> */
  const char *loom;        /* the loom command; NULL: this process's executable */
  int workers;             /* >= 1 */
  int threads_per_worker;  /* LOOM_NUM_THREADS of each; 0: cores / workers (or its CPU set's size), at least 1 */
  const char *cpus;        /* NULL, or CPU sets for the workers "0-3:4-7" (worker w gets set w mod their number) */
  double timeout_s;        /* 0: none; else SIGTERM after it, SIGKILL kill_after_s later */
  double kill_after_s;     /* 0: 10 s */
  int retries;             /* failed experiments run again up to this many times */
  int shard, num_shards;   /* run experiments i with i % num_shards == shard; 0/0: the MPI launcher's rank and
                              size if one started this process (OMPI_COMM_WORLD_*, PMI_*), else all */
  loom_grid_progress_fn progress;
  void *progress_user;
} loom_grid_run_options;

LOOM_API loom_grid_run_options loom_grid_run_options_defaults(void);

/* Validates the grid, then runs its experiments not already done in the
 * directory (docs/grid.md): a row per ended attempt appended to
 * results.jsonl (results-shard-<i>-of-<n>.jsonl for a shard). Returns the
 * number of experiments that failed (0: all done), LOOM_EINTERRUPTED after
 * SIGINT (the same call again goes on), or another negative code when the
 * grid could not run (invalid, its directory not writable). */
LOOM_API int loom_grid_run(loom_grid *grid, const loom_grid_run_options *options);

/* A progress function for a terminal or a log: on a TTY one line redrawn
 * with \r; otherwise a timestamped line per start and end. `user` is a
 * FILE * (NULL: stdout). */
LOOM_API void loom_grid_print_progress(const loom_grid_progress *progress, void *user);

#ifdef __cplusplus
}
#endif
#endif
