/* The gradients' mean over ranks, in buckets: runs of whole layers of about
 * bucket_bytes, from the last layer down (the order backward finishes
 * them). With loom_runner_begin_backward, a bucket's all-reduce starts as
 * soon as backward has finished its layers (loom_model_on_grads_ready), so
 * communication overlaps the rest of backward; otherwise every bucket
 * starts at the step. Either way the same buckets are summed by the same
 * calls, so the results are the same bits.
 *
 * Where the gradients lie decides how (enum how): on the host, the
 * communicator's mean of them; a model on a device, summed where they lie
 * by a device-aware communicator (loom_comm_sums_on: the runner's own, or
 * an NCCL one made from the runner's MPI communicator for a CUDA backend,
 * loom/comm_nccl.h), then divided on the device (loom_backend_scale by
 * 1 / ranks: the host mean's division, bit for bit, when the world size
 * is a power of two, within an ulp otherwise); else through a host copy
 * of the gradients, bucket by bucket (each copy out waits for the device),
 * as also with loom_run_options.host_staged_grads. */
#include "runners/runner_impl.h"

#include <math.h>
#include <stdlib.h>

#include "loom/comm_nccl.h"

typedef enum how {
  ON_HOST,   /* the model's gradients are the host's */
  ON_DEVICE, /* summed on the device by red->comm */
  STAGED,    /* the device's gradients through red->host */
} how;

struct loom_reducer {
  loom_model *model; /* the buckets are this model's */
  loom_backend *device; /* the model's backend if a device's */
  how how;
  loom_comm *comm;  /* the requests': the runner's, or own */
  loom_comm *own;   /* a device-aware communicator made for the device (NCCL), or NULL */
  float *host;      /* STAGED: the host copy of the gradients */
  size_t nparams;
  size_t nbuckets;
  size_t *lo, *hi; /* bucket b: gradients [lo, hi); b = 0 holds the last layers */
  loom_comm_request **req;
  size_t started; /* buckets started this step, in order */
  bool armed;     /* a backward that the step follows is running */
  int rc;         /* the first failure while backward ran, with its message */
  char message[1024];
  loom_runner *r;
};

void loom_runner_reducer_free(loom_runner *r) {
  loom_reducer *red = r->reducer;
  if (!red)
    return;
  if (red->model)
    loom_model_on_grads_ready(red->model, NULL, NULL);
  for (size_t b = 0; b < red->nbuckets; b++)
    loom_comm_request_destroy(red->req[b]);
  loom_comm_destroy(red->own);
  free(red->req), free(red->lo), free(red->hi), free(red->host);
  free(red);
  r->reducer = NULL;
}

static size_t bucket_bytes(const loom_runner *r) {
  return r->options.bucket_bytes ? r->options.bucket_bytes : LOOM_BUCKET_BYTES_DEFAULT;
}

/* Buckets of whole layers, last layer first, closed once the next layer
 * would take one past bucket_bytes. */
static int make_buckets(loom_runner *r, loom_reducer *red) {
  loom_model *m = r->model;
  const size_t layers = loom_model_num_layers(m), limit = bucket_bytes(r) / sizeof(float);
  red->lo = calloc(layers + 1, sizeof *red->lo);
  red->hi = calloc(layers + 1, sizeof *red->hi);
  red->req = calloc(layers + 1, sizeof *red->req);
  if (!red->lo || !red->hi || !red->req)
    return loom_error_oom("the gradient buckets");
  size_t hi = loom_model_num_params(m), lo = hi;
  for (size_t i = layers; i-- > 0;) {
    size_t off, count;
    loom_model_layer_params(m, i, &off, &count);
    if (count == 0)
      continue;
    if (lo < hi && hi - off > limit) { /* close the bucket before this layer */
      red->lo[red->nbuckets] = lo, red->hi[red->nbuckets++] = hi;
      hi = lo;
    }
    lo = off;
  }
  if (lo < hi)
    red->lo[red->nbuckets] = lo, red->hi[red->nbuckets++] = hi;
  for (size_t b = 0; b < red->nbuckets; b++) {
    const size_t n = red->hi[b] - red->lo[b];
    red->req[b] = red->how == ON_DEVICE ? loom_comm_device_request_create(red->comm, red->device, n)
                                        : loom_comm_request_create(red->comm, n);
    if (!red->req[b])
      return loom_error_wrap(loom_last_error_code(), "the gradient bucket %zu of %zu", b + 1, red->nbuckets);
  }
  return 0;
}

