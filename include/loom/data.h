/* loom/data.h - datasets, samplers and loaders.
 *
 * A dataset knows its length and fetches samples by index into float
 * buffers. A sampler orders the indices of an epoch. A loader collates
 * batches from a dataset in its sampler's order into buffers it owns, so an
 * epoch allocates nothing per batch. */
#ifndef LOOM_DATA_H
#define LOOM_DATA_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/rng.h"
#include "loom/state.h"
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
 * target_ndim 0 means one scalar per sample (a class index or a value). An
 * unlabelled dataset (samples to predict, no targets) has targets of shape
 * [0] (target_ndim 1, target_shape {0}): its batches' y hold no values. */
LOOM_API loom_dataset *loom_dataset_create(const loom_dataset_ops *ops, void *data, int sample_ndim,
                                  const int64_t *sample_shape, int target_ndim, const int64_t *target_shape);
/* Datasets are reference counted so that several loaders can share one:
 * retain adds a reference, release drops one and frees on the last. */
LOOM_API loom_dataset *loom_dataset_retain(loom_dataset *ds);
LOOM_API void loom_dataset_release(loom_dataset *ds);
LOOM_API int64_t loom_dataset_length(const loom_dataset *ds);
LOOM_API int loom_dataset_sample_ndim(const loom_dataset *ds);
LOOM_API const int64_t *loom_dataset_sample_shape(const loom_dataset *ds);
LOOM_API int loom_dataset_target_ndim(const loom_dataset *ds);
LOOM_API const int64_t *loom_dataset_target_shape(const loom_dataset *ds);
/* False for an unlabelled dataset (targets with no values): it can be
 * predicted (loom/deploy.h), not trained or evaluated on. */
LOOM_API bool loom_dataset_is_labelled(const loom_dataset *ds);
LOOM_API int loom_dataset_fetch(loom_dataset *ds, const int64_t *indices, int64_t n, float *x, float *y);

/* IDX files (gzip'd or plain), unsigned-byte images scaled to [0, 1] and
 * unsigned-byte labels; read whole into memory as bytes. */
LOOM_API loom_dataset *loom_idx_dataset_open(const char *images_path, const char *labels_path);
/* The same from the two files' bytes in memory (gzip'd or plain; copied,
 * so the buffers may go once it returns); nothing is read from disk. */
LOOM_API loom_dataset *loom_idx_dataset_from_memory(const void *images, size_t images_size, const void *labels,
                                                    size_t labels_size);
/* Fashion-MNIST (or MNIST) from a directory holding the four standard
 * files: train=true for the 60k training set, false for the 10k test set. */
LOOM_API loom_dataset *loom_fashion_mnist_open(const char *dir, bool train);
/* Copies n samples of `x` (each of sample_shape) and their targets; `y`
 * NULL: unlabelled (target_ndim and target_shape are then ignored). */
LOOM_API loom_dataset *loom_memory_dataset_create(const float *x, const float *y, int64_t n, int sample_ndim,
                                         const int64_t *sample_shape, int target_ndim,
                                         const int64_t *target_shape);

/* Standardises `inner`'s samples, x' = (x - mean) / std, as the usual
 * Normalize transform does. Owns `inner` from here on, also on failure.
 * Fashion-MNIST's training-set statistics: mean 0.2860, std 0.3530. */
LOOM_API loom_dataset *loom_normalize_dataset_create(loom_dataset *inner, float mean, float std);

/* What a sampler is told at the start of an epoch. */
typedef struct loom_epoch_plan {
  uint64_t seed;   /* fresh each epoch, the same on every rank */
  int rank, world; /* this process among the data-parallel ranks */
  bool train;      /* train loaders pad shards to equal length; others do not */
} loom_epoch_plan;

typedef struct loom_sampler_ops {
  const char *type;
  /* How many indices an epoch over n samples has (before sharding). */
  int64_t (*length)(void *data, int64_t n);
  /* Writes the epoch's length(n) indices, drawn from plan->seed. */
  int (*order)(void *data, int64_t n, const loom_epoch_plan *plan, int64_t *indices);
  /* Optional: state beyond the seed (a curriculum, say), for checkpoints. */
  int (*save)(void *data, loom_state *state);
  int (*load)(void *data, const loom_state *state);
  void (*destroy)(void *data);
} loom_sampler_ops;

LOOM_API loom_sampler *loom_sampler_create(const loom_sampler_ops *ops, void *data);
LOOM_API void loom_sampler_destroy(loom_sampler *s);
/* 0, 1, ..., n-1. */
LOOM_API loom_sampler *loom_sequential_sampler_create(void);
/* A uniform random permutation (Fisher-Yates) drawn from the epoch's seed:
 * the same seed and epoch give the same permutation. */
