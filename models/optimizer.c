/* What every optimizer has: the rate, the step count, parameter groups,
 * the no-decay rule and the state buffer; the ops update ranges. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/names.h"
#include "backends/cpu/parallel.h"
#include "loom/backend_cpu.h"
#include "loom/optimizer.h"
#include "models/layer_internal.h"

typedef struct group {
  loom_names layers;
  double lr_scale, weight_decay;
} group;

struct loom_optimizer {
  loom_optimizer_ops ops;
  void *data;
  double lr;
  group *groups;
  size_t num_groups;
  bool no_decay_bias_norm;
  float *state;
  loom_backend *state_on; /* the state's memory: NULL, host memory */
  size_t nstate, nparams;
  int64_t steps;
};

loom_optimizer *loom_optimizer_create(const loom_optimizer_ops *ops, void *data, double lr) {
  if (!ops || !ops->type || !ops->update || !(lr >= 0)) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_optimizer_create: an optimizer needs a type, an update and a rate >= 0");
    return NULL;
  }
  loom_optimizer *opt = calloc(1, sizeof *opt);
  if (!opt) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("an optimizer");
    return NULL;
  }
  opt->ops = *ops;
  opt->data = data;
  opt->lr = lr;
  return opt;
}

static void free_state(loom_optimizer *opt) {
  if (opt->state_on)
    loom_backend_free(opt->state_on, opt->state);
  else
    free(opt->state);
  opt->state = NULL, opt->state_on = NULL;
}

/* The memory of the model's arrays when it is not the host's (NULL). */
static loom_backend *device_of(const loom_model *model) {
  loom_backend *b = loom_model_backend(model);
  return b == loom_backend_cpu() ? NULL : b;
}

/* The state on `to` (NULL: host memory), where the model is: made zeroed
 * for the first step, moved when the model has moved (or the state was
 * loaded on the host). */
static int place_state(loom_optimizer *opt, loom_backend *to) {
  if (opt->state && opt->state_on == to)
    return 0;
  const size_t n = opt->nstate ? opt->nstate : 1;
  float *s = to ? loom_backend_alloc(to, n * sizeof *s) : calloc(n, sizeof *s);
  if (!s)
    return to ? (loom_last_error_code() ? loom_last_error_code() : LOOM_ENOMEM) : loom_error_oom("the optimizer state");
  int rc = opt->state ? loom_array_copy(to, s, opt->state_on, opt->state, opt->nstate)
                      : to ? loom_backend_zero(to, s, n * sizeof *s) : 0;
  if (rc < 0) {
    if (to)
      loom_backend_free(to, s);
    else
      free(s);
    return rc;
  }
  free_state(opt);
  opt->state = s, opt->state_on = to;
  return 0;
}

void loom_optimizer_destroy(loom_optimizer *opt) {
  if (!opt)
    return;
  for (size_t i = 0; i < opt->num_groups; i++) {
    loom_names_free(&opt->groups[i].layers);
  }
  free(opt->groups);
  free_state(opt);
  if (opt->ops.destroy)
    opt->ops.destroy(opt->data);
  free(opt);
}

void *loom_optimizer_data(const loom_optimizer *opt) { return opt->data; }

static const group *find_group(const loom_optimizer *opt, const char *layer) {
  for (size_t i = 0; i < opt->num_groups; i++)
    if (loom_names_has(&opt->groups[i].layers, layer))
      return &opt->groups[i];
  return NULL;
}

int loom_optimizer_add_group(loom_optimizer *opt, const loom_param_group *g) {
  if (!g || g->num_layers == 0 || !(g->lr_scale >= 0) || !(g->weight_decay >= 0))
    return loom_error_set(LOOM_EINVAL, "parameter group: at least one layer name, lr_scale >= 0 and "
                                       "weight_decay >= 0");
  group nw = {.lr_scale = g->lr_scale, .weight_decay = g->weight_decay};
  int rc = loom_names_copy(&nw.layers, g->layers, g->num_layers, "a parameter group");
  if (rc < 0)
    return rc;
  group *grown = realloc(opt->groups, (opt->num_groups + 1) * sizeof *grown);
  if (!grown) {
    loom_names_free(&nw.layers);
    return loom_error_oom("a parameter group");
  }
  opt->groups = grown;
  opt->groups[opt->num_groups++] = nw;
  return 0;
}

