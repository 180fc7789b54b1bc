/* loom grid results DIR [--csv] [--filter F]... [--group-by KEYS]... [--metric NAME] [--tensorboard] */
#include "cli/grid_results_cmd.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

static const char usage[] =
    "usage: loom grid results DIR [--csv] [--filter KEY=VALUE|KEY<V|...]... [--group-by KEY[,KEY...]]...\n"
    "                             [--metric NAME[:min|:max]] [--tensorboard]\n"
    "\n"
    "The results of the grid in DIR (results.jsonl and results-shard-*-of-*.jsonl;\n"
    "a grid still running is fine): one row per group of experiments with equal\n"
    "options (all options unless --group-by), each final metric as mean ± sample\n"
    "std over the group's done repetitions, n done, failed and other rows; best\n"
    "first by the main metric (or --metric). --filter keeps the experiments that\n"
    "pass (=, !=, <, <=, >, >=; keys: options, a unique end of an option's key\n"
    "path such as lr, rep, status, seed, or a final metric such as\n"
    "valid/accuracy). --csv writes CSV instead of the text table. --tensorboard\n"
    "also writes DIR/hparams for TensorBoard's HParams dashboard\n"
    "(tensorboard --logdir DIR/hparams).\n";

enum { DONE = 0, RUNTIME = 1, USAGE = 2 };

/* Adds each comma-separated key of `list` to keys (the strings point into
 * `list`, which is modified). */
static int split_keys(char *list, const char ***keys, size_t *n) {
  for (char *k = strtok(list, ","); k; k = strtok(NULL, ",")) {
    const char **grown = realloc(*keys, (*n + 1) * sizeof *grown);
    if (!grown)
      return -1;
    *keys = grown;
    (*keys)[(*n)++] = k;
  }
  return 0;
}

static int fail(int code) {
  fprintf(stderr, "loom: error: %s\n", loom_last_error());
  return code == LOOM_EINVAL ? USAGE : RUNTIME;
}

int loom_cli_grid_results(int argc, char **argv) {
  static const struct option options[] = {{"csv", no_argument, NULL, 'c'},
                                          {"filter", required_argument, NULL, 'f'},
                                          {"group-by", required_argument, NULL, 'g'},
                                          {"metric", required_argument, NULL, 'm'},
                                          {"tensorboard", no_argument, NULL, 't'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  loom_grid_table_options o = {0};
  const char **filters = NULL, **group_by = NULL;
  bool csv = false, tensorboard = false;
  int code = DONE;
  optind = 1;
  for (int c; code == DONE && (c = getopt_long(argc, argv, "h", options, NULL)) != -1;) {
    if (c == 'c') {
      csv = true;
    } else if (c == 't') {
      tensorboard = true;
    } else if (c == 'm') {
      o.metric = optarg;
    } else if (c == 'f') {
      const char **grown = realloc(filters, (o.num_filters + 1) * sizeof *grown);
      if (grown)
        filters = grown, filters[o.num_filters++] = optarg;
      else
        code = RUNTIME;
    } else if (c == 'g') {
      if (split_keys(optarg, &group_by, &o.num_group_by) < 0)
        code = RUNTIME;
    } else if (c == 'h') {
      fputs(usage, stdout);
      free(filters), free(group_by);
      return DONE;
    } else {
      code = USAGE; /* getopt said which option */
    }
  }
  if (code == DONE && optind != argc - 1) {
    fprintf(stderr, "loom: grid results: expected one DIR, the grid's directory\n%s", usage);
    code = USAGE;
  }
  o.filters = filters, o.group_by = group_by;
  loom_grid_results *results = NULL;
  loom_grid_table *table = NULL;
  const char *dir = code == DONE ? argv[optind] : NULL;
  int rc;
  if (code == DONE && (rc = loom_grid_results_load(dir, &results)) < 0)
    code = fail(rc == LOOM_ENOENT ? LOOM_EINVAL : rc);
  if (code == DONE && (rc = loom_grid_results_table(results, &o, &table)) < 0)
    code = fail(rc);
  if (code == DONE) {
    if (!csv) {
      bool minimize;
      const char *metric = loom_grid_table_sort_metric(table, &minimize);
      printf("%s: %zu experiments in %zu groups", dir, loom_grid_results_count(results),
             loom_grid_table_num_groups(table));
      if (metric)
        printf(", best %s first", minimize ? "(lowest)" : "(highest)");
      printf("; metrics are mean ± std over the done repetitions\n");
    }
    rc = csv ? loom_grid_table_write_csv(table, stdout) : loom_grid_table_print(table, stdout);
    if (rc < 0)
      code = fail(rc);
  }
  if (code == DONE && tensorboard) {
    if ((rc = loom_grid_results_write_tensorboard(results, dir)) < 0)
      code = fail(rc);
    else
      fprintf(csv ? stderr : stdout, "wrote %s/hparams (tensorboard --logdir %s/hparams)\n", dir, dir);
  }
  loom_grid_table_destroy(table);
  loom_grid_results_destroy(results);
  free(filters);
  free(group_by);
  return code;
}
