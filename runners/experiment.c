#include "runners/experiment_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/array.h"
#include "core/names.h"
#include "loom/backend_cpu.h"
#include "runners/callback_internal.h"
#include "core/error_internal.h"

typedef struct owned {
  void *ptr;
  void (*destroy)(void *);
} owned;

struct loom_experiment {
  char *name;
  char *logdir;
  char *config; /* the resolved config as JSON, or NULL */
  uint64_t seed;
  loom_backend *backend; /* NULL: models stay where they are */
  loom_backend *owned_backend; /* destroyed after the models */
  loom_precision precision;
  bool scaling_set; /* else the precision's defaults */
  loom_loss_scaling scaling;
  loom_stage **stages;
  size_t num_stages, cap_stages;
  loom_callback **callbacks;
  size_t num_callbacks, cap_callbacks;
  owned *owned;
  size_t num_owned, cap_owned;
};

static void destroy_model(void *p) { loom_model_destroy(p); }
static void destroy_criterion(void *p) { loom_criterion_destroy(p); }
static void destroy_optimizer(void *p) { loom_optimizer_destroy(p); }
static void destroy_loader(void *p) { loom_loader_destroy(p); }
static void destroy_callback(void *p) { loom_callback_destroy(p); }

/* Takes ownership of ptr once, however often it is handed over; on failure
 * destroys it, as the setters promise. */
static int own(loom_experiment *exp, void *ptr, void (*destroy)(void *), const char *what) {
  if (!ptr) {
    /* Usually a constructor failed inside the call: keep its message. */
    int code = loom_last_error_code();
    if (code < 0)
      return loom_error_wrap(code, "experiment \"%s\": no %s to add", exp->name, what);
    return loom_error_set(LOOM_EINVAL, "experiment \"%s\": NULL %s", exp->name, what);
  }
  for (size_t i = 0; i < exp->num_owned; i++)
    if (exp->owned[i].ptr == ptr)
      return 0;
  if (loom_array_reserve((void **)&exp->owned, &exp->cap_owned, exp->num_owned + 1, sizeof *exp->owned,
                         "the experiment's components") < 0) {
    destroy(ptr);
    return LOOM_ENOMEM;
  }
  exp->owned[exp->num_owned++] = (owned){ptr, destroy};
  return 0;
}

loom_experiment *loom_experiment_create(const char *name) {
  loom_experiment *exp = calloc(1, sizeof *exp);
  if (!exp) {
    loom_error_oom("an experiment");
    return NULL;
  }
  exp->name = strdup(name ? name : "experiment");
  size_t len = strlen(exp->name ? exp->name : "") + 6;
  exp->logdir = malloc(len);
  if (!exp->name || !exp->logdir) {
    loom_experiment_destroy(exp);
    loom_error_oom("an experiment");
    return NULL;
  }
  snprintf(exp->logdir, len, "logs/%s", exp->name);
  exp->seed = 42;
  return exp;
}

static void stage_free(loom_stage *s) {
  for (size_t i = 0; i < s->num_loaders; i++)
    free(s->loaders[i].name);
  for (size_t i = 0; i < s->num_frozen; i++)
    free(s->frozen[i]);
  free(s->frozen);
  free(s->load_weights);
  free(s->loaders);
  free(s->callbacks);
  free(s->name);
  free(s->valid_loader);
  free(s->main_metric);
  free(s);
}

void loom_experiment_destroy(loom_experiment *exp) {
  if (!exp)
    return;
  /* Components first, newest last handed over destroyed first. */
  for (size_t i = exp->num_owned; i-- > 0;)
    exp->owned[i].destroy(exp->owned[i].ptr);
  for (size_t i = 0; i < exp->num_stages; i++)
    stage_free(exp->stages[i]);
  if (exp->owned_backend && exp->owned_backend != loom_backend_cpu())
    loom_backend_destroy(exp->owned_backend); /* the models freed their memory through it */
  free(exp->owned);
  free(exp->stages);
  free(exp->callbacks);
  free(exp->name);
  free(exp->logdir);
  free(exp->config);
  free(exp);
}

const char *loom_experiment_name(const loom_experiment *exp) { return exp->name; }
void loom_experiment_set_seed(loom_experiment *exp, uint64_t seed) { exp->seed = seed; }
uint64_t loom_experiment_seed(const loom_experiment *exp) { return exp->seed; }
void loom_experiment_set_backend(loom_experiment *exp, loom_backend *backend) { exp->backend = backend; }

int loom_experiment_set_precision(loom_experiment *exp, loom_precision precision) {
  if ((unsigned)precision > LOOM_PRECISION_FP16)
    return loom_error_set(LOOM_EINVAL, "experiment \"%s\": precision %d is none of loom_precision's (FP32, BF16, FP16)",
                          exp->name, (int)precision);
  exp->precision = precision;
  return 0;
}