void loom_optimizer_set_no_decay_bias_norm(loom_optimizer *opt, bool on) { opt->no_decay_bias_norm = on; }

const char *loom_optimizer_type(const loom_optimizer *opt) { return opt->ops.type; }

/* One update over [off, off + len); an elementwise rule is cut over the
 * in-layer pool (the cut changes no result), any other is one call. */
typedef struct update_job {
  const loom_optimizer *opt;
  float *p;
  const float *g;
  size_t total, off;
  int64_t step;
  double lr, wd;
  int rc[LOOM_MAX_PARTS];
} update_job;

static void update_part(void *ctx, int part, int64_t begin, int64_t end) {
  update_job *u = ctx;
  u->rc[part] = u->opt->ops.update(u->opt->data, u->p, u->g, u->opt->state, u->total, u->off + (size_t)begin,
                                   (size_t)(end - begin), u->step, u->lr, u->wd);
}

/* Below this many parameters the hand-off costs more than the half saves. */
#define PARALLEL_UPDATE 16384

static int update(const loom_optimizer *opt, loom_backend *device, float *p, const float *g, size_t total, size_t off,
                  size_t len, double lr, double wd) {
  if (device) /* one call per range: the device spreads it itself */
    return opt->ops.update_on(opt->data, device, p, g, opt->state, total, off, len, opt->steps, lr, wd);
  if (!opt->ops.elementwise)
    return opt->ops.update(opt->data, p, g, opt->state, total, off, len, opt->steps, lr, wd);
  update_job u = {opt, p, g, total, off, opt->steps, lr, wd, {0}};
  loom_parallel_for_large((int64_t)len, PARALLEL_UPDATE, update_part, &u);
  for (int part = 0; part < LOOM_MAX_PARTS; part++)
    if (u.rc[part] < 0) /* part 0 ran here, with its message; the others' stayed on their threads */
      return part == 0 ? u.rc[0]
                       : loom_error_set(u.rc[part], "%s: the update failed on a pool thread (%s)", opt->ops.type,
                                        loom_strerror(u.rc[part]));
  return 0;
}

double loom_optimizer_weight_decay(const loom_optimizer *opt) {
  return opt->ops.weight_decay ? opt->ops.weight_decay(opt->data) : 0.0;
}

/* What a step updates: per layer, its decayed weights then the rest (biases
 * and norm scales, without decay when loom_optimizer_set_no_decay_bias_norm
 * asks), each with its group's rate and decay; frozen layers not at all.
 * Returns how many segments layer i has (0 to 2). */
typedef struct segment {
  size_t off, len;
  double lr, wd;
} segment;

static int layer_segments(const loom_optimizer *opt, const loom_model *model, size_t i, segment out[2]) {
  size_t off, count;
  loom_model_layer_params(model, i, &off, &count);
  if (count == 0 || loom_model_is_frozen(model, loom_model_layer_name(model, i)))
    return 0;
  const group *gr = find_group(opt, loom_model_layer_name(model, i));
  double lr = opt->lr * (gr ? gr->lr_scale : 1.0), wd = gr ? gr->weight_decay : loom_optimizer_weight_decay(opt);
  size_t decayed = opt->no_decay_bias_norm ? loom_model_layer_decayed(model, i) : count;
  int k = 0;
  if (decayed)
    out[k++] = (segment){off, decayed, lr, wd};
  if (count > decayed)
    out[k++] = (segment){off + decayed, count - decayed, lr, 0.0};
  return k;
}

