/* A training step as one graph (loom/backend.h, "Step graphs"): the device
 * ops of a training batch on one rank are logged from handle_batch's start
 * and the log ended before the batch's one copy back, so that the backend
 * replays a step it has seen twice as a graph. The host's side of the step
 * (step counts, the runner's fields, callbacks) runs every batch as before;
 * a step that needs a result on the host before its end (a loss that does
 * not defer, gradient clipping by norm, several ranks' host-staged sums)
 * runs what was logged then and the rest op by op. */
#include "runners/runner_impl.h"

int loom_runner_graph_begin(loom_runner *r, loom_backend **logged) {
  *logged = NULL;
  loom_backend *b = r->model ? loom_model_backend(r->model) : NULL;
  /* Several ranks replay only when every rank does (their sums must match): not yet. */
  if (!b || r->options.no_graphs || r->loader_kind != LOOM_LOADER_TRAIN || loom_comm_size(r->comm) > 1 ||
      loom_backend_device(b) == LOOM_DEVICE_CPU || !loom_backend_can_graph(b))
    return 0;
  int rc = loom_runner_upload_fix(r, b);
  if (rc == 0 && loom_backend_log_begin(b) == 0) /* a log already open (a custom handle_batch's): leave it */
    *logged = b;
  return rc;
}

int loom_runner_graph_end(loom_backend *b, int rc) {
  if (!b)
    return rc;
  int end = loom_backend_log_end(b, rc >= 0); /* a failed step's log is dropped */
  return rc < 0 ? rc : end;
}
