/* The convolution algorithms cuDNN's search chose, by shape, for the
 * CUDA module's process (backends/cuda/cudnn.c): a ResNet's many
 * convolutions of one shape search once. Kept free of CUDA and cuDNN so
 * that it is tested on the host (tests/test_conv_cache.c).
 *
 * A key is the whole shape a choice depends on: the device, the batch
 * size, the convolution's geometry, its forward algorithm's preference
 * (loom_conv_algorithm) and its math type. At most `capacity` entries:
 * when full, a new shape replaces the one inserted first (a program that
 * has more shapes than that searches some again). Thread-safe: the
 * backends of one device, and of several, share the cache. */
#ifndef LOOM_BACKENDS_CUDA_CONV_CACHE_H
#define LOOM_BACKENDS_CUDA_CONV_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Only int64_t fields (no padding): keys compare as bytes. */
typedef struct loom_conv_key {
  int64_t device, n;
  int64_t cin, h, w, cout;
  int64_t kh, kw, sh, sw, ph, pw, dh, dw; /* kernel, stride, padding, dilation */
  int64_t algorithm;                      /* loom_conv_algorithm: the forward's preference */
  int64_t tensor_ops;                     /* 1: Tensor Core math allowed (TF32 or autocast) */
} loom_conv_key;

/* The three algorithms (cuDNN's enums as ints) and their workspaces. */
typedef struct loom_conv_algos {
  int fwd, bwd_data, bwd_filter;
  size_t fwd_bytes, data_bytes, filter_bytes;
} loom_conv_algos;

typedef struct loom_conv_cache loom_conv_cache;

/* An empty cache of `capacity` >= 1 entries; NULL when out of memory. */
loom_conv_cache *loom_conv_cache_create(size_t capacity);
void loom_conv_cache_destroy(loom_conv_cache *cache);
/* Whether `key` is cached; if so, its algorithms in *out. */
bool loom_conv_cache_find(loom_conv_cache *cache, const loom_conv_key *key, loom_conv_algos *out);
/* Caches `algos` for `key`, replacing the key's entry if it has one, else
 * the oldest entry when the cache is full. */
void loom_conv_cache_put(loom_conv_cache *cache, const loom_conv_key *key, const loom_conv_algos *algos);
/* The entries held. */
size_t loom_conv_cache_count(loom_conv_cache *cache);

#endif
