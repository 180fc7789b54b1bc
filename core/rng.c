#include "loom/rng.h"

#include <math.h>

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void loom_rng_seed(loom_rng *rng, uint64_t seed, uint64_t counter, uint64_t stream) {
  /* Mix the three inputs through splitmix so nearby seeds give unrelated streams. */
  uint64_t x = seed;
  uint64_t a = splitmix64(&x);
  x = a ^ counter;
  uint64_t b = splitmix64(&x);
  x = b ^ stream;
  for (int i = 0; i < 4; i++)
    rng->s[i] = splitmix64(&x);
}

uint64_t loom_rng_stream_id(const char *name) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
    h ^= *p;
    h *= 0x100000001b3ULL;
  }
  return h;
}

uint64_t loom_rng_next(loom_rng *rng) {
  uint64_t *s = rng->s;
  uint64_t result = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return result;
}

float loom_rng_uniform(loom_rng *rng) {
  return (float)(loom_rng_next(rng) >> 40) * 0x1.0p-24f;
}

uint64_t loom_rng_below(loom_rng *rng, uint64_t n) {
  /* Rejection on the top of the range keeps every residue equally likely. */
  uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t r;
  do {
    r = loom_rng_next(rng);
  } while (r >= limit);
  return r % n;
}

double loom_rng_normal(loom_rng *rng) {
  double u1 = ((double)(loom_rng_next(rng) >> 11) + 1.0) * 0x1.0p-53;
  double u2 = (double)(loom_rng_next(rng) >> 11) * 0x1.0p-53;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
