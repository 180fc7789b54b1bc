/* loom/grid_results.h - the results of a grid of experiments, as a table.
 *
 * A grid's directory holds results.jsonl and, from sharded runs,
 * results-shard-<i>-of-<n>.jsonl: one JSON object per line and experiment
 * ({"id", "options": {key: value}, "rep", "seed", "status":
 * "done"|"failed"|"interrupted", "main_metric": {"name", "direction":
 * "min"|"max"}, "final": {metric: value}, ...}; docs/grid-results.md).
 * loom_grid_results_load reads them all (the last row of an id wins; a last
 * line without its newline, still being written, is left out), and
 * loom_grid_results_table groups the rows by option values, aggregates each
 * final metric over the group's done rows (mean, sample standard deviation,
 * n) and sorts the groups by the main metric. `loom grid results` prints it. */
#ifndef LOOM_GRID_RESULTS_H
#define LOOM_GRID_RESULTS_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_grid_results loom_grid_results;
typedef struct loom_grid_table loom_grid_table;

/* Reads DIR/results.jsonl, then DIR/results-shard-*-of-*.jsonl by name.
 * LOOM_ENOENT if there is none of them; LOOM_EFORMAT naming file:line for a
 * complete line that is not a JSON object with a string "id". */
LOOM_API int loom_grid_results_load(const char *dir, loom_grid_results **out);
LOOM_API void loom_grid_results_destroy(loom_grid_results *results);
/* Experiments read (one per id). */
LOOM_API size_t loom_grid_results_count(const loom_grid_results *results);

typedef struct loom_grid_table_options {
  /* Each "KEY=VALUE", "KEY!=VALUE", "KEY<V", "KEY<=V", "KEY>V" or "KEY>=V":
   * a row is kept when it passes all. KEY is an option ("lr" is enough for
   * "stages.train.optimizer.lr" when only one option's key path ends so),
   * "rep", "status", "seed", or a final metric ("valid/accuracy>0.8"). = and
   * != compare numbers as numbers and strings as written (quotes optional);
   * <, <=, >, >= compare numbers. A row without KEY fails. */
  const char *const *filters;
  size_t num_filters;
  /* Keys, as in filters (options or "rep"), whose values make a group;
   * NULL/0: every option (the repetition is aggregated over). */
  const char *const *group_by;
  size_t num_group_by;
  /* The metric to sort by, "NAME", "NAME:min" or "NAME:max"; NULL: the rows'
   * main_metric. Without ":min"/":max" the direction is the rows'
   * main_metric's when it names the same metric, else min. */
  const char *metric;
} loom_grid_table_options;

typedef struct loom_grid_stat {
  double mean; /* NAN when n is 0 */
  double std;  /* sample standard deviation (n - 1); NAN when n < 2 */
  int64_t n;   /* done rows with this metric */
} loom_grid_stat;

/* The table of `results` under `options` (NULL: the defaults). LOOM_EINVAL
 * with what to write for a malformed filter or a key that no row has (or
 * that several options end with). */
LOOM_API int loom_grid_results_table(const loom_grid_results *results, const loom_grid_table_options *options,
                                     loom_grid_table **out);
LOOM_API void loom_grid_table_destroy(loom_grid_table *table);

/* Columns: the grouping keys (full key paths), then the metrics (every final
 * metric of the kept rows, the sort metric first). */
LOOM_API size_t loom_grid_table_num_keys(const loom_grid_table *t);
LOOM_API const char *loom_grid_table_key(const loom_grid_table *t, size_t k);
LOOM_API size_t loom_grid_table_num_metrics(const loom_grid_table *t);
LOOM_API const char *loom_grid_table_metric(const loom_grid_table *t, size_t m);
/* The metric the groups are sorted by (NULL: none, groups in first-seen
 * order) and whether smaller is better. */
LOOM_API const char *loom_grid_table_sort_metric(const loom_grid_table *t, bool *minimize);

/* Rows: the groups, best first; groups without the sort metric last. */
LOOM_API size_t loom_grid_table_num_groups(const loom_grid_table *t);
/* Group g's value of key k as the grid names it ("0.003", "cna"; "null"
 * when its rows have none): a string as written, a number in the fewest
 * digits that read back exactly, anything else as compact JSON. */
LOOM_API const char *loom_grid_table_value(const loom_grid_table *t, size_t g, size_t k);
LOOM_API loom_grid_stat loom_grid_table_stat(const loom_grid_table *t, size_t g, size_t m);
/* Group g's rows by status: done, failed, and any other (interrupted). */
LOOM_API void loom_grid_table_counts(const loom_grid_table *t, size_t g, int64_t *done, int64_t *failed,
                                     int64_t *other);

/* An aligned text table: a column per key (headed by the shortest unique end
 * of its key path), "n", "failed", "other" when any, then "mean ± std" per
 * metric. */
LOOM_API int loom_grid_table_print(const loom_grid_table *t, FILE *out);
/* CSV (RFC 4180): the keys, n, failed, other, then <metric>_mean and
 * <metric>_std per metric; numbers in the fewest digits that read back
 * exactly, empty for NaN (no value, or one repetition's std). */
LOOM_API int loom_grid_table_write_csv(const loom_grid_table *t, FILE *out);

/* TensorBoard's HParams view of the grid, in DIR/hparams: an events file
 * with the Experiment (every option as an HParamInfo with its values, every
 * final metric as a MetricInfo), and for each experiment
 * DIR/hparams/<id>/ with its session (its options as hparams, the group of
 * its repetitions, its final metrics as scalars at step 0, its end as
 * success or failure; none for other statuses). Files loom wrote there
 * before are replaced. `tensorboard --logdir DIR/hparams` shows the sweep. */
LOOM_API int loom_grid_results_write_tensorboard(const loom_grid_results *results, const char *dir);

#ifdef __cplusplus
}
#endif
#endif
