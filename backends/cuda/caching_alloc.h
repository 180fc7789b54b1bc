/* The caching allocator of one CUDA device, kept free of CUDA so that its
 * bookkeeping is tested on the host (tests/test_cuda.c) with malloc behind
 * it: the device's cudaMalloc and cudaFree come in as hooks.
 *
 * Requests are rounded up to 512 bytes. Up to 1 MiB they are cut from 2 MiB
 * segments (the small pool); larger ones from segments of 20 MiB below
 * 10 MiB, else of the size rounded up to 2 MiB (the large pool). A free
 * block sits in the bin of its size class (floor(log2 size)) of its pool;
 * a request takes the smallest fitting free block of its stream from the
 * first class that has one, splitting off the rest when that is at least
 * 512 bytes (small pool) or more than 1 MiB (large), and a freed block
 * merges with its free neighbours in the segment. Stream order makes reuse
 * safe: a block freed on a stream is handed out again only on that stream
 * (its pending work comes first), or on any once its stream is forgotten
 * (synchronized and gone). When the device has no memory left, the cached
 * segments are released and the request retried once. A release first
 * waits for the device (the synchronize hook). Thread-safe. */
#ifndef LOOM_BACKENDS_CUDA_CACHING_ALLOC_H
#define LOOM_BACKENDS_CUDA_CACHING_ALLOC_H

#include <stddef.h>

#include "loom/backend_cuda.h"

typedef struct loom_caching_alloc_hooks {
  /* `bytes` of device memory, or NULL with loom_error_set saying why. */
  void *(*raw_alloc)(void *ctx, size_t bytes);
  void (*raw_free)(void *ctx, void *ptr);
  /* Waits for the device's queued work (optional): called before cached
   * memory goes back or changes streams. */
  void (*synchronize)(void *ctx);
  void *ctx;
} loom_caching_alloc_hooks;

typedef struct loom_caching_alloc loom_caching_alloc;

/* NULL with the error on failure. */
loom_caching_alloc *loom_caching_alloc_create(const loom_caching_alloc_hooks *hooks);
/* Gives every segment back, blocks in use included. */
void loom_caching_alloc_destroy(loom_caching_alloc *a);
/* A block of at least `bytes` (512-byte aligned within its segment) for
 * work on `stream`; NULL with the error on failure. */
void *loom_caching_alloc_get(loom_caching_alloc *a, size_t bytes, const void *stream);
/* Back to the cache (NULL: nothing). A pointer this allocator did not hand
 * out is ignored. */
void loom_caching_alloc_put(loom_caching_alloc *a, void *ptr);
/* The free blocks of `stream` may serve any stream from now on (call it
 * once the stream's work is done and the stream is gone). */
void loom_caching_alloc_forget_stream(loom_caching_alloc *a, const void *stream);
/* raw_free of every segment with no block in use. */
void loom_caching_alloc_release(loom_caching_alloc *a);
void loom_caching_alloc_stats(loom_caching_alloc *a, loom_cuda_memory_stats *stats);

#endif
