/* Elementwise losses against a target of the output's size, mean over all
 * elements: BCE with logits, MSE, L1, SmoothL1 (PyTorch's definitions). */
#include <math.h>
#include <stdlib.h>

#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/criterion.h"

typedef enum kind { BCE, MSE, L1, SMOOTH_L1 } kind;

typedef struct elementwise {
  kind kind;
  float beta; /* SmoothL1 */
} elementwise;

static const char *const names[] = {"bce_with_logits", "mse", "l1", "smooth_l1"};

static int check(const elementwise *e, const loom_tensor *out, const loom_tensor *target) {
  if (out->numel != target->numel)
    return loom_error_set(LOOM_ESHAPE, "%s: the output has %lld values but the target %lld", names[e->kind],
                          (long long)out->numel, (long long)target->numel);
  return 0;
}

static int ew_forward(void *data, const loom_tensor *out, const loom_tensor *target, double *loss) {
  const elementwise *e = data;
  int rc = check(e, out, target);
  if (rc < 0)
    return rc;
  double total = 0;
  for (int64_t i = 0; i < out->numel; i++) {
    double z = out->data[i], t = target->data[i], d = z - t;
    switch (e->kind) {
    case BCE: total += fmax(z, 0) - z * t + log1p(exp(-fabs(z))); break;
    case MSE: total += d * d; break;
    case L1: total += fabs(d); break;
    case SMOOTH_L1: total += fabs(d) < e->beta ? 0.5 * d * d / e->beta : fabs(d) - 0.5 * e->beta; break;
    }
  }
  *loss = out->numel ? total / (double)out->numel : 0.0;
  return 0;
}

static int ew_backward(void *data, const loom_tensor *out, const loom_tensor *target, loom_tensor *dout) {
  const elementwise *e = data;
  int rc = check(e, out, target);
  if (rc < 0)
    return rc;
  const float inv = out->numel ? 1.0f / (float)out->numel : 0.0f;
  for (int64_t i = 0; i < out->numel; i++) {
    float z = out->data[i], t = target->data[i], d = z - t, g;
    switch (e->kind) {
    case BCE: g = 1.0f / (1.0f + expf(-z)) - t; break;
    case MSE: g = 2.0f * d; break;
    case L1: g = (float)((d > 0) - (d < 0)); break;
    default: g = fabsf(d) < e->beta ? d / e->beta : (float)((d > 0) - (d < 0)); break;
    }
    dout->data[i] = g * inv;
  }
  return 0;
}

static const loom_criterion_ops ew_ops[] = {
    {"bce_with_logits", ew_forward, ew_backward, free},
    {"mse", ew_forward, ew_backward, free},
    {"l1", ew_forward, ew_backward, free},
    {"smooth_l1", ew_forward, ew_backward, free},
};

static loom_criterion *make(kind k, float beta) {
  elementwise *e = malloc(sizeof *e);
  if (!e) {
    loom_error_oom("a loss");
    return NULL;
  }
  e->kind = k;
  e->beta = beta;
  return loom_criterion_create(&ew_ops[k], e);
}

loom_criterion *loom_bce_with_logits_create(void) { return make(BCE, 0); }
loom_criterion *loom_mse_create(void) { return make(MSE, 0); }
loom_criterion *loom_l1_create(void) { return make(L1, 0); }

loom_criterion *loom_smooth_l1_create(float beta) {
  if (!(beta > 0)) {
    loom_error_set(LOOM_EINVAL, "SmoothL1: beta must be > 0, got %g", (double)beta);
    return NULL;
  }
  return make(SMOOTH_L1, beta);
}
