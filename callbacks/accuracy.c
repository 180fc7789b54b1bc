#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/backend.h"
#include "loom/backend_cpu.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

#define MAX_TOPK LOOM_TOPK_MAX

typedef struct accuracy {
  int topk[MAX_TOPK];
  char names[MAX_TOPK][24];
  int n;
} accuracy;

/* In host memory: no backend, or the CPU's. */
static bool on_host(const loom_tensor *t) {
  loom_backend *b = loom_tensor_backend(t);
  return !b || loom_backend_device(b) == LOOM_DEVICE_CPU;
}

/* The batch's outputs and targets, checked; *be: the backend the hits are
 * counted on (the outputs', or the CPU's on host copies when that backend
 * lacks the op: *scores and *labels then point at the copies). */
static int batch_of(loom_runner *r, loom_backend **be, const float **scores, const float **labels, int64_t *n,
                    int64_t *c) {
  const loom_tensor *out = loom_runner_output(r), *target = loom_runner_target(r);
  if (!out)
    return loom_error_set(LOOM_ESTATE, "accuracy: handle_batch set no output (loom_runner_set_output)");
  if (loom_tensor_ndim(out) != 2 || loom_tensor_numel(target) != loom_tensor_dim(out, 0))
    return loom_error_set(LOOM_ESHAPE, "accuracy: needs outputs [batch, classes] and one target per sample");
  *n = loom_tensor_dim(out, 0), *c = loom_tensor_dim(out, 1);
  /* Counted where the outputs are: on a device, a few counts come back
   * instead of the scores and the targets. */
  *be = on_host(out) ? loom_backend_cpu() : loom_tensor_backend(out);
  if (!*be)
    return loom_error_wrap(loom_last_error_code(), "accuracy: the CPU backend");
  if (on_host(target) ? !on_host(out) : loom_tensor_backend(target) != *be)
    return loom_error_set(LOOM_EINVAL, "accuracy: the outputs are on backend \"%s\" and the targets elsewhere",
                          loom_backend_name(*be));
  /* A backend without the op: its host copies, counted by the CPU's. */
  *scores = loom_tensor_data(out), *labels = loom_tensor_data(target);
  if (!loom_backend_supports(*be, LOOM_OP_TOPK_HITS)) {
    *scores = loom_tensor_host_data(out), *labels = loom_tensor_host_data(target);
    if (!*scores || !*labels)
      return loom_error_wrap(loom_last_error_code(), "accuracy: reading the batch's outputs");
    *be = loom_backend_cpu();
  }
  return 0;
}

/* The batch metrics from the counts (hits[0..a->n), then the first bad
 * sample or -1). */
static int set_metrics(const accuracy *a, loom_runner *r, const int64_t *counts) {
  const loom_tensor *out = loom_runner_output(r);
  const int64_t n = loom_tensor_dim(out, 0), c = loom_tensor_dim(out, 1), bad = counts[a->n];
  if (bad >= 0) {
    const float *labels = loom_tensor_host_data(loom_runner_target(r)); /* only now: for the message */
    return loom_error_set(LOOM_EINVAL, "accuracy: target %g of sample %lld is not a class in [0, %lld)",
                          labels ? (double)labels[bad] : NAN, (long long)bad, (long long)c);
  }
  loom_metrics *m = loom_runner_batch_metrics(r);
  int rc = 0;
  for (int k = 0; k < a->n && rc == 0; k++)
    rc = loom_metrics_set(m, a->names[k], n ? (double)counts[k] / (double)n : 0.0);
  return rc;
}

/* The counts into `counts` (the backend's memory, a->n + 1 of them). */
static int count(const accuracy *a, loom_backend *be, const float *scores, const float *labels, int64_t n, int64_t c,
                 int64_t *counts) {
  int rc = loom_backend_topk_hits(be, scores, labels, n, c, a->topk, a->n, counts, counts + a->n);
  return rc < 0 ? loom_error_wrap(rc, "accuracy: counting the batch's hits") : 0;
}

