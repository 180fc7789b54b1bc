/* The caching allocator's bookkeeping (caching_alloc.h says the rules). */
#include "backends/cuda/caching_alloc.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <uv.h>

#include "core/error_internal.h"

#define ROUND ((size_t)512)
#define SMALL_MAX ((size_t)1 << 20)      /* requests up to this come from the small pool */
#define SMALL_SEGMENT ((size_t)2 << 20)
#define LARGE_SEGMENT ((size_t)20 << 20) /* for large requests below MID */
#define MID ((size_t)10 << 20)
#define SEGMENT_ROUND ((size_t)2 << 20)
#define CLASSES 64

typedef struct block {
  uintptr_t addr;
  size_t size;
  const void *stream;
  bool allocated, small;
  struct block *prev, *next;         /* neighbours in the segment, by address */
  struct block *bin_prev, *bin_next; /* the free list of its bin */
  struct block *hash_next;           /* the blocks in use, by address */
  struct block *seg_prev, *seg_next; /* the segments, through their first blocks */
} block;

struct loom_caching_alloc {
  loom_caching_alloc_hooks hooks;
  uv_mutex_t lock;
  block *bins[2][CLASSES]; /* [small][size class] */
  block *segments;
  block **table;           /* blocks in use, hashed by address */
  size_t buckets, used;
  loom_cuda_memory_stats stats;
};

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static int size_class(size_t size) {
  int c = 0;
  while (size >>= 1)
    c++;
  return c;
}

static size_t hash(uintptr_t addr, size_t buckets) { return (size_t)((addr >> 9) * 0x9E3779B97F4A7C15ull) & (buckets - 1); }

static void bin_insert(loom_caching_alloc *a, block *b) {
  block **head = &a->bins[b->small][size_class(b->size)];
  b->bin_prev = NULL;
  b->bin_next = *head;
  if (*head)
    (*head)->bin_prev = b;
  *head = b;
}

static void bin_remove(loom_caching_alloc *a, block *b) {
  if (b->bin_prev)
    b->bin_prev->bin_next = b->bin_next;
  else
    a->bins[b->small][size_class(b->size)] = b->bin_next;
  if (b->bin_next)
    b->bin_next->bin_prev = b->bin_prev;
  b->bin_prev = b->bin_next = NULL;
}

static bool table_grow(loom_caching_alloc *a) {
  size_t buckets = a->buckets ? 2 * a->buckets : 64;
  block **t = calloc(buckets, sizeof *t);
  if (!t)
    return false;
  for (size_t i = 0; i < a->buckets; i++)
    for (block *b = a->table[i], *next; b; b = next) {
      next = b->hash_next;
      size_t h = hash(b->addr, buckets);
      b->hash_next = t[h];
      t[h] = b;
    }
  free(a->table);
  a->table = t;
  a->buckets = buckets;
  return true;
}

static void table_insert(loom_caching_alloc *a, block *b) {
  size_t h = hash(b->addr, a->buckets);
  b->hash_next = a->table[h];
  a->table[h] = b;
  a->used++;
}

/* The block in use at `addr`, taken out of the table; NULL if none. */
static block *table_take(loom_caching_alloc *a, uintptr_t addr) {
  if (!a->buckets)
    return NULL;
  for (block **p = &a->table[hash(addr, a->buckets)]; *p; p = &(*p)->hash_next)
    if ((*p)->addr == addr) {
      block *b = *p;
      *p = b->hash_next;
      a->used--;
      return b;
    }
  return NULL;
}

/* The smallest free block of the pool that fits and may serve `stream`,
 * from the first size class that has one. */
static block *find_free(loom_caching_alloc *a, bool small, size_t size, const void *stream) {
  for (int c = size_class(size); c < CLASSES; c++) {
    block *best = NULL;
    for (block *b = a->bins[small][c]; b; b = b->bin_next)
      if (b->size >= size && (b->stream == stream || !b->stream) && (!best || b->size < best->size))
        best = b;
    if (best)
      return best;
  }
  return NULL;
}

