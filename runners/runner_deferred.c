/* The deferred batch: on a device, the supervised batch without a wait
 * until its end. The loss's sums stay on the device (the criterion's
 * forward_issue); backward and the step follow at once, the step held back
 * on the device if the gradients or the loss are not finite
 * (loom_optimizer_step_gated); at the batch's end one small copy brings
 * the sums and the gate to the host, where the loss is made and the
 * non-finite policy decides as it would have before the step: the same
 * skips, errors and weights as the waiting path, with one wait per batch
 * instead of one per result. The callbacks' batch results (the accuracy's
 * hits: loom_runner_add_batch_result) travel in the same copy. */
#include "runners/runner_impl.h"

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* What the one copy brings back: the device's layout of r->deferred,
 * followed at RESULTS_AT by the callbacks' batch results
 * (runner_results.c lays them out). loss_bad: this rank's loss is not
 * finite (several ranks: it goes into the gradients' sum as a NaN,
 * loom_runner_check_loss's rule). */
typedef struct deferred_results {
  double sums[2];
  int gate, loss_bad;
} deferred_results;

#define RESULTS_AT \
  ((sizeof(deferred_results) + _Alignof(max_align_t) - 1) / _Alignof(max_align_t) * _Alignof(max_align_t))

/* The bytes the copy brings: the deferred batch's own, and the results. */
static size_t copy_bytes(const loom_runner *r) {
  return r->num_results ? RESULTS_AT + r->results_bytes : sizeof(deferred_results);
}

/* The model's backend if this batch may defer: a device with the gate's
 * op, and on a training loader an automatic step with no loss scaling
 * (whose decisions are the host's) and, over several ranks, gradients
 * summed on the device (a rank's non-finite loss then reaches the others
 * as a NaN put there: set_if). */
static loom_backend *deferrable(loom_runner *r) {
  loom_backend *b = r->model ? loom_model_backend(r->model) : NULL;
  if (!b || loom_backend_device(b) == LOOM_DEVICE_CPU || !loom_backend_supports(b, LOOM_OP_FLAG_NONFINITE))
    return NULL;
  if (r->loader_kind != LOOM_LOADER_TRAIN)
    return b;
  if (r->manual_step || r->scaling.enabled || !r->optimizer || !loom_optimizer_is_gateable(r->optimizer))
    return NULL;
  if (loom_comm_size(r->comm) > 1 && !(loom_backend_supports(b, LOOM_OP_SET_IF) && loom_runner_grads_summed_on(r, b)))
    return NULL;
  return b;
}

/* r->deferred on `b`, made once (again if the model moved or the
 * results grew), zeroed; its host side as large. */
static int results_on(loom_runner *r, loom_backend *b) {
  const size_t bytes = copy_bytes(r);
  const int64_t floats = (int64_t)((bytes + sizeof(float) - 1) / sizeof(float));
  if (r->deferred && (loom_tensor_backend(r->deferred) != b || loom_tensor_numel(r->deferred) < floats)) {
    loom_tensor_destroy(r->deferred);
    r->deferred = NULL;
  }
  if (!r->deferred && !(r->deferred = loom_tensor_create_on(b, 1, &floats)))
    return loom_last_error_code();
  if (r->results_host_bytes < bytes) {
    void *host = realloc(r->results_host, bytes);
    if (!host)
      return loom_error_oom("the batch's results on the host");
    r->results_host = host, r->results_host_bytes = bytes;
  }
  return loom_backend_zero(b, loom_tensor_data(r->deferred), bytes);
}

static double *sums_of(loom_runner *r) { return (double *)(void *)loom_tensor_data(r->deferred); }
static int *field_of(loom_runner *r, size_t offset) {
  return (int *)(void *)((char *)loom_tensor_data(r->deferred) + offset);
}

int loom_runner_criterion_forward(loom_runner *r, loom_criterion *c, const loom_tensor *out, double *loss,
                                  bool *deferred) {
  *deferred = false;
  loom_backend *b = deferrable(r);
  if (!b)
    return loom_criterion_forward(c, out, r->target, loss);
  int rc = results_on(r, b);
  if (rc < 0)
    return loom_error_wrap(rc, "the batch's results on backend \"%s\"", loom_backend_name(b));
  rc = loom_criterion_forward_issue(c, out, r->target, sums_of(r));
  if (rc == LOOM_ENOTSUP) /* this criterion needs its loss at once */
    return loom_criterion_forward(c, out, r->target, loss);
  if (rc < 0)
    return rc;
  if (loom_comm_size(r->comm) > 1 && r->loader_kind == LOOM_LOADER_TRAIN) {
    /* The reducer puts it into the first bucket it sums. */
    r->loss_bad_flag = field_of(r, offsetof(deferred_results, loss_bad));
    if ((rc = loom_backend_flag_nonfinite(b, NULL, 0, sums_of(r), 2, r->loss_bad_flag)) < 0)
      return rc;
  }
  r->deferred_criterion = c;
  *deferred = true;
  return 0;
}

int loom_runner_step_deferred(loom_runner *r) {
  int rc = 0;
  if (loom_comm_size(r->comm) > 1 && (rc = loom_runner_mean_grads(r)) < 0)
    return loom_error_wrap(rc, "averaging gradients over %d ranks for optimizer step %lld", loom_comm_size(r->comm),
                           (long long)r->global_optimizer_step + 1);
  rc = loom_optimizer_step_gated(r->optimizer, r->model, sums_of(r), 2, field_of(r, offsetof(deferred_results, gate)));
  if (rc == LOOM_ENOTSUP) /* deferrable() saw to it */
    return loom_error_set(LOOM_ESTATE, "stage \"%s\": the deferred step cannot be held back on backend \"%s\"",
                          r->stage->name, loom_backend_name(loom_model_backend(r->model)));
  if (rc < 0)
    return rc;
  r->global_optimizer_step++;
  r->step_deferred = true;
  return 0;
}

int loom_runner_record_loss(loom_runner *r, double loss) {
  r->batch_loss = loss;
  return loom_metrics_set(r->batch_metrics, "loss", loss);
}

/* A callback's batch result failed: its message names the callback and
 * the batch. */
static int result_failed(const loom_runner *r, const loom_result_slot *s, int rc, unsigned serial, const char *what) {
  if (loom_error_serial() == serial)
    loom_error_set(rc, "%s", loom_strerror(rc));
  return loom_error_wrap(rc, "callback \"%s\" %s its result of batch %lld (stage \"%s\", epoch %d, loader \"%s\")",
                         loom_callback_name(s->cb), what, (long long)r->loader_batch_step, r->stage->name, r->epoch,
                         r->loader_name);
}

/* After handle_batch: each result whose callback hears this batch's
 * on_batch_end writes into the results area, before the copy. */
int loom_runner_issue_results(loom_runner *r) {
  loom_backend *b = loom_tensor_backend(r->deferred);
  char *area = (char *)loom_tensor_data(r->deferred) + RESULTS_AT;
  if ((size_t)loom_tensor_numel(r->deferred) * sizeof(float) < copy_bytes(r)) /* sized before handle_batch */
    return loom_error_set(LOOM_ESTATE, "stage \"%s\": a batch result was registered during handle_batch (batch %lld "
                                       "of loader \"%s\"); register it from on_stage_start",
                          r->stage->name, (long long)r->loader_batch_step, r->loader_name);
  for (size_t i = 0; i < r->num_results; i++) {
    loom_result_slot *s = &r->results[i];
    if (!loom_callback_hears(s->cb, LOOM_EVENT_BATCH_END, r))
      continue;
    unsigned serial = loom_error_serial();
    int rc = s->result.issue(s->cb, r, b, area + s->offset);
    if (rc < 0)
      return result_failed(r, s, rc, serial, "issuing");
    s->issued = rc == 0;
  }
  return 0;
}

/* After the copy: the issued results to their callbacks. */
int loom_runner_finish_results(loom_runner *r) {
  const char *area = (const char *)r->results_host + RESULTS_AT;
  for (size_t i = 0; i < r->num_results; i++) {
    loom_result_slot *s = &r->results[i];
    if (!s->issued)
      continue;
    unsigned serial = loom_error_serial();
    int rc = s->result.finish(s->cb, r, area + s->offset);
    if (rc < 0)
      return result_failed(r, s, rc, serial, "finishing");
    s->done = true;
  }
  return 0;
}

/* The batch's end on the host: one copy (the callbacks' results with it),
 * the loss, then what the non-finite policy makes of a step the gate held
 * back. */
int loom_runner_settle_deferred(loom_runner *r) {
  loom_criterion *c = r->deferred_criterion;
  const bool stepped = r->step_deferred;
  r->deferred_criterion = NULL;
  r->step_deferred = false;
  r->loss_bad_flag = NULL;
  deferred_results host;
  int rc = loom_backend_to_host(loom_tensor_backend(r->deferred), r->results_host, loom_tensor_data(r->deferred),
                                copy_bytes(r));
  memcpy(&host, r->results_host, sizeof host);
  double loss;
  if (rc == 0)
    rc = loom_criterion_forward_finish(c, r->output, r->target, host.sums, &loss);
  if (rc == 0)
    rc = loom_runner_record_loss(r, loss);
  if (rc < 0 || !stepped || !host.gate)
    return rc;
  /* Held back on the device: no step was taken. Over several ranks every
   * rank held it back (the mean was not finite), and says so as the waiting
   * path does: the gradients, with this rank's loss if it was the cause. */
  loom_optimizer_untake_step(r->optimizer);
  r->global_optimizer_step--;
  if (loom_comm_size(r->comm) > 1) {
    r->loss_poisoned = !isfinite(loss), r->poisoned_loss = loss;
    rc = loom_runner_nonfinite_gradients(r);
    r->loss_poisoned = false;
  } else {
    rc = isfinite(loss) ? loom_runner_nonfinite_gradients(r) : loom_runner_check_loss(r, loss);
  }
  return rc < 0 ? rc : 0;
}
