/* A monotonic clock for timing batches and loaders (libuv's, so every
 * part of loom reads the same one). */
#ifndef LOOM_CORE_CLOCK_H
#define LOOM_CORE_CLOCK_H

#include <stdint.h>

uint64_t loom_now_ns(void);

#endif
