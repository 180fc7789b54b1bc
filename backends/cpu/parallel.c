/* A fixed pool of worker threads (libuv) for loom_parallel_for. Jobs are
 * short (a layer's pass over a batch, often well under a millisecond) and
 * come back to back, so a worker spins briefly on the job counter before
 * it sleeps on a condition variable: waking a sleeping thread costs tens
 * of microseconds, which a batch of a dozen jobs pays again and again.
 * One job runs at a time (the training thread's). While a thread outside
 * the pool has work that wants a core (a loader worker with a batch to
 * make), the workers sleep at once between jobs instead: with one pool
 * thread per core, spinning would leave that thread no core but the ones
 * the scheduler takes from a spinner at its next tick. */
#include "backends/cpu/parallel.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <uv.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

/* About 100 microseconds of pauses: longer than the gaps between a
 * batch's jobs, short enough that an idle pool gives its cores back. */
#define SPINS 4000

typedef struct pool {
  uv_mutex_t busy; /* one job at a time; a second caller runs serially */
  uv_mutex_t lock; /* with wake and done, for the sleepers */
  uv_cond_t wake, done;
  uv_thread_t threads[LOOM_MAX_PARTS];
  int parts, started;
  atomic_uint_fast64_t generation; /* bumped under lock, read by spinners */
  atomic_int pending;              /* workers still running this job */
  loom_parallel_fn fn;
  void *ctx;
  int64_t n;
} pool;

static pool the_pool;
static uv_once_t once = UV_ONCE_INIT;
/* See loom_parallel_outside_work. On a line of its own: the spinners read
 * it on every turn, and the pool's fields are written on every job. */
static struct {
  _Alignas(64) atomic_int count;
  char pad[64 - sizeof(atomic_int)];
} outside_work;

void loom_parallel_outside_work(int delta) {
  atomic_fetch_add_explicit(&outside_work.count, delta, memory_order_relaxed);
}

bool loom_parallel_outside_pending(void) {
  return atomic_load_explicit(&outside_work.count, memory_order_relaxed) > 0;
}

static void range(int64_t n, int parts, int part, int64_t *begin, int64_t *end) {
  *begin = n * part / parts;
  *end = n * (part + 1) / parts;
}

/* The job after `seen`: spin on the counter (unless outside work waits for
 * a core), then sleep on `wake`. The acquire load pairs with the release
 * bump, so fn, ctx and n are seen. */
static uint64_t next_job(pool *p, uint64_t seen) {
  for (int i = 0; i < SPINS && !loom_parallel_outside_pending(); i++) {
    uint64_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
    if (g != seen)
      return g;
    cpu_relax();
  }
  uv_mutex_lock(&p->lock);
  uint64_t g;
  while ((g = atomic_load_explicit(&p->generation, memory_order_acquire)) == seen)
    uv_cond_wait(&p->wake, &p->lock);
  uv_mutex_unlock(&p->lock);
  return g;
}

static void worker(void *arg) {
  int part = (int)(intptr_t)arg;
  pool *p = &the_pool;
  uint64_t seen = 0;
  for (;;) {
    seen = next_job(p, seen);
    int64_t begin, end;
    range(p->n, p->parts, part, &begin, &end);
    if (begin < end)
      p->fn(p->ctx, part, begin, end);
    if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
      /* Under the lock, so a caller between its check and its wait
       * cannot miss the signal. */
      uv_mutex_lock(&p->lock);
      uv_cond_signal(&p->done);
      uv_mutex_unlock(&p->lock);
    }
  }
}

static void wait_done(pool *p) {
  for (int i = 0; i < SPINS; i++) {
    if (atomic_load_explicit(&p->pending, memory_order_acquire) == 0)
      return;
    cpu_relax();
  }
  uv_mutex_lock(&p->lock);
  while (atomic_load_explicit(&p->pending, memory_order_acquire) > 0)
    uv_cond_wait(&p->done, &p->lock);
  uv_mutex_unlock(&p->lock);
}

/* A forked child has none of the workers (and maybe a held lock): it runs
 * every job on its one thread. */
static void after_fork_in_child(void) { the_pool.parts = 1; }

/* Ranks an MPI launcher started on this node (OpenMPI's mpirun, MPICH's
 * Hydra), which share its cores; 1 without a launcher. */
