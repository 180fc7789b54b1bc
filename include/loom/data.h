/* loom/data.h - datasets, samplers and loaders.
 *
 * A dataset knows its length and fetches samples by index into float
 * buffers. A sampler orders the indices of an epoch. A loader collates
 * batches from a dataset in its sampler's order into buffers it owns, so an
 * epoch allocates nothing per batch. */
#ifndef LOOM_DATA_H
#define LOOM_DATA_H

#include <stdbool.h>
#include <stdint.h>

#include "loom/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_dataset loom_dataset;
typedef struct loom_sampler loom_sampler;
typedef struct loom_loader loom_loader;

typedef struct loom_dataset_ops {
  const char *type;
  int64_t (*length)(void *data);
  /* Writes samples indices[0..n) to x (n x sample size floats) and their
   * targets to y (n x target size floats). */
  int (*fetch)(void *data, const int64_t *indices, int64_t n, float *x, float *y);
  void (*destroy)(void *data);
} loom_dataset_ops;

/* `ops` is copied; `data` is owned (freed by ops->destroy, also on failure).
 * target_ndim 0 means one scalar per sample (a class index or a value). */
loom_dataset *loom_dataset_create(const loom_dataset_ops *ops, void *data, int sample_ndim,
                                  const int64_t *sample_shape, int target_ndim, const int64_t *target_shape);
/* Datasets are reference counted so that several loaders can share one:
 * retain adds a reference, destroy drops one and frees on the last. */
loom_dataset *loom_dataset_retain(loom_dataset *ds);
void loom_dataset_destroy(loom_dataset *ds);
int64_t loom_dataset_length(const loom_dataset *ds);
int loom_dataset_sample_ndim(const loom_dataset *ds);
const int64_t *loom_dataset_sample_shape(const loom_dataset *ds);
int loom_dataset_target_ndim(const loom_dataset *ds);
const int64_t *loom_dataset_target_shape(const loom_dataset *ds);
int loom_dataset_fetch(loom_dataset *ds, const int64_t *indices, int64_t n, float *x, float *y);

/* IDX files (gzip'd or plain), unsigned-byte images scaled to [0, 1] and
 * unsigned-byte labels; read whole into memory as bytes. */
loom_dataset *loom_idx_dataset_open(const char *images_path, const char *labels_path);
/* Fashion-MNIST (or MNIST) from a directory holding the four standard
 * files: train=true for the 60k training set, false for the 10k test set. */
loom_dataset *loom_fashion_mnist_open(const char *dir, bool train);
/* Copies n samples of `x` (each of sample_shape) and their targets. */
loom_dataset *loom_memory_dataset_create(const float *x, const float *y, int64_t n, int sample_ndim,
                                         const int64_t *sample_shape, int target_ndim,
                                         const int64_t *target_shape);

/* Standardises `inner`'s samples, x' = (x - mean) / std, as the usual
 * Normalize transform does. Owns `inner` from here on, also on failure.
 * Fashion-MNIST's training-set statistics: mean 0.2860, std 0.3530. */
loom_dataset *loom_normalize_dataset_create(loom_dataset *inner, float mean, float std);

typedef struct loom_sampler_ops {
  const char *type;
  /* Writes the order of one epoch's n indices; `seed` is fresh each epoch. */
  int (*order)(void *data, int64_t n, uint64_t seed, int64_t *indices);
  void (*destroy)(void *data);
} loom_sampler_ops;

loom_sampler *loom_sampler_create(const loom_sampler_ops *ops, void *data);
void loom_sampler_destroy(loom_sampler *s);
/* 0, 1, ..., n-1. */
loom_sampler *loom_sequential_sampler_create(void);
/* A uniform random permutation (Fisher-Yates) drawn from the epoch's seed:
 * the same seed and epoch give the same permutation. */
loom_sampler *loom_random_sampler_create(void);
int loom_sampler_order(loom_sampler *s, int64_t n, uint64_t seed, int64_t *indices);

typedef struct loom_loader_options {
  int64_t batch_size;    /* > 0 */
  bool shuffle;          /* random sampler when no sampler is given */
  bool drop_last;        /* drop a last partial batch; kept by default */
  loom_sampler *sampler; /* optional; owned by the loader */
} loom_loader_options;

/* Takes ownership of one reference to `dataset` and of options->sampler,
 * also on failure. */
loom_loader *loom_loader_create(loom_dataset *dataset, const loom_loader_options *options);
void loom_loader_destroy(loom_loader *loader);
loom_dataset *loom_loader_dataset(const loom_loader *loader);
int64_t loom_loader_batch_size(const loom_loader *loader);
int64_t loom_loader_num_batches(const loom_loader *loader);
int64_t loom_loader_num_samples(const loom_loader *loader);

/* Orders a new epoch from `seed`. */
int loom_loader_start_epoch(loom_loader *loader, uint64_t seed);
/* The next batch: 1 and *x, *y set (owned by the loader, valid until the
 * next call), 0 at the end of the epoch, or a negative error. */
int loom_loader_next(loom_loader *loader, loom_tensor **x, loom_tensor **y);
/* Skips the first `batches` batches of the epoch (resuming mid-epoch). */
int loom_loader_seek(loom_loader *loader, int64_t batches);
/* The epoch's order as drawn by the sampler (num_samples indices). */
const int64_t *loom_loader_order(const loom_loader *loader);

#ifdef __cplusplus
}
#endif
#endif