loom_precision loom_experiment_precision(const loom_experiment *exp) { return exp->precision; }

loom_loss_scaling loom_loss_scaling_defaults(loom_precision precision) {
  return (loom_loss_scaling){.enabled = precision == LOOM_PRECISION_FP16,
                             .init_scale = 65536.0,
                             .growth_factor = 2.0,
                             .backoff_factor = 0.5,
                             .growth_interval = 2000};
}

int loom_experiment_set_loss_scaling(loom_experiment *exp, const loom_loss_scaling *s) {
  if (s && !(s->init_scale > 0 && isfinite(s->init_scale) && s->growth_factor > 1 && isfinite(s->growth_factor) &&
             s->backoff_factor > 0 && s->backoff_factor < 1 && s->growth_interval >= 1))
    return loom_error_set(LOOM_EINVAL, "experiment \"%s\": loss scaling needs a finite init_scale > 0, a finite "
                                       "growth_factor > 1, a backoff_factor in (0, 1) and a growth_interval >= 1",
                          exp->name);
  exp->scaling_set = s != NULL;
  if (s)
    exp->scaling = *s;
  return 0;
}

loom_loss_scaling loom_experiment_loss_scaling(const loom_experiment *exp) {
  return exp->scaling_set ? exp->scaling : loom_loss_scaling_defaults(exp->precision);
}
loom_backend *loom_experiment_backend(const loom_experiment *exp) { return exp->backend; }

int loom_experiment_own_backend(loom_experiment *exp, loom_backend *backend) {
  if (exp->owned_backend && exp->owned_backend != backend) {
    if (backend && backend != loom_backend_cpu())
      loom_backend_destroy(backend);
    return loom_error_set(LOOM_ESTATE, "experiment \"%s\" owns a backend already (\"%s\"); it can own one",
                          exp->name, loom_backend_name(exp->owned_backend));
  }
  exp->backend = exp->owned_backend = backend;
  return 0;
}
const char *loom_experiment_logdir(const loom_experiment *exp) { return exp->logdir; }

int loom_experiment_set_logdir(loom_experiment *exp, const char *logdir) {
  char *copy = strdup(logdir);
  if (!copy)
    return loom_error_oom("the logdir");
  free(exp->logdir);
  exp->logdir = copy;
  return 0;
}

int loom_experiment_set_config(loom_experiment *exp, const char *json) {
  char *copy = json ? strdup(json) : NULL;
  if (json && !copy)
    return loom_error_oom("the experiment's config");
  free(exp->config);
  exp->config = copy;
  return 0;
}

const char *loom_experiment_config(const loom_experiment *exp) { return exp->config; }

loom_stage *loom_experiment_add_stage(loom_experiment *exp, const char *name, int num_epochs) {
  if (!name || !*name || num_epochs < 1) {
    loom_error_set(LOOM_EINVAL, "experiment \"%s\": a stage needs a name and at least 1 epoch (got \"%s\", %d)",
                   exp->name, name ? name : "(null)", num_epochs);
    return NULL;
  }
  if (!loom_name_is_utf8(name, NULL)) {
    loom_error_set(LOOM_EINVAL, "experiment \"%s\": a stage name must be UTF-8 text", exp->name);
    return NULL;
  }
  for (size_t i = 0; i < exp->num_stages; i++) {
    if (strcmp(exp->stages[i]->name, name) == 0) {
      loom_error_set(LOOM_EINVAL, "experiment \"%s\": stage \"%s\" already exists; stage names are unique",
                     exp->name, name);
      return NULL;
    }
  }
  if (loom_array_reserve((void **)&exp->stages, &exp->cap_stages, exp->num_stages + 1, sizeof *exp->stages,
                         "a stage") < 0)
    return NULL;
  loom_stage *s = calloc(1, sizeof *s);
  if (s) {
    s->name = strdup(name);
    s->valid_loader = strdup("valid");
    s->main_metric = strdup("loss");
  }
  if (!s || !s->name || !s->valid_loader || !s->main_metric) {
    if (s)
      stage_free(s);
    loom_error_oom("a stage");
    return NULL;
  }
  s->exp = exp;
  s->num_epochs = num_epochs;
  s->minimize = true;
  exp->stages[exp->num_stages++] = s;
  return s;
}

size_t loom_experiment_num_stages(const loom_experiment *exp) { return exp->num_stages; }
loom_stage *loom_experiment_stage(const loom_experiment *exp, size_t i) {
  return i < exp->num_stages ? exp->stages[i] : NULL;
}

