/* Per-sample transforms: normalize per channel, random crop, random flip. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/data.h"

struct loom_transform {
  loom_transform_ops ops;
  void *data;
};

loom_transform *loom_transform_create(const loom_transform_ops *ops, void *data) {
  if (!ops || !ops->type || !ops->apply) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_transform_create: a transform needs type and apply");
    return NULL;
  }
  loom_transform *t = calloc(1, sizeof *t);
  if (!t) {
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a transform");
    return NULL;
  }
  t->ops = *ops;
  t->data = data;
  return t;
}

void loom_transform_destroy(loom_transform *t) {
  if (!t)
    return;
  if (t->ops.destroy)
    t->ops.destroy(t->data);
  free(t);
}

const char *loom_transform_type(const loom_transform *t) { return t->ops.type; }

int loom_transform_apply(loom_transform *t, float *sample, int ndim, const int64_t *shape, loom_rng *rng) {
  return t->ops.apply(t->data, sample, ndim, shape, rng);
}

/* Channels and plane size of a [C, H, W] or [H, W] (or [N]) sample. */
static void planes(int ndim, const int64_t *shape, int64_t *channels, int64_t *h, int64_t *w) {
  *channels = ndim >= 3 ? shape[ndim - 3] : 1;
  *h = ndim >= 2 ? shape[ndim - 2] : 1;
  *w = shape[ndim - 1];
}

typedef struct normalize {
  int channels;
  float mean[64], inv_std[64];
} normalize;

static int normalize_apply(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  (void)rng;
  const normalize *n = data;
  int64_t c, h, w;
  planes(ndim, shape, &c, &h, &w);
  if (n->channels != 1 && n->channels != c)
    return loom_error_set(LOOM_ESHAPE, "normalize has %d channels, the sample has %lld", n->channels, (long long)c);
  for (int64_t k = 0; k < c; k++) {
    float mean = n->mean[n->channels == 1 ? 0 : k], inv = n->inv_std[n->channels == 1 ? 0 : k];
    float *plane = x + k * h * w;
    for (int64_t i = 0; i < h * w; i++)
      plane[i] = (plane[i] - mean) * inv;
  }
  return 0;
}

static const loom_transform_ops normalize_ops = {"normalize", normalize_apply, free};

loom_transform *loom_normalize_transform_create(const float *mean, const float *std, int channels) {
  if (!mean || !std || channels < 1 || channels > 64) {
    loom_error_set(LOOM_EINVAL, "normalize: 1 to 64 channels of mean and std");
    return NULL;
  }
  normalize *n = calloc(1, sizeof *n);
  if (!n) {
    loom_error_oom("a normalize transform");
    return NULL;
  }
  n->channels = channels;
  for (int i = 0; i < channels; i++) {
    if (!(std[i] > 0)) {
      free(n);
      loom_error_set(LOOM_EINVAL, "normalize: std of channel %d is %g; it must be > 0", i, (double)std[i]);
      return NULL;
    }
    n->mean[i] = mean[i];
    n->inv_std[i] = 1.0f / std[i];
  }
  return loom_transform_create(&normalize_ops, n);
}

static int crop_apply(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  const int64_t pad = *(const int64_t *)data;
  int64_t c, h, w;
  planes(ndim, shape, &c, &h, &w);
  /* The offset of the crop inside the padded plane, in [0, 2 pad]. */
  int64_t dy = (int64_t)loom_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
  int64_t dx = (int64_t)loom_rng_below(rng, (uint64_t)(2 * pad + 1)) - pad;
  /* Planes up to 64x64 are copied on the stack; larger ones on the heap. */
  float stack[4096], *tmp = h * w <= 4096 ? stack : malloc((size_t)(h * w) * sizeof *tmp);
  if (!tmp)
    return loom_error_oom("a crop buffer");
  for (int64_t k = 0; k < c; k++) {
    float *plane = x + k * h * w;
    memcpy(tmp, plane, (size_t)(h * w) * sizeof *tmp);
    for (int64_t i = 0; i < h; i++)
      for (int64_t j = 0; j < w; j++) {
        int64_t si = i + dy, sj = j + dx;
        plane[i * w + j] = (si >= 0 && si < h && sj >= 0 && sj < w) ? tmp[si * w + sj] : 0.0f;
      }
  }
  if (tmp != stack)
    free(tmp);
  return 0;
}

static const loom_transform_ops crop_ops = {"random_crop", crop_apply, free};

loom_transform *loom_random_crop_transform_create(int64_t padding) {
  if (padding < 0) {
    loom_error_set(LOOM_EINVAL, "random crop: padding must be >= 0, got %lld", (long long)padding);
    return NULL;
  }
  int64_t *p = malloc(sizeof *p);
  if (!p) {
    loom_error_oom("a random crop");
    return NULL;
  }
  *p = padding;
  return loom_transform_create(&crop_ops, p);
}

static int flip_apply(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  if (loom_rng_uniform(rng) >= *(const float *)data)
    return 0;
  int64_t c, h, w;
  planes(ndim, shape, &c, &h, &w);
  for (int64_t row = 0; row < c * h; row++) {
    float *r = x + row * w;
    for (int64_t j = 0; j < w / 2; j++) {
      float t = r[j];
      r[j] = r[w - 1 - j];
      r[w - 1 - j] = t;
    }
  }
  return 0;
}

static const loom_transform_ops flip_ops = {"random_flip", flip_apply, free};

loom_transform *loom_random_flip_transform_create(double probability) {
  if (!(probability >= 0 && probability <= 1)) {
    loom_error_set(LOOM_EINVAL, "random flip: probability must be in [0, 1], got %g", probability);
    return NULL;
  }
  float *p = malloc(sizeof *p);
  if (!p) {
    loom_error_oom("a random flip");
    return NULL;
  }
  *p = (float)probability;
  return loom_transform_create(&flip_ops, p);
}
