/* Components of your own, used from a JSON config by the loom command: this
 * plugin registers a model ("width_depth_mlp": an MLP given by width and
 * depth) and a callback ("gap": the train-valid accuracy gap as an epoch
 * metric, and a warning when it passes a limit). Built as a module
 * (build/lib/libcustom_components.so), it is loaded with
 *
 *   build/bin/loom run examples/configs/custom_components.json --plugin build/lib/libcustom_components.so
 *
 * or by a config's "plugins": ["path/to/libcustom_components.so"]. */
#include <stdio.h>
#include <stdlib.h>

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

static int init(void) {
  int rc = loom_register(LOOM_KIND_MODEL, "width_depth_mlp", make_mlp, NULL);
  return rc < 0 ? rc : loom_register(LOOM_KIND_CALLBACK, "gap", make_gap, NULL);
}

LOOM_PLUGIN("custom_components", init);
