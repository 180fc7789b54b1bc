/* The NCCL communicator's device half, in the CUDA module (module.h's
 * nccl_* slots): the gradient buckets summed in place on the GPU with
 * ncclAllReduce. libnccl is not linked: the first NCCL communicator loads
 * it (dlopen, as cudnn_api.c loads cuDNN), so the module loads, and the
 * CUDA backend runs, where NCCL is missing; the communicator then says so
 * and the runner averages through the host.
 *
 * Overlap: each bucket's all-reduce runs on the communicator's own stream,
 * after an event recorded on the backend's stream when the bucket started
 * (backward's ops that wrote it are before that event), so the rest of
 * backward runs beside it; waiting is the backend's stream waiting for the
 * event recorded after the all-reduce: the host never waits here. */
#include <dlfcn.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "backends/cuda/context.h"

_Static_assert(sizeof(ncclUniqueId) == LOOM_NCCL_ID_BYTES, "ncclUniqueId is LOOM_NCCL_ID_BYTES");

#define LIBRARY "libnccl.so.2"

#define NCCL_CALLS(X)                                                                                                \
  X(ncclGetVersion)                                                                                                \
  X(ncclGetErrorString)                                                                                            \
  X(ncclGetUniqueId)                                                                                               \
  X(ncclCommInitRank)                                                                                              \
  X(ncclCommDestroy)                                                                                               \
  X(ncclCommAbort)                                                                                                 \
  X(ncclCommGetAsyncError)                                                                                         \
  X(ncclAllReduce)

static struct {
#define NCCL_POINTER(name) __typeof__(name) *name;
  NCCL_CALLS(NCCL_POINTER)
#undef NCCL_POINTER
} api;

static uv_once_t once = UV_ONCE_INIT;
static char failure[1024]; /* empty once loaded */

/* dlopen here, not uv_dlopen: the loader then searches the module's
 * RUNPATH, which names where CMake found NCCL. Kept open for the process. */
