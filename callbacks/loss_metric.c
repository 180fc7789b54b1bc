#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

typedef struct loss_metric {
  char *name;
  loom_criterion *criterion;
} loss_metric;

static int loss_metric_batch_end(loom_callback *cb, loom_runner *r) {
  loss_metric *m = loom_callback_data(cb);
  const loom_tensor *out = loom_runner_output(r);
  if (!out)
    return loom_error_set(LOOM_ESTATE, "loss metric \"%s\": handle_batch set no output", m->name);
  double value;
  int rc = loom_criterion_forward(m->criterion, out, loom_runner_target(r), &value);
  if (rc < 0)
    return rc;
  return loom_metrics_set(loom_runner_batch_metrics(r), m->name, value);
}

static void loss_metric_destroy(void *data) {
  loss_metric *m = data;
  loom_criterion_destroy(m->criterion);
  free(m->name);
  free(m);
}

static const loom_callback_ops loss_metric_ops = {
    .type = "loss_metric",
    .on_batch_end = loss_metric_batch_end,
    .destroy = loss_metric_destroy,
};

loom_callback *loom_loss_metric_callback_create(const char *name, loom_criterion *criterion) {
  loss_metric *m = calloc(1, sizeof *m);
  if (m)
    m->name = strdup(name ? name : "");
  if (!criterion || !name || !*name || !m || !m->name) {
    if (m)
      free(m->name);
    free(m);
    loom_criterion_destroy(criterion);
    if (criterion && name && *name)
      loom_error_oom("a loss metric");
    else
      loom_error_set(LOOM_EINVAL, "loss metric: needs a name and a criterion");
    return NULL;
  }
  m->criterion = criterion;
  loom_callback *cb = loom_callback_create(&loss_metric_ops, m, LOOM_ORDER_METRIC);
  if (cb)
    loom_callback_set_name(cb, name);
  return cb;
}