/* How a device's gradients are averaged: summed where they lie by the
 * runner's communicator if it can, else by an NCCL communicator made from
 * it (every rank decides alike: loom_comm_nccl_create agrees over them),
 * else through the host. */
static int choose_device_path(loom_runner *r, loom_reducer *red) {
  red->how = STAGED;
  if (r->options.host_staged_grads)
    return 0;
  if (loom_comm_sums_on(r->comm, red->device)) {
    red->how = ON_DEVICE;
    return 0;
  }
  if (!loom_comm_nccl_applies(r->comm, red->device))
    return 0;
  int rc = loom_comm_nccl_create(r->comm, red->device, &red->own);
  if (rc == LOOM_ENOTSUP) { /* NCCL is not there on some rank: the host it is, on every rank */
    loom_notice_once("nccl", "the gradients are averaged through the host, not with NCCL: %s", loom_last_error());
    return 0;
  }
  if (rc < 0)
    return loom_error_wrap(rc, "the NCCL communicator for the gradients (loom_run_options.host_staged_grads, or loom "
                               "run's --host-staged-grads, averages them through the host instead)");
  red->comm = red->own;
  red->how = ON_DEVICE;
  return 0;
}

/* The reducer for the runner's model, made again when the model changes. */
static int reducer_for_model(loom_runner *r, loom_reducer **out) {
  loom_reducer *red = r->reducer;
  loom_backend *b = loom_model_backend(r->model);
  loom_backend *device = loom_backend_device(b) != LOOM_DEVICE_CPU ? b : NULL;
  if (red && red->model == r->model && red->nparams == loom_model_num_params(r->model) && red->device == device) {
    *out = red;
    return 0;
  }
  loom_runner_reducer_free(r);
  if (!(red = calloc(1, sizeof *red)))
    return loom_error_oom("the gradient reducer");
  red->r = r;
  red->comm = r->comm;
  red->device = device;
  r->reducer = red;
  int rc = device ? choose_device_path(r, red) : 0;
  if (rc == 0)
    rc = make_buckets(r, red);
  if (rc == 0 && red->how == STAGED &&
      !(red->host = malloc((loom_model_num_params(r->model) + 1) * sizeof *red->host)))
    rc = loom_error_oom("a host copy of the gradients to average");
  if (rc < 0) {
    loom_runner_reducer_free(r);
    return rc;
  }
  red->model = r->model;
  red->nparams = loom_model_num_params(r->model);
  *out = red;
  return 0;
}

bool loom_runner_grads_summed_on(loom_runner *r, loom_backend *b) {
  loom_reducer *red;
  return loom_model_backend(r->model) == b && reducer_for_model(r, &red) == 0 && red->how == ON_DEVICE;
}

/* This rank's non-finite loss, as a NaN in gradient 0 of what is summed
 * (runner_step.c); a deferred batch's as the device found it. */
static int poison(loom_reducer *red, float *g) {
  static const float nan = NAN;
  if (red->r->loss_bad_flag) /* ON_DEVICE: runner_deferred.c's rule */
    return loom_backend_set_if(red->device, red->r->loss_bad_flag, g, NAN);
  if (red->how != ON_DEVICE) {
    (red->how == STAGED ? red->host : g)[0] = NAN;
    return 0;
  }
  return loom_backend_from_host(red->device, g, &nan, sizeof nan);
}

/* Starts bucket `started`; the bucket that holds gradient 0 first carries
 * this rank's non-finite loss. */
