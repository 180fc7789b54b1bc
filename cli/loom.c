/* loom: run or validate an experiment described in JSON.
 * Exit codes: 0 done, 1 runtime failure, 2 usage or config error,
 * 130 interrupted (a checkpoint was saved). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

#include "cli/grid_cmd.h"
#include "cli/grid_results_cmd.h"
#include "cli/late_signals.h"


enum { EXIT_DONE = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 };

static const char usage_main[] =
    "usage: loom COMMAND [OPTIONS]\n"
    "\n"
    "commands:\n"
    "  run CONFIG       train the experiment a JSON config describes\n"
    "  validate CONFIG  check a config without training (exit 0, or 2 with the error)\n"
    "  grid validate|run GRID.json  a grid of experiments (loom grid --help)\n"
    "  predict CONFIG   write a trained model's outputs for the infer loaders or a file\n"
    "  export CONFIG    write a trained model as ONNX, or its weights and architecture\n"
    "  tune lr CONFIG   sweep the learning rate over a few hundred batches and suggest one\n"
    "  convert idx OUT.h5 --images FILE --labels FILE\n"
    "                   write IDX images and labels as HDF5 (datasets \"images\", \"labels\")\n"
    "  grid results DIR the table of a grid's results (loom grid results --help)\n"
    "\n"
    "loom COMMAND --help shows its options. Exit codes: 0 done, 1 runtime failure,\n"
    "2 usage or config error, 130 interrupted with a checkpoint saved.\n";

static const char usage_run[] =
    "usage: loom run CONFIG [--plugin LIB]... [--logdir DIR] [--device DEV] [--set KEY=VALUE]... [--resume PATH|last|best]\n"
    "                [--check] [--overwrite] [--allow-change KEY]... [--dist auto|local|mpi] [--limit-batches N] [--overfit-batches N]\n"
    "       loom validate CONFIG [--plugin LIB]... [--device DEV] [--set KEY=VALUE]... [--no-data]\n"
    "\n"
    "  --plugin LIB       load a shared library of components (see loom/plugin.h)\n"
    "                     before the config is built; repeatable\n"
    "  --logdir DIR       where logs and checkpoints go (sets experiment.logdir)\n"
    "  --device DEV       where the models train: cpu, cuda or cuda:N (sets\n"
    "                     experiment.device; a resume may change it)\n"
    "  --set KEY=VALUE    override a key, e.g. --set stages.train.num_epochs=3;\n"
    "                     KEY[+]=VALUE appends to a list; repeatable\n"
    "  --resume WHAT      continue from a checkpoint file, or last or best in the logdir\n"
    "  --overwrite        a logdir that holds an earlier run's files is refused unless\n"
    "                     resumed; this removes that run's files first instead\n"
    "  --allow-change KEY let a resume run a config that differs from the checkpoint's\n"
    "                     at KEY (e.g. stages.train.optimizer.lr; * matches a part);\n"
    "                     repeatable; the config's experiment.allow_change lists more.\n"
    "                     stages.*.num_epochs, the logdir and the device may always\n"
    "                     change\n"
    "  --check            smoke test: 2 batches per loader, 2 epochs per stage, into a\n"
    "                     new directory under $TMPDIR (or /tmp) unless --logdir is given\n"
    "  --limit-batches N  at most N batches per loader per epoch\n"
    "  --overfit-batches N  every epoch, the same N first batches of each loader\n"
    "                     (in the first epoch's order): a model should fit them\n"
    "  --dist WHAT        the ranks: mpi (one per process mpirun starts), local\n"
    "                     (this process alone) or auto (mpi under an MPI launcher,\n"
    "                     the default); overrides the config's \"distributed\"\n"
    "  --no-data          (validate) check everything but the data: open no dataset\n"
    "                     file and allocate no model (its size is still checked)\n"
    "\n"
    "The resolved config (defaults filled in, the seed fixed) is written to\n"
    "LOGDIR/config.json; running that file reproduces the run. Under mpirun\n"
    "(docs/distributed.md) every rank trains its share of each batch, and only\n"
    "rank 0 writes the logdir.\n";

typedef struct args {
  const char *config, *logdir, *device, *resume, *dist;
  const char *sets[64], *plugins[64], *allowed[64];
  int num_sets, num_plugins, num_allowed;
  bool check, overwrite, no_data;
  int64_t limit_batches, overfit_batches;
} args;

/* A --limit-batches or --overfit-batches count: a whole number >= 1. */
static int batches(const char *option, const char *text, int64_t *out) {
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

static int parse(int argc, char **argv, args *a) {
  static const struct option options[] = {{"logdir", required_argument, NULL, 'l'},
                                          {"device", required_argument, NULL, 'D'},
                                          {"set", required_argument, NULL, 's'},
                                          {"resume", required_argument, NULL, 'r'},
                                          {"check", no_argument, NULL, 'c'},
                                          {"overwrite", no_argument, NULL, 'o'},
                                          {"plugin", required_argument, NULL, 'p'},
                                          {"dist", required_argument, NULL, 'd'},
                                          {"allow-change", required_argument, NULL, 'a'},
                                          {"limit-batches", required_argument, NULL, 'L'},
                                          {"overfit-batches", required_argument, NULL, 'O'},
                                          {"no-data", no_argument, NULL, 'n'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "l:s:r:cp:d:a:h", options, NULL)) != -1;) {
    switch (c) {
    case 'L':
      if (batches("--limit-batches", optarg, &a->limit_batches) != EXIT_DONE)
        return EXIT_USAGE;
      break;
    case 'O':
      if (batches("--overfit-batches", optarg, &a->overfit_batches) != EXIT_DONE)
        return EXIT_USAGE;
      break;
    case 'l': a->logdir = optarg; break;
    case 'D': a->device = optarg; break;
    case 'r': a->resume = optarg; break;
    case 'c': a->check = true; break;
    case 'o': a->overwrite = true; break;
    case 'n': a->no_data = true; break;
    case 'd':
      if (loom_dist_parse(optarg, &(loom_dist){0}) < 0) {
        fprintf(stderr, "loom: --dist: %s\n", loom_last_error());
        return EXIT_USAGE;
      }
      a->dist = optarg;
      break;
    case 's':
      if (a->num_sets == 64) {
        fprintf(stderr, "loom: at most 64 --set options\n");
        return EXIT_USAGE;
      }
      a->sets[a->num_sets++] = optarg;
      break;
    case 'a':
      if (a->num_allowed == 64) {
        fprintf(stderr, "loom: at most 64 --allow-change options\n");
        return EXIT_USAGE;
      }
      a->allowed[a->num_allowed++] = optarg;
      break;
    case 'p':
      if (a->num_plugins == 64) {
        fprintf(stderr, "loom: at most 64 --plugin options\n");
        return EXIT_USAGE;
      }
      a->plugins[a->num_plugins++] = optarg;
      break;
    case 'h': fputs(usage_run, stdout); return EXIT_DONE + 1000;
    default: fputs(usage_run, stderr); return EXIT_USAGE;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "loom: expected one CONFIG file\n%s", usage_run);
    return EXIT_USAGE;
  }
  a->config = argv[optind];
  if (a->overwrite && a->resume) {
    fprintf(stderr, "loom: --overwrite starts the run afresh and --resume continues it: give one of them\n");
    return EXIT_USAGE;
  }
  return EXIT_DONE;
}

