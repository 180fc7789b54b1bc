/* Learning-rate schedules. The scheduler object keeps the step count t and
 * the rates; each built-in is a loom_scheduler_ops table whose rate is a
 * closed form of t (saving t is saving the schedule), except the plateau's,
 * which saves its counters. */
#include "loom/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"

#define MAX_MILESTONES 64
#define PI 3.14159265358979323846

struct loom_scheduler {
  loom_scheduler_ops ops;
  void *data;
  double base_lr, lr;
  int64_t t;
};

loom_scheduler *loom_scheduler_create(const loom_scheduler_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->rate) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_scheduler_create: a schedule needs a type and a rate");
    return NULL;
  }
  loom_scheduler *s = calloc(1, sizeof *s);
  if (!s) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a scheduler");
    return NULL;
  }
  s->ops = *ops;
  s->data = data;
  return s;
}

void loom_scheduler_destroy(loom_scheduler *s) {
  if (!s)
    return;
  if (s->ops.destroy)
    s->ops.destroy(s->data);
  free(s);
}

void *loom_scheduler_data(const loom_scheduler *s) { return s->data; }
const char *loom_scheduler_type(const loom_scheduler *s) { return s->ops.type; }
bool loom_scheduler_needs_metric(const loom_scheduler *s) { return s->ops.needs_metric; }
int64_t loom_scheduler_steps(const loom_scheduler *s) { return s->t; }
double loom_scheduler_lr(const loom_scheduler *s) { return s->lr; }

/* The rate (and momentum) for the current t, set on the optimizer. */
static int apply(loom_scheduler *s, loom_optimizer *opt, double metric) {
  double lr = s->lr, momentum = loom_optimizer_momentum(opt), was = momentum;
  int rc = s->ops.rate(s->data, s->t, s->base_lr, metric, &lr, &momentum);
  if (rc < 0)
    return rc;
  s->lr = lr;
  loom_optimizer_set_lr(opt, lr);
  if (momentum != was)
    loom_optimizer_set_momentum(opt, momentum);
  return 0;
}

int loom_scheduler_start(loom_scheduler *s, loom_optimizer *opt) {
  if (!opt)
    return loom_error_set(LOOM_EINVAL, "%s scheduler: the stage has no optimizer", s->ops.type);
  s->base_lr = s->lr = loom_optimizer_lr(opt);
  s->t = 0;
  if (s->ops.reset)
    s->ops.reset(s->data);
  return apply(s, opt, NAN);
}

int loom_scheduler_step(loom_scheduler *s, loom_optimizer *opt, double metric) {
  s->t++;
  int rc = apply(s, opt, s->ops.needs_metric ? metric : NAN);
  if (rc < 0) /* a refused step is not counted */
    s->t--;
  return rc;
}

int loom_scheduler_save(const loom_scheduler *s, loom_state *st) {
  int rc = loom_state_set_str(st, "type", s->ops.type);
  if (rc == 0)
    rc = loom_state_set_i64(st, "steps", s->t);
  if (rc == 0)
    rc = loom_state_set_f64(st, "base_lr", s->base_lr);
  if (rc == 0)
    rc = loom_state_set_f64(st, "lr", s->lr);
  if (rc == 0 && s->ops.save)
    rc = s->ops.save(s->data, st);
  return rc;
}

int loom_scheduler_load(loom_scheduler *s, const loom_state *st) {
  const char *type;
  double base_lr, lr;
  int64_t t;
  int rc = loom_state_get_str(st, "type", &type);
  if (rc == 0 && strcmp(type, s->ops.type) != 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint holds a %s schedule, this one is %s", type, s->ops.type);
  if (rc == 0)
    rc = loom_state_get_i64(st, "steps", &t);
  if (rc == 0)
    rc = loom_state_get_f64(st, "base_lr", &base_lr);
  if (rc == 0)
    rc = loom_state_get_f64(st, "lr", &lr);
  if (rc == 0 && (t < 0 || t > (INT64_C(1) << 53) || !(base_lr >= 0 && base_lr < HUGE_VAL) || !(lr >= 0 && lr < HUGE_VAL)))
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's %s schedule is out of range (step %lld, rates %g and %g)",
                          s->ops.type, (long long)t, base_lr, lr);
  if (rc == 0 && s->ops.load)
    rc = s->ops.load(s->data, st);
  if (rc < 0)
    return rc;
  s->t = t, s->base_lr = base_lr, s->lr = lr;
  return 0;
}

/* --- the built-ins --- */