/* Checks that the step can run, allocates the state, counts the step. */
static int begin_step(loom_optimizer *opt, const loom_model *model) {
  size_t n = loom_model_num_params(model);
  if (!loom_model_is_built(model))
    return loom_error_set(LOOM_ESTATE, "%s step: the model is not built", opt->ops.type);
  if (opt->state && n != opt->nparams)
    return loom_error_set(LOOM_ESTATE, "%s step: the optimizer holds state for %zu parameters but the model has %zu; "
                                       "use one optimizer per model or reset it",
                          opt->ops.type, opt->nparams, n);
  if (opt->steps == 0) /* a group naming no layer of this model is a typo */
    for (size_t i = 0; i < opt->num_groups; i++)
      for (size_t k = 0; k < opt->groups[i].layers.count; k++)
        if (!loom_model_find_layer(model, opt->groups[i].layers.names[k]))
          return loom_error_set(LOOM_EINVAL, "%s step: parameter group %zu names layer \"%s\", which the model lacks",
                                opt->ops.type, i, opt->groups[i].layers.names[k]);
  loom_backend *device = device_of(model);
  if (device && !opt->ops.update_on)
    return loom_error_set(LOOM_ENOTSUP, "%s step: the model is on backend \"%s\" and this optimizer cannot update "
                                        "it there (its loom_optimizer_ops have no update_on); give it an update_on, "
                                        "as the built-in optimizers have, or keep the model on the CPU",
                          opt->ops.type, loom_backend_name(device));
  if (opt->ops.state_per_param) {
    if (!opt->state)
      opt->nstate = n * opt->ops.state_per_param;
    int rc = place_state(opt, device);
    if (rc < 0)
      return loom_error_wrap(rc, "%s step: the optimizer state", opt->ops.type);
  }
  opt->nparams = n;
  opt->steps++;
  return 0;
}

/* A device's step in one call (update_ranges_on): every layer's segments
 * as ranges, in order. */
static int step_ranges(loom_optimizer *opt, loom_model *model, loom_backend *device) {
  const size_t layers = loom_model_num_layers(model);
  loom_update_range *ranges = malloc((2 * layers + 1) * sizeof *ranges);
  if (!ranges)
    return loom_error_oom("an optimizer step's ranges");
  int n = 0;
  for (size_t i = 0; i < layers; i++) {
    segment seg[2];
    for (int k = 0, count = layer_segments(opt, model, i, seg); k < count; k++)
      ranges[n++] = (loom_update_range){(int64_t)seg[k].off, (int64_t)seg[k].len, seg[k].lr, seg[k].wd};
  }
  int rc = opt->ops.update_ranges_on(opt->data, device, loom_model_params(model), loom_model_grad_buffer(model),
                                     opt->state, opt->nparams, ranges, n, opt->steps);
  free(ranges);
  return rc < 0 ? loom_error_wrap(rc, "%s step of %d ranges", opt->ops.type, n) : 0;
}

int loom_optimizer_step(loom_optimizer *opt, loom_model *model) {
  int rc = begin_step(opt, model);
  float *p = loom_model_params(model);
  const float *g = loom_model_grad_buffer(model);
  loom_backend *device = device_of(model);
  if (rc == 0 && device && opt->ops.update_ranges_on)
    return step_ranges(opt, model, device);
  for (size_t i = 0; rc == 0 && i < loom_model_num_layers(model); i++) {
    segment seg[2];
    int n = layer_segments(opt, model, i, seg);
    for (int k = 0; k < n && rc == 0; k++)
      rc = update(opt, device, p, g, opt->nparams, seg[k].off, seg[k].len, seg[k].lr, seg[k].wd);
    if (rc < 0)
      return loom_error_wrap(rc, "%s step, layer \"%s\"", opt->ops.type, loom_model_layer_name(model, i));
  }
  return rc;
}

/* The checked step: every part of the parameter vector checks its slice of
 * the gradients, and only once all slices are finite does each part update
 * its slice, from its own cache (loom_parallel_for_phased). */
typedef struct checked_step {
  loom_optimizer *opt;
  loom_model *model;
  float *p;
  const float *g;
  bool bad[LOOM_MAX_PARTS];
  int rc[LOOM_MAX_PARTS]; /* the checks' (first phase): every part reads them all */
  int update_rc[LOOM_MAX_PARTS]; /* the updates' (second phase): only each part's own */
} checked_step;

static void check_part(void *ctx, int part, int64_t begin, int64_t end) {
  checked_step *c = ctx;
  bool finite = false;
  /* Nested in the pool's job: it runs on this part's thread alone. */
  c->rc[part] = loom_backend_all_finite(loom_backend_cpu(), c->g + begin, end - begin, &finite);
  c->bad[part] = !finite;
}

