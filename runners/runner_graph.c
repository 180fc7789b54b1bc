/* A step as one graph (loom/backend.h, "Step graphs"): the device ops of
 * a batch, training or evaluation, are logged from handle_batch's start
 * and the log ended before the batch's one copy back, so that the backend
 * replays a step it has seen twice as a graph. The host's side of the step (step
 * counts, the runner's fields, callbacks) runs every batch as before; a
 * step that needs a result on the host before its end (a loss that does
 * not defer, gradient clipping by norm) runs what was logged then and the
 * rest op by op.
 *
 * Over several ranks the gradients' sums join the log (loom/comm.h's
 * device sums), so the graph holds the all-reduce, and every rank must run
 * each step alike: captured everywhere or nowhere (NCCL's rule). Every
 * rank logs or none (asked once per loader), and each log's end agrees
 * how it runs (loom_backend_log_begin_over). Only the supervised
 * handle_batch is logged there: its host reads come on every rank alike,
 * where a custom one's might not (a rank reading the device while holding
 * a started sum would wait for the others' starts, still in their logs). */
#include "runners/runner_impl.h"

/* Whether this rank can log its steps on b, as far as its options and
 * backend say; a training step among several ranks (its sums are
 * collectives) only the supervised one's. */
static bool can_log(loom_runner *r, loom_backend *b, bool alone) {
  return !r->options.no_graphs && loom_backend_device(b) != LOOM_DEVICE_CPU && loom_backend_can_graph(b) &&
         (alone || r->handle_batch == loom_supervised_handle_batch);
}

/* Whether every rank says yes. */
static int all_ranks(loom_runner *r, bool mine, bool *all) {
  double yes = mine;
  int rc = loom_comm_allreduce_sum_f64(r->comm, &yes, 1);
  if (rc < 0)
    return loom_error_wrap(rc, "agreeing over %d ranks whether to log the training steps as graphs",
                           loom_comm_size(r->comm));
  *all = yes == loom_comm_size(r->comm);
  return 0;
}

/* Whether every rank logs this loader's training steps (on one rank,
 * whether it does): over several ranks also with the gradients summed on
 * the device, in the log (a host copy of them would flush it every step),
 * asked of the reducer only once every rank could log (it may make the
 * reducer's NCCL communicator, a collective, on every rank alike). */
static int ranks_log(loom_runner *r, loom_backend *b, bool *log) {
  if (loom_comm_size(r->comm) == 1) {
    *log = can_log(r, b, true);
    return 0;
  }
  if (r->graph_ranks == 0) {
    bool all = false;
    int rc = all_ranks(r, can_log(r, b, false), &all);
    if (rc == 0 && all)
      rc = all_ranks(r, loom_runner_grads_summed_on(r, b), &all);
    if (rc < 0)
      return rc;
    r->graph_ranks = all ? 1 : -1;
  }
  *log = r->graph_ranks > 0;
  return 0;
}

int loom_runner_graph_begin(loom_runner *r, loom_backend **logged) {
  *logged = NULL;
  loom_backend *b = r->model ? loom_model_backend(r->model) : NULL;
  if (!b)
    return 0;
  /* An evaluation step holds no collective: each rank logs its own. */
  const bool train = r->loader_kind == LOOM_LOADER_TRAIN, shared = train && loom_comm_size(r->comm) > 1;
  bool log = !train && can_log(r, b, true);
  int rc = train ? ranks_log(r, b, &log) : 0;
  if (rc < 0 || !log)
    return rc;
  if ((rc = loom_runner_upload_fix(r, b)) < 0)
    return rc;
  if (shared) { /* every rank's log ends in a collective: no log, no step */
    if ((rc = loom_backend_log_begin_over(b, r->comm)) == 0)
      *logged = b;
    return rc;
  }
  if (loom_backend_log_begin(b) == 0) /* a log already open (a custom handle_batch's): leave it */
    *logged = b;
  return 0;
}

int loom_runner_graph_end(loom_backend *b, int rc) {
  if (!b)
    return rc;
  int end = loom_backend_log_end(b, rc >= 0); /* a failed step's log is dropped */
  return rc < 0 ? rc : end;
}
