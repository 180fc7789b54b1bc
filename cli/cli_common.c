/* What the loom commands share (cli_common.h). */
#include "cli/cli_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* A --limit-batches or --overfit-batches count: a whole number >= 1. */
int loom_cli_batches(const char *option, const char *text, int64_t *out) {
  char *end;
  errno = 0;
  long long n = strtoll(text, &end, 10);
  if (end == text || *end || errno || n < 1) {
    fprintf(stderr, "loom: %s: expected a number of batches >= 1, got \"%s\"\n", option, text);
    return EXIT_USAGE;
  }
  *out = n;
  return EXIT_DONE;
}

/* A config's error, printed, as the exit code (EXIT_DONE for none). */
int loom_cli_config_error(int rc) {
  if (rc >= 0)
    return EXIT_DONE;
  fprintf(stderr, "loom: error: %s\n", loom_last_error());
  return rc == LOOM_ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
}

/* Loads the config with the command line's plugins (recorded in the
 * resolved config) and overrides, reduced to a sweep when asked, not yet
 * built. */
int loom_cli_prepare(const args *a, const sweep_args *sweep, loom_config **config) {
  *config = loom_config_load(a->config);
  if (!*config) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return EXIT_USAGE;
  }
  char logdir_set[4200], device_set[300];
  int rc = 0;
  for (int i = 0; i < a->num_plugins && rc == 0; i++)
    rc = loom_config_add_plugin(*config, a->plugins[i]);
  for (int i = 0; i < a->num_sets && rc == 0; i++)
    rc = loom_config_set(*config, a->sets[i]);
  if (rc == 0 && a->logdir) {
    snprintf(logdir_set, sizeof logdir_set, "experiment.logdir=%s", a->logdir);
    rc = loom_config_set(*config, logdir_set);
  }
  if (rc == 0 && a->device) {
    rc = snprintf(device_set, sizeof device_set, "experiment.device=%s", a->device) < (int)sizeof device_set
             ? loom_config_set(*config, device_set)
             : loom_error_set(LOOM_EINVAL, "--device: a device name is at most %zu characters",
                              sizeof device_set - sizeof "experiment.device=");
  }
  if (rc == 0 && sweep)
    rc = loom_config_lr_sweep(*config, sweep->stage, sweep->finder.steps);
  return loom_cli_config_error(rc);
}

/* loom_cli_prepare(), then the build. */
int loom_cli_load(const args *a, const sweep_args *sweep, loom_config **config, loom_experiment **exp) {
  int code = loom_cli_prepare(a, sweep, config);
  if (code != EXIT_DONE)
    return code;
  int rc = loom_config_build(*config, exp);
  return loom_cli_config_error(rc);
}

/* The ranks: --dist, else the config's "distributed"; rank 0 alone
 * writes the resolved config. */
int loom_cli_open_comm(const args *a, loom_config *config, loom_runner *runner) {
  loom_dist dist = loom_config_distributed(config);
  if (a->dist)
    loom_dist_parse(a->dist, &dist); /* checked by parse() */
  loom_comm *comm = loom_comm_for_dist(dist);
  if (!comm) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return loom_last_error_code() == LOOM_ENOTSUP ? EXIT_USAGE : EXIT_RUNTIME;
  }
  loom_runner_set_comm(runner, comm);
  return EXIT_DONE;
}
