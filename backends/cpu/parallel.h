/* Data parallelism inside a layer: a range of samples split over a small
 * pool of threads, one part per core. The split depends only on the range
 * and the pool size, so results are reproducible for a thread count. */
#ifndef LOOM_BACKENDS_CPU_PARALLEL_H
#define LOOM_BACKENDS_CPU_PARALLEL_H

#include <stdbool.h>
#include <stdint.h>

/* How many parts loom_parallel_for splits into: the cores available, or
 * LOOM_NUM_THREADS if set (1 turns the pool off). At most LOOM_MAX_PARTS.
 * The first call starts the pool; with more than one part it also sets
 * OpenBLAS single-threaded for the process (the pool owns the cores). */
#define LOOM_MAX_PARTS 16
int loom_parallel_parts(void);

typedef void (*loom_parallel_fn)(void *ctx, int part, int64_t begin, int64_t end);
/* Runs fn over [0, n) in contiguous parts, part 0 on the calling thread,
 * and returns when all are done. Runs on the calling thread alone when the
 * pool could not start, n < 2, or another job holds the pool (a nested
 * call from inside a part, or a second training thread). */
void loom_parallel_for(int64_t n, loom_parallel_fn fn, void *ctx);
/* The same for elementwise work, on the calling thread alone below
 * `serial_below` elements, where the hand-off costs more than the other
 * cores save. */
void loom_parallel_for_large(int64_t n, int64_t serial_below, loom_parallel_fn fn, void *ctx);

/* Two phases over the same parts: `first` on every part, then, once every
 * part has finished it, `second` on every part, each part on the thread
 * (and so the cache) of its first phase. For a check that must pass over
 * all of the data before any of it is written. Both run on the calling
 * thread alone below `serial_below` elements or when the pool is busy. */
void loom_parallel_for_phased(int64_t n, int64_t serial_below, loom_parallel_fn first, loom_parallel_fn second,
                              void *ctx);

/* Work outside the pool that wants a core now, such as a loader worker
 * with a batch to make: +1 when it appears, -1 when it is done (a count
 * over the process). While any is pending, the pool's threads sleep between
 * jobs at once instead of spinning, so that where the pool has a thread
 * per core that work runs in the gaps between jobs. */
void loom_parallel_outside_work(int delta);
bool loom_parallel_outside_pending(void);

#endif
