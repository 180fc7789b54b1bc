/* Data parallelism inside a layer: a range of samples split over a small
 * pool of threads, one part per core. The split depends only on the range
 * and the pool size, so results are reproducible for a thread count. */
#ifndef LOOM_CORE_PARALLEL_H
#define LOOM_CORE_PARALLEL_H

#include <stdint.h>

/* How many parts loom_parallel_for splits into: the cores available, or
 * LOOM_NUM_THREADS if set (1 turns the pool off). At most LOOM_MAX_PARTS. */
#define LOOM_MAX_PARTS 16
int loom_parallel_parts(void);

typedef void (*loom_parallel_fn)(void *ctx, int part, int64_t begin, int64_t end);
/* Runs fn over [0, n) in contiguous parts, part 0 on the calling thread,
 * and returns when all are done. OpenBLAS runs single-threaded meanwhile, so
 * each part's products stay on its core. Falls back to one part if the
 * pool could not start. */
void loom_parallel_for(int64_t n, loom_parallel_fn fn, void *ctx);

#endif
