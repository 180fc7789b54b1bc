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

static int accuracy_batch_end(loom_callback *cb, loom_runner *r) {
  const accuracy *a = loom_callback_data(cb);
  const loom_tensor *out = loom_runner_output(r), *target = loom_runner_target(r);
  if (!out)
    return loom_error_set(LOOM_ESTATE, "accuracy: handle_batch set no output (loom_runner_set_output)");
  if (loom_tensor_ndim(out) != 2 || loom_tensor_numel(target) != loom_tensor_dim(out, 0))
    return loom_error_set(LOOM_ESHAPE, "accuracy: needs outputs [batch, classes] and one target per sample");
  const int64_t n = loom_tensor_dim(out, 0), c = loom_tensor_dim(out, 1);
  /* Counted where the outputs are: on a device, one small result comes
   * back instead of the scores and the targets. */
  loom_backend *be = on_host(out) ? loom_backend_cpu() : loom_tensor_backend(out);
  if (!be)
    return loom_error_wrap(loom_last_error_code(), "accuracy: the CPU backend");
  if (on_host(target) ? !on_host(out) : loom_tensor_backend(target) != be)
    return loom_error_set(LOOM_EINVAL, "accuracy: the outputs are on backend \"%s\" and the targets elsewhere",
                          loom_backend_name(be));
  /* A backend without the op: its host copies, counted by the CPU's. */
  const float *scores = loom_tensor_data(out), *labels = loom_tensor_data(target);
  if (!loom_backend_supports(be, LOOM_OP_TOPK_HITS)) {
    scores = loom_tensor_host_data(out), labels = loom_tensor_host_data(target);
    if (!scores || !labels)
      return loom_error_wrap(loom_last_error_code(), "accuracy: reading the batch's outputs");
    be = loom_backend_cpu();
  }
  int64_t hits[MAX_TOPK], bad;
  int rc = loom_backend_topk_hits(be, scores, labels, n, c, a->topk, a->n, hits, &bad);
  if (rc < 0)
    return loom_error_wrap(rc, "accuracy: counting the batch's hits");
  if (bad >= 0) {
    const float *labels = loom_tensor_host_data(target); /* only now: for the message */
    return loom_error_set(LOOM_EINVAL, "accuracy: target %g of sample %lld is not a class in [0, %lld)",
                          labels ? (double)labels[bad] : NAN, (long long)bad, (long long)c);
  }
  loom_metrics *m = loom_runner_batch_metrics(r);
  for (int k = 0; k < a->n && rc == 0; k++)
    rc = loom_metrics_set(m, a->names[k], n ? (double)hits[k] / (double)n : 0.0);
  return rc;
}

static const loom_callback_ops accuracy_ops = {
    .type = "accuracy",
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
