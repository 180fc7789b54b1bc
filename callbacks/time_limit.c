/* Stops a run cleanly after a wall-clock budget. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct time_limit {
  double seconds;
  uint64_t start;
  bool fired;
} time_limit;

static int tl_experiment_start(loom_callback *cb, loom_runner *r) {
  (void)r;
  time_limit *t = loom_callback_data(cb);
  t->start = uv_hrtime();
  t->fired = false;
  return 0;
}

static int tl_batch_end(loom_callback *cb, loom_runner *r) {
  time_limit *t = loom_callback_data(cb);
  if (!t->fired && (double)(uv_hrtime() - t->start) * 1e-9 >= t->seconds) {
    char reason[128];
    snprintf(reason, sizeof reason, "time limit of %g s reached", t->seconds);
    t->fired = true;
    loom_runner_interrupt(r, reason);
  }
  return 0;
}

static int tl_exception(loom_callback *cb, loom_runner *r) {
  time_limit *t = loom_callback_data(cb);
  /* Our own interrupt is the plan, not a failure. */
  if (t->fired && loom_runner_error(r) == LOOM_EINTERRUPTED &&
      strstr(loom_runner_error_message(r), "time limit"))
    loom_runner_mark_error_handled(r);
  return 0;
}

static const loom_callback_ops time_limit_ops = {
    .type = "time_limit",
    .on_experiment_start = tl_experiment_start,
    .on_batch_end = tl_batch_end,
    .on_exception = tl_exception,
    .destroy = free,
};

loom_callback *loom_time_limit_callback_create(double seconds) {
  if (!(seconds > 0)) {
    loom_error_set(LOOM_EINVAL, "time limit: seconds must be > 0, got %g", seconds);
    return NULL;
  }
  time_limit *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("the time limit callback");
    return NULL;
  }
  t->seconds = seconds;
  return loom_callback_create(&time_limit_ops, t, LOOM_ORDER_EXTERNAL);
}
