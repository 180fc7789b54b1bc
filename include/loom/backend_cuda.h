/* loom/backend_cuda.h - the CUDA backend: device memory from one caching
 * allocator per GPU, ops as CUDA kernels and cuBLAS calls, in order on the
 * backend's own stream (backends/cuda/).
 *
 * Every function is present in every libloom; in one built without CUDA
 * (CMake found no nvcc, or -DLOOM_WITH_CUDA=OFF) loom_cuda_available is
 * false and creating the backend is LOOM_ENOTSUP saying so. The backend
 * fills the slots of loom/backend.h that it has (loom_backend_supports
 * lists them); the others are LOOM_ENOTSUP, as for any backend.
 *
 * libloom links none of CUDA's libraries: the backend's CUDA code is a
 * module, libloom_cuda.so, installed next to libloom and loaded (with the
 * CUDA runtime and cuBLAS) by the first call that needs it:
 * loom_cuda_device_count or loom_backend_cuda_create. A program that never
 * asks for a GPU never loads them. The module is looked for at
 * $LOOM_CUDA_MODULE when it is set (and only there), else in the directory
 * of the libloom.so in use (of the program, for one linked with libloom.a),
 * else by its file name on the dynamic loader's search path. */
#ifndef LOOM_BACKEND_CUDA_H
#define LOOM_BACKEND_CUDA_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether this libloom was built with the CUDA backend. */
LOOM_API bool loom_cuda_available(void);

/* *count = the CUDA devices the runtime sees: 0 without CUDA, without the
 * CUDA module, without a driver or without a device
 * (loom_backend_cuda_create says which). */
LOOM_API int loom_cuda_device_count(int *count);

typedef struct loom_cuda_options {
  /* Matrix products on TF32 Tensor Cores (10-bit mantissas in the
   * products: faster, about 1e-3 relative); off: full fp32. */
  bool tf32;
  /* Convolution algorithms by cuDNN's heuristics instead of its timed
   * search: the same choice in every process, so a resumed run repeats
   * the first one's bits; maybe slower. Off: searched (PyTorch's
   * cudnn.benchmark), a choice that may differ between processes. */
  bool conv_heuristics;
} loom_cuda_options;

/* The CUDA backend on device `device` (0, 1, ...), with its own stream and
 * cuBLAS handle; `options` may be NULL (the defaults: all off). *out is
 * NULL on failure, with an error naming what is missing: LOOM_ENOTSUP for
 * a libloom built without CUDA, no driver, no device, or a device of
 * compute capability below 7.5; LOOM_EINVAL for an index past the
 * devices (the message says how many there are); LOOM_ENOENT when the
 * CUDA module is in none of the places above, LOOM_ENOTSUP when one is
 * there and does not load (a CUDA library it needs is missing, or it is of
 * another loom): the message names each place tried and the loader's
 * reason. A module that did not load is not tried again. Destroy it with
 * loom_backend_destroy, after every buffer of it is freed. */
LOOM_API int loom_backend_cuda_create(int device, const loom_cuda_options *options, loom_backend **out);

/* The caching allocator of one device, shared by every CUDA backend on it:
 * device memory is taken from cudaMalloc in segments and kept when freed,
 * for the next allocation of a fitting size on the same stream. Sizes are
 * rounded up to 512 bytes; blocks in use and reserved bytes are counted in
 * rounded sizes. */
typedef struct loom_cuda_memory_stats {
  size_t in_use;        /* bytes in blocks handed out and not freed */
  size_t peak_in_use;   /* the most in_use has been */
  size_t reserved;      /* bytes held from the device (in use + cached) */
  size_t peak_reserved; /* the most reserved has been */
  uint64_t allocs;      /* allocations served */
  uint64_t device_allocs; /* of them, those that called cudaMalloc */
  uint64_t device_frees;  /* cudaFree calls (releases) */
} loom_cuda_memory_stats;

/* The statistics of device `device`'s allocator (all zero before a
 * backend was created on it, and again once its last backend is
 * destroyed, which gives the allocator's memory back: read a run's peaks
 * before that; these two calls never load the module). */
LOOM_API int loom_cuda_memory_stats_get(int device, loom_cuda_memory_stats *stats);
/* Gives every cached segment with no block in use back to the device
 * (cudaFree), after the device finished the work queued on it. */
LOOM_API int loom_cuda_release_cached(int device);

#ifdef __cplusplus
}
#endif
#endif