/* On a deferred batch: the counts travel in the batch's one copy. */
static int accuracy_issue(loom_callback *cb, loom_runner *r, loom_backend *b, void *device) {
  const loom_tensor *out = loom_runner_output(r);
  if (!out || loom_tensor_backend(out) != b || !loom_backend_supports(b, LOOM_OP_TOPK_HITS))
    return 1; /* on_batch_end counts it (on host copies), or says what is wrong */
  const accuracy *a = loom_callback_data(cb);
  loom_backend *be;
  const float *scores, *labels;
  int64_t n, c;
  int rc = batch_of(r, &be, &scores, &labels, &n, &c);
  return rc < 0 ? rc : count(a, be, scores, labels, n, c, device);
}

static int accuracy_finish(loom_callback *cb, loom_runner *r, const void *host) {
  int64_t counts[MAX_TOPK + 1];
  const accuracy *a = loom_callback_data(cb);
  memcpy(counts, host, (size_t)(a->n + 1) * sizeof *counts);
  return set_metrics(a, r, counts);
}

static int accuracy_stage_start(loom_callback *cb, loom_runner *r) {
  const accuracy *a = loom_callback_data(cb);
  const loom_batch_result result = {
      .bytes = (size_t)(a->n + 1) * sizeof(int64_t), .issue = accuracy_issue, .finish = accuracy_finish};
  return loom_runner_add_batch_result(r, cb, &result);
}

/* A batch that was not deferred: counted now, the counts read back from a
 * device (a wait). */
static int accuracy_batch_end(loom_callback *cb, loom_runner *r) {
  if (loom_runner_batch_result_done(r, cb))
    return 0;
  const accuracy *a = loom_callback_data(cb);
  loom_backend *be;
  const float *scores, *labels;
  int64_t n, c, counts[MAX_TOPK + 1];
  int rc = batch_of(r, &be, &scores, &labels, &n, &c);
  if (rc < 0)
    return rc;
  if (loom_backend_device(be) == LOOM_DEVICE_CPU)
    rc = count(a, be, scores, labels, n, c, counts);
  else {
    const size_t bytes = (size_t)(a->n + 1) * sizeof *counts;
    int64_t *device = loom_backend_alloc(be, bytes);
    if (!device)
      return loom_error_wrap(loom_last_error_code(), "accuracy: the batch's counts on backend \"%s\"",
                             loom_backend_name(be));
    rc = count(a, be, scores, labels, n, c, device);
    if (rc == 0 && (rc = loom_backend_to_host(be, counts, device, bytes)) < 0)
      rc = loom_error_wrap(rc, "accuracy: reading the batch's hits");
    loom_backend_free(be, device);
  }
  return rc < 0 ? rc : set_metrics(a, r, counts);
}

static const loom_callback_ops accuracy_ops = {
    .type = "accuracy",
    .on_stage_start = accuracy_stage_start,
    .on_batch_end = accuracy_batch_end,
    .destroy = free,
};

loom_callback *loom_accuracy_callback_create(const int *topk, int n) {
  static const int top1 = 1;
  if (!topk) {
    topk = &top1;
    n = 1;
  }
  if (n < 1 || n > MAX_TOPK) {
    loom_error_set(LOOM_EINVAL, "accuracy: between 1 and %d values of k, got %d", MAX_TOPK, n);
    return NULL;
  }
  accuracy *a = calloc(1, sizeof *a);
  if (!a) {
    loom_error_oom("the accuracy callback");
    return NULL;
  }
  for (int i = 0; i < n; i++) {
    if (topk[i] < 1) {
      free(a);
      loom_error_set(LOOM_EINVAL, "accuracy: k must be >= 1, got %d", topk[i]);
      return NULL;
    }
    a->topk[i] = topk[i];
    if (topk[i] == 1)
      snprintf(a->names[i], sizeof a->names[i], "accuracy");
    else
      snprintf(a->names[i], sizeof a->names[i], "accuracy@%d", topk[i]);
  }
  a->n = n;
  return loom_callback_create(&accuracy_ops, a, LOOM_ORDER_METRIC);
}