static size_t segment_size(size_t size) {
  if (size <= SMALL_MAX)
    return SMALL_SEGMENT;
  return size < MID ? LARGE_SEGMENT : round_up(size, SEGMENT_ROUND);
}

/* b takes in n, the free block after it (out of the bins). */
static void absorb(block *b, block *n) {
  b->size += n->size;
  b->next = n->next;
  if (n->next)
    n->next->prev = b;
  free(n);
}

static void segment_unlink(loom_caching_alloc *a, block *head) {
  if (head->seg_prev)
    head->seg_prev->seg_next = head->seg_next;
  else
    a->segments = head->seg_next;
  if (head->seg_next)
    head->seg_next->seg_prev = head->seg_prev;
}

/* Once the device is idle: each segment without a block in use goes back
 * to the device; in the others, neighbouring free blocks merge, whatever
 * their streams, and may serve any stream. */
static void release_locked(loom_caching_alloc *a) {
  if (a->hooks.synchronize)
    a->hooks.synchronize(a->hooks.ctx);
  for (block *head = a->segments, *next_seg; head; head = next_seg) {
    next_seg = head->seg_next;
    bool busy = false;
    for (block *b = head; b; b = b->next)
      busy |= b->allocated;
    if (!busy) {
      size_t bytes = 0;
      for (block *b = head; b; b = b->next)
        bin_remove(a, b), bytes += b->size;
      segment_unlink(a, head);
      a->hooks.raw_free(a->hooks.ctx, (void *)head->addr);
      a->stats.reserved -= bytes;
      a->stats.device_frees++;
      for (block *b = head, *n; b; b = n)
        n = b->next, free(b);
      continue;
    }
    for (block *b = head; b; b = b->next) {
      if (b->allocated)
        continue;
      bin_remove(a, b);
      while (b->next && !b->next->allocated) {
        bin_remove(a, b->next);
        absorb(b, b->next);
      }
      b->stream = NULL;
      bin_insert(a, b);
    }
  }
}

/* A new segment for `size`, as one free block; NULL with the error. */
static block *new_segment(loom_caching_alloc *a, size_t size, bool small) {
  size_t bytes = segment_size(size);
  block *b = calloc(1, sizeof *b);
  if (!b) {
    loom_error_oom("a CUDA memory block's record");
    return NULL;
  }
  void *p = a->hooks.raw_alloc(a->hooks.ctx, bytes);
  if (!p) { /* the cached segments back, then once more */
    release_locked(a);
    p = a->hooks.raw_alloc(a->hooks.ctx, bytes);
  }
  if (!p) {
    free(b);
    loom_error_wrap(LOOM_ENOMEM, "CUDA device memory: %zu bytes asked for with %zu in use and %zu reserved", size,
                    a->stats.in_use, a->stats.reserved);
    return NULL;
  }
  a->stats.device_allocs++;
  a->stats.reserved += bytes;
  if (a->stats.reserved > a->stats.peak_reserved)
    a->stats.peak_reserved = a->stats.reserved;
  *b = (block){.addr = (uintptr_t)p, .size = bytes, .small = small, .seg_next = a->segments};
  if (a->segments)
    a->segments->seg_prev = b;
  a->segments = b;
  return b;
}

/* Cuts `size` bytes off the front of block b (out of the bins) when the
 * rest is worth keeping; the rest stays free, for `stream` (NULL: any). */
static bool split(loom_caching_alloc *a, block *b, size_t size, const void *stream) {
  size_t rest = b->size - size;
  if (b->small ? rest < ROUND : rest <= SMALL_MAX)
    return true;
  block *r = calloc(1, sizeof *r);
  if (!r)
    return false;
  *r = (block){.addr = b->addr + size, .size = rest, .stream = stream, .small = b->small, .prev = b, .next = b->next};
  if (b->next)
    b->next->prev = r;
  b->next = r;
  b->size = size;
  bin_insert(a, r);
  return true;
}

/* b's free neighbour n may merge with it: same stream, or one free for any. */
static bool mergeable(const block *b, const block *n) { return n && !n->allocated && (n->stream == b->stream || !n->stream); }

