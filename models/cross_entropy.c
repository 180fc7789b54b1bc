/* Softmax cross-entropy over logits [N, C] and class indices [N], with
 * PyTorch's label smoothing and class weights: with q = (1 - e) onehot(y)
 * + e / C, l_n = -sum_c w_c q_nc log p_nc, and the mean divides by
 * sum_n w_{y_n}. The forward pass keeps the softmax for the backward:
 * dl/dz_nj = ((sum_c w_c q_nc) p_nj - w_j q_nj) / sum_n w_{y_n}. The
 * arithmetic is the logits' backend's (xent_forward, xent_backward). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/criterion.h"
#include "models/layer_internal.h"

typedef struct cross_entropy {
  loom_tensor *probs;   /* on the logits' backend */
  loom_tensor *weights; /* NULL: all 1; moved to the logits' backend */
  float smoothing;
  double total_weight; /* of the last forward */
} cross_entropy;

static int check(const cross_entropy *ce, const loom_tensor *out, const loom_tensor *target, int64_t *n, int64_t *c) {
  if (out->ndim != 2)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy expects logits [batch, classes], got %d dimensions",
                          out->ndim);
  *n = out->shape[0];
  *c = out->shape[1];
  if (target->numel != *n)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy: %lld logit rows but %lld targets", (long long)*n,
                          (long long)target->numel);
  if (ce->weights && ce->weights->numel != *c)
    return loom_error_set(LOOM_ESHAPE, "cross-entropy: %lld class weights for %lld classes",
                          (long long)ce->weights->numel, (long long)*c);
  return 0;
}

/* Every target a class in [0, c), or an error naming the first that is not. */
static int check_labels(const loom_tensor *target, int64_t n, int64_t c) {
  const float *labels = loom_tensor_host_data(target);
  if (!labels)
    return loom_error_wrap(loom_last_error_code(), "cross-entropy: reading the targets");
  for (int64_t i = 0; i < n; i++) {
    float t = labels[i];
    if (!(t >= 0.0f && t < (float)c) || t != floorf(t))
      return loom_error_set(LOOM_EINVAL, "cross-entropy: target %g of sample %lld is not a class in [0, %lld)",
                            (double)t, (long long)i, (long long)c);
  }
  return 0;
}

/* Starts the forward: probs and the sums on the logits' backend. */
static int ce_issue(void *data, const loom_tensor *out, const loom_tensor *target, double *sums) {
  cross_entropy *ce = data;
  int64_t n = 0, c = 0;
  int rc = check(ce, out, target, &n, &c);
  /* Host targets are checked before the op, for free; a device's only
   * when the op's sums say a target was no class (loom/backend.h), which
   * saves a copy to the host and a wait every batch. */
  if (rc == 0 && loom_backend_device(loom_backend_of(target)) == LOOM_DEVICE_CPU)
    rc = check_labels(target, n, c);
  if (rc == 0)
    rc = loom_tensor_move_to(ce->probs, out->backend);
  if (rc == 0 && ce->weights)
    rc = loom_tensor_move_to(ce->weights, out->backend);
  if (rc < 0 || (rc = loom_tensor_resize(ce->probs, 2, out->shape)) < 0)
    return rc;
  /* Every target a class of weight 1: what backward divides by, before
   * the sums say so (forward_finish sets it from them). */
  ce->total_weight = (double)n;
  return loom_backend_xent_forward(loom_backend_of(out), out->data, target->data,
                                   ce->weights ? ce->weights->data : NULL, ce->smoothing, n, c, ce->probs->data, sums);
}

static int ce_finish(void *data, const loom_tensor *out, const loom_tensor *target, const double *sums, double *loss) {
  cross_entropy *ce = data;
  const double weights = sums[1];
  if (isnan(weights) && loom_backend_device(loom_backend_of(target)) != LOOM_DEVICE_CPU) {
    int rc = check_labels(target, out->shape[0], out->shape[1]);
    return rc < 0 ? rc
                  : loom_error_set(LOOM_EINVAL, "cross-entropy: the %s backend's op found a target that is not a "
                                                "class in [0, %lld), and its host copy has none: the op is wrong",
                                   loom_backend_name(loom_backend_of(target)), (long long)out->shape[1]);
  }
  ce->total_weight = weights;
  *loss = weights > 0 ? sums[0] / weights : 0.0;
  return 0;
}

/* Class weights: backward divides by their sum over the batch. */
static bool ce_backward_before_finish(void *data) { return !((cross_entropy *)data)->weights; }

static int ce_backward(void *data, const loom_tensor *out, const loom_tensor *target, loom_tensor *dout) {
  cross_entropy *ce = data;
  if (ce->probs->numel != out->numel)
    return loom_error_set(LOOM_ESTATE, "cross-entropy: backward without a matching forward");
  const float scale = ce->total_weight > 0 ? (float)(1.0 / ce->total_weight) : 0.0f;
  return loom_backend_xent_backward(loom_backend_of(out), ce->probs->data, target->data,
                                    ce->weights ? ce->weights->data : NULL, ce->smoothing, scale, out->shape[0],
                                    out->shape[1], dout->data);
}

static void ce_destroy(void *data) {
  cross_entropy *ce = data;
  loom_tensor_destroy(ce->probs);
  loom_tensor_destroy(ce->weights);
  free(ce);
}

static const loom_criterion_ops ce_ops = {
    .type = "cross_entropy",
    .forward_issue = ce_issue,
    .forward_finish = ce_finish,
    .backward_before_finish = ce_backward_before_finish,
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
  if (ce && o && o->num_weights && (ce->weights = loom_tensor_create(1, &o->num_weights)))
    memcpy(ce->weights->data, o->weights, (size_t)o->num_weights * sizeof(float));
  if (!ce || !ce->probs || (o && o->num_weights && !ce->weights)) {
    if (ce)
      ce_destroy(ce);
    loom_error_oom("a cross-entropy criterion");
    return NULL;
  }
  ce->smoothing = o ? o->label_smoothing : 0.0f;
  return loom_criterion_create(&ce_ops, ce);
}

loom_criterion *loom_cross_entropy_create(void) { return loom_cross_entropy_create_ex(NULL); }
