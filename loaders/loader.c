/* The loader: an epoch's order from the sampler, this rank's shard of it,
 * and batches prepared by worker threads into a ring of prefetch slots.
 *
 * Batch b goes to slot b % K. A worker claims the next batch number only if
 * it is less than K ahead of the batches the consumer has released, so at
 * most K batches exist at once (backpressure); the consumer takes slot
 * next % K once it holds batch `next`, so batches come out in order
 * whatever the workers' timing. Per-sample randomness is seeded from (epoch
 * seed, sample index, transform), so the result does not depend on which
 * worker prepared what.
 *
 * On a machine whose cores the training thread and the compute pool fill,
 * a worker must not take the training thread's core when it is woken (see
 * worker_sched) and needs the pool to leave it a core between jobs (see
 * publish_demand); a batch no worker has started yet when the consumer
 * needs it, the consumer makes itself (loom_loader_next). */
#define _GNU_SOURCE /* SCHED_BATCH */
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backends/cpu/parallel.h"
#include "core/error_internal.h"
#include "core/tensor_impl.h"
#include "loom/data.h"

typedef enum { SLOT_FREE, SLOT_BUSY, SLOT_READY } slot_state;

typedef struct slot {
  loom_tensor *x, *y;
  void *xmem, *ymem; /* from the allocator hook, if any */
  int64_t batch;
  slot_state state;
  int rc;
  char error[LOOM_ERROR_MAX];
} slot;

struct loom_loader {
  loom_dataset *ds;
  loom_sampler *sampler;
  int64_t batch_size, length, sample_size, target_size;
  bool drop_last;
  int workers, num_slots;
  loom_transform **transforms;
  int num_transforms;
  loom_loader_hooks hooks;
  slot *slots;
  /* the epoch */
  int64_t *full, *order;
  int64_t cap_full, count, max_count;
  uint64_t seed;
  bool started;
  /* progress: batches handed out, claimed by workers, made by them (in any
   * order), released by the consumer */
  int64_t total, next, claim, made, released;
  bool holding;
  bool demand; /* counted in loom_parallel_outside_work */
  /* workers */
  uv_thread_t *threads;
  int running;
  int asleep;     /* workers waiting for room that no wake_workers has woken */
  uint64_t wakes; /* wake_workers calls, for the sleepers to tell theirs */
  bool stop;
  uv_mutex_t mu;
  uv_cond_t work_cv, ready_cv;
};

static int64_t batches(const loom_loader *l, int64_t samples) {
  return l->drop_last ? samples / l->batch_size : (samples + l->batch_size - 1) / l->batch_size;
}

static int64_t product(int ndim, const int64_t *shape) {
  int64_t p = 1;
  for (int i = 0; i < ndim; i++)
    p *= shape[i];
  return p;
}

/* A [batch, ...] tensor over the hook's memory or its own. */
static loom_tensor *batch_tensor(loom_loader *l, int ndim, const int64_t *shape, void **mem) {
  int64_t full[LOOM_MAX_DIMS] = {l->batch_size};
  memcpy(full + 1, shape, (size_t)ndim * sizeof *shape);
  if (!l->hooks.alloc)
    return loom_tensor_create(ndim + 1, full);
  *mem = l->hooks.alloc(l->hooks.user, (size_t)(product(ndim + 1, full) * (int64_t)sizeof(float)));
  return *mem ? loom_tensor_view(*mem, ndim + 1, full) : NULL;
}

static void free_slots(loom_loader *l) {
  for (int i = 0; l->slots && i < l->num_slots; i++) {
    loom_tensor_destroy(l->slots[i].x);
    loom_tensor_destroy(l->slots[i].y);
    if (l->hooks.free) {
      if (l->slots[i].xmem)
        l->hooks.free(l->hooks.user, l->slots[i].xmem);
      if (l->slots[i].ymem)
        l->hooks.free(l->hooks.user, l->slots[i].ymem);
    }
  }
  free(l->slots);
  l->slots = NULL;
}

