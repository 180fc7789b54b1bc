/* loom predict and loom export: a trained model's predictions and its
 * weights in other formats. */
#include "cli/cli_common.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    case 'h': fputs(usage_deploy, stdout); return EXIT_HELP;
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
int loom_cli_deploy(int argc, char **argv, bool predict) {
  deploy_args d = {0};
  int code = parse_deploy(argc, argv, predict, &d);
  if (code != EXIT_DONE)
    return code == EXIT_HELP ? EXIT_DONE : code;
  loom_config *config = NULL;
  if ((code = loom_cli_prepare(&d.base, NULL, &config)) != EXIT_DONE)
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