LOOM_API loom_sampler *loom_random_sampler_create(void);
/* num_samples draws (with replacement) in proportion to weights[0..n). */
LOOM_API loom_sampler *loom_weighted_sampler_create(const double *weights, int64_t n, int64_t num_samples);
LOOM_API const char *loom_sampler_type(const loom_sampler *s);
LOOM_API int64_t loom_sampler_length(loom_sampler *s, int64_t n);
LOOM_API int loom_sampler_order(loom_sampler *s, int64_t n, const loom_epoch_plan *plan, int64_t *indices);
LOOM_API int loom_sampler_save(loom_sampler *s, loom_state *state);
LOOM_API int loom_sampler_load(loom_sampler *s, const loom_state *state);

/* Rank `rank`'s shard of an epoch's `count` indices, interleaved
 * (order[rank], order[rank + world], ...). Train shards are padded by
 * wrapping around so every rank has ceil(count / world); eval shards are
 * not, so no sample is seen twice. Returns the shard's length; shard and
 * order must not overlap. */
LOOM_API int64_t loom_shard(const int64_t *order, int64_t count, int rank, int world, bool train, int64_t *shard);
/* The length of the largest rank's shard. */
LOOM_API int64_t loom_shard_max_length(int64_t count, int world, bool train);

/* --- per-sample transforms, applied by the loader's workers --- */
typedef struct loom_transform loom_transform;
typedef struct loom_transform_ops {
  const char *type;
  /* Transforms one sample in place (its shape is kept); `rng` is seeded from
   * (epoch seed, sample index), whatever thread runs it. */
  int (*apply)(void *data, float *sample, int ndim, const int64_t *shape, loom_rng *rng);
  void (*destroy)(void *data);
} loom_transform_ops;

LOOM_API loom_transform *loom_transform_create(const loom_transform_ops *ops, void *data);
LOOM_API void loom_transform_destroy(loom_transform *t);
LOOM_API const char *loom_transform_type(const loom_transform *t);
LOOM_API int loom_transform_apply(loom_transform *t, float *sample, int ndim, const int64_t *shape, loom_rng *rng);
/* x' = (x - mean[c]) / std[c] per channel of a [C, H, W] (or [H, W], one
 * channel) sample; one mean/std applies to every channel. */
LOOM_API loom_transform *loom_normalize_transform_create(const float *mean, const float *std, int channels);
/* Pads the last two dimensions with `padding` zeros and crops back to their
 * size at a random offset. */
LOOM_API loom_transform *loom_random_crop_transform_create(int64_t padding);
/* Mirrors the last dimension with the given probability. */
LOOM_API loom_transform *loom_random_flip_transform_create(double probability);

typedef struct loom_loader_options {
  int64_t batch_size;    /* > 0 */
  bool shuffle;          /* random sampler when no sampler is given */
  bool drop_last;        /* drop a last partial batch; kept by default */
  loom_sampler *sampler; /* optional; owned by the loader */
  int workers;           /* threads preparing batches (batch-scheduled); 0: in the caller's thread */
  int prefetch;          /* batches prepared ahead (0: 2 per worker; up to 8 in 64 MiB) */
  loom_transform **transforms; /* per-sample, in order; owned by the loader */
  int num_transforms;
} loom_loader_options;

/* Hooks for a device backend: where batch buffers live (pinned host memory)
 * and a call per prepared batch (to start an asynchronous copy). The
 * runner sets its own for a model on a backend with asynchronous uploads
 * (and leaves a loader that has hooks alone). */
typedef struct loom_loader_hooks {
  void *(*alloc)(void *user, size_t bytes);
  void (*free)(void *user, void *ptr);
  /* Called in the thread that prepared `slot`'s batch (a worker, or the
   * consumer's when it finds its next batch not started), before it is
   * handed out; the consumer has let go of the slot's previous batch (its
   * loom_loader_next returned the batch after that one, or the epoch
   * started again). A failure fails that batch's loom_loader_next, with
   * the hook's message. */
  int (*batch_ready)(void *user, const loom_tensor *x, const loom_tensor *y, int slot);
  void *user;
} loom_loader_hooks;

/* Takes ownership of one reference to `dataset`, of options->sampler and of
 * options->transforms, also on failure. With workers > 0, the dataset's
 * fetch is called from several threads at once. */