typedef struct params {
  int64_t step_size, warmup, total;
  double gamma, min_lr, start_factor;
  int64_t milestones[MAX_MILESTONES];
  int num_milestones;
  loom_onecycle_options one;
  loom_plateau_options plateau;
  /* ReduceLROnPlateau's counters */
  double best;
  int64_t bad_steps, cooldown_left;
  bool has_best;
} params;

static loom_scheduler *make(const loom_scheduler_ops *ops, const params *p) {
  params *data = malloc(sizeof *data);
  if (!data) {
    loom_error_oom("a scheduler");
    return NULL;
  }
  *data = *p;
  return loom_scheduler_create(ops, data);
}

static loom_scheduler *invalid(const char *what) {
  loom_error_set(LOOM_EINVAL, "scheduler: %s", what);
  return NULL;
}

static int step_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)metric, (void)momentum;
  const params *p = data;
  *lr = base * pow(p->gamma, (double)(t / p->step_size));
  return 0;
}

static const loom_scheduler_ops step_ops = {.type = "step", .rate = step_rate, .destroy = free};

loom_scheduler *loom_step_lr_create(int64_t step_size, double gamma) {
  if (step_size < 1 || !(gamma > 0))
    return invalid("StepLR needs step_size >= 1 and gamma > 0");
  return make(&step_ops, &(params){.step_size = step_size, .gamma = gamma});
}

static int multistep_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)metric, (void)momentum;
  const params *p = data;
  int k = 0;
  while (k < p->num_milestones && p->milestones[k] <= t)
    k++;
  *lr = base * pow(p->gamma, k);
  return 0;
}

static const loom_scheduler_ops multistep_ops = {.type = "multistep", .rate = multistep_rate, .destroy = free};

loom_scheduler *loom_multistep_lr_create(const int64_t *milestones, int n, double gamma) {
  if (n < 1 || n > MAX_MILESTONES || !(gamma > 0))
    return invalid("MultiStepLR needs 1 to 64 milestones and gamma > 0");
  for (int i = 0; i < n; i++)
    if (milestones[i] < 1 || (i && milestones[i] <= milestones[i - 1]))
      return invalid("MultiStepLR milestones must be >= 1 and increasing");
  params p = {.num_milestones = n, .gamma = gamma};
  memcpy(p.milestones, milestones, (size_t)n * sizeof *milestones);
  return make(&multistep_ops, &p);
}

static int exponential_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)metric, (void)momentum;
  *lr = base * pow(((const params *)data)->gamma, (double)t);
  return 0;
}

static const loom_scheduler_ops exponential_ops = {.type = "exponential", .rate = exponential_rate, .destroy = free};

loom_scheduler *loom_exponential_lr_create(double gamma) {
  if (!(gamma > 0))
    return invalid("ExponentialLR needs gamma > 0");
  return make(&exponential_ops, &(params){.gamma = gamma});
}

/* PyTorch's _annealing_cos: from start (pct 0) to end (pct 1). */
static double anneal(double start, double end, double pct) { return end + (start - end) / 2.0 * (1.0 + cos(PI * pct)); }

static int cosine_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)metric, (void)momentum;
  const params *p = data;
  if (t < p->warmup)
    *lr = base * (p->start_factor + (1.0 - p->start_factor) * (double)t / (double)p->warmup);
  else
    *lr = anneal(base, p->min_lr, fmin(1.0, (double)(t - p->warmup) / (double)(p->total - p->warmup)));
  return 0;
}

static const loom_scheduler_ops cosine_ops = {.type = "cosine", .rate = cosine_rate, .destroy = free};

loom_scheduler *loom_cosine_lr_create(int64_t warmup, int64_t total, double min_lr, double start_factor) {
  if (warmup < 0 || total <= warmup || !(min_lr >= 0) || !(start_factor >= 0 && start_factor <= 1))
    return invalid("cosine needs 0 <= warmup_steps < total_steps, min_lr >= 0, 0 <= warmup_start_factor <= 1");
  return make(&cosine_ops,
              &(params){.warmup = warmup, .total = total, .min_lr = min_lr, .start_factor = start_factor});
}

loom_onecycle_options loom_onecycle_defaults(double max_lr, int64_t total_steps) {
  return (loom_onecycle_options){max_lr, total_steps, 0.3, 25.0, 1e4, true, 0.85, 0.95};
}