/* What `loom tune lr` sweeps. */
typedef struct sweep_args {
  const char *stage;
  loom_lr_finder_options finder;
} sweep_args;

/* A config's error, printed, as the exit code (EXIT_DONE for none). */
static int config_error(int rc) {
  if (rc >= 0)
    return EXIT_DONE;
  fprintf(stderr, "loom: error: %s\n", loom_last_error());
  return rc == LOOM_ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
}

/* Loads the config with the command line's plugins (recorded in the
 * resolved config) and overrides, reduced to a sweep when asked, not yet
 * built. */
static int prepare(const args *a, const sweep_args *sweep, loom_config **config) {
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
    snprintf(device_set, sizeof device_set, "experiment.device=%s", a->device);
    rc = loom_config_set(*config, device_set);
  }
  if (rc == 0 && sweep)
    rc = loom_config_lr_sweep(*config, sweep->stage, sweep->finder.steps);
  return config_error(rc);
}

/* prepare(), then the build. */
static int load(const args *a, const sweep_args *sweep, loom_config **config, loom_experiment **exp) {
  int code = prepare(a, sweep, config);
  if (code != EXIT_DONE)
    return code;
  int rc = loom_config_build(*config, exp);
  return config_error(rc);
}

/* --no-data: loom_config_validate (no data read, no model allocated). */
static int cmd_validate(const args *a) {
  loom_config *config;
  loom_experiment *exp = NULL;
  int code = a->no_data ? prepare(a, NULL, &config) : load(a, NULL, &config, &exp);
  if (code == EXIT_DONE && a->no_data)
    code = config_error(loom_config_validate(config));
  if (code == EXIT_DONE && a->no_data) {
    printf("%s: ok without its data (loom validate without --no-data also reads the data and builds the model)\n",
           a->config);
  } else if (code == EXIT_DONE) {
    size_t stages = loom_experiment_num_stages(exp);
    printf("%s: ok (%zu stage%s)\n", a->config, stages, stages == 1 ? "" : "s");
  }
  loom_experiment_destroy(exp);
  loom_config_destroy(config);
  return code;
}

