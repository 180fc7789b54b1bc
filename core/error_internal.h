#ifndef LOOM_CORE_ERROR_INTERNAL_H
#define LOOM_CORE_ERROR_INTERNAL_H

#include "loom/error.h"

#define LOOM_ERROR_MAX 1024

/* Increments on every loom_error_set/wrap on this thread: lets the runner
 * tell a callback that failed with a message from one that failed silently. */
unsigned loom_error_serial(void);

/* Sets LOOM_ENOMEM with the place that failed; returns LOOM_ENOMEM. */
#define loom_error_oom(what) \
  loom_error_set(LOOM_ENOMEM, "%s: out of memory allocating %s", __func__, (what))

/* Records a warning for loggers to show (loom_notice), once per process
 * for each `key`; later calls with the same key are ignored. */
void loom_notice_once(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