LOOM_API loom_loader *loom_loader_create(loom_dataset *dataset, const loom_loader_options *options);
LOOM_API void loom_loader_destroy(loom_loader *loader);
/* Before the first epoch, or between epochs (not while workers run:
 * LOOM_ESTATE until loom_loader_end_epoch): the batch buffers made with
 * the previous hooks are freed through them, the next
 * loom_loader_start_epoch makes new ones, and until then
 * loom_loader_next has no batch (0). NULL: no hooks. */
LOOM_API int loom_loader_set_hooks(loom_loader *loader, const loom_loader_hooks *hooks);
/* The hooks set (all NULL: none). */
LOOM_API const loom_loader_hooks *loom_loader_get_hooks(const loom_loader *loader);
/* The batches that exist at once: 1 without workers, else the prefetch
 * depth; batch_ready's `slot` is below it, and batch b is in slot
 * b % loom_loader_num_slots. */
LOOM_API int loom_loader_num_slots(const loom_loader *loader);
LOOM_API loom_dataset *loom_loader_dataset(const loom_loader *loader);
LOOM_API loom_sampler *loom_loader_sampler(const loom_loader *loader);
LOOM_API int64_t loom_loader_batch_size(const loom_loader *loader);
LOOM_API int loom_loader_workers(const loom_loader *loader);
/* This rank's batches and samples in the current (or a one-rank) epoch. */
LOOM_API int64_t loom_loader_num_batches(const loom_loader *loader);
LOOM_API int64_t loom_loader_num_samples(const loom_loader *loader);
/* Batches of the largest rank's shard: how many steps every rank takes. */
LOOM_API int64_t loom_loader_max_batches(const loom_loader *loader);

/* Orders a new epoch and starts the workers. */
LOOM_API int loom_loader_start_epoch(loom_loader *loader, const loom_epoch_plan *plan);
/* The next batch: 1 and *x, *y set (owned by the loader, valid until the
 * next call), 0 at the end of the epoch, or a negative error (a worker's
 * failure names the sample). */
LOOM_API int loom_loader_next(loom_loader *loader, loom_tensor **x, loom_tensor **y);
/* Skips the first `batches` batches of the epoch (resuming mid-epoch). */
LOOM_API int loom_loader_seek(loom_loader *loader, int64_t batches);
/* Stops and joins the workers (early stop, errors, the epoch's end). */
LOOM_API void loom_loader_end_epoch(loom_loader *loader);
/* This rank's order of the epoch (num_samples indices). */
LOOM_API const int64_t *loom_loader_order(const loom_loader *loader);

/* --- more datasets --- */
typedef struct loom_hdf5_options {
  const char *const *files; /* concatenated in order */
  int num_files;
  const char *inputs;  /* dataset name of the samples, first dimension = samples */
  const char *targets; /* dataset name of the targets; NULL: unlabelled */
  double scale;        /* samples are multiplied by it (0: 1) */
  int64_t cache_mb;    /* block cache budget; a dataset that fits is read once */
  int64_t block;       /* samples per read (0: 256) */
  bool preload;        /* read everything at open */
  /* Optional: the files' bytes, already in memory (num_files of them, with
   * their sizes): files[i] then only names image i in messages, and nothing
   * is read from disk. HDF5 copies each image at open. */
  const void *const *images;
  const size_t *image_sizes;
} loom_hdf5_options;
/* Named datasets in HDF5 files: any numeric type (converted to float on
 * read), N-D samples, read in blocks on demand through an LRU cache, so a
 * dataset larger than RAM trains. Thread-safe. Refused with LOOM_EFORMAT:
 * a sample dimension of size 0, a sample of more than 2^31 values, and a
 * dataset whose storage was never completely written. */
LOOM_API loom_dataset *loom_hdf5_dataset_open(const loom_hdf5_options *options);
/* A numeric CSV file: one sample per row, `target_column` the target
 * (negative counts from the end; LOOM_CSV_NO_TARGET: none, unlabelled), the
 * other columns the features. */
#define LOOM_CSV_NO_TARGET INT32_MIN
LOOM_API loom_dataset *loom_csv_dataset_open(const char *path, int target_column, bool header);
/* The same from a CSV file's bytes in memory (copied); `name` stands for
 * the file in messages (NULL: "CSV (memory)"). */
LOOM_API loom_dataset *loom_csv_dataset_from_memory(const void *bytes, size_t size, const char *name,
                                                    int target_column, bool header);
/* Writes IDX images and labels as HDF5 datasets "images" and "labels"
 * (unsigned bytes, chunked): `loom convert idx`. */
LOOM_API int loom_idx_to_hdf5(const char *images_path, const char *labels_path, const char *out_path);

#ifdef __cplusplus
}
#endif
#endif