/* The ranks: --dist, else the config's "distributed"; rank 0 alone
 * writes the resolved config. */
static int open_comm(const args *a, loom_config *config, loom_runner *runner) {
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

/* `arg` for a POSIX shell: as is when every character is safe, else in
 * single quotes (a quote inside as '\''). */
static void put_quoted(FILE *out, const char *arg) {
  bool safe = arg[0] != '\0';
  for (const char *p = arg; *p && safe; p++)
    safe = strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%", *p) != NULL;
  fputc(' ', out);
  if (safe) {
    fputs(arg, out);
    return;
  }
  fputc('\'', out);
  for (const char *p = arg; *p; p++)
    if (*p == '\'')
      fputs("'\\''", out);
    else
      fputc(*p, out);
  fputc('\'', out);
}

/* After an interrupt: the command that continues this run, the command
 * line given (config, plugins, logdir, device, every --set in order, --dist, the
 * allowed changes, --check and the batch limits) with --resume last, and
 * where the checkpoint is. */
static void print_resume_hint(const args *a, const char *logdir) {
  fprintf(stderr, "loom: the checkpoint is in %s/checkpoints\nloom: continue with: loom run", logdir);
  put_quoted(stderr, a->config);
  for (int i = 0; i < a->num_plugins; i++)
    fputs(" --plugin", stderr), put_quoted(stderr, a->plugins[i]);
  if (a->logdir)
    fputs(" --logdir", stderr), put_quoted(stderr, a->logdir);
  if (a->device)
    fputs(" --device", stderr), put_quoted(stderr, a->device);
  for (int i = 0; i < a->num_sets; i++)
    fputs(" --set", stderr), put_quoted(stderr, a->sets[i]);
  if (a->dist)
    fputs(" --dist", stderr), put_quoted(stderr, a->dist);
  for (int i = 0; i < a->num_allowed; i++)
    fputs(" --allow-change", stderr), put_quoted(stderr, a->allowed[i]);
  if (a->check)
    fputs(" --check", stderr);
  if (a->limit_batches)
    fprintf(stderr, " --limit-batches %lld", (long long)a->limit_batches);
  if (a->overfit_batches)
    fprintf(stderr, " --overfit-batches %lld", (long long)a->overfit_batches);
  fputs(" --resume last\n", stderr);
}

/* config.json and config_history.jsonl, written once the run starts (a
 * resume refused leaves them as they were); nothing for a finished run. */
static int record_run(loom_callback *cb, loom_runner *r) {
  if (loom_runner_resumed_finished(r))
    return 0;
  int rc = loom_runner_lock_logdir(r);
  return rc < 0 ? rc : loom_config_record_run(loom_callback_data(cb), r);
}

static const loom_callback_ops record_ops = {.type = "resolved_config", .on_experiment_start = record_run};

/* Other ranks print no console output (the console logger is the
 * master's), only warnings and errors: loom's notices, on stderr, saying
 * whose. */
static size_t notices_shown;

static int warn_notices(loom_callback *cb, loom_runner *r) {
  (void)cb;
  for (; notices_shown < loom_notice_count(); notices_shown++)
    fprintf(stderr, "[rank %d] warning: %s\n", loom_runner_rank(r), loom_notice(notices_shown));
  return 0;
}

static const loom_callback_ops rank_warnings_ops = {.type = "rank_warnings",
                                                    .on_experiment_start = warn_notices,
                                                    .on_epoch_end = warn_notices,
                                                    .on_experiment_end = warn_notices};

/* --check without --logdir: a fresh directory under $TMPDIR (or /tmp), so
 * that a smoke test leaves the experiment's logdir alone; kept afterwards. */
static int check_logdir(char *dir, size_t size) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, size, "%s/loom-check-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
  if (!mkdtemp(dir)) {
    fprintf(stderr, "loom: error: --check cannot make its logdir %s: %s (set TMPDIR, or give --logdir)\n", dir,
            strerror(errno));
    return EXIT_RUNTIME;
  }
  printf("loom: --check writes into %s (give --logdir to choose)\n", dir);
  fflush(stdout);
  return EXIT_DONE;
}

