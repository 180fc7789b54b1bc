/* The convolution algorithms' cache (conv_cache.h): a ring of entries
 * searched in order. Lookups come only when a plan meets a new batch
 * size, a handful of times per layer and run, so a scan of a few hundred
 * keys costs nothing next to the search it saves. */
#include "backends/cuda/conv_cache.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

typedef struct entry {
  loom_conv_key key;
  loom_conv_algos algos;
} entry;

struct loom_conv_cache {
  uv_mutex_t lock;
  entry *entries;
  size_t capacity, count;
  size_t next; /* where the next new key goes once full: the oldest */
};

loom_conv_cache *loom_conv_cache_create(size_t capacity) {
  if (capacity == 0)
    return NULL;
  loom_conv_cache *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  if (!(c->entries = calloc(capacity, sizeof *c->entries)) || uv_mutex_init(&c->lock) != 0) {
    free(c->entries);
    free(c);
    return NULL;
  }
  c->capacity = capacity;
  return c;
}

void loom_conv_cache_destroy(loom_conv_cache *cache) {
  if (!cache)
    return;
  uv_mutex_destroy(&cache->lock);
  free(cache->entries);
  free(cache);
}

/* The entry of `key`, or NULL; under the lock. */
static entry *lookup(loom_conv_cache *cache, const loom_conv_key *key) {
  for (size_t i = 0; i < cache->count; i++)
    if (memcmp(&cache->entries[i].key, key, sizeof *key) == 0)
      return &cache->entries[i];
  return NULL;
}

bool loom_conv_cache_find(loom_conv_cache *cache, const loom_conv_key *key, loom_conv_algos *out) {
  uv_mutex_lock(&cache->lock);
  const entry *e = lookup(cache, key);
  if (e)
    *out = e->algos;
  uv_mutex_unlock(&cache->lock);
  return e != NULL;
}

void loom_conv_cache_put(loom_conv_cache *cache, const loom_conv_key *key, const loom_conv_algos *algos) {
  uv_mutex_lock(&cache->lock);
  entry *e = lookup(cache, key);
  if (!e) {
    if (cache->count < cache->capacity)
      e = &cache->entries[cache->count++];
    else {
      e = &cache->entries[cache->next];
      cache->next = (cache->next + 1) % cache->capacity;
    }
    e->key = *key;
  }
  e->algos = *algos;
  uv_mutex_unlock(&cache->lock);
}

size_t loom_conv_cache_count(loom_conv_cache *cache) {
  uv_mutex_lock(&cache->lock);
  const size_t count = cache->count;
  uv_mutex_unlock(&cache->lock);
  return count;
}
