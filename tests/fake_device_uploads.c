/* The fake device's asynchronous uploads (fake_device.h): copied at once,
 * their order of calls checked. */
#include "fake_device_impl.h"

#include <stdlib.h>
#include <string.h>

#include <loom/error.h>

#define UPLOAD_MAGIC 0x0F1E2D3Cu

typedef enum { UP_RELEASED, UP_COPIED, UP_WAITED } up_state;

/* An upload slot: its state in the cycle of loom/backend.h, and the host
 * memory its last upload read (with a hash, checked unchanged at the
 * release). */
struct loom_upload {
  uint32_t magic;
  up_state state;
  bool host_busy; /* from upload_start to upload_release */
  loom_upload_copy *copies;
  int count, cap;
  uint64_t hash;
};

void *fake_host_alloc(void *ctx, size_t bytes) {
  fake_device *d = ctx;
  unsigned char *p = aligned_alloc(64, ((bytes ? bytes : 1) + 63) & ~(size_t)63);
  if (!p || ((uintptr_t)p & TAG))
    fake_die("host_alloc", "no host memory for %zu bytes", bytes);
  pthread_mutex_lock(&d->lock);
  if (d->num_pinned == d->cap_pinned) {
    size_t cap = d->cap_pinned ? 2 * d->cap_pinned : 16;
    pinned *n = realloc(d->pinned, cap * sizeof *n);
    if (!n)
      fake_die("host_alloc", "out of host memory for the pinned table");
    d->pinned = n, d->cap_pinned = cap;
  }
  d->pinned[d->num_pinned++] = (pinned){p, bytes};
  d->counts.pinned++;
  pthread_mutex_unlock(&d->lock);
  return p;
}

void fake_host_free(void *ctx, void *p) {
  fake_device *d = ctx;
  if (!p)
    return;
  pthread_mutex_lock(&d->lock);
  size_t i = 0;
  while (i < d->num_pinned && d->pinned[i].p != p)
    i++;
  if (i == d->num_pinned) {
    pthread_mutex_unlock(&d->lock);
    fake_die("host_free", "%p is not pinned memory of this device (double free?)", p);
  }
  d->pinned[i] = d->pinned[--d->num_pinned];
  d->counts.pinned--;
  pthread_mutex_unlock(&d->lock);
  free(p);
}

/* Whether [p, p + bytes) lies in one pinned block. */
static bool is_pinned(fake_device *d, const void *p, size_t bytes) {
  const unsigned char *c = p;
  bool ok = false;
  pthread_mutex_lock(&d->lock);
  for (size_t i = 0; !ok && i < d->num_pinned; i++)
    ok = c >= d->pinned[i].p && c + bytes <= d->pinned[i].p + d->pinned[i].bytes;
  pthread_mutex_unlock(&d->lock);
  return ok;
}

static uint64_t hash_host(const loom_upload *u) {
  uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
  for (int i = 0; i < u->count; i++)
    for (size_t k = 0; k < u->copies[i].bytes; k++)
      h = (h ^ ((const unsigned char *)u->copies[i].host)[k]) * 0x100000001b3u;
  return h;
}

static loom_upload *own_upload(const char *op, loom_upload *u) {
  if (!u || u->magic != UPLOAD_MAGIC)
    fake_die(op, "an upload slot this device did not make (%p)", (void *)u);
  return u;
}

/* The blocks an upload copied into are ordered for the compute stream. */
static void clear_pending(fake_device *d, const loom_upload *u) {
  pthread_mutex_lock(&d->lock);
  for (size_t i = 0; i < d->count; i++)
    if (d->blocks[i].pending == u)
      d->blocks[i].pending = NULL;
  pthread_mutex_unlock(&d->lock);
}

int fake_upload_create(void *ctx, loom_upload **out) {
  fake_device *d = ctx;
  loom_upload *u = calloc(1, sizeof *u);
  if (!u)
    fake_die("upload_create", "out of host memory");
  u->magic = UPLOAD_MAGIC;
  pthread_mutex_lock(&d->lock);
  d->counts.upload_slots++;
  pthread_mutex_unlock(&d->lock);
  *out = u;
  return 0;
}

void fake_upload_destroy(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  if (!u)
    return;
  own_upload("upload_destroy", u);
  clear_pending(d, u); /* a real device waits for the copies here */
  pthread_mutex_lock(&d->lock);
  d->counts.upload_slots--;
  pthread_mutex_unlock(&d->lock);
  u->magic = 0;
  free(u->copies);
  free(u);
}

int fake_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count) {
  fake_device *d = ctx;
  own_upload("upload_start", u);
  pthread_mutex_lock(&d->lock);
  bool fail = d->fail_upload && d->counts.uploads + 1 == d->fail_upload;
  pthread_mutex_unlock(&d->lock);
  if (fail)
    return loom_error_set(LOOM_EIO, "fake device: upload %lld failed, as the test asked", (long long)d->fail_upload);
  if (u->state == UP_WAITED)
    fake_die("upload_start", "upload slot %p is uploaded into while the compute stream may still read its last batch: "
                             "upload_release it first",
             (void *)u);
  if (u->host_busy)
    fake_die("upload_start", "upload slot %p starts again before upload_release: its host memory may have been "
                             "refilled while the last copy read it",
             (void *)u);
  if (count > u->cap) {
    loom_upload_copy *c = realloc(u->copies, (size_t)count * sizeof *c);
    if (!c)
      fake_die("upload_start", "out of host memory");
    u->copies = c, u->cap = count;
  }
  for (int i = 0; i < count; i++) {
    fake_host("upload_start", "a copy's source", copies[i].host);
    if (copies[i].bytes && !is_pinned(d, copies[i].host, copies[i].bytes))
      fake_die("upload_start", "copy %d's %zu bytes at %p are not pinned memory from host_alloc: the copy could not "
                               "overlap",
               i, copies[i].bytes, copies[i].host);
    void *dst = fake_real_for(d, "upload_start", "a copy's destination", copies[i].dst, copies[i].bytes, u);
    memcpy(dst, copies[i].host, copies[i].bytes);
    u->copies[i] = copies[i];
  }
  u->count = count;
  u->hash = hash_host(u);
  pthread_mutex_lock(&d->lock);
  for (int i = 0; i < count; i++)
    if (copies[i].bytes)
      fake_find(d, (size_t)((uintptr_t)copies[i].dst - TAG - (uintptr_t)d->arena))->pending = u;
  d->counts.uploads++;
  pthread_mutex_unlock(&d->lock);
  u->state = UP_COPIED;
  u->host_busy = true;
  return 0;
}

int fake_upload_wait(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  own_upload("upload_wait", u);
  if (u->state != UP_COPIED)
    fake_die("upload_wait", "upload slot %p has no upload started since its last %s", (void *)u,
             u->state == UP_WAITED ? "upload_wait" : "upload_release");
  clear_pending(d, u);
  pthread_mutex_lock(&d->lock);
  d->counts.upload_waits++;
  pthread_mutex_unlock(&d->lock);
  u->state = UP_WAITED;
  return 0;
}

int fake_upload_release(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  own_upload("upload_release", u);
  if (u->host_busy && hash_host(u) != u->hash)
    fake_die("upload_release", "the host memory upload slot %p copied from changed before upload_release", (void *)u);
  clear_pending(d, u); /* a batch prefetched and never used */
  u->state = UP_RELEASED;
  u->host_busy = false;
  return 0;
}