static int cmd_run(const args *given) {
  args check_args = *given;
  const args *a = &check_args;
  char tmp_logdir[4096];
  if (given->check && !given->logdir) {
    int code = check_logdir(tmp_logdir, sizeof tmp_logdir);
    if (code != EXIT_DONE)
      return code;
    check_args.logdir = tmp_logdir;
  }
  loom_config *config;
  loom_experiment *exp = NULL;
  int code = load(a, NULL, &config, &exp);
  loom_runner *runner = NULL;
  if (code == EXIT_DONE && !(runner = loom_runner_create())) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE)
    code = open_comm(a, config, runner);
  /* Other ranks' messages say whose they are. */
  char who[32] = "";
  if (runner && !loom_runner_is_master(runner))
    snprintf(who, sizeof who, "[rank %d] ", loom_runner_rank(runner));
  loom_callback *record = code == EXIT_DONE ? loom_callback_create(&record_ops, config, LOOM_ORDER_INTERNAL) : NULL;
  if (record)
    loom_callback_set_node(record, LOOM_NODE_MASTER);
  loom_callback *warnings = code == EXIT_DONE ? loom_callback_create(&rank_warnings_ops, NULL, LOOM_ORDER_LOGGING) : NULL;
  if (warnings)
    loom_callback_set_node(warnings, LOOM_NODE_WORKERS);
  if (code == EXIT_DONE && (!warnings || loom_experiment_add_callback(exp, warnings) < 0)) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE && (!record || loom_experiment_add_callback(exp, record) < 0)) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  for (int i = 0; i < a->num_allowed && code == EXIT_DONE; i++)
    if (loom_runner_allow_change(runner, a->allowed[i]) < 0)
      code = EXIT_RUNTIME;
  if (code == EXIT_DONE) {
    loom_run_options o = loom_run_options_defaults();
    o.check = a->check;
    o.limit_batches = a->limit_batches;
    o.overfit_batches = a->overfit_batches;
    o.overwrite = a->overwrite;
    loom_runner_set_options(runner, &o);
    if (a->resume && loom_runner_set_resume(runner, a->resume) < 0)
      code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE) {
    if (loom_runner_world_size(runner) > 1)
      loom_cli_hold_late_signals();
    int rc = loom_run_experiment(runner, exp);
    if (rc == LOOM_EINTERRUPTED) {
      fprintf(stderr, "%sloom: %s\n", who, loom_last_error()); /* every rank says where it stopped */
      if (!who[0])
        print_resume_hint(a, loom_experiment_logdir(exp));
      code = EXIT_INTERRUPTED;
    } else if (rc < 0) {
      fprintf(stderr, "%sloom: error: %s\n", who, loom_last_error());
      code = rc == LOOM_EEXIST ? EXIT_USAGE : EXIT_RUNTIME; /* a logdir refused: the command must change */
    } else if (!who[0] && loom_runner_resumed_finished(runner)) {
      printf("loom: the run in %s had already finished: nothing to run\n", loom_experiment_logdir(exp));
    }
  }
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  loom_config_destroy(config);
  return code;
}

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
      code = batches("--steps", optarg, &sw->finder.steps);
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
    case 'h': fputs(usage_tune, stdout); return EXIT_DONE + 1000;
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
static int cmd_tune(int argc, char **argv) {
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
    return code == EXIT_DONE + 1000 ? EXIT_DONE : code;
  loom_config *config;
  loom_experiment *exp = NULL;
  loom_runner *runner = NULL;
  loom_callback *finder = NULL;
  code = load(&a, &sw, &config, &exp);
  if (code == EXIT_DONE)
    code = add_finder(exp, &sw, &finder);
  if (code == EXIT_DONE && !(runner = loom_runner_create())) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE)
    code = open_comm(&a, config, runner);
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

#define CONVERT_LINE "loom convert idx OUT.h5 --images FILE --labels FILE"
static const char usage_convert[] =
    "usage: " CONVERT_LINE "\n"
    "\n"
    "Writes IDX images and labels (gzip'd or not) as the HDF5 datasets \"images\"\n"
    "and \"labels\" of OUT.h5, creating its directory; idx is the only format.\n";

