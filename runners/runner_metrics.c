/* Metric aggregation: batch -> loader (sample-weighted, reduced over ranks)
 * -> epoch, and the best-valid bookkeeping. */
#include "runners/runner_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A batch's value x weight, snapped to the integer it is within 2^-40 of:
 * a count the metric divided by the batch size (accuracy: hits / n) comes
 * back exactly, so sums of counts are exact whatever batches and ranks the
 * samples fell into. Other values move by at most 2^-40 of themselves. */
static double weighted(double value, double weight) {
  double p = value * weight, k = nearbyint(p);
  return fabs(p - k) <= fabs(p) * 0x1p-40 ? k : p;
}

int loom_accumulate_metrics(loom_metrics *sums, loom_metrics *weights, const loom_metrics *batch, double weight) {
  for (size_t i = 0; i < loom_metrics_count(batch); i++) {
    const char *name = loom_metrics_name(batch, i);
    double sum = 0, w = 0;
    loom_metrics_get(sums, name, &sum);
    loom_metrics_get(weights, name, &w);
    int rc = loom_metrics_set(sums, name, sum + weighted(loom_metrics_value(batch, i), weight));
    if (rc == 0)
      rc = loom_metrics_set(weights, name, w + weight);
    if (rc < 0)
      return rc;
  }
  return 0;
}

/* Sample-weighted means over every rank's batches: sums and weights are
 * reduced together, so master-only callbacks see global numbers. */
int loom_runner_finish_loader_metrics(loom_runner *r) {
  size_t n = loom_metrics_count(r->loader_sums);
  loom_metrics_clear(r->loader_metrics);
  if (n == 0)
    return 0;
  double *buf = malloc(2 * n * sizeof *buf);
  if (!buf)
    return loom_error_oom("the loader metrics");
  for (size_t i = 0; i < n; i++) {
    buf[i] = loom_metrics_value(r->loader_sums, i);
    loom_metrics_get(r->loader_weights, loom_metrics_name(r->loader_sums, i), &buf[n + i]);
  }
  int rc = loom_comm_allreduce_sum_f64(r->comm, buf, 2 * n);
  if (rc < 0)
    rc = loom_error_wrap(rc, "reducing the metrics of loader \"%s\"", r->loader_name);
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = loom_metrics_set(r->loader_metrics, loom_metrics_name(r->loader_sums, i),
                          buf[n + i] > 0 ? buf[i] / buf[n + i] : 0.0);
  free(buf);
  return rc;
}

int loom_runner_update_best_valid(loom_runner *r) {
  double v;
  r->is_best_valid = false;
  if (!loom_metrics_get(r->valid_metrics, r->main_metric, &v) || isnan(v))
    return 0;
  /* As early stopping's monitor judges it: an improvement under min_delta is none. */
  double delta = r->best_delta_relative ? r->best_min_delta * fabs(r->best_value) : r->best_min_delta;
  bool better = !r->have_best || (r->minimize ? v < r->best_value - delta : v > r->best_value + delta);
  if (!better)
    return 0;
  r->have_best = true;
  r->best_value = v;
  r->best_epoch = r->global_epoch;
  r->is_best_valid = true;
  return loom_metrics_copy(r->best_valid_metrics, r->valid_metrics, NULL, false);
}

int loom_runner_add_loader_metrics(const loom_runner *r, loom_metrics *epoch, loom_metrics *valid) {
  int rc = loom_metrics_copy(epoch, r->loader_metrics, r->loader_name, true);
  if (rc == 0 && strcmp(r->loader_name, r->valid_loader) == 0)
    rc = loom_metrics_copy(valid, r->loader_metrics, NULL, false);
  return rc;
}
