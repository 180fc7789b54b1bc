/* loom/rng.h - seeded random streams (xoshiro256**).
 *
 * Every stream is derived from (experiment seed, global epoch, stream id), so
 * a run is reproducible bit for bit and two consumers never share draws. */
#ifndef LOOM_RNG_H
#define LOOM_RNG_H

#include "loom/api.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A value type: copy it to save or restore a stream's state. */
typedef struct loom_rng {
  uint64_t s[4];
} loom_rng;

/* Seeds `rng` from a seed, a counter (e.g. the global epoch) and a stream id. */
LOOM_API void loom_rng_seed(loom_rng *rng, uint64_t seed, uint64_t counter, uint64_t stream);
/* A stable 64-bit id for a named stream (FNV-1a), e.g. a loader's name. */
LOOM_API uint64_t loom_rng_stream_id(const char *name);

LOOM_API uint64_t loom_rng_next(loom_rng *rng);
/* Uniform in [0, 1) with 24 random bits, like a float32 draw. */
LOOM_API float loom_rng_uniform(loom_rng *rng);
/* Uniform integer in [0, n) without modulo bias; n > 0. */
LOOM_API uint64_t loom_rng_below(loom_rng *rng, uint64_t n);
/* Standard normal (Box-Muller). */
LOOM_API double loom_rng_normal(loom_rng *rng);

#ifdef __cplusplus
}
#endif
#endif