/* loom convert idx OUT.h5 --images FILE --labels FILE */
static int cmd_convert(int argc, char **argv) {
  static const struct option options[] = {{"images", required_argument, NULL, 'i'},
                                          {"labels", required_argument, NULL, 'l'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  const char *images = NULL, *labels = NULL;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "i:l:h", options, NULL)) != -1;) {
    if (c == 'i') {
      images = optarg;
    } else if (c == 'l') {
      labels = optarg;
    } else if (c == 'h') {
      fputs(usage_convert, stdout);
      return EXIT_DONE;
    } else {
      return EXIT_USAGE; /* getopt said which option */
    }
  }
  char problem[300] = "";
  if (optind == argc)
    snprintf(problem, sizeof problem, "expected a format and OUT.h5 (" CONVERT_LINE ")");
  else if (strcmp(argv[optind], "idx") != 0)
    snprintf(problem, sizeof problem, "no converter for \"%.100s\"; loom converts idx files (" CONVERT_LINE ")",
             argv[optind]);
  else if (optind != argc - 2)
    snprintf(problem, sizeof problem, "expected one OUT.h5 after idx (" CONVERT_LINE ")");
  else if (!images || !labels)
    snprintf(problem, sizeof problem, "--images FILE and --labels FILE are both required");
  if (*problem) {
    fprintf(stderr, "loom: convert: %s\n", problem);
    return EXIT_USAGE;
  }
  if (loom_idx_to_hdf5(images, labels, argv[optind + 1]) < 0) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    return loom_last_error_code() == LOOM_EIO ? EXIT_RUNTIME : EXIT_USAGE;
  }
  printf("wrote %s\n", argv[optind + 1]);
  return EXIT_DONE;
}

static const char usage_deploy[] =
    "usage: loom predict CONFIG [--resume best|last|PATH] [--dataset FILE] --out FILE.h5|FILE.csv\n"
    "                    [--plugin LIB]... [--logdir DIR] [--set KEY=VALUE]...\n"
    "       loom export CONFIG [--resume best|last|PATH] [--onnx FILE.onnx] [--weights FILE.h5]\n"
    "                    [--plugin LIB]... [--logdir DIR] [--set KEY=VALUE]...\n"
    "\n"
    "  --resume WHAT   the weights: best (the default) or last in the logdir, or a\n"
    "                  checkpoint or weights file\n"
    "  --dataset FILE  predict an HDF5 (.h5) or CSV (.csv) file, labelled or not,\n"
    "                  prepared as the config's infer loader prepares its samples,\n"
    "                  instead of the config's infer* loaders\n"
    "  --out FILE      the predictions: per loader the sample indices and the\n"
    "                  outputs, as HDF5 or (FILE.csv) CSV\n"
    "  --onnx FILE     the model as ONNX (opset 13)\n"
    "  --weights FILE  the weights as HDF5 (names, shapes, dtypes), and beside it\n"
    "                  FILE.json: the architecture (the config's model section)\n"
    "\n"
    "The model runs in evaluation mode (Dropout off, BatchNorm's running\n"
    "statistics). docs/predict-export.md has examples.\n";

typedef struct deploy_args {
  args base; /* config, plugins, sets, logdir, resume */
  const char *dataset, *out, *onnx, *weights;
} deploy_args;

