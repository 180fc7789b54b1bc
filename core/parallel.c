/* A fixed pool of worker threads (libuv) for loom_parallel_for. Workers
 * wait on a condition variable for the next job's generation, run their
 * part and report back; one job runs at a time (the training thread's). */
#include "core/parallel.h"

#include <cblas.h>
#include <pthread.h>
#include <stdlib.h>
#include <uv.h>

typedef struct pool {
  uv_mutex_t busy; /* one job at a time; a second caller runs serially */
  uv_mutex_t lock;
  uv_cond_t wake, done;
  uv_thread_t threads[LOOM_MAX_PARTS];
  int parts, started;
  uint64_t generation;
  int pending;
  loom_parallel_fn fn;
  void *ctx;
  int64_t n;
} pool;

static pool the_pool;
static uv_once_t once = UV_ONCE_INIT;

static void range(int64_t n, int parts, int part, int64_t *begin, int64_t *end) {
  *begin = n * part / parts;
  *end = n * (part + 1) / parts;
}

static void worker(void *arg) {
  int part = (int)(intptr_t)arg;
  pool *p = &the_pool;
  uint64_t seen = 0;
  uv_mutex_lock(&p->lock);
  for (;;) {
    while (p->generation == seen)
      uv_cond_wait(&p->wake, &p->lock);
    seen = p->generation;
    loom_parallel_fn fn = p->fn;
    void *ctx = p->ctx;
    int64_t begin, end;
    range(p->n, p->parts, part, &begin, &end);
    uv_mutex_unlock(&p->lock);
    if (begin < end)
      fn(ctx, part, begin, end);
    uv_mutex_lock(&p->lock);
    if (--p->pending == 0)
      uv_cond_signal(&p->done);
  }
}

/* A forked child has none of the workers (and maybe a held lock): it runs
 * every job on its one thread. */
static void after_fork_in_child(void) { the_pool.parts = 1; }

static void start(void) {
  pool *p = &the_pool;
  if (pthread_atfork(NULL, NULL, after_fork_in_child) != 0)
    goto serial;
  const char *env = getenv("LOOM_NUM_THREADS");
  long want = env && *env ? strtol(env, NULL, 10) : (long)uv_available_parallelism();
  p->parts = want < 1 ? 1 : want > LOOM_MAX_PARTS ? LOOM_MAX_PARTS : (int)want;
  if (p->parts == 1 || uv_mutex_init(&p->busy) != 0 || uv_mutex_init(&p->lock) != 0)
    goto serial;
  if (uv_cond_init(&p->wake) != 0 || uv_cond_init(&p->done) != 0)
    goto serial; /* not destroyed: a process-lifetime pool */
  /* Workers live as long as the process, parked on `wake` between jobs. */
  for (p->started = 0; p->started < p->parts - 1; p->started++)
    if (uv_thread_create(&p->threads[p->started], worker, (void *)(intptr_t)(p->started + 1)) != 0)
      break;
  p->parts = p->started + 1;
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
  int blas = openblas_get_num_threads();
  openblas_set_num_threads(1);
  uv_mutex_lock(&p->lock);
  p->fn = fn, p->ctx = ctx, p->n = n;
  p->pending = parts - 1;
  p->generation++;
  uv_cond_broadcast(&p->wake);
  uv_mutex_unlock(&p->lock);
  int64_t begin, end;
  range(n, parts, 0, &begin, &end);
  fn(ctx, 0, begin, end);
  uv_mutex_lock(&p->lock);
  while (p->pending > 0)
    uv_cond_wait(&p->done, &p->lock);
  uv_mutex_unlock(&p->lock);
  openblas_set_num_threads(blas);
  uv_mutex_unlock(&p->busy);
}
