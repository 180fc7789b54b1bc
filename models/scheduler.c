/* Learning-rate schedules as closed forms of the step count t, so that
 * saving t (and the plateau's counters) is saving the schedule. */
#include "loom/scheduler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"

#define MAX_MILESTONES 64
#define PI 3.14159265358979323846

typedef enum kind { STEP, MULTISTEP, EXPONENTIAL, COSINE, ONECYCLE, PLATEAU } kind;

struct loom_scheduler {
  kind kind;
  double base_lr, lr;
  int64_t t;
  /* parameters */
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
};

static const char *const kind_names[] = {"step", "multistep", "exponential", "cosine", "onecycle", "plateau"};

static loom_scheduler *alloc(kind k) {
  loom_scheduler *s = calloc(1, sizeof *s);
  if (!s)
    loom_error_oom("a scheduler");
  else
    s->kind = k;
  return s;
}

static loom_scheduler *invalid(const char *what) {
  loom_error_set(LOOM_EINVAL, "scheduler: %s", what);
  return NULL;
}

loom_scheduler *loom_step_lr_create(int64_t step_size, double gamma) {
  if (step_size < 1 || !(gamma > 0))
    return invalid("StepLR needs step_size >= 1 and gamma > 0");
  loom_scheduler *s = alloc(STEP);
  if (s)
    s->step_size = step_size, s->gamma = gamma;
  return s;
}

loom_scheduler *loom_multistep_lr_create(const int64_t *milestones, int n, double gamma) {
  if (n < 1 || n > MAX_MILESTONES || !(gamma > 0))
    return invalid("MultiStepLR needs 1 to 64 milestones and gamma > 0");
  for (int i = 0; i < n; i++)
    if (milestones[i] < 1 || (i && milestones[i] <= milestones[i - 1]))
      return invalid("MultiStepLR milestones must be >= 1 and increasing");
  loom_scheduler *s = alloc(MULTISTEP);
  if (s) {
    memcpy(s->milestones, milestones, (size_t)n * sizeof *milestones);
    s->num_milestones = n;
    s->gamma = gamma;
  }
  return s;
}

loom_scheduler *loom_exponential_lr_create(double gamma) {
  if (!(gamma > 0))
    return invalid("ExponentialLR needs gamma > 0");
  loom_scheduler *s = alloc(EXPONENTIAL);
  if (s)
    s->gamma = gamma;
  return s;
}

loom_scheduler *loom_cosine_lr_create(int64_t warmup, int64_t total, double min_lr, double start_factor) {
  if (warmup < 0 || total <= warmup || !(min_lr >= 0) || !(start_factor >= 0 && start_factor <= 1))
    return invalid("cosine needs 0 <= warmup_steps < total_steps, min_lr >= 0, 0 <= warmup_start_factor <= 1");
  loom_scheduler *s = alloc(COSINE);
  if (s)
    s->warmup = warmup, s->total = total, s->min_lr = min_lr, s->start_factor = start_factor;
  return s;
}

loom_onecycle_options loom_onecycle_defaults(double max_lr, int64_t total_steps) {
  return (loom_onecycle_options){max_lr, total_steps, 0.3, 25.0, 1e4, true, 0.85, 0.95};
}

loom_scheduler *loom_onecycle_lr_create(const loom_onecycle_options *o) {
  if (!o || !(o->max_lr > 0) || o->total_steps < 2 || !(o->pct_start > 0 && o->pct_start < 1) ||
      !(o->div_factor > 0) || !(o->final_div_factor > 0) || (o->pct_start * (double)o->total_steps) < 2)
    return invalid("OneCycle needs max_lr > 0, total_steps >= 2, 0 < pct_start < 1 with at least 2 warmup steps, "
                   "div factors > 0");
  loom_scheduler *s = alloc(ONECYCLE);
  if (s)
    s->one = *o;
  return s;
}

loom_plateau_options loom_plateau_defaults(void) {
  return (loom_plateau_options){true, 0.1, 10, 1e-4, true, 0, 0.0};
}

loom_scheduler *loom_plateau_lr_create(const loom_plateau_options *o) {
  if (!o || !(o->factor > 0 && o->factor < 1) || o->patience < 0 || !(o->threshold >= 0) || o->cooldown < 0 ||
      !(o->min_lr >= 0))
    return invalid("ReduceLROnPlateau needs 0 < factor < 1, patience >= 0, threshold >= 0, cooldown >= 0, "
                   "min_lr >= 0");
  loom_scheduler *s = alloc(PLATEAU);
  if (s)
    s->plateau = *o;
  return s;
}

void loom_scheduler_destroy(loom_scheduler *s) { free(s); }
const char *loom_scheduler_type(const loom_scheduler *s) { return kind_names[s->kind]; }
bool loom_scheduler_needs_metric(const loom_scheduler *s) { return s->kind == PLATEAU; }
int64_t loom_scheduler_steps(const loom_scheduler *s) { return s->t; }

/* PyTorch's _annealing_cos: from start (pct 0) to end (pct 1). */
static double anneal(double start, double end, double pct) { return end + (start - end) / 2.0 * (1.0 + cos(PI * pct)); }

