/* Components of your own, used from a JSON config: this program registers
 * a model ("width_depth_mlp": an MLP given by width and depth) and a
 * callback ("gap": the train-valid accuracy gap as an epoch metric, and a
 * warning when it passes a limit), then runs a config that names them.
 *
 *   build/bin/custom_components [CONFIG] [--set KEY=VALUE]... [--check]
 *   (default CONFIG: examples/configs/custom_components.json) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

/* {"type": "width_depth_mlp", "width": 256, "depth": 2, "classes": 10} */
static void *make_mlp(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_model_context *ctx = context;
  int64_t width, depth, classes;
  if (loom_params_int(p, "width", 256, 1, 1 << 20, &width) < 0 || loom_params_int(p, "depth", 2, 1, 32, &depth) < 0 ||
      loom_params_int(p, "classes", LOOM_REQUIRED_INT, 2, 1 << 20, &classes) < 0)
    return NULL;
  int64_t sizes[34] = {1};
  for (int i = 0; i < ctx->ndim; i++)
    sizes[0] *= ctx->sample_shape[i];
  for (int i = 1; i <= depth; i++)
    sizes[i] = width;
  sizes[depth + 1] = classes;
  return loom_mlp_create(sizes, (int)depth + 2, ctx->seed);
}

typedef struct gap {
  double warn_above;
} gap;

static int gap_epoch_end(loom_callback *cb, loom_runner *runner) {
  const gap *g = loom_callback_data(cb);
  loom_metrics *m = loom_runner_epoch_metrics(runner);
  double train, valid;
  if (!loom_metrics_get(m, "train/accuracy", &train) || !loom_metrics_get(m, "valid/accuracy", &valid))
    return 0;
  if (train - valid > g->warn_above)
    printf("gap: train accuracy is %.3f above valid: overfitting?\n", train - valid);
  return loom_metrics_set(m, "gap", train - valid);
}

static const loom_callback_ops gap_ops = {.type = "gap", .on_epoch_end = gap_epoch_end, .destroy = free};

/* {"type": "gap", "warn_above": 0.05} */
static void *make_gap(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  gap *g = malloc(sizeof *g);
  if (!g || loom_params_number(p, "warn_above", 0.05, 0, 1, &g->warn_above) < 0) {
    free(g);
    return NULL;
  }
  return loom_callback_create(&gap_ops, g, LOOM_ORDER_METRIC_AGGREGATION);
}

int main(int argc, char **argv) {
  const char *path = "examples/configs/custom_components.json";
  loom_run_options options = loom_run_options_default();
  if (loom_register(LOOM_KIND_MODEL, "width_depth_mlp", make_mlp, NULL) < 0 ||
      loom_register(LOOM_KIND_CALLBACK, "gap", make_gap, NULL) < 0) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    return 1;
  }
  int first_set = 1;
  if (argc > 1 && argv[1][0] != '-')
    path = argv[1], first_set = 2;
  loom_config *config = loom_config_load(path);
  if (!config) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    return 2;
  }
  int rc = 0;
  for (int i = first_set; i < argc && rc == 0; i++) {
    if (strcmp(argv[i], "--check") == 0)
      options.check = true;
    else if (strcmp(argv[i], "--set") == 0 && i + 1 < argc)
      rc = loom_config_set(config, argv[++i]);
    else
      rc = loom_error_set(LOOM_EINVAL, "unexpected argument \"%s\" (usage: custom_components [CONFIG] "
                                       "[--set KEY=VALUE]... [--check])",
                          argv[i]);
  }
  loom_experiment *exp = NULL;
  if (rc == 0)
    rc = loom_config_build(config, &exp);
  loom_runner *runner = rc == 0 ? loom_runner_create() : NULL;
  if (runner) {
    loom_runner_set_options(runner, &options);
    rc = loom_run_experiment(runner, exp);
  }
  if (rc < 0)
    fprintf(stderr, "error: %s\n", loom_last_error());
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  loom_config_destroy(config);
  return rc == LOOM_EINTERRUPTED ? 130 : rc < 0 ? 1 : 0;
}