static long ranks_on_this_node(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    long n = v && *v ? strtol(v, NULL, 10) : 0;
    if (n >= 1)
      return n;
  }
  return 1;
}

static void start(void) {
  pool *p = &the_pool;
  if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0)
    goto serial;
  const char *env = getenv("LOOM_NUM_THREADS");
  /* Ranks on one node share its cores; LOOM_NUM_THREADS still decides. */
  long ranks = env && *env ? 1 : ranks_on_this_node();
  long want = env && *env ? strtol(env, NULL, 10) : (long)uv_available_parallelism() / ranks;
  if (ranks > 1 && want <= 1)
    openblas_set_num_threads(1); /* nor may OpenBLAS take more than this rank's share */
  p->parts = want < 1 ? 1 : want > LOOM_MAX_PARTS ? LOOM_MAX_PARTS : (int)want;
  if (p->parts == 1 || uv_mutex_init(&p->busy) != 0 || uv_mutex_init(&p->lock) != 0)
    goto serial;
  if (uv_cond_init(&p->wake) != 0 || uv_cond_init(&p->done) != 0)
    goto serial; /* not destroyed: a process-lifetime pool */
  atomic_init(&p->generation, 0);
  atomic_init(&p->pending, 0);
  /* Workers live as long as the process, parked on `wake` between jobs. */
  for (p->started = 0; p->started < p->parts - 1; p->started++)
    if (uv_thread_create(&p->threads[p->started], worker, (void *)(intptr_t)(p->started + 1)) != 0)
      break;
  p->parts = p->started + 1;
  /* The pool owns the cores: OpenBLAS runs each part's products on the
   * part's own thread, rather than spinning threads of its own. */
  if (p->parts > 1)
    openblas_set_num_threads(1);
  return;
serial:
  p->parts = 1;
}

int loom_parallel_parts(void) {
  uv_once(&once, start);
  return the_pool.parts;
}

void loom_parallel_for(int64_t n, loom_parallel_fn fn, void *ctx) {
  pool *p = &the_pool;
  int parts = loom_parallel_parts();
  if (parts == 1 || n < 2 || uv_mutex_trylock(&p->busy) != 0) {
    if (n > 0)
      fn(ctx, 0, 0, n);
    return;
  }
  p->fn = fn, p->ctx = ctx, p->n = n;
  atomic_store_explicit(&p->pending, parts - 1, memory_order_relaxed);
  uv_mutex_lock(&p->lock);
  atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
  uv_cond_broadcast(&p->wake);
  uv_mutex_unlock(&p->lock);
  int64_t begin, end;
  range(n, parts, 0, &begin, &end);
  fn(ctx, 0, begin, end);
  wait_done(p);
  uv_mutex_unlock(&p->busy);
}

typedef struct phased {
  loom_parallel_fn first, second;
  void *ctx;
  int64_t n;
  int parts;
  atomic_int arrived;
} phased;

static void phased_part(void *arg, int part, int64_t begin, int64_t end) {
  phased *ph = arg;
  ph->first(ph->ctx, part, begin, end);
  /* The whole range in one call: the pool ran it serially, nobody to wait for. */
  if (!(begin == 0 && end == ph->n)) {
    atomic_fetch_add_explicit(&ph->arrived, 1, memory_order_acq_rel);
    for (int spins = 0; atomic_load_explicit(&ph->arrived, memory_order_acquire) < ph->parts; spins++) {
      if (spins < SPINS)
        cpu_relax();
      else
        sched_yield(); /* a part whose thread has no core yet */
    }
  }
  ph->second(ph->ctx, part, begin, end);
}

void loom_parallel_for_phased(int64_t n, int64_t serial_below, loom_parallel_fn first, loom_parallel_fn second,
                              void *ctx) {
  int parts = loom_parallel_parts();
  /* n >= parts: every part has a non-empty range, so every part arrives. */
  if (n < serial_below || n < parts) {
    if (n > 0)
      first(ctx, 0, 0, n), second(ctx, 0, 0, n);
    return;
  }
  phased ph = {first, second, ctx, n, parts, 0};
  loom_parallel_for(n, phased_part, &ph);
}

void loom_parallel_for_large(int64_t n, int64_t serial_below, loom_parallel_fn fn, void *ctx) {
  if (n < serial_below) {
    if (n > 0)
      fn(ctx, 0, 0, n);
    return;
  }
  loom_parallel_for(n, fn, ctx);
}
