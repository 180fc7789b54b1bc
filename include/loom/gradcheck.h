/* loom/gradcheck.h - checking a layer's backward against its forward.
 *
 * For a layer of your own (docs/howto.md, "Writing a layer"): its
 * parameter and input gradients, from its backward, against central
 * differences of a loss L = sum(out * r) (r fixed, random), computed either
 * from a double-precision reference of the forward that you write (the
 * forward is then compared with it too, as loom's own layer tests do) or,
 * without one, from the layer's own float forward (coarser: a larger step
 * and tolerance). */
#ifndef LOOM_GRADCHECK_H
#define LOOM_GRADCHECK_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>

#include "loom/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The layer's forward in double: out [n, out_shape] from x [n, in_shape]
 * and the parameters p, laid out as the layer's own. */
typedef void (*loom_gradcheck_reference)(const void *ctx, const double *x, const double *p, double *out, int64_t n);

typedef struct loom_gradcheck_options {
  int64_t batch;      /* 2: samples in the batch checked */
  uint64_t seed;      /* 11: draws the inputs (and r, and the parameters the check makes) */
  bool train;         /* false: the forward in evaluation mode */
  double input_scale; /* 1: inputs uniform in [-scale, scale] */
  /* NULL: differences of the layer's own forward (step 1e-3, tolerance
   * 1e-2); else of this reference (step 1e-6, tolerance 2e-3), and the
   * forward must match it within 1e-4. Errors are relative to
   * max(1, |expected|). */
  loom_gradcheck_reference reference;
  const void *reference_ctx;
  /* The layer's storage, as bound (its `bind` called with these; the
   * check leaves them as it found them, but for the gradients). NULL lets
   * the check make its own, with parameters from the layer's init (seeded
   * by `seed`) plus noise, so that none is trivially 0 or 1; it frees that
   * storage on return while the layer is still bound to it: afterwards add
   * the layer to a model (which binds it again) or destroy it. */
  float *params, *grads, *buffers;
} loom_gradcheck_options;

/* The values above. */
LOOM_API loom_gradcheck_options loom_gradcheck_defaults(void);

typedef struct loom_gradcheck_report {
  int64_t checked;   /* values compared: outputs (with a reference), parameter and input gradients */
  double max_error;  /* the largest error, relative to max(1, |expected|) */
  char worst[64];    /* where: "forward[i]", "dparam[i]" or "dinput[i]" */
} loom_gradcheck_report;

/* Runs the layer's forward and backward on a batch of `options->batch`
 * samples of `sample_shape` (ndim dimensions, no batch dimension) and
 * compares. Returns 0 when every value is within the tolerance, else
 * LOOM_EINVAL naming the worst value, the layer's and the expected one
 * (also for a backward that leaves an input gradient unwritten: the check
 * fills din with NaN first); an error of the layer's own ops as they return
 * it. `report` (may be NULL) is filled either way. `options` may be NULL. */
LOOM_API int loom_layer_gradcheck(loom_layer *layer, int ndim, const int64_t *sample_shape,
                                  const loom_gradcheck_options *options, loom_gradcheck_report *report);

#ifdef __cplusplus
}
#endif
#endif
