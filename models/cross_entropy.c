/* Softmax cross-entropy over logits [N, C] and class indices [N]. The
 * forward pass keeps the softmax so the backward is (p - onehot) / N. */
#include <math.h>
#include <stdlib.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/criterion.h"

typedef struct cross_entropy {
  loom_tensor *probs;
} cross_entropy;

static int check(const loom_tensor *out, const loom_tensor *target, int64_t *n, int64_t *c) {
  if (out->ndim != 2)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy expects logits [batch, classes], got %d dimensions",
                          out->ndim);
  *n = out->shape[0];
  *c = out->shape[1];
  if (target->numel != *n)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy: %lld logit rows but %lld targets", (long long)*n,
                          (long long)target->numel);
  for (int64_t i = 0; i < *n; i++) {
    float t = target->data[i];
    if (!(t >= 0.0f && t < (float)*c) || t != floorf(t))
      return loom_error_set(LOOM_EINVAL, "cross-entropy: target %g of sample %lld is not a class in [0, %lld)",
                            (double)t, (long long)i, (long long)*c);
  }
  return 0;
}

static int ce_forward(void *data, const loom_tensor *out, const loom_tensor *target, double *loss) {
  cross_entropy *ce = data;
  int64_t n = 0, c = 0;
  int rc = check(out, target, &n, &c);
  if (rc < 0 || (rc = loom_tensor_resize(ce->probs, 2, out->shape)) < 0)
    return rc;
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const float *restrict x = out->data + i * c;
    float *restrict p = ce->probs->data + i * c;
    float max = x[0];
    for (int64_t j = 1; j < c; j++)
      max = x[j] > max ? x[j] : max;
    float sum = 0.0f;
    for (int64_t j = 0; j < c; j++) {
      p[j] = expf(x[j] - max);
      sum += p[j];
    }
    float inv = 1.0f / sum;
    for (int64_t j = 0; j < c; j++)
      p[j] *= inv;
    int64_t y = (int64_t)target->data[i];
    total += (double)logf(sum) + (double)max - (double)x[y];
  }
  *loss = n ? total / (double)n : 0.0;
  return 0;
}

static int ce_backward(void *data, const loom_tensor *out, const loom_tensor *target, loom_tensor *dout) {
  cross_entropy *ce = data;
  int64_t n = out->shape[0], c = out->shape[1];
  if (ce->probs->numel != out->numel)
    return loom_error_set(LOOM_ESTATE, "cross-entropy: backward without a matching forward");
  float scale = n ? 1.0f / (float)n : 0.0f;
  const float *restrict p = ce->probs->data;
  float *restrict d = dout->data;
  for (int64_t i = 0; i < n * c; i++)
    d[i] = p[i] * scale;
  for (int64_t i = 0; i < n; i++)
    d[i * c + (int64_t)target->data[i]] -= scale;
  return 0;
}

static void ce_destroy(void *data) {
  cross_entropy *ce = data;
  loom_tensor_destroy(ce->probs);
  free(ce);
}

static const loom_criterion_ops ce_ops = {
    .type = "cross_entropy",
    .forward = ce_forward,
    .backward = ce_backward,
    .destroy = ce_destroy,
};

loom_criterion *loom_cross_entropy_create(void) {
  cross_entropy *ce = calloc(1, sizeof *ce);
  int64_t shape[2] = {1, 1};
  if (ce)
    ce->probs = loom_tensor_create(2, shape);
  if (!ce || !ce->probs) {
    if (ce)
      free(ce);
    loom_error_oom("a cross-entropy criterion");
    return NULL;
  }
  return loom_criterion_create(&ce_ops, ce);
}