/* OneCycle's rate and momentum at step t (three_phase off, cosine). */
static void onecycle(const loom_scheduler *s, int64_t t, double *lr, double *momentum) {
  const loom_onecycle_options *o = &s->one;
  double initial = o->max_lr / o->div_factor, final = initial / o->final_div_factor;
  double up_end = o->pct_start * (double)o->total_steps - 1, down_end = (double)o->total_steps - 1;
  double step = (double)(t < o->total_steps ? t : o->total_steps - 1);
  if (step <= up_end) {
    double pct = step / up_end;
    *lr = anneal(initial, o->max_lr, pct);
    *momentum = anneal(o->max_momentum, o->base_momentum, pct);
  } else {
    double pct = (step - up_end) / (down_end - up_end);
    *lr = anneal(o->max_lr, final, pct);
    *momentum = anneal(o->base_momentum, o->max_momentum, pct);
  }
}

static double rate_at(const loom_scheduler *s, int64_t t) {
  switch (s->kind) {
  case STEP: return s->base_lr * pow(s->gamma, (double)(t / s->step_size));
  case MULTISTEP: {
    int k = 0;
    while (k < s->num_milestones && s->milestones[k] <= t)
      k++;
    return s->base_lr * pow(s->gamma, k);
  }
  case EXPONENTIAL: return s->base_lr * pow(s->gamma, (double)t);
  case COSINE:
    if (t < s->warmup)
      return s->base_lr * (s->start_factor + (1.0 - s->start_factor) * (double)t / (double)s->warmup);
    return anneal(s->base_lr, s->min_lr,
                  fmin(1.0, (double)(t - s->warmup) / (double)(s->total - s->warmup)));
  default: return s->lr;
  }
}

static void apply(loom_scheduler *s, loom_optimizer *opt) {
  if (s->kind == ONECYCLE) {
    double m;
    onecycle(s, s->t, &s->lr, &m);
    if (s->one.cycle_momentum)
      loom_optimizer_set_momentum(opt, m);
  } else if (s->kind != PLATEAU) {
    s->lr = rate_at(s, s->t);
  }
  loom_optimizer_set_lr(opt, s->lr);
}

int loom_scheduler_start(loom_scheduler *s, loom_optimizer *opt) {
  if (!opt)
    return loom_error_set(LOOM_EINVAL, "%s scheduler: the stage has no optimizer", kind_names[s->kind]);
  s->base_lr = s->lr = loom_optimizer_lr(opt);
  s->t = 0;
  s->has_best = false;
  s->bad_steps = s->cooldown_left = 0;
  apply(s, opt);
  return 0;
}

static bool improves(const loom_scheduler *s, double v) {
  const loom_plateau_options *o = &s->plateau;
  if (!s->has_best)
    return true;
  double margin = o->relative ? fabs(s->best) * o->threshold : o->threshold;
  return o->minimize ? v < s->best - margin : v > s->best + margin;
}

int loom_scheduler_step(loom_scheduler *s, loom_optimizer *opt, double metric) {
  s->t++;
  if (s->kind == PLATEAU) {
    if (isnan(metric))
      return loom_error_set(LOOM_EINVAL, "ReduceLROnPlateau: the monitored metric is missing or NaN");
    if (improves(s, metric)) {
      s->best = metric;
      s->has_best = true;
      s->bad_steps = 0;
    } else {
      s->bad_steps++;
    }
    if (s->cooldown_left > 0) {
      s->cooldown_left--;
      s->bad_steps = 0;
    }
    if (s->bad_steps > s->plateau.patience) {
      double lower = fmax(s->lr * s->plateau.factor, s->plateau.min_lr);
      if (s->lr - lower > 1e-8)
        s->lr = lower;
      s->cooldown_left = s->plateau.cooldown;
      s->bad_steps = 0;
    }
  }
  apply(s, opt);
  return 0;
}

int loom_scheduler_save(const loom_scheduler *s, loom_state *st) {
  const double f[3] = {s->base_lr, s->lr, s->best};
  const int64_t i[4] = {s->t, s->bad_steps, s->cooldown_left, s->has_best};
  int rc = loom_state_set_str(st, "type", kind_names[s->kind]);
  if (rc == 0)
    rc = loom_state_set_f64_array(st, "rates", f, 3);
  if (rc == 0)
    rc = loom_state_set_i64_array(st, "counters", i, 4);
  return rc;
}

int loom_scheduler_load(loom_scheduler *s, const loom_state *st) {
  const char *type;
  double f[3];
  int64_t i[4];
  int rc = loom_state_get_str(st, "type", &type);
  if (rc == 0 && strcmp(type, kind_names[s->kind]) != 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint holds a %s schedule, this one is %s", type, kind_names[s->kind]);
  if (rc == 0)
    rc = loom_state_get_f64_array(st, "rates", f, 3);
  if (rc == 0)
    rc = loom_state_get_i64_array(st, "counters", i, 4);
  if (rc < 0)
    return rc;
  s->base_lr = f[0], s->lr = f[1], s->best = f[2];
  s->t = i[0], s->bad_steps = i[1], s->cooldown_left = i[2], s->has_best = i[3] != 0;
  return 0;
}
