/* loom tune lr: a learning-rate sweep of one stage. */
#include "cli/cli_common.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/late_signals.h"

static const char usage_tune[] =
    "usage: loom tune lr CONFIG [--min LR] [--max LR] [--steps N] [--stage NAME]\n"
    "                   [--plugin LIB]... [--logdir DIR] [--device DEV] [--set KEY=VALUE]...\n"
    "\n"
    "Trains one stage (--stage, default the first) for up to --steps (200) train\n"
    "batches at rates growing exponentially from --min (1e-7) to --max (10),\n"
    "stops early once the smoothed loss passes 4x its best, and prints the rate\n"
    "where the smoothed loss fell fastest against log10(lr). The stage runs with\n"
    "its model, criterion, optimizer, train loaders and optimizer callbacks only\n"
    "(no scheduler, no checkpoint); its weights are thrown away. The curve\n"
    "(lr,loss,smoothed) goes to LOGDIR/lr_find/lr_find.csv, and to TensorBoard\n"
    "in LOGDIR/lr_find. --plugin, --logdir, --device and --set are as for loom run.\n";

/* A --min or --max rate: a number > 0. */
static int rate(const char *option, const char *text, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end || errno || !(v > 0)) {
    fprintf(stderr, "loom: tune lr: %s: expected a learning rate > 0, got \"%s\"\n", option, text);
    return EXIT_USAGE;
  }
  *out = v;
  return EXIT_DONE;
}

static int parse_tune(int argc, char **argv, args *a, sweep_args *sw) {
  static const struct option options[] = {{"min", required_argument, NULL, 'm'},
                                          {"max", required_argument, NULL, 'M'},
                                          {"steps", required_argument, NULL, 'n'},
                                          {"stage", required_argument, NULL, 'S'},
                                          {"logdir", required_argument, NULL, 'l'},
                                          {"device", required_argument, NULL, 'D'},
                                          {"set", required_argument, NULL, 's'},
                                          {"plugin", required_argument, NULL, 'p'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "l:s:p:h", options, NULL)) != -1;) {
    int code = EXIT_DONE;
    switch (c) {
    case 'm': code = rate("--min", optarg, &sw->finder.min_lr); break;
    case 'M': code = rate("--max", optarg, &sw->finder.max_lr); break;
    case 'n':
      code = loom_cli_batches("--steps", optarg, &sw->finder.steps);
      if (code == EXIT_DONE && sw->finder.steps < 2) {
        fprintf(stderr, "loom: tune lr: --steps: the sweep needs at least 2 steps\n");
        code = EXIT_USAGE;
      }
      break;
    case 'S': sw->stage = optarg; break;
    case 'l': a->logdir = optarg; break;
    case 'D': a->device = optarg; break;
    case 's':
    case 'p': {
      const char **list = c == 's' ? a->sets : a->plugins;
      int *n = c == 's' ? &a->num_sets : &a->num_plugins;
      if (*n == 64) {
        fprintf(stderr, "loom: at most 64 %s options\n", c == 's' ? "--set" : "--plugin");
        return EXIT_USAGE;
      }
      list[(*n)++] = optarg;
      break;
    }
    case 'h': fputs(usage_tune, stdout); return EXIT_HELP;
    default: fputs(usage_tune, stderr); return EXIT_USAGE;
    }
    if (code != EXIT_DONE)
      return code;
  }
  if (!(sw->finder.max_lr > sw->finder.min_lr)) {
    fprintf(stderr, "loom: tune lr: --max (%g) must be above --min (%g)\n", sw->finder.max_lr, sw->finder.min_lr);
    return EXIT_USAGE;
  }
  if (optind != argc - 1) {
    fprintf(stderr, "loom: tune lr: expected one CONFIG file\n%s", usage_tune);
    return EXIT_USAGE;
  }
  a->config = argv[optind];
  return EXIT_DONE;
}

/* The sweep's finder, on the one stage left, writing into LOGDIR/lr_find. */
static int add_finder(loom_experiment *exp, const sweep_args *sw, loom_callback **finder) {
  char dir[4200];
  snprintf(dir, sizeof dir, "%s/lr_find", loom_experiment_logdir(exp));
  loom_lr_finder_options o = sw->finder;
  o.tensorboard = true;
  o.restore = false; /* the weights are thrown away with the process */
  *finder = loom_lr_finder_callback_create(&o);
  if (!*finder || loom_experiment_set_logdir(exp, dir) < 0 ||
      loom_stage_add_callback(loom_experiment_stage(exp, 0), *finder) < 0) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return EXIT_RUNTIME;
  }
  return EXIT_DONE;
}

/* Prints how the sweep ended, where its curve is, and the suggestion. */
static int report_sweep(const loom_callback *finder, const char *logdir) {
  loom_lr_finder_result res;
  if (loom_lr_finder_get_result(finder, &res) < 0) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return EXIT_RUNTIME;
  }
  printf("loom: %s (%lld batches)\n", res.reason, (long long)res.points);
  printf("loom: the curve: %s (TensorBoard: %s)\n", res.csv_path, logdir);
  if (!isfinite(res.suggestion)) {
    fprintf(stderr, "loom: tune lr: no suggestion: %s\n", res.why_none);
    return EXIT_RUNTIME;
  }
  printf("suggested lr: %.3g\n", res.suggestion);
  return EXIT_DONE;
}

/* loom tune lr CONFIG ... */
int loom_cli_tune(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "lr") != 0) {
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
      fputs(usage_tune, stdout);
      return EXIT_DONE;
    }
    fprintf(stderr, "loom: tune: expected what to tune: lr (loom tune lr CONFIG)\n");
    return EXIT_USAGE;
  }
  args a = {0};
  sweep_args sw = {.finder = loom_lr_finder_defaults()};
  int code = parse_tune(argc - 1, argv + 1, &a, &sw);
  if (code != EXIT_DONE)
    return code == EXIT_HELP ? EXIT_DONE : code;
  loom_config *config;
  loom_experiment *exp = NULL;
  loom_runner *runner = NULL;
  loom_callback *finder = NULL;
  code = loom_cli_load(&a, &sw, &config, &exp);
  if (code == EXIT_DONE)
    code = add_finder(exp, &sw, &finder);
  if (code == EXIT_DONE && !(runner = loom_runner_create())) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE)
    code = loom_cli_open_comm(&a, config, runner);
  if (code == EXIT_DONE) {
    printf("loom: sweeping stage \"%s\" from lr %g to %g over up to %lld batches\n",
           loom_stage_name(loom_experiment_stage(exp, 0)), sw.finder.min_lr, sw.finder.max_lr,
           (long long)sw.finder.steps);
    fflush(stdout);
    if (loom_runner_world_size(runner) > 1)
      loom_cli_hold_late_signals();
    int rc = loom_run_experiment(runner, exp);
    if (rc < 0) {
      fprintf(stderr, "loom: %s%s\n", rc == LOOM_EINTERRUPTED ? "" : "error: ", loom_last_error());
      code = rc == LOOM_EINTERRUPTED ? EXIT_INTERRUPTED : EXIT_RUNTIME;
    } else if (loom_runner_is_master(runner)) {
      code = report_sweep(finder, loom_experiment_logdir(exp));
    }
  }
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  loom_config_destroy(config);
  return code;
}
