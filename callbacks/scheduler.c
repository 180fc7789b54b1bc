/* Drives a learning-rate schedule per optimizer step or per epoch. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "callbacks/monitor.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

/* The most schedule steps a resume catches up (see sched_load). */
#define MAX_BEHIND ((int64_t)1 << 20)

typedef struct scheduling {
  loom_scheduler *s;
  loom_schedule_unit unit;
  char *loader, *metric;
  /* Optimizer steps already turned into schedule steps; UNSEEN until the
   * stage's first look. */
  int64_t seen_steps;
} scheduling;

#define UNSEEN (-1)

/* The count is taken at the first look, not here: during a resume's replay
 * the runner's counters are not restored yet. A scheduler with saved state
 * gets its count from sched_load; one added since the checkpoint starts
 * where the run resumes (a replay from step 0 would put a scheduler added
 * in stage 2 through stage 1's steps too, and a damaged step count would
 * make that a loop without end). */
static int sched_stage_start(loom_callback *cb, loom_runner *r) {
  scheduling *d = loom_callback_data(cb);
  d->seen_steps = UNSEEN;
  return loom_scheduler_start(d->s, loom_runner_optimizer(r));
}

/* Before a batch's optimizer step: the first one of the stage (or of the
 * resumed run) sets where the schedule's steps count from. */
static int first_look(loom_callback *cb, loom_runner *r) {
  scheduling *d = loom_callback_data(cb);
  if (d->seen_steps == UNSEEN)
    d->seen_steps = loom_runner_optimizer_step_count(r);
  return 0;
}

/* One schedule step per optimizer step taken since the last look. */
static int catch_up(loom_callback *cb, loom_runner *r) {
  scheduling *d = loom_callback_data(cb);
  if (d->unit != LOOM_SCHEDULE_PER_STEP)
    return 0;
  first_look(cb, r);
  int rc = 0;
  for (int64_t n = loom_runner_optimizer_step_count(r); rc == 0 && d->seen_steps < n; d->seen_steps++)
    rc = loom_scheduler_step(d->s, loom_runner_optimizer(r), NAN);
  return rc;
}

static int sched_epoch_end(loom_callback *cb, loom_runner *r) {
  scheduling *d = loom_callback_data(cb);
  if (d->unit != LOOM_SCHEDULE_PER_EPOCH)
    return 0;
  double metric = NAN;
  if (loom_scheduler_needs_metric(d->s)) {
    loom_monitored mon;
    int rc = loom_monitor_lookup(r, "scheduler (ReduceLROnPlateau)", d->loader, d->metric, -1, true, &mon);
    if (rc < 0)
      return rc;
    metric = mon.value;
  }
  return loom_scheduler_step(d->s, loom_runner_optimizer(r), metric);
}

static int sched_save(loom_callback *cb, loom_runner *r, loom_state *state) {
  scheduling *d = loom_callback_data(cb);
  /* Before the stage's first batch no step was taken: the count is now's. */
  int64_t seen = d->seen_steps == UNSEEN ? loom_runner_optimizer_step_count(r) : d->seen_steps;
  int rc = loom_scheduler_save(d->s, state);
  return rc == 0 ? loom_state_set_i64(state, "seen_steps", seen) : rc;
}

static int sched_load(loom_callback *cb, loom_runner *r, const loom_state *state) {
  scheduling *d = loom_callback_data(cb);
  int64_t seen;
  int rc = loom_scheduler_load(d->s, state);
  if (rc == 0)
    rc = loom_state_get_i64(state, "seen_steps", &seen);
  /* The catch-up loop runs from here to the run's optimizer steps, one
   * schedule step each: the scheduler catches up at every batch's end, so
   * a checkpoint loom wrote is a few steps behind at most (a damaged one
   * could ask for 2^60, a loop without end). */
  const int64_t steps = loom_runner_optimizer_step_count(r);
  if (rc == 0 && (seen < 0 || seen > steps))
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's scheduler saw %lld optimizer steps of the run's %lld",
                          (long long)seen, (long long)steps);
  if (rc == 0 && steps - seen > MAX_BEHIND)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's scheduler is %lld optimizer steps behind the run (it saw "
                                        "%lld of %lld); a checkpoint loom writes is a batch behind at most: the file "
                                        "is damaged",
                          (long long)(steps - seen), (long long)seen, (long long)steps);
  if (rc == 0)
    d->seen_steps = seen;
  return rc;
}

static void sched_destroy(void *data) {
  scheduling *d = data;
  loom_scheduler_destroy(d->s);
  free(d->loader);
  free(d->metric);
  free(d);
}

static const loom_callback_ops scheduler_ops = {
    .type = "scheduler",
    .on_stage_start = sched_stage_start,
    .on_batch_start = first_look,
    .on_batch_end = catch_up,
    .on_loader_end = catch_up,
    .on_epoch_end = sched_epoch_end,
    .save = sched_save,
    .load = sched_load,
    .destroy = sched_destroy,
};

loom_callback *loom_scheduler_callback_create(loom_scheduler *s, loom_schedule_unit unit, const char *loader,
                                              const char *metric) {
  if (!s || (unit != LOOM_SCHEDULE_PER_STEP && unit != LOOM_SCHEDULE_PER_EPOCH) ||
      (loom_scheduler_needs_metric(s) && unit != LOOM_SCHEDULE_PER_EPOCH)) {
    loom_scheduler_destroy(s);
    loom_error_set(LOOM_EINVAL, "scheduler callback: needs a scheduler; ReduceLROnPlateau steps per epoch");
    return NULL;
  }
  scheduling *d = calloc(1, sizeof *d);
  bool ok = d != NULL;
  if (ok)
    d->s = s; /* owned by d from here: sched_destroy frees it */
  if (ok && loader)
    ok = (d->loader = strdup(loader)) != NULL;
  if (ok && metric)
    ok = (d->metric = strdup(metric)) != NULL;
  if (!ok) {
    if (d)
      sched_destroy(d);
    else
      loom_scheduler_destroy(s);
    loom_error_oom("the scheduler callback");
    return NULL;
  }
  d->unit = unit;
  return loom_callback_create(&scheduler_ops, d, LOOM_ORDER_SCHEDULER);
}
