/* Samplers: an epoch's order of indices, from the epoch's seed. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/data.h"
#include "loom/rng.h"

struct loom_sampler {
  loom_sampler_ops ops;
  void *data;
};

loom_sampler *loom_sampler_create(const loom_sampler_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->length || !ops->order) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_sampler_create: a sampler needs type, length and order");
    return NULL;
  }
  loom_sampler *s = calloc(1, sizeof *s);
  if (!s) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a sampler");
    return NULL;
  }
  s->ops = *ops;
  s->data = data;
  return s;
}

void loom_sampler_destroy(loom_sampler *s) {
  if (!s)
    return;
  if (s->ops.destroy)
    s->ops.destroy(s->data);
  free(s);
}

const char *loom_sampler_type(const loom_sampler *s) { return s->ops.type; }

int64_t loom_sampler_length(loom_sampler *s, int64_t n) { return s->ops.length(s->data, n); }

int loom_sampler_order(loom_sampler *s, int64_t n, const loom_epoch_plan *plan, int64_t *indices) {
  return s->ops.order(s->data, n, plan, indices);
}

int loom_sampler_save(loom_sampler *s, loom_state *state) { return s->ops.save ? s->ops.save(s->data, state) : 0; }
int loom_sampler_load(loom_sampler *s, const loom_state *state) {
  return s->ops.load ? s->ops.load(s->data, state) : 0;
}

static int64_t all(void *data, int64_t n) {
  (void)data;
  return n;
}

static int sequential_order(void *data, int64_t n, const loom_epoch_plan *plan, int64_t *indices) {
  (void)data, (void)plan;
  for (int64_t i = 0; i < n; i++)
    indices[i] = i;
  return 0;
}

static int random_order(void *data, int64_t n, const loom_epoch_plan *plan, int64_t *indices) {
  (void)data;
  loom_rng rng;
  loom_rng_seed(&rng, plan->seed, 0, loom_rng_stream_id("random_sampler"));
  for (int64_t i = 0; i < n; i++)
    indices[i] = i;
  for (int64_t i = n - 1; i > 0; i--) {
    int64_t j = (int64_t)loom_rng_below(&rng, (uint64_t)i + 1);
    int64_t t = indices[i];
    indices[i] = indices[j];
    indices[j] = t;
  }
  return 0;
}

static const loom_sampler_ops sequential_ops = {.type = "sequential", .length = all, .order = sequential_order};
static const loom_sampler_ops random_ops = {.type = "random", .length = all, .order = random_order};

loom_sampler *loom_sequential_sampler_create(void) { return loom_sampler_create(&sequential_ops, NULL); }
loom_sampler *loom_random_sampler_create(void) { return loom_sampler_create(&random_ops, NULL); }

/* Weighted: a cumulative table searched by bisection for each draw. */
typedef struct weighted {
  double *cumulative;
  int64_t n, draws;
} weighted;

static int64_t weighted_length(void *data, int64_t n) {
  (void)n;
  return ((weighted *)data)->draws;
}

static int weighted_order(void *data, int64_t n, const loom_epoch_plan *plan, int64_t *indices) {
  const weighted *w = data;
  if (n != w->n)
    return loom_error_set(LOOM_EINVAL, "weighted sampler: %lld weights for a dataset of %lld samples",
                          (long long)w->n, (long long)n);
  loom_rng rng;
  loom_rng_seed(&rng, plan->seed, 0, loom_rng_stream_id("weighted_sampler"));
  const double total = w->cumulative[w->n - 1];
  for (int64_t k = 0; k < w->draws; k++) {
    double u = (double)(loom_rng_next(&rng) >> 11) * 0x1.0p-53 * total;
    int64_t lo = 0, hi = w->n - 1;
    while (lo < hi) {
      int64_t mid = lo + (hi - lo) / 2;
      if (w->cumulative[mid] > u)
        hi = mid;
      else
        lo = mid + 1;
    }
    indices[k] = lo;
  }
  return 0;
}

static void weighted_destroy(void *data) {
  weighted *w = data;
  free(w->cumulative);
  free(w);
}

static const loom_sampler_ops weighted_ops = {
    .type = "weighted", .length = weighted_length, .order = weighted_order, .destroy = weighted_destroy};

loom_sampler *loom_weighted_sampler_create(const double *weights, int64_t n, int64_t num_samples) {
  double total = 0;
  for (int64_t i = 0; weights && i < n; i++) {
    if (!(weights[i] >= 0)) {
      loom_error_set(LOOM_EINVAL, "weighted sampler: weight %lld is %g; weights must be >= 0", (long long)i, weights[i]);
      return NULL;
    }
    total += weights[i];
  }
  if (!weights || n < 1 || num_samples < 1 || !(total > 0)) {
    loom_error_set(LOOM_EINVAL, "weighted sampler: needs n >= 1 weights with a positive sum and num_samples >= 1");
    return NULL;
  }
  weighted *w = calloc(1, sizeof *w);
  if (w)
    w->cumulative = malloc((size_t)n * sizeof *w->cumulative);
  if (!w || !w->cumulative) {
    if (w)
      free(w);
    loom_error_oom("a weighted sampler");
    return NULL;
  }
  double run = 0;
  for (int64_t i = 0; i < n; i++)
    w->cumulative[i] = run += weights[i];
  w->n = n;
  w->draws = num_samples;
  return loom_sampler_create(&weighted_ops, w);
}

/* --- sharding by rank --- */

int64_t loom_shard_max_length(int64_t count, int world, bool train) {
  (void)train; /* eval shards are at most one shorter: the longest is the same */
  return world <= 1 ? count : (count + world - 1) / world;
}

int64_t loom_shard(const int64_t *order, int64_t count, int rank, int world, bool train, int64_t *shard) {
  if (world <= 1) {
    memcpy(shard, order, (size_t)count * sizeof *shard);
    return count;
  }
  int64_t per = (count + world - 1) / world;
  /* Train: wrap around to give every rank `per`; eval: only real samples. */
  int64_t total = train ? per * world : count, k = 0;
  for (int64_t i = rank; i < total; i += world)
    shard[k++] = order[i % count];
  return k;
}
