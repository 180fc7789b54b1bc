/* The monitored metric of checkpointing, early stopping and the plateau
 * scheduler: one lookup, one message when it is missing. */
#ifndef LOOM_CALLBACKS_MONITOR_H
#define LOOM_CALLBACKS_MONITOR_H

#include <stdbool.h>

#include "loom/runner_view.h"

typedef struct loom_monitored {
  char key[512]; /* "{loader}/{metric}" */
  double value;  /* may be NaN or infinite: the caller's policy */
  bool minimize;
} loom_monitored;

/* Looks up "{loader}/{metric}" in this epoch's metrics; a NULL loader or
 * metric is the stage's valid loader or main metric, a `minimize` of -1 the
 * stage's direction. Returns 1 when found, 0 when this epoch did not produce
 * it and `required` is false, else LOOM_EINVAL with a message that names
 * `who`, the key and the metrics the epoch has. */
int loom_monitor_lookup(loom_runner *r, const char *who, const char *loader, const char *metric, int minimize,
                        bool required, loom_monitored *out);

#endif
