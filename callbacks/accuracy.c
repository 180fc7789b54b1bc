#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

#define MAX_TOPK 8

typedef struct accuracy {
  int topk[MAX_TOPK];
  char names[MAX_TOPK][24];
  int n;
} accuracy;

static int accuracy_batch_end(loom_callback *cb, loom_runner *r) {
  const accuracy *a = loom_callback_data(cb);
  const loom_tensor *out = loom_runner_output(r), *target = loom_runner_target(r);
  if (!out)
    return loom_error_set(LOOM_ESTATE, "accuracy: handle_batch set no output (loom_runner_set_output)");
  if (loom_tensor_ndim(out) != 2 || loom_tensor_numel(target) != loom_tensor_dim(out, 0))
    return loom_error_set(LOOM_ESHAPE, "accuracy: needs outputs [batch, classes] and one target per sample");
  const int64_t n = loom_tensor_dim(out, 0), c = loom_tensor_dim(out, 1);
  /* On the host: the outputs may live on a device. */
  const float *scores = loom_tensor_host_data(out), *labels = loom_tensor_host_data(target);
  if (!scores || !labels)
    return loom_error_wrap(loom_last_error_code(), "accuracy: reading the batch's outputs");
  int64_t hits[MAX_TOPK] = {0};
  for (int64_t i = 0; i < n; i++) {
    const float *x = scores + i * c;
    int64_t y = (int64_t)labels[i];
    if (y < 0 || y >= c)
      return loom_error_set(LOOM_EINVAL, "accuracy: target %lld of sample %lld is not a class in [0, %lld)",
                            (long long)y, (long long)i, (long long)c);
    /* The target's rank: classes scoring higher, or equal and earlier. */
    int64_t rank = 0;
    for (int64_t j = 0; j < c; j++)
      rank += x[j] > x[y] || (x[j] == x[y] && j < y);
    for (int k = 0; k < a->n; k++)
      hits[k] += rank < a->topk[k];
  }
  loom_metrics *m = loom_runner_batch_metrics(r);
  for (int k = 0; k < a->n; k++) {
    int rc = loom_metrics_set(m, a->names[k], n ? (double)hits[k] / (double)n : 0.0);
    if (rc < 0)
      return rc;
  }
  return 0;
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