static int make_slots(loom_loader *l) {
  l->slots = calloc((size_t)l->num_slots, sizeof *l->slots);
  if (!l->slots)
    return loom_error_oom("the loader's batch slots");
  for (int i = 0; i < l->num_slots; i++) {
    slot *s = &l->slots[i];
    s->x = batch_tensor(l, loom_dataset_sample_ndim(l->ds), loom_dataset_sample_shape(l->ds), &s->xmem);
    s->y = batch_tensor(l, loom_dataset_target_ndim(l->ds), loom_dataset_target_shape(l->ds), &s->ymem);
    if (!s->x || !s->y) {
      free_slots(l);
      return loom_error_oom("a batch buffer");
    }
  }
  return 0;
}

/* Fetches, transforms and collates batch b into slot s. */
static int produce(loom_loader *l, int64_t b, slot *s) {
  int64_t start = b * l->batch_size, n = l->count - start < l->batch_size ? l->count - start : l->batch_size;
  int64_t sx[LOOM_MAX_DIMS], sy[LOOM_MAX_DIMS];
  memcpy(sx, s->x->shape, sizeof sx);
  memcpy(sy, s->y->shape, sizeof sy);
  sx[0] = sy[0] = n;
  int rc = loom_tensor_resize(s->x, s->x->ndim, sx);
  if (rc == 0)
    rc = loom_tensor_resize(s->y, s->y->ndim, sy);
  if (rc == 0 && (rc = loom_dataset_fetch(l->ds, l->order + start, n, s->x->data, s->y->data)) < 0)
    return loom_error_wrap(rc, "fetching batch %lld (samples %lld..%lld of the epoch)", (long long)b,
                           (long long)start, (long long)(start + n - 1));
  const int ndim = loom_dataset_sample_ndim(l->ds);
  const int64_t *shape = loom_dataset_sample_shape(l->ds);
  for (int64_t i = 0; rc == 0 && i < n; i++) {
    int64_t index = l->order[start + i];
    for (int t = 0; rc == 0 && t < l->num_transforms; t++) {
      loom_rng rng;
      loom_rng_seed(&rng, l->seed, (uint64_t)index, (uint64_t)t + 1);
      rc = loom_transform_apply(l->transforms[t], s->x->data + i * l->sample_size, ndim, shape, &rng);
      if (rc < 0)
        return loom_error_wrap(rc, "transform \"%s\" failed on sample %lld", loom_transform_type(l->transforms[t]),
                               (long long)index);
    }
  }
  if (rc == 0 && l->hooks.batch_ready && (rc = l->hooks.batch_ready(l->hooks.user, s->x, s->y, (int)(s - l->slots))) < 0)
    return loom_error_wrap(rc, "the batch-ready hook failed on batch %lld", (long long)b);
  return rc;
}

/* One past the last batch the ring has room for. */
static int64_t room_limit(const loom_loader *l) {
  return l->released + l->num_slots < l->total ? l->released + l->num_slots : l->total;
}

/* Under the lock (or before any worker runs): tells the compute pool
 * whether an awake worker has a batch to make, one the ring has room for
 * that is not made yet, so that its threads leave it a core between jobs. */
static void publish_demand(loom_loader *l) {
  bool want = !l->stop && l->made < room_limit(l) && l->asleep < l->workers;
  if (want != l->demand)
    loom_parallel_outside_work(want ? 1 : -1);
  l->demand = want;
}

/* Workers are batch threads: the consumer wakes them when it frees slots,
 * and a normal thread woken so would take the consumer's core for a whole
 * batch's making, inside loom_loader_next (the data wait would be that of
 * no workers). A batch thread does not preempt on waking; it runs
 * on a free core or at the scheduler's tick, which the ring's depth
 * absorbs. Best effort: where the policy is missing the worker runs as it
 * is. */
static void worker_sched(void) {
#ifdef SCHED_BATCH
  struct sched_param none = {0};
  (void)pthread_setschedparam(pthread_self(), SCHED_BATCH, &none);
#endif
}

/* Under the lock, which it drops while it works: claims the next batch,
 * makes it into its slot and marks the slot ready. */
