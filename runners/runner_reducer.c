/* The gradients' mean over ranks, in buckets: runs of whole layers of about
 * bucket_bytes, from the last layer down (the order backward finishes
 * them). With loom_runner_begin_backward, a bucket's all-reduce starts as
 * soon as backward has finished its layers (loom_model_on_grads_ready), so
 * communication overlaps the rest of backward; otherwise every bucket
 * starts at the step. Either way the same buckets are summed by the same
 * calls, so the results are the same bits. A model on a device averages
 * through a host copy of its gradients, bucket by bucket (each copy out
 * waits for the device; device-aware collectives would avoid it). */
#include "runners/runner_impl.h"

#include <math.h>
#include <stdlib.h>

struct loom_reducer {
  loom_model *model; /* the buckets are this model's */
  loom_backend *device; /* the model's backend if a device's: the means go through host */
  float *host;          /* ... this copy of the gradients */
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
  for (size_t b = 0; b < red->nbuckets; b++)
    if (!(red->req[b] = loom_comm_request_create(r->comm, red->hi[b] - red->lo[b])))
      return loom_error_wrap(LOOM_ENOMEM, "the gradient bucket %zu of %zu", b + 1, red->nbuckets);
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
  r->reducer = red;
  int rc = make_buckets(r, red);
  if (rc == 0 && device && !(red->host = malloc((loom_model_num_params(r->model) + 1) * sizeof *red->host)))
    rc = loom_error_oom("a host copy of the gradients to average");
  if (rc < 0) {
    loom_runner_reducer_free(r);
    return rc;
  }
  red->model = r->model;
  red->nparams = loom_model_num_params(r->model);
  red->device = device;
  *out = red;
  return 0;
}

/* Starts bucket `started`; the bucket that holds gradient 0 first carries
 * this rank's non-finite loss as a NaN (runner_step.c). */
static int start_next(loom_reducer *red) {
  loom_runner *r = red->r;
  const size_t b = red->started++;
  float *g = loom_model_grads(r->model), *buf = red->device ? red->host : g;
  int rc = red->device ? loom_backend_to_host(red->device, buf + red->lo[b], g + red->lo[b],
                                              (red->hi[b] - red->lo[b]) * sizeof *buf)
                       : 0;
  if (rc == 0 && red->lo[b] == 0 && r->loss_poisoned)
    buf[0] = NAN;
  if (rc == 0)
    rc = loom_comm_start_mean_f32(red->req[b], buf + red->lo[b]);
  return rc < 0 ? loom_error_wrap(rc, "starting the mean of gradient bucket %zu of %zu (%zu floats)", b + 1,
                                  red->nbuckets, red->hi[b] - red->lo[b])
                : 0;
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
    rc = loom_comm_progress(red->r->comm);
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
  float *g = loom_model_grads(r->model), *buf = red->device ? red->host : g;
  /* Every started bucket is waited for, even after a failure, unless the
   * communicator has failed (then nothing will complete). */
  for (size_t b = 0; b < red->started && !loom_comm_failed(r->comm); b++) {
    int w = loom_comm_wait_mean_f32(red->req[b], buf + red->lo[b]);
    if (w == 0 && red->device) /* the mean back into the device's gradients */
      w = loom_backend_from_host(red->device, g + red->lo[b], buf + red->lo[b],
                                 (red->hi[b] - red->lo[b]) * sizeof *buf);
    if (w < 0 && rc == 0)
      rc = loom_error_wrap(w, "the mean of gradient bucket %zu of %zu", b + 1, red->nbuckets);
  }
  red->started = 0;
  return rc;
}
