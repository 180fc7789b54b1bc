/* The boundary between libloom and its CUDA module (libloom_cuda.so).
 *
 * libloom links none of CUDA's libraries: a program that never asks for a
 * GPU does not load the CUDA runtime and cuBLAS (about 200 MB of resident
 * memory and 0.1 s at startup). The backend's CUDA code is a module of its
 * own, loaded by loader.c on the first call that needs it, which finds one
 * entry point in it, LOOM_CUDA_MODULE_ENTRY, and exchanges tables with it:
 * libloom gives what the module needs of it (its error state, the caching
 * allocator, the backend wrapper), the module gives the public functions'
 * CUDA halves. The module links nothing of libloom, so one module serves a
 * shared libloom and a static one alike, and calls libloom only through
 * this table. Plain C on both sides: no CUDA header here.
 *
 * A change to either table, or to loom_backend_ops (which the module fills
 * and libloom copies), changes LOOM_CUDA_MODULE_ABI (and, when it is
 * incompatible, the entry's name): the two sides check they agree. */
#ifndef LOOM_BACKENDS_CUDA_MODULE_H
#define LOOM_BACKENDS_CUDA_MODULE_H

#include <stdbool.h>
#include <stddef.h>

#include "backends/cuda/caching_alloc.h"
#include "loom/backend_cuda.h"
#include "loom/error.h"

#define LOOM_CUDA_MODULE_ABI 4
#define LOOM_CUDA_MODULE_ENTRY "loom_cuda_module_v1"
/* Devices loom keeps an allocator for: indices past it are refused, on
 * both sides of the boundary. */
#define LOOM_CUDA_MAX_DEVICES 64

/* What libloom gives the module. */
typedef struct loom_cuda_host {
  int abi;     /* LOOM_CUDA_MODULE_ABI */
  size_t size; /* sizeof(loom_cuda_host) */
  int (*error_set)(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
  int (*last_error_code)(void);
  loom_backend *(*backend_create)(const loom_backend_ops *ops, void *ctx);
  loom_caching_alloc *(*alloc_create)(const loom_caching_alloc_hooks *hooks);
  void (*alloc_destroy)(loom_caching_alloc *a);
  void *(*alloc_get)(loom_caching_alloc *a, size_t bytes, const void *stream);
  void (*alloc_put)(loom_caching_alloc *a, void *ptr);
  void (*alloc_forget_stream)(loom_caching_alloc *a, const void *stream);
  void (*alloc_release)(loom_caching_alloc *a);
  void (*alloc_stats)(loom_caching_alloc *a, loom_cuda_memory_stats *stats);
  /* A backend's context and table (core/backend_internal.h). */
  void *(*backend_context)(const loom_backend *backend, const loom_backend_ops **ops);
  loom_precision (*autocast)(void); /* loom_backend_autocast */
  /* A step's log, for the graph slots (loom/backend.h, "Step graphs"). */
  int (*op_log_length)(const loom_op_log *log);
  bool (*op_log_update)(const loom_op_log *log, int i, const loom_update_step **step, const loom_update_range **ranges,
                        int *nranges);
  bool (*op_log_dropout)(const loom_op_log *log, int i, uint64_t *key);
} loom_cuda_host;

/* The bytes of NCCL's unique id (ncclUniqueId, NCCL_UNIQUE_ID_BYTES). */
#define LOOM_NCCL_ID_BYTES 128

/* What the module gives libloom: the public functions of loom/backend_cuda.h
 * that need CUDA, with their contracts; libloom has checked the device
 * index's range (0 to LOOM_CUDA_MAX_DEVICES - 1) for the allocator's. */
typedef struct loom_cuda_module {
  int abi;     /* LOOM_CUDA_MODULE_ABI */
  size_t size; /* sizeof(loom_cuda_module) */
  int (*device_count)(int *count);
  int (*backend_create)(int device, const loom_cuda_options *options, loom_backend **out);
  int (*memory_stats_get)(int device, loom_cuda_memory_stats *stats);
  int (*release_cached)(int device);
  /* The NCCL communicator's device half (backends/nccl/nccl.c), NULL in a
   * module built without NCCL's header. nccl_load loads libnccl (once; 0,
   * or LOOM_ENOTSUP saying what is missing); nccl_unique_id writes
   * ncclGetUniqueId's LOOM_NCCL_ID_BYTES; nccl_create joins the NCCL
   * communicator of `size` ranks on the device and stream of `backend` (a
   * CUDA backend of this module, else LOOM_EINVAL); requests of n floats
   * sum in place on NCCL's own stream, started after the backend's ops so
   * far (an event), waited for by the backend's stream (an event: the host
   * does not wait). nccl_destroy aborts the communicator if `abort` (a
   * peer may be gone). */
  int (*nccl_load)(void);
  int (*nccl_unique_id)(void *id);
  int (*nccl_create)(loom_backend *backend, int rank, int size, const void *id, void **comm);
  void (*nccl_destroy)(void *comm, bool abort);
  void *(*nccl_request_create)(void *comm, size_t n);
  int (*nccl_start_sum)(void *comm, void *request, float *buf);
  int (*nccl_wait_sum)(void *comm, void *request);
  void (*nccl_request_destroy)(void *comm, void *request);
} loom_cuda_module;

/* libloom's side (loader.c): the module, loaded on the first call, or NULL
 * with the error saying why it did not load. */
const loom_cuda_module *loom_cuda_module_get(void);

/* The entry point's type: the module's table for libloom's `host` (kept
 * for the life of the process), or NULL with host->error_set saying why
 * (an ABI of another loom). Called once. */
typedef const loom_cuda_module *(*loom_cuda_module_entry)(const loom_cuda_host *host);

#endif
