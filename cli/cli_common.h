/* What the loom commands share: exit codes, the parsed command line, and
 * loading a config with the command line's plugins and overrides. */
#ifndef LOOM_CLI_COMMON_H
#define LOOM_CLI_COMMON_H

#include <stdbool.h>
#include <stdint.h>

#include <loom.h>

enum { EXIT_DONE = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

/* Returned by a parser that printed --help: exit 0 without running. */
#define EXIT_HELP (EXIT_DONE + 1000)

typedef struct args {
  const char *config, *logdir, *device, *resume, *dist;
  const char *sets[64], *plugins[64], *allowed[64];
  int num_sets, num_plugins, num_allowed;
  bool check, overwrite, no_data, host_staged_grads, no_graphs;
  int64_t limit_batches, overfit_batches;
} args;


/* What `loom tune lr` sweeps. */
typedef struct sweep_args {
  const char *stage;
  loom_lr_finder_options finder;
} sweep_args;

/* A --limit-batches (or other) count: a whole number >= 1, else a message
 * and EXIT_USAGE. */
int loom_cli_batches(const char *option, const char *text, int64_t *out);
/* A config's error, printed, as the exit code (EXIT_DONE for none). */
int loom_cli_config_error(int rc);
/* The config with the command line's plugins (recorded in the resolved
 * config) and overrides (--set, --logdir, --device), reduced to a sweep
 * when asked, not yet built. */
int loom_cli_prepare(const args *a, const sweep_args *sweep, loom_config **config);
/* loom_cli_prepare, then the build. */
int loom_cli_load(const args *a, const sweep_args *sweep, loom_config **config, loom_experiment **exp);
/* The ranks: --dist, else the config's "distributed". */
int loom_cli_open_comm(const args *a, loom_config *config, loom_runner *runner);

/* The commands beside run and validate; argv[0] is the command's name. */
int loom_cli_tune(int argc, char **argv);
int loom_cli_convert(int argc, char **argv);
int loom_cli_deploy(int argc, char **argv, bool predict);

#endif
