/* loom grid validate|run: the options, then loom/grid.h does the work. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <loom.h>

#include "cli/grid_cmd.h"

static const char usage_grid[] =
    "usage: loom grid validate GRID.json [--grid KEY=V1,V2,...]...\n"
    "       loom grid run GRID.json --workers N [--dir DIR] [--threads-per-worker T] [--cpus LIST]\n"
    "                     [--timeout S] [--kill-after S] [--retries K] [--shard i/n] [--grid KEY=V1,V2,...]...\n"
    "\n"
    "  --grid KEY=V1,V2    one more option of the grid, multiplied with the file's\n"
    "  --dir DIR           the grid's directory (default: GRID without .json, here)\n"
    "  --workers N         experiments run at once, each a loom run process\n"
    "  --threads-per-worker T  each one's LOOM_NUM_THREADS (default: cores / N)\n"
    "  --cpus LIST         pin worker w to the w-th CPU list (mod their number):\n"
    "                      lists as taskset's, separated by ':' (0-3:4-7)\n"
    "  --timeout S         an experiment running longer gets SIGTERM (it saves\n"
    "                      its checkpoint), then SIGKILL --kill-after S later (10)\n"
    "  --retries K         run a failed experiment up to K more times\n"
    "  --shard i/n         run only experiments whose index mod n is i (also\n"
    "                      implied by an MPI launcher's rank and size)\n"
    "\n"
    "docs/grid.md describes the grid file, the directory and results.jsonl. Run\n"
    "the same command again to resume: finished experiments are skipped,\n"
    "interrupted ones resume from last.h5, failed ones run again. Exit codes:\n"
    "0 all done, 1 some failed, 2 usage or grid error, 130 interrupted.\n";

enum { DONE = 0, RUNTIME = 1, USAGE = 2, INTERRUPTED = 130 };

static int number(const char *option, const char *text, double min, double *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end || errno || !(v >= min)) {
    fprintf(stderr, "loom grid: %s: expected a number >= %g, got \"%s\"\n", option, min, text);
    return USAGE;
  }
  *out = v;
  return DONE;
}

static int shard(const char *text, loom_grid_run_options *o) {
  char tail;
  if (sscanf(text, "%d/%d%c", &o->shard, &o->num_shards, &tail) != 2 || o->num_shards < 1 || o->shard < 0 ||
      o->shard >= o->num_shards) {
    fprintf(stderr, "loom grid: --shard %s: expected i/n with 0 <= i < n, e.g. 0/4\n", text);
    return USAGE;
  }
  return DONE;
}

static int parse(int argc, char **argv, loom_grid_run_options *o, const char **options, size_t *n) {
  static const struct option longs[] = {{"dir", required_argument, NULL, 'd'},
                                        {"workers", required_argument, NULL, 'w'},
                                        {"threads-per-worker", required_argument, NULL, 't'},
                                        {"cpus", required_argument, NULL, 'c'},
                                        {"timeout", required_argument, NULL, 'T'},
                                        {"kill-after", required_argument, NULL, 'K'},
                                        {"retries", required_argument, NULL, 'r'},
                                        {"shard", required_argument, NULL, 's'},
                                        {"grid", required_argument, NULL, 'g'},
                                        {"help", no_argument, NULL, 'h'},
                                        {NULL, 0, NULL, 0}};
  optind = 1;
  double v;
  int code = DONE;
  for (int c; code == DONE && (c = getopt_long(argc, argv, "h", longs, NULL)) != -1;) {
    switch (c) {
    case 'd': o->dir = optarg; break;
    case 'c': o->cpus = optarg; break;
    case 'w': if ((code = number("--workers", optarg, 1, &v)) == DONE) o->workers = (int)v; break;
    case 't': if ((code = number("--threads-per-worker", optarg, 1, &v)) == DONE) o->threads_per_worker = (int)v; break;
    case 'T': code = number("--timeout", optarg, 0, &o->timeout_s); break;
    case 'K': code = number("--kill-after", optarg, 0, &o->kill_after_s); break;
    case 'r': if ((code = number("--retries", optarg, 0, &v)) == DONE) o->retries = (int)v; break;
    case 's': code = shard(optarg, o); break;
    case 'g':
      if (*n == 64) {
        fprintf(stderr, "loom grid: at most 64 --grid options\n");
        return USAGE;
      }
      options[(*n)++] = optarg;
      break;
    case 'h': fputs(usage_grid, stdout); return -1;
    default: fputs(usage_grid, stderr); return USAGE;
    }
  }
  if (code == DONE && optind != argc - 1) {
    fprintf(stderr, "loom grid: expected one GRID file\n%s", usage_grid);
    return USAGE;
  }
  return code;
}

int loom_cli_grid(int argc, char **argv) {
  bool run = argc > 1 && strcmp(argv[1], "run") == 0, validate = argc > 1 && strcmp(argv[1], "validate") == 0;
  if (!run && !validate) {
    fputs(usage_grid, argc > 1 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
    return argc > 1 && strcmp(argv[1], "--help") == 0 ? DONE : USAGE;
  }
  loom_grid_run_options o = loom_grid_run_options_defaults();
  o.progress = loom_grid_print_progress;
  const char *options[64];
  size_t n = 0;
  int code = parse(argc - 1, argv + 1, &o, options, &n);
  if (code != DONE)
    return code < 0 ? DONE : code;
  const char *file = argv[argc - 1];
  loom_grid *grid = loom_grid_load(file, options, n);
  /* A grid that does not build is a usage error; one that fails running is not. */
  int rc = grid ? loom_grid_validate(grid) : loom_last_error_code();
  if (rc < 0) {
    fprintf(stderr, "loom grid: error: %s\n", loom_last_error());
    loom_grid_destroy(grid);
    return USAGE;
  }
  if (run) {
    rc = loom_grid_run(grid, &o);
    if (isatty(fileno(stdout)))
      putchar('\n'); /* after the progress line */
  }
  if (rc == LOOM_EINTERRUPTED) {
    fprintf(stderr, "loom grid: %s\n", loom_last_error());
    code = INTERRUPTED;
  } else if (rc < 0) {
    fprintf(stderr, "loom grid: error: %s\n", loom_last_error());
    code = RUNTIME;
  } else if (rc > 0) {
    fprintf(stderr, "loom grid: %d experiment%s failed: see results.jsonl and their stderr.txt\n", rc,
            rc == 1 ? "" : "s");
    code = RUNTIME;
  } else if (validate) {
    size_t e = loom_grid_num_experiments(grid);
    printf("%s: ok (%zu experiment%s)\n", file, e, e == 1 ? "" : "s");
  }
  loom_grid_destroy(grid);
  return code;
}
