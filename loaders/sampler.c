#include <stdlib.h>

#include "core/error_internal.h"
#include "loom/data.h"
#include "loom/rng.h"

struct loom_sampler {
  loom_sampler_ops ops;
  void *data;
};

loom_sampler *loom_sampler_create(const loom_sampler_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->order) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_sampler_create: a sampler needs type and order");
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

int loom_sampler_order(loom_sampler *s, int64_t n, uint64_t seed, int64_t *indices) {
  return s->ops.order(s->data, n, seed, indices);
}

static int sequential_order(void *data, int64_t n, uint64_t seed, int64_t *indices) {
  (void)data, (void)seed;
  for (int64_t i = 0; i < n; i++)
    indices[i] = i;
  return 0;
}

static int random_order(void *data, int64_t n, uint64_t seed, int64_t *indices) {
  (void)data;
  loom_rng rng;
  loom_rng_seed(&rng, seed, 0, loom_rng_stream_id("random_sampler"));
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

static const loom_sampler_ops sequential_ops = {"sequential", sequential_order, NULL};
static const loom_sampler_ops random_ops = {"random", random_order, NULL};

loom_sampler *loom_sequential_sampler_create(void) { return loom_sampler_create(&sequential_ops, NULL); }
loom_sampler *loom_random_sampler_create(void) { return loom_sampler_create(&random_ops, NULL); }
