/* Where a loader's time goes: waiting for data, computing, or waiting in
 * the communicator's collectives (other ranks, the gradient all-reduce). */
#include <stdlib.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct timer {
  double data_s;
  double comm_start_s; /* the communicator's wait counter at on_loader_start */
} timer;

static int timer_loader_start(loom_callback *cb, loom_runner *r) {
  timer *t = loom_callback_data(cb);
  t->data_s = 0;
  t->comm_start_s = loom_comm_wait_seconds(loom_runner_comm(r));
  return 0;
}

static int timer_batch_end(loom_callback *cb, loom_runner *r) {
  timer *t = loom_callback_data(cb);
  double data = loom_runner_batch_data_time(r);
  t->data_s += data;
  loom_metrics *m = loom_runner_batch_metrics(r);
  int rc = loom_metrics_set(m, "time/data_s", data);
  return rc == 0 ? loom_metrics_set(m, "time/compute_s", loom_runner_batch_compute_time(r)) : rc;
}

static int timer_loader_end(loom_callback *cb, loom_runner *r) {
  timer *t = loom_callback_data(cb);
  double elapsed = loom_runner_loader_elapsed(r);
  loom_metrics *m = loom_runner_loader_metrics(r);
  /* This rank's own: the loader's metrics have been reduced over ranks already. */
  double comm = loom_comm_wait_seconds(loom_runner_comm(r)) - t->comm_start_s;
  int rc = loom_metrics_set(m, "time/samples_per_s", elapsed > 0 ? (double)loom_runner_loader_samples_run(r) / elapsed : 0);
  if (rc == 0)
    rc = loom_metrics_set(m, "time/data_fraction", elapsed > 0 ? t->data_s / elapsed : 0);
  if (rc == 0)
    rc = loom_metrics_set(m, "time/comm_s", comm);
  return rc == 0 ? loom_metrics_set(m, "time/comm_fraction", elapsed > 0 ? comm / elapsed : 0) : rc;
}

static const loom_callback_ops timer_ops = {
    .type = "timer",
    .on_loader_start = timer_loader_start,
    .on_batch_end = timer_batch_end,
    .on_loader_end = timer_loader_end,
    .destroy = free,
};

loom_callback *loom_timer_callback_create(void) {
  timer *t = calloc(1, sizeof *t);
  if (!t) {
    loom_error_oom("the timer callback");
    return NULL;
  }
  return loom_callback_create(&timer_ops, t, LOOM_ORDER_METRIC);
}