/* OneCycle's rate and momentum at step t (three_phase off, cosine). */
static int onecycle_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)base, (void)metric;
  const loom_onecycle_options *o = &((const params *)data)->one;
  double initial = o->max_lr / o->div_factor, final = initial / o->final_div_factor, m;
  double up_end = o->pct_start * (double)o->total_steps - 1, down_end = (double)o->total_steps - 1;
  double step = (double)(t < o->total_steps ? t : o->total_steps - 1);
  if (step <= up_end) {
    double pct = step / up_end;
    *lr = anneal(initial, o->max_lr, pct);
    m = anneal(o->max_momentum, o->base_momentum, pct);
  } else {
    double pct = (step - up_end) / (down_end - up_end);
    *lr = anneal(o->max_lr, final, pct);
    m = anneal(o->base_momentum, o->max_momentum, pct);
  }
  if (o->cycle_momentum)
    *momentum = m;
  return 0;
}

static const loom_scheduler_ops onecycle_ops = {.type = "onecycle", .rate = onecycle_rate, .destroy = free};

loom_scheduler *loom_onecycle_lr_create(const loom_onecycle_options *o) {
  if (!o || !(o->max_lr > 0) || o->total_steps < 2 || !(o->pct_start > 0 && o->pct_start < 1) ||
      !(o->div_factor > 0) || !(o->final_div_factor > 0) || (o->pct_start * (double)o->total_steps) < 2)
    return invalid("OneCycle needs max_lr > 0, total_steps >= 2, 0 < pct_start < 1 with at least 2 warmup steps, "
                   "div factors > 0");
  return make(&onecycle_ops, &(params){.one = *o});
}

loom_plateau_options loom_plateau_defaults(void) {
  return (loom_plateau_options){true, 0.1, 10, 1e-4, true, 0, 0.0};
}

static bool improves(const params *p, double v) {
  const loom_plateau_options *o = &p->plateau;
  if (!p->has_best)
    return true;
  double margin = o->relative ? fabs(p->best) * o->threshold : o->threshold;
  return o->minimize ? v < p->best - margin : v > p->best + margin;
}

static int plateau_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)base, (void)momentum;
  params *p = data;
  if (t == 0)
    return 0;
  if (isnan(metric))
    return loom_error_set(LOOM_EINVAL, "ReduceLROnPlateau: the monitored metric is missing or NaN");
  if (improves(p, metric)) {
    p->best = metric;
    p->has_best = true;
    p->bad_steps = 0;
  } else {
    p->bad_steps++;
  }
  if (p->cooldown_left > 0) {
    p->cooldown_left--;
    p->bad_steps = 0;
  }
  if (p->bad_steps > p->plateau.patience) {
    double lower = fmax(*lr * p->plateau.factor, p->plateau.min_lr);
    if (*lr - lower > 1e-8)
      *lr = lower;
    p->cooldown_left = p->plateau.cooldown;
    p->bad_steps = 0;
  }
  return 0;
}

static void plateau_reset(void *data) {
  params *p = data;
  p->has_best = false;
  p->bad_steps = p->cooldown_left = 0;
}

static int plateau_save(void *data, loom_state *st) {
  const params *p = data;
  const int64_t counters[3] = {p->bad_steps, p->cooldown_left, p->has_best};
  int rc = loom_state_set_f64(st, "best", p->best);
  return rc == 0 ? loom_state_set_i64_array(st, "counters", counters, 3) : rc;
}

static int plateau_load(void *data, const loom_state *st) {
  params *p = data;
  double best;
  int64_t counters[3];
  int rc = loom_state_get_f64(st, "best", &best);
  if (rc == 0)
    rc = loom_state_get_i64_array(st, "counters", counters, 3);
  if (rc < 0)
    return rc;
  p->best = best;
  p->bad_steps = counters[0], p->cooldown_left = counters[1], p->has_best = counters[2] != 0;
  return 0;
}

static const loom_scheduler_ops plateau_ops = {.type = "plateau",
                                               .needs_metric = true,
                                               .rate = plateau_rate,
                                               .reset = plateau_reset,
                                               .save = plateau_save,
                                               .load = plateau_load,
                                               .destroy = free};

/* ReduceLROnPlateau: multiplies the rate by `factor` after `patience` steps
 * whose metric did not beat the best by `threshold`. */
loom_scheduler *loom_plateau_lr_create(const loom_plateau_options *o) {
  if (!o || !(o->factor > 0 && o->factor < 1) || o->patience < 0 || !(o->threshold >= 0) || o->cooldown < 0 ||
      !(o->min_lr >= 0))
    return invalid("ReduceLROnPlateau needs 0 < factor < 1, patience >= 0, threshold >= 0, cooldown >= 0, "
                   "min_lr >= 0");
  return make(&plateau_ops, &(params){.plateau = *o});
}
