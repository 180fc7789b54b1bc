/* loom: run or validate an experiment described in JSON; the other
 * commands are in cli/(tune,convert,deploy,grid)_cmd.c.
 * Exit codes: 0 done, 1 runtime failure, 2 usage or config error,
 * 130 interrupted (a checkpoint was saved). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

#include "cli/cli_common.h"
#include "cli/grid_cmd.h"
#include "cli/grid_results_cmd.h"
#include "cli/late_signals.h"



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
    "                [--check] [--overwrite] [--allow-change KEY]... [--dist auto|local|mpi] [--host-staged-grads]\n"
    "                [--no-graphs] [--limit-batches N] [--overfit-batches N]\n"
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
    "  --host-staged-grads  under mpirun with a GPU, average the gradients through\n"
    "                     host copies over MPI, not with NCCL on the GPUs\n"
    "  --no-graphs        on a GPU, run every training step op by op instead of\n"
    "                     replaying it as a graph once its shapes repeat\n"
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
                                          {"host-staged-grads", no_argument, NULL, 'H'},
                                          {"no-graphs", no_argument, NULL, 'G'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  optind = 1;
  for (int c; (c = getopt_long(argc, argv, "l:s:r:cp:d:a:h", options, NULL)) != -1;) {
    switch (c) {
    case 'L':
      if (loom_cli_batches("--limit-batches", optarg, &a->limit_batches) != EXIT_DONE)
        return EXIT_USAGE;
      break;
    case 'O':
      if (loom_cli_batches("--overfit-batches", optarg, &a->overfit_batches) != EXIT_DONE)
        return EXIT_USAGE;
      break;
    case 'l': a->logdir = optarg; break;
    case 'D': a->device = optarg; break;
    case 'r': a->resume = optarg; break;
    case 'c': a->check = true; break;
    case 'o': a->overwrite = true; break;
    case 'n': a->no_data = true; break;
    case 'H': a->host_staged_grads = true; break;
    case 'G': a->no_graphs = true; break;
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
    case 'h': fputs(usage_run, stdout); return EXIT_HELP;
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

/* --no-data: loom_config_validate (no data read, no model allocated). */
static int cmd_validate(const args *a) {
  loom_config *config;
  loom_experiment *exp = NULL;
  int code = a->no_data ? loom_cli_prepare(a, NULL, &config) : loom_cli_load(a, NULL, &config, &exp);
  if (code == EXIT_DONE && a->no_data)
    code = loom_cli_config_error(loom_config_validate(config));
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
  int code = loom_cli_load(a, NULL, &config, &exp);
  loom_runner *runner = NULL;
  if (code == EXIT_DONE && !(runner = loom_runner_create())) {
    fprintf(stderr, "loom: error: %s\n", loom_last_error());
    code = EXIT_RUNTIME;
  }
  if (code == EXIT_DONE)
    code = loom_cli_open_comm(a, config, runner);
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
    o.host_staged_grads = a->host_staged_grads;
    o.no_graphs = a->no_graphs;
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
    return loom_cli_convert(argc - 1, argv + 1);
  if (strcmp(argv[1], "grid") == 0 && argc > 2 && strcmp(argv[2], "results") == 0)
    return loom_cli_grid_results(argc - 2, argv + 2);
  if (strcmp(argv[1], "grid") == 0)
    return loom_cli_grid(argc - 1, argv + 1);
  if (strcmp(argv[1], "predict") == 0 || strcmp(argv[1], "export") == 0)
    return loom_cli_deploy(argc - 1, argv + 1, strcmp(argv[1], "predict") == 0);
  if (strcmp(argv[1], "tune") == 0)
    return loom_cli_tune(argc - 1, argv + 1);
  bool run = strcmp(argv[1], "run") == 0;
  if (!run && strcmp(argv[1], "validate") != 0) {
    fprintf(stderr, "loom: unknown command \"%s\"\n%s", argv[1], usage_main);
    return EXIT_USAGE;
  }
  args a = {0};
  int code = parse(argc - 1, argv + 1, &a);
  if (code == EXIT_HELP)
    return EXIT_DONE;
  if (code != EXIT_DONE)
    return code;
  if (run && a.no_data) {
    fprintf(stderr, "loom: --no-data is an option of loom validate: a run reads its data\n");
    return EXIT_USAGE;
  }
  return run ? cmd_run(&a) : cmd_validate(&a);
}