static void make_claimed(loom_loader *l) {
  int64_t b = l->claim++;
  slot *s = &l->slots[b % l->num_slots];
  s->state = SLOT_BUSY;
  s->batch = b;
  uv_mutex_unlock(&l->mu);
  int rc = produce(l, b, s);
  if (rc < 0) /* messages are per thread: carry it to the consumer */
    snprintf(s->error, sizeof s->error, "%s", loom_last_error());
  uv_mutex_lock(&l->mu);
  s->rc = rc;
  s->state = SLOT_READY;
  l->made++;
  publish_demand(l);
  uv_cond_broadcast(&l->ready_cv);
}

/* Under the lock: a worker that filled the ring sleeps until the consumer
 * has freed half of it (or all that is left of the epoch), then fills it
 * again, so that a wake-up (a system call, and on a virtual machine an
 * interrupt to another core) is paid every few batches, not on each. */
static void wake_workers(loom_loader *l) {
  l->wakes++;
  l->asleep = 0;
  uv_cond_broadcast(&l->work_cv);
}

static void wait_for_room(loom_loader *l) {
  while (!l->stop && l->claim < l->total && l->claim >= l->released + l->num_slots) {
    uint64_t wakes = l->wakes;
    l->asleep++;
    publish_demand(l);
    uv_cond_wait(&l->work_cv, &l->mu);
    if (l->wakes == wakes) /* a spurious wake-up: still counted as asleep */
      l->asleep--;
  }
}

static void worker(void *arg) {
  loom_loader *l = arg;
  worker_sched();
  uv_mutex_lock(&l->mu);
  for (;;) {
    wait_for_room(l);
    if (l->stop || l->claim >= l->total)
      break;
    make_claimed(l);
  }
  uv_mutex_unlock(&l->mu);
}

static int start_workers(loom_loader *l) {
  if (l->workers == 0 || l->next >= l->total)
    return 0;
  l->stop = false;
  l->asleep = 0;
  for (int i = 0; i < l->num_slots; i++)
    l->slots[i].state = SLOT_FREE;
  publish_demand(l);
  for (int i = 0; i < l->workers; i++) {
    int rc = uv_thread_create(&l->threads[i], worker, l);
    if (rc < 0) {
      loom_loader_end_epoch(l);
      return loom_error_set(LOOM_EIO, "loader: cannot start worker %d: %s", i, uv_strerror(rc));
    }
    l->running++;
  }
  return 0;
}

void loom_loader_end_epoch(loom_loader *l) {
  if (!l)
    return;
  uv_mutex_lock(&l->mu);
  l->stop = true;
  publish_demand(l);
  wake_workers(l);
  uv_cond_broadcast(&l->ready_cv);
  uv_mutex_unlock(&l->mu);
  for (int i = 0; i < l->running; i++)
    uv_thread_join(&l->threads[i]);
  l->running = 0;
}

void loom_loader_destroy(loom_loader *l) {
  if (!l)
    return;
  loom_loader_end_epoch(l);
  free_slots(l);
  loom_dataset_release(l->ds);
  loom_sampler_destroy(l->sampler);
  for (int i = 0; i < l->num_transforms; i++)
    loom_transform_destroy(l->transforms[i]);
  free(l->transforms);
  free(l->full);
  free(l->order);
  free(l->threads);
  uv_mutex_destroy(&l->mu);
  uv_cond_destroy(&l->work_cv);
  uv_cond_destroy(&l->ready_cv);
  free(l);
}

/* Two batches per worker, and up to 8 while they take at most 64 MiB: a
 * batch thread may wait for the scheduler's tick (4 ms at 250 Hz) before
 * it runs, several batches of a small model, so a worker needs that many
 * in hand; a large batch takes longer than a tick to train on. */
#define DEPTH_SMALL 8
#define DEPTH_BYTES ((int64_t)64 << 20)
static int default_depth(const loom_loader *l) {
  int64_t bytes = l->batch_size * (l->sample_size + l->target_size) * (int64_t)sizeof(float);
  int64_t fit = DEPTH_BYTES / (bytes > 0 ? bytes : 1), small = fit < DEPTH_SMALL ? fit : DEPTH_SMALL;
  return 2 * l->workers > small ? 2 * l->workers : (int)small;
}