static bool name_taken(const loom_experiment *exp, const loom_callback *cb, const char *name) {
  for (size_t i = 0; i < exp->num_owned; i++) {
    if (exp->owned[i].destroy != destroy_callback || exp->owned[i].ptr == cb)
      continue;
    if (strcmp(loom_callback_name(exp->owned[i].ptr), name) == 0)
      return true;
  }
  return false;
}

/* Checkpoints key callback states by name: a repeated name gets "#2", "#3". */
static int unique_name(loom_experiment *exp, loom_callback *cb) {
  if (!name_taken(exp, cb, loom_callback_name(cb)))
    return 0;
  char name[256];
  for (int k = 2;; k++) {
    snprintf(name, sizeof name, "%s#%d", loom_callback_name(cb), k);
    if (!name_taken(exp, cb, name))
      return loom_callback_set_name(cb, name);
  }
}

static int register_callback(loom_experiment *exp, loom_callback ***list, size_t *n, size_t *cap,
                             loom_callback *cb) {
  bool known = false;
  for (size_t i = 0; cb && i < exp->num_owned && !known; i++)
    known = exp->owned[i].ptr == cb;
  int rc = own(exp, cb, destroy_callback, "callback");
  if (rc == 0 && !known)
    rc = unique_name(exp, cb);
  if (rc < 0)
    return rc;
  /* The callback is owned now; a failure below leaves it to the experiment. */
  rc = loom_array_reserve((void **)list, cap, *n + 1, sizeof **list, "a callback slot");
  if (rc < 0)
    return rc;
  (*list)[(*n)++] = cb;
  return 0;
}

int loom_experiment_add_callback(loom_experiment *exp, loom_callback *cb) {
  if (cb)
    loom_callback_set_scope(cb, LOOM_SCOPE_EXPERIMENT);
  return register_callback(exp, &exp->callbacks, &exp->num_callbacks, &exp->cap_callbacks, cb);
}

int loom_stage_add_callback(loom_stage *stage, loom_callback *cb) {
  return register_callback(stage->exp, &stage->callbacks, &stage->num_callbacks, &stage->cap_callbacks, cb);
}

int loom_stage_set_model(loom_stage *stage, loom_model *model) {
  int rc = own(stage->exp, model, destroy_model, "model");
  if (rc == 0)
    stage->model = model;
  return rc;
}

int loom_stage_set_criterion(loom_stage *stage, loom_criterion *criterion) {
  int rc = own(stage->exp, criterion, destroy_criterion, "criterion");
  if (rc == 0)
    stage->criterion = criterion;
  return rc;
}

int loom_stage_set_optimizer(loom_stage *stage, loom_optimizer *optimizer) {
  int rc = own(stage->exp, optimizer, destroy_optimizer, "optimizer");
  if (rc == 0)
    stage->optimizer = optimizer;
  return rc;
}

int loom_stage_add_loader(loom_stage *stage, const char *name, loom_loader *loader) {
  int rc = own(stage->exp, loader, destroy_loader, "loader");
  if (rc < 0)
    return rc;
  if (!name || !*name)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": a loader needs a name", stage->name);
  if (!loom_name_is_utf8(name, NULL))
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": a loader name must be UTF-8 text (it is written to the "
                                       "metrics files)",
                          stage->name);
  for (size_t i = 0; i < stage->num_loaders; i++)
    if (strcmp(stage->loaders[i].name, name) == 0)
      return loom_error_set(LOOM_EINVAL, "stage \"%s\": loader \"%s\" added twice; loader names are unique",
                            stage->name, name);
  rc = loom_array_reserve((void **)&stage->loaders, &stage->cap_loaders, stage->num_loaders + 1,
                          sizeof *stage->loaders, "a loader slot");
  if (rc < 0)
    return rc;
  char *copy = strdup(name);
  if (!copy)
    return loom_error_oom("a loader name");
  stage->loaders[stage->num_loaders++] = (loom_named_loader){copy, loader};
  return 0;
}

int loom_stage_set_main_metric(loom_stage *stage, const char *valid_loader, const char *metric, bool minimize) {
  char *v = strdup(valid_loader), *m = strdup(metric);
  if (!v || !m) {
    free(v);
    free(m);
    return loom_error_oom("the main metric");
  }
  free(stage->valid_loader);
  free(stage->main_metric);
  stage->valid_loader = v;
  stage->main_metric = m;
  stage->minimize = minimize;
  return 0;
}

void loom_stage_set_reset_optimizer(loom_stage *stage, bool reset) { stage->reset_optimizer = reset; }

