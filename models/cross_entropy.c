/* Softmax cross-entropy over logits [N, C] and class indices [N], with
 * PyTorch's label smoothing and class weights: with q = (1 - e) onehot(y)
 * + e / C, l_n = -sum_c w_c q_nc log p_nc, and the mean divides by
 * sum_n w_{y_n}. The forward pass keeps the softmax for the backward:
 * dl/dz_nj = ((sum_c w_c q_nc) p_nj - w_j q_nj) / sum_n w_{y_n}. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/criterion.h"

typedef struct cross_entropy {
  loom_tensor *probs;
  float smoothing;
  float *weights; /* NULL: all 1 */
  int64_t num_weights;
  double total_weight; /* of the last forward */
} cross_entropy;

static float weight(const cross_entropy *ce, int64_t c) { return ce->weights ? ce->weights[c] : 1.0f; }

static int check(const cross_entropy *ce, const loom_tensor *out, const loom_tensor *target, int64_t *n, int64_t *c) {
  if (out->ndim != 2)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy expects logits [batch, classes], got %d dimensions",
                          out->ndim);
  *n = out->shape[0];
  *c = out->shape[1];
  if (target->numel != *n)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy: %lld logit rows but %lld targets", (long long)*n,
                          (long long)target->numel);
  if (ce->weights && ce->num_weights != *c)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy: %lld class weights for %lld classes", (long long)ce->num_weights,
                          (long long)*c);
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
  int rc = check(ce, out, target, &n, &c);
  if (rc < 0 || (rc = loom_tensor_resize(ce->probs, 2, out->shape)) < 0)
    return rc;
  const double off = ce->smoothing / (double)c, on = 1.0 - ce->smoothing + off;
  double total = 0.0, weights = 0.0;
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
    const double lse = (double)logf(sum) + (double)max;
    const int64_t y = (int64_t)target->data[i];
    if (ce->smoothing == 0.0f && !ce->weights) {
      total += lse - (double)x[y];
    } else {
      for (int64_t j = 0; j < c; j++)
        total += weight(ce, j) * (j == y ? on : off) * (lse - (double)x[j]);
    }
    weights += weight(ce, y);
  }
  ce->total_weight = weights;
  *loss = weights > 0 ? total / weights : 0.0;
  return 0;
}

static int ce_backward(void *data, const loom_tensor *out, const loom_tensor *target, loom_tensor *dout) {
  cross_entropy *ce = data;
  int64_t n = out->shape[0], c = out->shape[1];
  if (ce->probs->numel != out->numel)
    return loom_error_set(LOOM_ESTATE, "cross-entropy: backward without a matching forward");
  const float scale = ce->total_weight > 0 ? (float)(1.0 / ce->total_weight) : 0.0f;
  const float off = ce->smoothing / (float)c, on = 1.0f - ce->smoothing + off;
  const float *restrict p = ce->probs->data;
  float *restrict d = dout->data;
  if (ce->smoothing == 0.0f && !ce->weights) {
    for (int64_t i = 0; i < n * c; i++)
      d[i] = p[i] * scale;
    for (int64_t i = 0; i < n; i++)
      d[i * c + (int64_t)target->data[i]] -= scale;
    return 0;
  }
  for (int64_t i = 0; i < n; i++) {
    const int64_t y = (int64_t)target->data[i];
    float wq = 0.0f; /* sum_c w_c q_ic */
    for (int64_t j = 0; j < c; j++)
      wq += weight(ce, j) * (j == y ? on : off);
    for (int64_t j = 0; j < c; j++)
      d[i * c + j] = (wq * p[i * c + j] - weight(ce, j) * (j == y ? on : off)) * scale;
  }
  return 0;
}

static void ce_destroy(void *data) {
  cross_entropy *ce = data;
  loom_tensor_destroy(ce->probs);
  free(ce->weights);
  free(ce);
}

static const loom_criterion_ops ce_ops = {
    .type = "cross_entropy",
    .forward = ce_forward,
    .backward = ce_backward,
    .destroy = ce_destroy,
};

loom_criterion *loom_cross_entropy_create_ex(const loom_cross_entropy_options *o) {
  if (o && (!(o->label_smoothing >= 0 && o->label_smoothing <= 1) || o->num_weights < 0 ||
            (o->num_weights && !o->weights))) {
    loom_error_set(LOOM_EINVAL, "cross-entropy: label_smoothing in [0, 1] and one weight per class");
    return NULL;
  }
  for (int64_t i = 0; o && i < o->num_weights; i++)
    if (!(o->weights[i] >= 0)) {
      loom_error_set(LOOM_EINVAL, "cross-entropy: class weight %lld is %g; weights are >= 0", (long long)i,
                     (double)o->weights[i]);
      return NULL;
    }
  cross_entropy *ce = calloc(1, sizeof *ce);
  int64_t shape[2] = {1, 1};
  if (ce)
    ce->probs = loom_tensor_create(2, shape);
  if (ce && o && o->num_weights && (ce->weights = malloc((size_t)o->num_weights * sizeof(float))))
    memcpy(ce->weights, o->weights, (size_t)o->num_weights * sizeof(float));
  if (!ce || !ce->probs || (o && o->num_weights && !ce->weights)) {
    if (ce)
      ce_destroy(ce);
    loom_error_oom("a cross-entropy criterion");
    return NULL;
  }
  ce->smoothing = o ? o->label_smoothing : 0.0f;
  ce->num_weights = o ? o->num_weights : 0;
  return loom_criterion_create(&ce_ops, ce);
}

loom_criterion *loom_cross_entropy_create(void) { return loom_cross_entropy_create_ex(NULL); }
