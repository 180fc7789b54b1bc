/* loom/metrics.h - an ordered map from metric name to value.
 *
 * The runner keeps three: batch metrics (set by handle_batch and metric
 * callbacks), loader metrics (sample-weighted means over the loader's
 * batches, final at on_loader_end) and epoch metrics ("{loader}/{metric}",
 * plus "lr" and "momentum"). Clearing keeps the names' storage, so a loop
 * that sets the same metrics every batch allocates nothing. */
#ifndef LOOM_METRICS_H
#define LOOM_METRICS_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_metrics loom_metrics;

LOOM_API loom_metrics *loom_metrics_create(void);
LOOM_API void loom_metrics_destroy(loom_metrics *m);

/* Sets (or adds, at the end) a metric. Names are copied. */
LOOM_API int loom_metrics_set(loom_metrics *m, const char *name, double value);
/* True and *value filled if `name` is present. */
LOOM_API bool loom_metrics_get(const loom_metrics *m, const char *name, double *value);
LOOM_API size_t loom_metrics_count(const loom_metrics *m);
LOOM_API const char *loom_metrics_name(const loom_metrics *m, size_t i);
LOOM_API double loom_metrics_value(const loom_metrics *m, size_t i);
LOOM_API void loom_metrics_clear(loom_metrics *m);
/* Replaces dst's contents with src's, names prefixed by `prefix` if not NULL
 * (added to, not replacing, dst when `append` is true). */
LOOM_API int loom_metrics_copy(loom_metrics *dst, const loom_metrics *src, const char *prefix, bool append);

#ifdef __cplusplus
}
#endif
#endif