static void update_part_checked(void *ctx, int part, int64_t begin, int64_t end) {
  checked_step *c = ctx;
  for (int k = 0; k < LOOM_MAX_PARTS; k++)
    if (c->bad[k] || c->rc[k] < 0)
      return;
  const size_t b = (size_t)begin, e = (size_t)end;
  for (size_t i = 0; i < loom_model_num_layers(c->model) && c->update_rc[part] == 0; i++) {
    segment seg[2];
    int n = layer_segments(c->opt, c->model, i, seg);
    for (int k = 0; k < n && c->update_rc[part] == 0; k++) {
      size_t lo = seg[k].off > b ? seg[k].off : b, hi = seg[k].off + seg[k].len < e ? seg[k].off + seg[k].len : e;
      if (lo < hi)
        c->update_rc[part] = c->opt->ops.update(c->opt->data, c->p, c->g, c->opt->state, c->opt->nparams, lo, hi - lo,
                                                c->opt->steps, seg[k].lr, seg[k].wd);
    }
  }
}

int loom_optimizer_step_checked(loom_optimizer *opt, loom_model *model, bool *finite) {
  *finite = false;
  int rc = begin_step(opt, model);
  if (rc < 0)
    return rc;
  /* A rule that needs whole ranges, or a model on a device: the check is a
   * pass of its own. */
  if (!opt->ops.elementwise || device_of(model)) {
    rc = loom_backend_all_finite(loom_model_backend(model), loom_model_grad_buffer(model), (int64_t)opt->nparams,
                                 finite);
    opt->steps--; /* loom_optimizer_step counts it again */
    return rc < 0 || !*finite ? rc : loom_optimizer_step(opt, model);
  }
  checked_step c = {.opt = opt, .model = model, .p = loom_model_params(model), .g = loom_model_grad_buffer(model)};
  loom_parallel_for_phased((int64_t)opt->nparams, PARALLEL_UPDATE, check_part, update_part_checked, &c);
  *finite = true;
  for (int k = 0; k < LOOM_MAX_PARTS; k++) {
    int part_rc = c.rc[k] < 0 ? c.rc[k] : c.update_rc[k];
    if (part_rc < 0) /* part 0 ran here, with its message; the others' stayed on their threads */
      return k == 0 ? part_rc
                    : loom_error_set(part_rc, "%s step: the update failed on a pool thread (%s)", opt->ops.type,
                                     loom_strerror(part_rc));
    *finite = *finite && !c.bad[k];
  }
  if (!*finite)
    opt->steps--; /* no step was taken */
  return 0;
}

int loom_optimizer_step_gated(loom_optimizer *opt, loom_model *model, const double *also, int64_t nalso,
                              int *gate) {
  loom_backend *device = device_of(model);
  if (!device || !opt->ops.gateable || !loom_backend_supports(device, LOOM_OP_FLAG_NONFINITE))
    return LOOM_ENOTSUP;
  int rc = loom_backend_flag_nonfinite(device, loom_model_grad_buffer(model), (int64_t)loom_model_num_params(model),
                                       also, nalso, gate);
  if (rc < 0)
    return loom_error_wrap(rc, "%s step: checking the gradients on backend \"%s\"", opt->ops.type,
                           loom_backend_name(device));
  loom_backend_set_update_gate(device, gate);
  rc = loom_optimizer_step(opt, model);
  loom_backend_set_update_gate(device, NULL);
  return rc;
}

bool loom_optimizer_is_gateable(const loom_optimizer *opt) { return opt->ops.gateable; }

void loom_optimizer_untake_step(loom_optimizer *opt) {
  if (opt->steps > 0)
    opt->steps--;
}

void loom_optimizer_reset(loom_optimizer *opt) {
  free_state(opt);
  opt->nstate = 0;
  opt->steps = 0;
  if (opt->ops.reset)
    opt->ops.reset(opt->data);
}

