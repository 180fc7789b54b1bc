/* The callbacks' batch results that travel in the deferred batch's copy
 * (loom_runner_add_batch_result): registered for a stage, laid out one
 * after another, each aligned for any type. Issued and finished by
 * runner_deferred.c. */
#include "runners/runner_impl.h"

#include <stddef.h>
#include <stdlib.h>

#define RESULT_ALIGN _Alignof(max_align_t)

static size_t aligned(size_t bytes) { return (bytes + RESULT_ALIGN - 1) / RESULT_ALIGN * RESULT_ALIGN; }

/* The offsets, after a result came, went or changed size. */
static void lay_out(loom_runner *r) {
  r->results_bytes = 0;
  for (size_t i = 0; i < r->num_results; i++) {
    r->results[i].offset = r->results_bytes;
    r->results_bytes += aligned(r->results[i].result.bytes);
  }
}

static loom_result_slot *slot_of(const loom_runner *r, const loom_callback *cb) {
  for (size_t i = 0; i < r->num_results; i++)
    if (r->results[i].cb == cb)
      return &r->results[i];
  return NULL;
}

static void remove_slot(loom_runner *r, loom_result_slot *s) {
  size_t i = (size_t)(s - r->results);
  for (; i + 1 < r->num_results; i++)
    r->results[i] = r->results[i + 1];
  r->num_results--;
  lay_out(r);
}

int loom_runner_add_batch_result(loom_runner *r, loom_callback *cb, const loom_batch_result *result) {
  const char *name = cb ? loom_callback_name(cb) : "?";
  if (!r || !cb)
    return loom_error_set(LOOM_EINVAL, "loom_runner_add_batch_result: a runner and a callback are required");
  if (!r->in_stage)
    return loom_error_set(LOOM_ESTATE, "callback \"%s\": a batch result is registered inside a stage "
                                       "(from on_stage_start)",
                          name);
  if (!loom_callback_table_has(&r->stage_table, cb))
    return loom_error_set(LOOM_EINVAL, "callback \"%s\" is not in stage \"%s\": it cannot have a batch result there",
                          name, r->stage->name);
  loom_result_slot *s = slot_of(r, cb);
  if (!result) {
    if (s)
      remove_slot(r, s);
    return 0;
  }
  if (!result->bytes || !result->issue || !result->finish)
    return loom_error_set(LOOM_EINVAL, "callback \"%s\": a batch result needs bytes, issue and finish", name);
  if (!s) {
    if (r->num_results == r->cap_results) {
      size_t cap = r->cap_results ? 2 * r->cap_results : 4;
      loom_result_slot *grown = realloc(r->results, cap * sizeof *grown);
      if (!grown)
        return loom_error_oom("the batch results");
      r->results = grown, r->cap_results = cap;
    }
    s = &r->results[r->num_results++];
  }
  *s = (loom_result_slot){.cb = cb, .result = *result};
  lay_out(r);
  return 0;
}

bool loom_runner_batch_result_done(const loom_runner *r, const loom_callback *cb) {
  const loom_result_slot *s = r ? slot_of(r, cb) : NULL;
  return s && s->done;
}

void loom_runner_results_begin(loom_runner *r) {
  for (size_t i = 0; i < r->num_results; i++)
    r->results[i].issued = r->results[i].done = false;
}

void loom_runner_results_end(loom_runner *r) {
  r->num_results = 0;
  r->results_bytes = 0;
}

void loom_runner_results_free(loom_runner *r) {
  loom_runner_results_end(r);
  free(r->results), free(r->results_host);
  r->results = NULL, r->results_host = NULL;
  r->cap_results = r->results_host_bytes = 0;
}
