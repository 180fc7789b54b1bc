#include "callbacks/monitor.h"

#include <stdio.h>

#include "core/error_internal.h"

int loom_monitor_lookup(loom_runner *r, const char *who, const char *loader, const char *metric, int minimize,
                        bool required, loom_monitored *out) {
  snprintf(out->key, sizeof out->key, "%s/%s", loader ? loader : loom_runner_valid_loader(r),
           metric ? metric : loom_runner_main_metric(r));
  out->minimize = minimize >= 0 ? minimize != 0 : loom_runner_minimize_metric(r);
  const loom_metrics *m = loom_runner_epoch_metrics(r);
  if (loom_metrics_get(m, out->key, &out->value))
    return 1;
  if (!required)
    return 0;
  char have[512] = "";
  size_t len = 0;
  for (size_t i = 0; i < loom_metrics_count(m) && len < sizeof have; i++)
    len += (size_t)snprintf(have + len, sizeof have - len, "%s%s", i ? ", " : "", loom_metrics_name(m, i));
  return loom_error_set(LOOM_EINVAL, "%s watches \"%s\", which epoch %d of stage \"%s\" did not produce (it has: %s); "
                                     "check the loader and metric names",
                        who, out->key, loom_runner_epoch(r), loom_runner_stage_name(r), have[0] ? have : "nothing");
}