static void load(void) {
  void *lib = dlopen(LIBRARY, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(failure, sizeof failure, "%s", dlerror());
    return;
  }
#define NCCL_RESOLVE(name)                                                                                           \
  if (!failure[0] && !(*(void **)&api.name = dlsym(lib, #name)))                                                    \
    snprintf(failure, sizeof failure, "%s has no %s (NCCL older than 2.7?)", LIBRARY, #name);
  NCCL_CALLS(NCCL_RESOLVE)
#undef NCCL_RESOLVE
}

static int nccl_load(void) {
  uv_once(&once, load);
  if (!failure[0])
    return 0;
  return libloom->error_set(LOOM_ENOTSUP, "NCCL communicator: NCCL did not load (%s): install NCCL 2 "
                                          "(libnccl.so.2) where the loader finds it, e.g. with LD_LIBRARY_PATH, or "
                                          "average gradients through the host (host_staged_grads)",
                            failure);
}

/* The error for a failed NCCL call, naming it, the device and NCCL's reason. */
static int nccl_error(ncclResult_t r, int device, const char *what) {
  return libloom->error_set(LOOM_ECOMM, "NCCL %s failed on CUDA device %d: %s (ncclResult_t %d): run with "
                                        "NCCL_DEBUG=WARN for NCCL's own account; check that each rank has its own "
                                        "GPU and that the ranks reach each other (NCCL_SOCKET_IFNAME)",
                            what, device, api.ncclGetErrorString(r), (int)r);
}

static int nccl_unique_id(void *id) {
  int rc = nccl_load();
  if (rc < 0)
    return rc;
  ncclResult_t r = api.ncclGetUniqueId((ncclUniqueId *)id);
  return r == ncclSuccess ? 0 : nccl_error(r, -1, "ncclGetUniqueId");
}

typedef struct nccl_comm {
  cuda_ctx *cuda; /* the backend's: its device and stream */
  ncclComm_t comm;
  cudaStream_t stream; /* the all-reduces' */
} nccl_comm;

typedef struct nccl_request {
  cudaEvent_t ready; /* on the backend's stream: the bucket is final */
  cudaEvent_t done;  /* on the communicator's: the sum is there */
  size_t n;
} nccl_request;

static void nccl_destroy(void *comm, bool abort) {
  nccl_comm *c = comm;
  if (!c)
    return;
  if (enter(c->cuda) == 0) {
    if (c->comm)
      (abort ? api.ncclCommAbort : api.ncclCommDestroy)(c->comm);
    if (c->stream)
      cudaStreamDestroy(c->stream);
  }
  free(c);
}

static int nccl_create(loom_backend *backend, int rank, int size, const void *id, void **out) {
  *out = NULL;
  cuda_ctx *cuda = loom_cuda_ctx_of(backend);
  if (!cuda) {
    const loom_backend_ops *ops;
    libloom->backend_context(backend, &ops); /* the module calls libloom through its table only */
    return libloom->error_set(LOOM_EINVAL, "NCCL communicator: backend \"%s\" is not a CUDA backend of this loom",
                              ops->name ? ops->name : "?");
  }
  int rc = nccl_load();
  if (rc < 0 || (rc = enter(cuda)) < 0)
    return rc;
  nccl_comm *c = calloc(1, sizeof *c);
  if (!c)
    return libloom->error_set(LOOM_ENOMEM, "NCCL communicator: out of memory");
  c->cuda = cuda;
  cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    c->stream = NULL;
    rc = loom_cuda_error(e, cuda->device, "cudaStreamCreate (the NCCL communicator's stream)");
  }
  ncclUniqueId uid;
  memcpy(&uid, id, sizeof uid);
  ncclResult_t r = rc == 0 ? api.ncclCommInitRank(&c->comm, size, uid, rank) : ncclSuccess;
  if (r != ncclSuccess) {
    c->comm = NULL;
    char what[96];
    snprintf(what, sizeof what, "ncclCommInitRank (rank %d of %d)", rank, size);
    rc = nccl_error(r, cuda->device, what);
  }
  if (rc < 0) {
    nccl_destroy(c, true);
    return rc;
  }
  *out = c;
  return 0;
}

static void nccl_request_destroy(void *comm, void *request) {
  nccl_request *q = request;
  if (!q)
    return;
  if (enter(((nccl_comm *)comm)->cuda) == 0) {
    if (q->ready)
      cudaEventDestroy(q->ready);
    if (q->done)
      cudaEventDestroy(q->done);
  }
  free(q);
}

static void *nccl_request_create(void *comm, size_t n) {
  nccl_comm *c = comm;
  nccl_request *q = calloc(1, sizeof *q);
  if (!q) {
    libloom->error_set(LOOM_ENOMEM, "NCCL communicator: out of memory for a request");
    return NULL;
  }
  q->n = n;
  int rc = enter(c->cuda);
  cudaError_t e = cudaSuccess;
  if (rc == 0 && (e = cudaEventCreateWithFlags(&q->ready, cudaEventDisableTiming)) != cudaSuccess)
    q->ready = NULL;
  if (rc == 0 && e == cudaSuccess && (e = cudaEventCreateWithFlags(&q->done, cudaEventDisableTiming)) != cudaSuccess)
    q->done = NULL;
  if (rc == 0 && e != cudaSuccess)
    rc = loom_cuda_error(e, c->cuda->device, "cudaEventCreateWithFlags (an NCCL request's)");
  if (rc < 0) {
    nccl_request_destroy(comm, q);
    return NULL;
  }
  return q;
}

static int nccl_start_sum(void *comm, void *request, float *buf) {
  nccl_comm *c = comm;
  nccl_request *q = request;
  const int device = c->cuda->device;
  int rc = enter(c->cuda);
  cudaError_t e;
  if (rc == 0 && (e = cudaEventRecord(q->ready, c->cuda->stream)) != cudaSuccess)
    rc = loom_cuda_error(e, device, "cudaEventRecord (a gradient bucket is final)");
  if (rc == 0 && (e = cudaStreamWaitEvent(c->stream, q->ready, 0)) != cudaSuccess)
    rc = loom_cuda_error(e, device, "cudaStreamWaitEvent (NCCL's stream after backward's)");
  ncclResult_t r = rc == 0 ? api.ncclAllReduce(buf, buf, q->n, ncclFloat, ncclSum, c->comm, c->stream) : ncclSuccess;
  if (r != ncclSuccess)
    rc = nccl_error(r, device, "ncclAllReduce (a gradient bucket)");
  if (rc == 0 && (e = cudaEventRecord(q->done, c->stream)) != cudaSuccess)
    rc = loom_cuda_error(e, device, "cudaEventRecord (a gradient bucket's sum)");
  return rc;
}

static int nccl_wait_sum(void *comm, void *request) {
  nccl_comm *c = comm;
  nccl_request *q = request;
  int rc = enter(c->cuda);
  if (rc < 0)
    return rc;
  ncclResult_t async = ncclSuccess, r = api.ncclCommGetAsyncError(c->comm, &async);
  if (r != ncclSuccess)
    return nccl_error(r, c->cuda->device, "ncclCommGetAsyncError");
  if (async != ncclSuccess && async != ncclInProgress)
    return nccl_error(async, c->cuda->device, "an all-reduce of gradients (reported by ncclCommGetAsyncError)");
  cudaError_t e = cudaStreamWaitEvent(c->cuda->stream, q->done, 0);
  return e == cudaSuccess ? 0 : loom_cuda_error(e, c->cuda->device, "cudaStreamWaitEvent (the step after the sum)");
}

void loom_nccl_fill(loom_cuda_module *m) {
  m->nccl_load = nccl_load;
  m->nccl_unique_id = nccl_unique_id;
  m->nccl_create = nccl_create;
  m->nccl_destroy = nccl_destroy;
  m->nccl_request_create = nccl_request_create;
  m->nccl_start_sum = nccl_start_sum;
  m->nccl_wait_sum = nccl_wait_sum;
  m->nccl_request_destroy = nccl_request_destroy;
}
