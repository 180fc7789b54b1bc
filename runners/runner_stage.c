/* Preparing a stage: the components it inherits, its loaders, a hand-built
 * model's shapes, the carry-over rules and its callback table. */
#include "runners/runner_impl.h"

#include <stdlib.h>
#include <string.h>

bool loom_loader_kind_from_name(const char *name, loom_loader_kind *kind) {
  static const char *const prefixes[] = {[LOOM_LOADER_TRAIN] = "train", [LOOM_LOADER_VALID] = "valid",
                                         [LOOM_LOADER_INFER] = "infer"};
  for (int k = 0; k < 3; k++)
    if (strncmp(name, prefixes[k], 5) == 0) {
      *kind = (loom_loader_kind)k;
      return true;
    }
  return false;
}

/* The stage's carry-over rules: frozen layers, optimizer reset, weights. */
static int carry_over(loom_runner *r, const loom_stage *s, bool load) {
  if (r->model) {
    loom_model_unfreeze_all(r->model);
    for (size_t i = 0; i < s->num_frozen; i++)
      if (loom_model_set_frozen(r->model, s->frozen[i], true) < 0)
        return loom_error_wrap(LOOM_EINVAL, "stage \"%s\": cannot freeze", s->name);
  } else if (s->num_frozen) {
    return loom_error_set(LOOM_EINVAL, "stage \"%s\" freezes layers but has no model", s->name);
  }
  if (s->reset_optimizer && r->optimizer)
    loom_optimizer_reset(r->optimizer);
  if (!load || !s->load_weights || !r->model)
    return 0;
  char path[4096];
  loom_checkpoint *c = loom_runner_open_checkpoint(r, s->load_weights, path, sizeof path);
  if (!c)
    return loom_error_wrap(loom_last_error_code(), "stage \"%s\": cannot load the %s weights (does a checkpoint "
                                                   "callback save them?)",
                           s->name, s->load_weights);
  const loom_state *m = loom_checkpoint_find(c, "model");
  int rc = m ? loom_model_load(r->model, m, false) : loom_error_set(LOOM_EFORMAT, "%s holds no model", path);
  loom_checkpoint_destroy(c);
  return rc;
}

/* Components a stage does not set are the previous stage's. */
int loom_runner_prepare_stage(loom_runner *r, size_t index, bool load) {
  const loom_stage *s = loom_experiment_stage(r->exp, index);
  r->stage = s;
  r->stage_index = (int)index;
  if (s->model)
    r->model = s->model;
  if (s->criterion)
    r->criterion = s->criterion;
  if (s->optimizer)
    r->optimizer = s->optimizer;
  if (s->num_loaders) {
    r->loaders = s->loaders;
    r->num_loaders = s->num_loaders;
  }
  if (r->num_loaders == 0)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\" has no loaders; add one with loom_stage_add_loader", s->name);
  for (size_t i = 0; i < r->num_loaders; i++)
    if (!loom_loader_kind_from_name(r->loaders[i].name, &(loom_loader_kind){0}))
      return loom_error_set(LOOM_EINVAL,
                            "stage \"%s\": loader \"%s\": a loader's name must start with \"train\", "
                            "\"valid\" or \"infer\" (it decides whether the loader trains)",
                            s->name, r->loaders[i].name);
  /* An empty loader would run epochs of nothing and report no metrics:
   * refuse it at the stage's start, naming it. */
  for (size_t i = 0; i < r->num_loaders; i++) {
    const loom_loader *l = r->loaders[i].loader;
    int64_t n = loom_dataset_length(loom_loader_dataset(l)), b = loom_loader_batch_size(l);
    if (loom_loader_max_batches(l) == 0)
      return loom_error_set(LOOM_EINVAL,
                            n == 0 ? "stage \"%s\": loader \"%s\" has no samples (its dataset is empty): check the "
                                     "dataset's files"
                                   : "stage \"%s\": loader \"%s\" has no batches: %lld samples, batch_size %lld and "
                                     "drop_last; lower batch_size or turn drop_last off",
                            s->name, r->loaders[i].name, (long long)n, (long long)b);
  }
  /* A hand-made model nobody built takes the first loader's sample shape
   * and the experiment's seed, as a config's model does. */
  if (r->model && !loom_model_is_built(r->model)) {
    const loom_dataset *ds = loom_loader_dataset(r->loaders[0].loader);
    int rc = loom_model_build(r->model, loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds),
                              loom_experiment_seed(r->exp));
    if (rc < 0)
      return loom_error_wrap(rc, "stage \"%s\": building the model for the samples of loader \"%s\"", s->name,
                             r->loaders[0].name);
  }
  loom_backend *backend = loom_experiment_backend(r->exp);
  if (r->model && backend && loom_model_backend(r->model) != backend) {
    int rc = loom_model_set_backend(r->model, backend);
    if (rc < 0)
      return loom_error_wrap(rc, "stage \"%s\": moving the model to backend \"%s\"", s->name,
                             loom_backend_name(backend));
  }
  r->valid_loader = s->valid_loader;
  r->main_metric = s->main_metric;
  r->minimize = s->minimize;
  r->have_best = false;
  r->best_min_delta = 0, r->best_delta_relative = false;
  r->best_epoch = 0;
  loom_metrics_clear(r->best_valid_metrics);
  r->epoch = 0;
  r->num_epochs = s->num_epochs;
  if (r->options.check && r->num_epochs > 2)
    r->num_epochs = 2;
  r->stop_flags = 0;
  r->manual_step = false;

  /* Every rank trains the master's weights, however its own were made. */
  int rc = carry_over(r, s, load);
  if (rc == 0)
    rc = loom_runner_share_weights(r, false);
  if (rc < 0)
    return rc;
  loom_callback_table_free(&r->stage_table);
  loom_runner_results_end(r); /* the last stage's callbacks' */
  return loom_experiment_build_table(r->exp, (int)index, loom_comm_rank(r->comm), &r->stage_table);
}