static void put_locked(loom_caching_alloc *a, void *ptr) {
  block *b = table_take(a, (uintptr_t)ptr);
  if (!b)
    return;
  b->allocated = false;
  a->stats.in_use -= b->size;
  if (mergeable(b, b->next)) {
    bin_remove(a, b->next);
    absorb(b, b->next);
  }
  if (mergeable(b, b->prev)) {
    block *p = b->prev;
    bin_remove(a, p);
    p->stream = b->stream; /* the freed part's work may be pending on it */
    absorb(p, b);
    b = p;
  }
  bin_insert(a, b);
}

loom_caching_alloc *loom_caching_alloc_create(const loom_caching_alloc_hooks *hooks) {
  loom_caching_alloc *a = calloc(1, sizeof *a);
  if (!a) {
    loom_error_oom("a CUDA caching allocator");
    return NULL;
  }
  a->hooks = *hooks;
  if (uv_mutex_init(&a->lock) != 0) {
    free(a);
    loom_error_set(LOOM_ENOMEM, "CUDA caching allocator: could not create its mutex");
    return NULL;
  }
  return a;
}

void loom_caching_alloc_destroy(loom_caching_alloc *a) {
  if (!a)
    return;
  /* Blocks in use go back to their segments first. */
  for (size_t i = 0; i < a->buckets; i++)
    while (a->table[i])
      put_locked(a, (void *)a->table[i]->addr);
  release_locked(a);
  free(a->table);
  uv_mutex_destroy(&a->lock);
  free(a);
}

void *loom_caching_alloc_get(loom_caching_alloc *a, size_t bytes, const void *stream) {
  if (bytes > SIZE_MAX - SEGMENT_ROUND) {
    loom_error_set(LOOM_ENOMEM, "CUDA backend: %zu bytes is more than any device has", bytes);
    return NULL;
  }
  const size_t size = round_up(bytes ? bytes : 1, ROUND);
  const bool small = size <= SMALL_MAX;
  uv_mutex_lock(&a->lock);
  void *out = NULL;
  if (a->used >= a->buckets && !table_grow(a)) {
    loom_error_oom("the CUDA allocator's table");
    goto done;
  }
  block *b = find_free(a, small, size, stream);
  if (b)
    bin_remove(a, b);
  else if (!(b = new_segment(a, size, small)))
    goto done;
  const void *was = b->stream; /* NULL for a new segment: no work pending on it */
  b->stream = stream;
  if (!split(a, b, size, was)) {
    bin_insert(a, b);
    loom_error_oom("a CUDA memory block's record");
    goto done;
  }
  b->allocated = true;
  table_insert(a, b);
  a->stats.allocs++;
  a->stats.in_use += b->size;
  if (a->stats.in_use > a->stats.peak_in_use)
    a->stats.peak_in_use = a->stats.in_use;
  out = (void *)b->addr;
done:
  uv_mutex_unlock(&a->lock);
  return out;
}

void loom_caching_alloc_put(loom_caching_alloc *a, void *ptr) {
  if (!ptr)
    return;
  uv_mutex_lock(&a->lock);
  put_locked(a, ptr);
  uv_mutex_unlock(&a->lock);
}

void loom_caching_alloc_forget_stream(loom_caching_alloc *a, const void *stream) {
  uv_mutex_lock(&a->lock);
  for (int small = 0; small < 2; small++)
    for (int c = 0; c < CLASSES; c++)
      for (block *b = a->bins[small][c]; b; b = b->bin_next)
        if (b->stream == stream)
          b->stream = NULL;
  uv_mutex_unlock(&a->lock);
}

void loom_caching_alloc_release(loom_caching_alloc *a) {
  uv_mutex_lock(&a->lock);
  release_locked(a);
  uv_mutex_unlock(&a->lock);
}

void loom_caching_alloc_stats(loom_caching_alloc *a, loom_cuda_memory_stats *stats) {
  uv_mutex_lock(&a->lock);
  *stats = a->stats;
  uv_mutex_unlock(&a->lock);
}
