/* The optimizers' updates (formulas in models/sgd.c, adam.c, rmsprop.c),
 * elementwise and so cut over the pool in any parts. */
#include "backends/cpu/kernels.h"

#include <math.h>

#include "backends/cpu/parallel.h"
#include "backends/cpu/simd.h"

/* Below this many parameters the hand-off costs more than the half saves. */
#define PARALLEL_UPDATE 16384

LOOM_HOT static void sgd_range(const loom_sgd_step *s, float *restrict p, const float *restrict g,
                                float *restrict buf, int64_t n) {
  const float lr = (float)s->lr, wd = (float)s->weight_decay, mu = (float)s->momentum;
  const float damp = (float)(1.0 - s->dampening);
  if (!buf || mu == 0.0f) { /* plain SGD, or a momentum a schedule set to 0 */
    for (int64_t i = 0; i < n; i++)
      p[i] -= lr * (g[i] + wd * p[i]);
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    float d = g[i] + wd * p[i];
    buf[i] = s->first ? d : mu * buf[i] + damp * d;
    p[i] -= lr * (s->nesterov ? d + mu * buf[i] : buf[i]);
  }
}

LOOM_HOT static void adam_range(const loom_adam_step *s, float *restrict p, const float *restrict g,
                                 float *restrict m, float *restrict v, int64_t n) {
  const float b1 = (float)s->beta1, b2 = (float)s->beta2, eps = (float)s->eps;
  /* 1 - beta in double, then rounded, as PyTorch does: 1 - 0.999f is off by 1e-5. */
  const float c1 = (float)(1.0 - s->beta1), c2 = (float)(1.0 - s->beta2);
  const float l2 = s->decoupled ? 0.0f : (float)s->weight_decay;
  const float shrink = s->decoupled ? (float)(1.0 - s->lr * s->weight_decay) : 1.0f;
  const double bc1 = 1.0 - pow(s->beta1, (double)s->step), bc2 = 1.0 - pow(s->beta2, (double)s->step);
  const float step_size = (float)(s->lr / bc1), inv_sqrt_bc2 = (float)(1.0 / sqrt(bc2));
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i] + l2 * p[i];
    p[i] *= shrink;
    m[i] = b1 * m[i] + c1 * gi;
    v[i] = b2 * v[i] + c2 * gi * gi;
    p[i] -= step_size * m[i] / (sqrtf(v[i]) * inv_sqrt_bc2 + eps);
  }
}

static void rmsprop_range(const loom_rmsprop_step *s, float *p, const float *g, float *v, float *b, float *c,
                          int64_t n) {
  const float a = (float)s->alpha, ca = (float)(1.0 - s->alpha), eps = (float)s->eps, mu = (float)s->momentum;
  const float lr = (float)s->lr, wd = (float)s->weight_decay;
  for (int64_t i = 0; i < n; i++) {
    float gi = g[i] + wd * p[i];
    v[i] = a * v[i] + ca * gi * gi;
    float denom;
    if (s->centered) {
      c[i] = a * c[i] + ca * gi;
      denom = sqrtf(v[i] - c[i] * c[i]) + eps;
    } else {
      denom = sqrtf(v[i]) + eps;
    }
    if (mu > 0.0f) {
      b[i] = mu * b[i] + gi / denom;
      p[i] -= lr * b[i];
    } else {
      p[i] -= lr * gi / denom;
    }
  }
}

typedef enum { SGD, ADAM, RMSPROP } rule;

typedef struct update_job {
  rule rule;
  const void *step;
  float *p;
  const float *g;
  float *s0, *s1, *s2; /* the state arrays the rule has */
} update_job;

static void update_part(void *ctx, int part, int64_t begin, int64_t end) {
  (void)part;
  const update_job *u = ctx;
  const int64_t n = end - begin;
  float *s0 = u->s0 ? u->s0 + begin : NULL, *s1 = u->s1 ? u->s1 + begin : NULL, *s2 = u->s2 ? u->s2 + begin : NULL;
  switch (u->rule) {
  case SGD: sgd_range(u->step, u->p + begin, u->g + begin, s0, n); break;
  case ADAM: adam_range(u->step, u->p + begin, u->g + begin, s0, s1, n); break;
  case RMSPROP: rmsprop_range(u->step, u->p + begin, u->g + begin, s0, s1, s2, n); break;
  }
}

static void update(update_job *u, int64_t n) { loom_parallel_for_large(n, PARALLEL_UPDATE, update_part, u); }

void loom_cpu_sgd_update(const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  update(&(update_job){SGD, s, p, g, buf, NULL, NULL}, n);
}

void loom_cpu_adam_update(const loom_adam_step *s, float *p, const float *g, float *m, float *v, int64_t n) {
  update(&(update_job){ADAM, s, p, g, m, v, NULL}, n);
}

void loom_cpu_rmsprop_update(const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf, float *avg,
                             int64_t n) {
  update(&(update_job){RMSPROP, s, p, g, sq, buf, avg}, n);
}