int loom_stage_set_load_weights(loom_stage *stage, const char *which) {
  if (which && strcmp(which, "best") != 0 && strcmp(which, "last") != 0)
    return loom_error_set(LOOM_EINVAL, "stage \"%s\": load_weights is \"best\", \"last\" or none, not \"%s\"",
                          stage->name, which);
  char *copy = which ? strdup(which) : NULL;
  if (which && !copy)
    return loom_error_oom("load_weights");
  free(stage->load_weights);
  stage->load_weights = copy;
  return 0;
}

int loom_stage_freeze(loom_stage *stage, const char *layer) {
  char *copy = strdup(layer);
  if (!copy || loom_array_reserve((void **)&stage->frozen, &stage->cap_frozen, stage->num_frozen + 1,
                                  sizeof *stage->frozen, "a frozen layer") < 0) {
    free(copy);
    return loom_error_oom("a frozen layer");
  }
  stage->frozen[stage->num_frozen++] = copy;
  return 0;
}

const char *loom_stage_name(const loom_stage *stage) { return stage->name; }
int loom_stage_num_epochs(const loom_stage *stage) { return stage->num_epochs; }

/* The candidates of a stage's table in group order: the experiment's, the
 * experiment-scope callbacks of earlier stages, the stage's own. For
 * LOOM_EXPERIMENT_EVENTS: the experiment's, then every stage's. */
static int candidates(const loom_experiment *exp, int stage, loom_callback_info **out, size_t *n) {
  bool all = stage == LOOM_EXPERIMENT_EVENTS;
  size_t last = all ? exp->num_stages : (size_t)stage + 1, total = exp->num_callbacks;
  for (size_t i = 0; i < last; i++)
    total += exp->stages[i]->num_callbacks;
  loom_callback_info *list = malloc((total ? total : 1) * sizeof *list);
  if (!list)
    return loom_error_oom("the stage's callback list");
  size_t k = 0;
  for (size_t i = 0; i < exp->num_callbacks; i++)
    list[k++] = (loom_callback_info){.callback = exp->callbacks[i], .source = LOOM_SOURCE_EXPERIMENT, .stage = -1};
  for (size_t i = 0; i < last; i++) {
    const loom_stage *s = exp->stages[i];
    bool own = all || (int)i == stage;
    for (size_t j = 0; j < s->num_callbacks; j++)
      if (own || loom_callback_scope(s->callbacks[j]) == LOOM_SCOPE_EXPERIMENT)
        list[k++] = (loom_callback_info){.callback = s->callbacks[j],
                                         .source = own ? LOOM_SOURCE_STAGE : LOOM_SOURCE_CARRIED,
                                         .stage = (int)i};
  }
  *out = list;
  *n = k;
  return 0;
}

int loom_experiment_build_table(const loom_experiment *exp, int stage, int rank, loom_callback_table *t) {
  memset(t, 0, sizeof *t);
  loom_callback_info *list = NULL;
  size_t n = 0;
  int rc = candidates(exp, stage, &list, &n);
  if (rc < 0)
    return rc;
  rc = loom_callback_table_build(t, list, n, rank);
  free(list);
  return rc;
}

static int check_rank(const loom_experiment *exp, int rank, int world_size) {
  if (rank >= 0 && rank < world_size)
    return 0;
  return loom_error_set(LOOM_EINVAL, "experiment \"%s\": rank %d is not in a world of %d", exp->name, rank,
                        world_size);
}

int loom_experiment_callback_table(const loom_experiment *exp, int stage, int rank, int world_size,
                                   loom_callback_info **rows, size_t *count) {
  *rows = NULL;
  *count = 0;
  if (stage < LOOM_EXPERIMENT_EVENTS || (stage >= 0 && (size_t)stage >= exp->num_stages))
    return loom_error_set(LOOM_EINVAL, "experiment \"%s\" has %zu stages: no stage %d (LOOM_EXPERIMENT_EVENTS "
                                       "for the experiment's events)",
                          exp->name, exp->num_stages, stage);
  int rc = check_rank(exp, rank, world_size);
  if (rc < 0)
    return rc;
  loom_callback_table t;
  rc = loom_experiment_build_table(exp, stage, rank, &t);
  if (rc == 0)
    rc = loom_callback_table_rows(&t, rows, count);
  loom_callback_table_free(&t);
  return rc;
}

int loom_experiment_print_callbacks(const loom_experiment *exp, int rank, int world_size, FILE *out) {
  int rc = check_rank(exp, rank, world_size);
  for (size_t s = 0; rc == 0 && s < exp->num_stages; s++) {
    loom_callback_table t;
    if ((rc = loom_experiment_build_table(exp, (int)s, rank, &t)) < 0)
      break;
    fprintf(out, "stage \"%s\" (rank %d):\n", exp->stages[s]->name, rank);
    loom_callback_table_print(&t, out);
    loom_callback_table_free(&t);
  }
  return rc;
}
