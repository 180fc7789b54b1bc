/* loom/comm_nccl.h in libloom: the communicator's table, which delegates
 * everything but the device sums to the MPI communicator it was made
 * from, and the bootstrap over it. The device half is in the CUDA module
 * (backends/nccl/nccl.c, module.h's nccl_* slots). */
#include "loom/comm_nccl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/module.h"
#include "core/error_internal.h"

bool loom_comm_nccl_available(void) { return LOOM_HAVE_NCCL; }

bool loom_comm_nccl_applies(const loom_comm *comm, const loom_backend *backend) {
  return LOOM_HAVE_NCCL && comm && backend && loom_comm_size(comm) > 1 &&
         strcmp(loom_comm_name(comm), "mpi") == 0 && loom_backend_device(backend) == LOOM_DEVICE_CUDA &&
         strcmp(loom_backend_name(backend), "cuda") == 0;
}

typedef struct nccl_ctx {
  loom_comm *mpi; /* borrowed; first, for loom_comm_delegating_ops */
  loom_backend *backend;
  const loom_cuda_module *m;
  void *comm;  /* the module's */
  bool failed; /* this rank told the others it failed: abort, do not wait for them */
  bool made;   /* loom_comm_create's first set_timeout is not the user's */
} nccl_ctx;

static int notify_failure(void *ctx, const char *message) {
  nccl_ctx *c = ctx;
  c->failed = true;
  return loom_comm_notify_failure(c->mpi, message);
}
static void set_timeout(void *ctx, double seconds) {
  nccl_ctx *c = ctx;
  if (c->made)
    loom_comm_set_timeout(c->mpi, seconds);
}

/* The device sums, on the module's NCCL communicator. */
static bool sums_on(void *ctx, const loom_backend *backend) { return backend == ((nccl_ctx *)ctx)->backend; }
static void *device_request_create(void *ctx, loom_backend *backend, size_t n) {
  nccl_ctx *c = ctx;
  (void)backend; /* sums_on said it is c->backend */
  return c->m->nccl_request_create(c->comm, n);
}
static int device_start(void *ctx, void *request, float *buf) {
  nccl_ctx *c = ctx;
  return c->m->nccl_start_sum(c->comm, request, buf);
}
static int device_wait(void *ctx, void *request, float *buf) {
  nccl_ctx *c = ctx;
  (void)buf; /* the request's */
  return c->m->nccl_wait_sum(c->comm, request);
}
static void device_request_destroy(void *ctx, void *request) {
  nccl_ctx *c = ctx;
  c->m->nccl_request_destroy(c->comm, request);
}

static void destroy(void *ctx) {
  nccl_ctx *c = ctx;
  if (c->comm)
    c->m->nccl_destroy(c->comm, c->failed || loom_comm_failed(c->mpi));
  free(c);
}

/* The MPI communicator's slots, but for the device sums and what the
 * failure and the timeout need here. */
static loom_comm_ops nccl_ops(void) {
  loom_comm_ops o = loom_comm_delegating_ops();
  o.name = "nccl";
  o.destroy = destroy;
  o.notify_failure = notify_failure;
  o.set_timeout = set_timeout;
  o.sums_on = sums_on;
  o.device_request_create = device_request_create;
  o.device_start_sum_f32 = device_start;
  o.device_wait_sum_f32 = device_wait;
  o.device_request_destroy = device_request_destroy;
  return o;
}

/* Whether NCCL is usable here: 0 and *m, or the error. */
static int usable(loom_backend *backend, const loom_cuda_module **m) {
  if (!LOOM_HAVE_NCCL)
    return loom_error_set(LOOM_ENOTSUP, "this loom was built without the NCCL communicator (CMake found no CUDA "
                                        "Toolkit or no nccl.h, or -DLOOM_WITH_NCCL=OFF)");
  if (loom_backend_device(backend) != LOOM_DEVICE_CUDA || strcmp(loom_backend_name(backend), "cuda") != 0)
    return loom_error_set(LOOM_ENOTSUP, "backend \"%s\" is not loom's CUDA backend", loom_backend_name(backend));
  if (!(*m = loom_cuda_module_get()))
    return loom_last_error_code();
  if (!(*m)->nccl_load)
    return loom_error_set(LOOM_ENOTSUP, "the CUDA module was built without NCCL");
  return (*m)->nccl_load();
}

/* Every rank's outcome of a step from its `rc`: 0 when all succeeded, else
 * `code` on every rank, with this rank's message or the count of the
 * others that failed. */
static int agree(loom_comm *comm, int rc, int code, const char *step) {
  char mine[LOOM_ERROR_MAX];
  snprintf(mine, sizeof mine, "%s", rc < 0 ? loom_last_error() : "");
  double failed = rc < 0;
  int crc = loom_comm_allreduce_sum_f64(comm, &failed, 1);
  if (crc < 0)
    return loom_error_wrap(crc, "NCCL communicator: agreeing on %s over MPI", step);
  if (failed == 0)
    return 0;
  if (rc < 0)
    return loom_error_set(code, "NCCL communicator: %s failed on rank %d (and %g more): %s", step,
                          loom_comm_rank(comm), failed - 1, mine);
  return loom_error_set(code, "NCCL communicator: %s failed on %g of the %d ranks (their messages say why), not on "
                              "this one (rank %d)",
                        step, failed, loom_comm_size(comm), loom_comm_rank(comm));
}

int loom_comm_nccl_create(loom_comm *comm, loom_backend *backend, loom_comm **out) {
  *out = NULL;
  if (!comm || !backend)
    return loom_error_set(LOOM_EINVAL, "loom_comm_nccl_create: a communicator and a backend are required");
  const int rank = loom_comm_rank(comm), size = loom_comm_size(comm);
  const loom_cuda_module *m = NULL;
  unsigned char id[LOOM_NCCL_ID_BYTES] = {0};
  int rc = usable(backend, &m);
  if (rc == 0 && rank == 0)
    rc = m->nccl_unique_id(id);
  if ((rc = agree(comm, rc, LOOM_ENOTSUP, "loading NCCL")) < 0)
    return rc;
  if ((rc = loom_comm_broadcast(comm, id, sizeof id, 0)) < 0)
    return loom_error_wrap(rc, "NCCL communicator: broadcasting NCCL's unique id over MPI");
  nccl_ctx *c = calloc(1, sizeof *c);
  rc = c ? m->nccl_create(backend, rank, size, id, &c->comm) : loom_error_oom("an NCCL communicator");
  if ((rc = agree(comm, rc, LOOM_ECOMM, "ncclCommInitRank")) < 0) {
    if (c && c->comm)
      m->nccl_destroy(c->comm, true);
    free(c);
    return rc;
  }
  c->mpi = comm, c->backend = backend, c->m = m;
  const loom_comm_ops ops = nccl_ops();
  *out = loom_comm_create(&ops, c, rank, size);
  if (!*out) {
    destroy(c);
    return loom_last_error_code();
  }
  c->made = true;
  loom_comm_set_timeout(*out, loom_comm_timeout(comm)); /* the MPI communicator's stands */
  return 0;
}