/* Frees what loom_loader_create was handed, when it cannot take it. */
static void drop_inputs(loom_dataset *ds, const loom_loader_options *o) {
  loom_dataset_release(ds);
  if (!o)
    return;
  loom_sampler_destroy(o->sampler);
  for (int i = 0; i < o->num_transforms; i++)
    loom_transform_destroy(o->transforms[i]);
}

loom_loader *loom_loader_create(loom_dataset *ds, const loom_loader_options *o) {
  if (!ds || !o || o->batch_size < 1 || o->workers < 0 || o->workers > 256 || o->prefetch < 0 ||
      o->num_transforms < 0 || (o->num_transforms && !o->transforms)) {
    loom_error_set(LOOM_EINVAL, "loom_loader_create: need a dataset, batch_size >= 1 (got %lld), 0 to 256 workers "
                                "and prefetch >= 0",
                   o ? (long long)o->batch_size : 0LL);
    drop_inputs(ds, o);
    return NULL;
  }
  loom_loader *l = calloc(1, sizeof *l);
  if (!l) {
    drop_inputs(ds, o);
    loom_error_oom("a loader");
    return NULL;
  }
  uv_mutex_init(&l->mu);
  uv_cond_init(&l->work_cv);
  uv_cond_init(&l->ready_cv);
  l->ds = ds;
  l->batch_size = o->batch_size;
  l->drop_last = o->drop_last;
  l->workers = o->workers;
  l->length = loom_dataset_length(ds);
  l->sample_size = product(loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds));
  l->target_size = product(loom_dataset_target_ndim(ds), loom_dataset_target_shape(ds));
  l->num_slots = o->workers == 0 ? 1 : o->prefetch > 0 ? o->prefetch : default_depth(l);
  l->sampler = o->sampler ? o->sampler : o->shuffle ? loom_random_sampler_create() : loom_sequential_sampler_create();
  l->transforms = calloc((size_t)(o->num_transforms + 1), sizeof *l->transforms);
  l->threads = calloc((size_t)(o->workers + 1), sizeof *l->threads);
  if (l->transforms) {
    for (int i = 0; i < o->num_transforms; i++)
      l->transforms[l->num_transforms++] = o->transforms[i];
  } else {
    for (int i = 0; i < o->num_transforms; i++)
      loom_transform_destroy(o->transforms[i]);
  }
  if (!l->sampler || !l->transforms || !l->threads) {
    loom_loader_destroy(l);
    loom_error_oom("a loader");
    return NULL;
  }
  return l;
}

/* Between epochs the batch buffers go with the hooks that made them, and
 * the epoch under way (with no workers) ends: the next start makes them
 * with the new hooks. */
int loom_loader_set_hooks(loom_loader *l, const loom_loader_hooks *h) {
  if (l->running > 0)
    return loom_error_set(LOOM_ESTATE, "loader: hooks cannot change while its workers prepare an epoch's batches; "
                                       "call loom_loader_end_epoch first");
  if (h && (!h->alloc) != (!h->free))
    return loom_error_set(LOOM_EINVAL, "loader: the alloc and free hooks go together");
  free_slots(l);
  l->next = l->claim = l->made = l->released = l->total;
  l->holding = false;
  l->hooks = h ? *h : (loom_loader_hooks){0};
  return 0;
}

const loom_loader_hooks *loom_loader_get_hooks(const loom_loader *l) { return &l->hooks; }
int loom_loader_num_slots(const loom_loader *l) { return l->num_slots; }