static int start_next(loom_reducer *red) {
  loom_runner *r = red->r;
  const size_t b = red->started++, lo = red->lo[b], n = red->hi[b] - lo;
  float *g = loom_model_grads(r->model);
  int rc = red->how == STAGED ? loom_backend_to_host(red->device, red->host + lo, g + lo, n * sizeof *g) : 0;
  if (rc == 0 && lo == 0 && (r->loss_poisoned || r->loss_bad_flag))
    rc = poison(red, g);
  if (rc == 0)
    rc = red->how == ON_DEVICE ? loom_comm_start_sum_f32(red->req[b], g + lo)
                               : loom_comm_start_mean_f32(red->req[b], (red->how == STAGED ? red->host : g) + lo);
  return rc < 0 ? loom_error_wrap(rc, "starting the mean of gradient bucket %zu of %zu (%zu floats)", b + 1,
                                  red->nbuckets, n)
                : 0;
}

/* Completes bucket b: its mean in the model's gradients. */
static int wait_bucket(loom_reducer *red, size_t b) {
  const size_t lo = red->lo[b], n = red->hi[b] - lo;
  float *g = loom_model_grads(red->model);
  if (red->how == ON_DEVICE) {
    int rc = loom_comm_wait_sum_f32(red->req[b], g + lo);
    return rc < 0 ? rc : loom_backend_scale(red->device, g + lo, 1.0f / (float)loom_comm_size(red->comm), (int64_t)n);
  }
  float *buf = (red->how == STAGED ? red->host : g) + lo;
  int rc = loom_comm_wait_mean_f32(red->req[b], buf);
  if (rc == 0 && red->how == STAGED) /* the mean back into the device's gradients */
    rc = loom_backend_from_host(red->device, g + lo, buf, n * sizeof *buf);
  return rc;
}

/* loom_model_on_grads_ready: every bucket now wholly final starts. */
static void grads_ready(void *ctx, size_t first) {
  loom_reducer *red = ctx;
  if (red->rc < 0)
    return;
  int rc = 0;
  while (rc == 0 && red->started < red->nbuckets && red->lo[red->started] >= first)
    rc = start_next(red);
  if (rc == 0 && red->started > 0)
    rc = loom_comm_progress(red->comm);
  if (rc < 0) {
    red->rc = rc;
    snprintf(red->message, sizeof red->message, "%s", loom_last_error());
  }
}

int loom_runner_begin_backward(loom_runner *r) {
  if (loom_comm_size(r->comm) == 1 || !r->model || r->options.no_overlap)
    return 0;
  loom_reducer *red;
  int rc = reducer_for_model(r, &red);
  if (rc < 0)
    return rc;
  if (red->armed || red->started)
    return loom_error_set(LOOM_ESTATE, "loom_runner_begin_backward: the last backward's gradients were not stepped "
                                       "with (loom_runner_optimizer_step must follow each such backward)");
  red->armed = true;
  red->rc = 0;
  loom_model_on_grads_ready(r->model, grads_ready, red);
  return 0;
}

int loom_runner_mean_grads(loom_runner *r) {
  loom_reducer *red;
  int rc = reducer_for_model(r, &red);
  if (rc < 0)
    return rc;
  loom_model_on_grads_ready(r->model, NULL, NULL);
  red->armed = false;
  rc = red->rc;
  if (rc < 0)
    loom_error_set(rc, "%s", red->message);
  while (rc == 0 && red->started < red->nbuckets)
    rc = start_next(red);
  /* Every started bucket is waited for, even after a failure, unless the
   * communicator has failed (then nothing will complete). */
  for (size_t b = 0; b < red->started && !loom_comm_failed(red->comm) && !loom_comm_failed(r->comm); b++) {
    int w = wait_bucket(red, b);
    if (w < 0 && rc == 0)
      rc = loom_error_wrap(w, "the mean of gradient bucket %zu of %zu", b + 1, red->nbuckets);
  }
  red->started = 0;
  return rc;
}