/* The options of loom predict and loom export. */
static int parse_deploy(int argc, char **argv, bool predict, deploy_args *d) {
  static const struct option options[] = {{"logdir", required_argument, NULL, 'l'},
                                          {"set", required_argument, NULL, 's'},
                                          {"resume", required_argument, NULL, 'r'},
                                          {"plugin", required_argument, NULL, 'p'},
                                          {"dataset", required_argument, NULL, 'D'},
                                          {"out", required_argument, NULL, 'o'},
                                          {"onnx", required_argument, NULL, 'x'},
                                          {"weights", required_argument, NULL, 'w'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  args *a = &d->base;
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "l:s:r:p:o:h", options, NULL)) != -1;) {
    const char **list = c == 's' ? a->sets : a->plugins;
    int *n = c == 's' ? &a->num_sets : &a->num_plugins;
    switch (c) {
    case 'l': a->logdir = optarg; break;
    case 'r': a->resume = optarg; break;
    case 'D': d->dataset = optarg; break;
    case 'o': d->out = optarg; break;
    case 'x': d->onnx = optarg; break;
    case 'w': d->weights = optarg; break;
    case 's':
    case 'p':
      if (*n == 64) {
        fprintf(stderr, "loom: at most 64 --%s options\n", c == 's' ? "set" : "plugin");
        return EXIT_USAGE;
      }
      list[(*n)++] = optarg;
      break;
    case 'h': fputs(usage_deploy, stdout); return EXIT_DONE + 1000;
    default: fputs(usage_deploy, stderr); return EXIT_USAGE;
    }
  }
  const char *problem = NULL;
  if (optind != argc - 1)
    problem = "expected one CONFIG file";
  else if (predict && (d->onnx || d->weights))
    problem = "--onnx and --weights are options of loom export";
  else if (!predict && (d->dataset || d->out))
    problem = "--dataset and --out are options of loom predict";
  else if (predict && !d->out)
    problem = "loom predict needs --out FILE.h5 or --out FILE.csv";
  else if (!predict && !d->onnx && !d->weights)
    problem = "loom export needs --onnx FILE.onnx, --weights FILE.h5, or both";
  if (problem) {
    fprintf(stderr, "loom: %s\n%s", problem, usage_deploy);
    return EXIT_USAGE;
  }
  a->config = argv[optind];
  return EXIT_DONE;
}

/* loom predict / loom export: a config's trained model, put to use. */
static int cmd_deploy(int argc, char **argv, bool predict) {
  deploy_args d = {0};
  int code = parse_deploy(argc, argv, predict, &d);
  if (code != EXIT_DONE)
    return code == EXIT_DONE + 1000 ? EXIT_DONE : code;
  loom_config *config = NULL;
  if ((code = prepare(&d.base, NULL, &config)) != EXIT_DONE)
    return code;
  char used[4096] = "";
  int rc;
  if (predict) {
    loom_predict_options o = {.resume = d.base.resume, .dataset = d.dataset, .out = d.out};
    rc = loom_predict_config(config, &o, used, sizeof used);
  } else {
    loom_export_options o = {.resume = d.base.resume, .onnx = d.onnx, .weights = d.weights};
    rc = loom_export_config(config, &o, used, sizeof used);
  }
  if (rc < 0) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = rc == LOOM_EIO || rc == LOOM_ENOMEM ? EXIT_RUNTIME : EXIT_USAGE;
  } else if (predict) {
    printf("loom: predicted with the weights of %s into %s\n", used, d.out);
  } else {
    printf("loom: exported the weights of %s:", used);
    if (d.onnx)
      printf(" %s", d.onnx);
    if (d.weights)
      printf(" %s (architecture beside it)", d.weights);
    putchar('\n');
  }
  loom_config_destroy(config);
  return code;
}

int main(int argc, char **argv) {
  if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage_main, argc < 2 ? stderr : stdout);
    return argc < 2 ? EXIT_USAGE : EXIT_DONE;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("loom %s\n", LOOM_VERSION);
    return EXIT_DONE;
  }
  if (strcmp(argv[1], "convert") == 0)
    return cmd_convert(argc - 1, argv + 1);
  if (strcmp(argv[1], "grid") == 0 && argc > 2 && strcmp(argv[2], "results") == 0)
    return loom_cli_grid_results(argc - 2, argv + 2);
  if (strcmp(argv[1], "grid") == 0)
    return loom_cli_grid(argc - 1, argv + 1);
  if (strcmp(argv[1], "predict") == 0 || strcmp(argv[1], "export") == 0)
    return cmd_deploy(argc - 1, argv + 1, strcmp(argv[1], "predict") == 0);
  if (strcmp(argv[1], "tune") == 0)
    return cmd_tune(argc - 1, argv + 1);
  bool run = strcmp(argv[1], "run") == 0;
  if (!run && strcmp(argv[1], "validate") != 0) {
    fprintf(stderr, "loom: unknown command \"%s\"\n%s", argv[1], usage_main);
    return EXIT_USAGE;
  }
  args a = {0};
  int code = parse(argc - 1, argv + 1, &a);
  if (code == EXIT_DONE + 1000)
    return EXIT_DONE;
  if (code != EXIT_DONE)
    return code;
  if (run && a.no_data) {
    fprintf(stderr, "loom: --no-data is an option of loom validate: a run reads its data\n");
    return EXIT_USAGE;
  }
  return run ? cmd_run(&a) : cmd_validate(&a);
}