loom_dataset *loom_loader_dataset(const loom_loader *l) { return l->ds; }
loom_sampler *loom_loader_sampler(const loom_loader *l) { return l->sampler; }
int64_t loom_loader_batch_size(const loom_loader *l) { return l->batch_size; }
int loom_loader_workers(const loom_loader *l) { return l->workers; }
int64_t loom_loader_num_samples(const loom_loader *l) { return l->started ? l->count : l->length; }
int64_t loom_loader_num_batches(const loom_loader *l) { return batches(l, loom_loader_num_samples(l)); }
int64_t loom_loader_max_batches(const loom_loader *l) { return batches(l, l->started ? l->max_count : l->length); }
const int64_t *loom_loader_order(const loom_loader *l) { return l->order; }

int loom_loader_start_epoch(loom_loader *l, const loom_epoch_plan *plan) {
  loom_loader_end_epoch(l);
  int rc = (!l->slots) ? make_slots(l) : 0;
  if (rc < 0)
    return rc;
  int64_t m = loom_sampler_length(l->sampler, l->length);
  if (m > l->cap_full) {
    int64_t *full = realloc(l->full, (size_t)m * sizeof *full), *order = full ? realloc(l->order, (size_t)m * sizeof *order) : NULL;
    if (full)
      l->full = full;
    if (!full || !order)
      return loom_error_oom("the epoch's order");
    l->order = order;
    l->cap_full = m;
  }
  if ((rc = loom_sampler_order(l->sampler, l->length, plan, l->full)) < 0)
    return rc;
  for (int64_t i = 0; i < m; i++)
    if (l->full[i] < 0 || l->full[i] >= l->length)
      return loom_error_set(LOOM_EINVAL, "sampler \"%s\" drew index %lld of a dataset of %lld",
                            loom_sampler_type(l->sampler), (long long)l->full[i], (long long)l->length);
  l->count = loom_shard(l->full, m, plan->rank, plan->world, plan->train, l->order);
  l->max_count = loom_shard_max_length(m, plan->world, plan->train);
  l->seed = plan->seed;
  l->total = batches(l, l->count);
  l->next = l->claim = l->made = l->released = 0;
  l->holding = false;
  l->started = true;
  return start_workers(l);
}

int loom_loader_seek(loom_loader *l, int64_t b) {
  if (b < 0 || b > l->total)
    return loom_error_set(LOOM_EINVAL, "loader: cannot skip %lld batches of %lld", (long long)b, (long long)l->total);
  loom_loader_end_epoch(l);
  l->next = l->claim = l->made = l->released = b;
  l->holding = false;
  return start_workers(l);
}

int loom_loader_next(loom_loader *l, loom_tensor **x, loom_tensor **y) {
  if (l->workers == 0) {
    if (l->next >= l->total)
      return 0;
    int rc = produce(l, l->next, &l->slots[0]);
    if (rc < 0)
      return rc;
    l->next++;
    *x = l->slots[0].x;
    *y = l->slots[0].y;
    return 1;
  }
  uv_mutex_lock(&l->mu);
  if (l->holding) { /* the previous batch's slot may be refilled now */
    l->released++;
    l->holding = false;
    int64_t room = room_limit(l) - l->claim;
    if (l->asleep > 0 && room > 0 && (2 * room >= l->num_slots || room_limit(l) == l->total))
      wake_workers(l);
    publish_demand(l);
  }
  if (l->next >= l->total) {
    uv_mutex_unlock(&l->mu);
    return 0;
  }
  slot *s = &l->slots[l->next % l->num_slots];
  /* No worker has started the batch (none got a core since the slot came
   * free): making it here costs what it costs with no workers, where
   * waiting could cost a scheduler's tick. */
  if (l->claim == l->next && !l->stop)
    make_claimed(l);
  while (!(s->state == SLOT_READY && s->batch == l->next) && l->running > 0)
    uv_cond_wait(&l->ready_cv, &l->mu);
  bool ready = s->state == SLOT_READY && s->batch == l->next;
  uv_mutex_unlock(&l->mu);
  if (!ready)
    return loom_error_set(LOOM_ESTATE, "loader: the workers stopped before batch %lld", (long long)l->next);
  if (s->rc < 0)
    return loom_error_set(s->rc, "%s", s->error);
  l->next++;
  l->holding = true;
  *x = s->x;
  *y = s->y;
  return 1;
}
