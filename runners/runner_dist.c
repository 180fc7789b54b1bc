/* What the master shares with the other ranks: the experiment's seed, and
 * the model's weights (and the optimizer's state) wherever they may have
 * come from a rank's own seed or a file. A world of one shares nothing. */
#include "runners/runner_impl.h"

static bool alone(const loom_runner *r) { return loom_comm_size(r->comm) == 1; }

int loom_runner_share_seed(loom_runner *r) {
  if (alone(r))
    return 0;
  uint64_t seed = loom_experiment_seed(r->exp);
  int rc = loom_comm_broadcast(r->comm, &seed, sizeof seed, 0);
  if (rc < 0)
    return loom_error_wrap(rc, "broadcasting the experiment's seed from rank 0");
  loom_experiment_set_seed(r->exp, seed);
  return 0;
}

static int share_floats(loom_runner *r, float *data, size_t n, const char *what) {
  int rc = n ? loom_comm_broadcast(r->comm, data, n * sizeof *data, 0) : 0;
  return rc < 0 ? loom_error_wrap(rc, "broadcasting the %s from rank 0", what) : 0;
}

int loom_runner_share_buffers(loom_runner *r) {
  if (alone(r) || !r->model || !loom_model_is_built(r->model))
    return 0;
  return share_floats(r, loom_model_buffers(r->model), loom_model_num_buffers(r->model), "model's buffers");
}

int loom_runner_share_weights(loom_runner *r, bool optimizer) {
  if (alone(r))
    return 0;
  int rc = 0;
  if (r->model && loom_model_is_built(r->model)) {
    rc = share_floats(r, loom_model_params(r->model), loom_model_num_params(r->model), "model's parameters");
    if (rc == 0)
      rc = loom_runner_share_buffers(r);
  }
  if (rc == 0 && optimizer && r->optimizer) {
    size_t n = 0;
    float *state = loom_optimizer_state(r->optimizer, &n);
    rc = share_floats(r, state, n, "optimizer's state");
  }
  return rc;
}