double loom_optimizer_lr(const loom_optimizer *opt) { return opt->lr; }
void loom_optimizer_set_lr(loom_optimizer *opt, double lr) { opt->lr = lr; }
double loom_optimizer_momentum(const loom_optimizer *opt) {
  return opt->ops.momentum ? opt->ops.momentum(opt->data) : 0.0;
}
int64_t loom_optimizer_steps(const loom_optimizer *opt) { return opt->steps; }

float *loom_optimizer_state(loom_optimizer *opt, size_t *n) {
  if (n)
    *n = opt->nstate;
  return opt->state;
}

void loom_optimizer_set_momentum(loom_optimizer *opt, double momentum) {
  if (opt->ops.set_momentum)
    opt->ops.set_momentum(opt->data, momentum);
}

int loom_optimizer_save(const loom_optimizer *opt, loom_state *s) {
  int rc = loom_state_set_str(s, "type", opt->ops.type);
  if (rc == 0)
    rc = loom_state_set_f64(s, "lr", opt->lr);
  if (rc == 0)
    rc = loom_state_set_f64(s, "momentum", loom_optimizer_momentum(opt));
  if (rc == 0)
    rc = loom_state_set_i64(s, "steps", opt->steps);
  if (rc == 0)
    rc = loom_state_set_i64(s, "nparams", (int64_t)opt->nparams);
  if (rc == 0 && !opt->state_on)
    rc = loom_state_set_f32_array(s, "state", opt->state, opt->state ? opt->nstate : 0);
  if (rc == 0 && opt->state_on) { /* on a device: through the host, once */
    float *host = malloc(opt->nstate * sizeof *host + 1);
    rc = host ? loom_array_copy(NULL, host, opt->state_on, opt->state, opt->nstate)
              : loom_error_oom("a host copy of the optimizer state");
    if (rc == 0)
      rc = loom_state_set_f32_array(s, "state", host, opt->nstate);
    free(host);
  }
  if (rc == 0 && opt->ops.save)
    rc = opt->ops.save(opt->data, s);
  return rc;
}

int loom_optimizer_load(loom_optimizer *opt, const loom_state *s) {
  const char *type;
  double lr, momentum;
  int64_t steps, nparams;
  int rc = loom_state_get_str(s, "type", &type);
  if (rc == 0 && strcmp(type, opt->ops.type) != 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint holds a %s optimizer's state, this stage uses %s", type,
                          opt->ops.type);
  if (rc == 0)
    rc = loom_state_get_f64(s, "lr", &lr);
  if (rc == 0)
    rc = loom_state_get_f64(s, "momentum", &momentum);
  if (rc == 0)
    rc = loom_state_get_i64(s, "steps", &steps);
  if (rc == 0)
    rc = loom_state_get_i64(s, "nparams", &nparams);
  if (rc < 0)
    return rc;
  /* A checkpoint is input: every value is checked before it is used. */
  if (!(lr >= 0 && lr < HUGE_VAL) || !isfinite(momentum) || steps < 0 || steps > (INT64_C(1) << 53) || nparams < 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's %s state is out of range (lr %g, momentum %g, steps %lld, "
                                        "%lld parameters); the file is not from a run of this model",
                          opt->ops.type, lr, momentum, (long long)steps, (long long)nparams);
  size_t n = loom_state_array_length(s, "state");
  if (n && n != (size_t)nparams * opt->ops.state_per_param)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's %s state holds %zu floats, not %zu per parameter of %lld",
                          opt->ops.type, n, opt->ops.state_per_param, (long long)nparams);
  float *state = NULL;
  if (n) {
    if (!(state = malloc(n * sizeof *state)))
      return loom_error_oom("the optimizer state");
    if ((rc = loom_state_get_f32_array(s, "state", state, n)) < 0) {
      free(state);
      return rc;
    }
  }
  /* The ops' own state first: if it fails, nothing has changed. */
  if (opt->ops.load && (rc = opt->ops.load(opt->data, s)) < 0) {
    free(state);
    return rc;
  }
  free_state(opt);
  opt->state = state; /* in host memory: the next step moves it where the model is */
  opt->nstate = n;
  opt->nparams = (size_t)nparams;
  opt->steps = steps;
  opt->lr = lr;
  loom_optimizer_set_momentum(opt, momentum);
  return 0;
}
