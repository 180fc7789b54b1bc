/* What the master shares with the other ranks: the experiment's seed, and
 * the model's weights (and the optimizer's state) wherever they may have
 * come from a rank's own seed or a file. A world of one shares nothing. */
#include "runners/runner_impl.h"

#include <stdlib.h>

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

static bool on_device(const loom_model *m) { return loom_backend_device(loom_model_backend(m)) != LOOM_DEVICE_CPU; }

typedef int (*to_host_fn)(const loom_model *, float *);
typedef int (*from_host_fn)(loom_model *, const float *);

/* One of the model's arrays from the master: in place in host memory, or
 * through a host copy for a model on a device (the master's copied out,
 * every rank's copied back in). */
static int share_model_array(loom_runner *r, float *data, size_t n, to_host_fn get, from_host_fn put,
                             const char *what) {
  if (!on_device(r->model))
    return share_floats(r, data, n, what);
  if (n == 0)
    return 0;
  float *host = malloc(n * sizeof *host);
  if (!host)
    return loom_error_oom("a host copy of the model's arrays to broadcast");
  int rc = loom_comm_is_master(r->comm) ? get(r->model, host) : 0;
  if (rc == 0)
    rc = share_floats(r, host, n, what);
  if (rc == 0)
    rc = put(r->model, host);
  free(host);
  return rc < 0 ? loom_error_wrap(rc, "sharing the %s from rank 0 with a model on backend \"%s\"", what,
                                  loom_backend_name(loom_model_backend(r->model)))
                : 0;
}

int loom_runner_share_buffers(loom_runner *r) {
  if (alone(r) || !r->model || !loom_model_is_built(r->model))
    return 0;
  return share_model_array(r, loom_model_buffers(r->model), loom_model_num_buffers(r->model),
                           loom_model_buffers_to_host, loom_model_buffers_from_host, "model's buffers");
}

int loom_runner_share_weights(loom_runner *r, bool optimizer) {
  if (alone(r))
    return 0;
  int rc = 0;
  if (r->model && loom_model_is_built(r->model)) {
    rc = share_model_array(r, loom_model_params(r->model), loom_model_num_params(r->model),
                           loom_model_params_to_host, loom_model_params_from_host, "model's parameters");
    if (rc == 0)
      rc = loom_runner_share_buffers(r);
  }
  /* Shared only right after a checkpoint's load, which leaves the state in
   * host memory (loom_optimizer_state) wherever the model is. */
  if (rc == 0 && optimizer && r->optimizer) {
    size_t n = 0;
    float *state = loom_optimizer_state(r->optimizer, &n);
    rc = share_floats(r, state, n, "optimizer's state");
  }
  return rc;
}
