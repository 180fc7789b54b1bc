/* A plugin as a user writes one: an optimizer (sign-SGD) and a callback
 * that writes what the run did to <logdir>/<file>. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

static int sign_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                        int64_t step, double lr, double wd) {
  (void)data, (void)state, (void)total, (void)step, (void)wd;
  for (size_t i = off; i < off + len; i++)
    p[i] -= (float)lr * (float)((g[i] > 0) - (g[i] < 0));
  return 0;
}

static const loom_optimizer_ops sign_ops = {.type = "plugin_sign_sgd", .elementwise = true, .update = sign_update};

static void *make_sign_sgd(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double lr;
  if (loom_params_number(p, "lr", NAN, 0, 1e300, &lr) < 0)
    return NULL;
  return loom_optimizer_create(&sign_ops, NULL, lr);
}

static int marker_end(loom_callback *cb, loom_runner *r) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", loom_runner_logdir(r), (const char *)loom_callback_data(cb));
  FILE *f = fopen(path, "w");
  if (!f)
    return loom_error_set(LOOM_EIO, "plugin_marker: cannot write %s", path);
  fprintf(f, "steps %lld %s\n", (long long)loom_runner_optimizer_step_count(r),
          loom_optimizer_type(loom_runner_optimizer(r)));
  fclose(f);
  return 0;
}

static void free_name(void *data) { free(data); }

static const loom_callback_ops marker_ops = {
    .type = "plugin_marker", .on_experiment_end = marker_end, .destroy = free_name};

static void *make_marker(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const char *file;
  if (loom_params_string(p, "file", "marker.txt", &file) < 0)
    return NULL;
  char *copy = malloc(strlen(file) + 1);
  if (!copy)
    return NULL;
  strcpy(copy, file);
  return loom_callback_create(&marker_ops, copy, LOOM_ORDER_LOGGING);
}

static int init(void) {
  int rc = loom_register(LOOM_KIND_OPTIMIZER, "plugin_sign_sgd", make_sign_sgd, NULL);
  return rc < 0 ? rc : loom_register(LOOM_KIND_CALLBACK, "plugin_marker", make_marker, NULL);
}

LOOM_PLUGIN("good", init);
