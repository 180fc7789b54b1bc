/* loom/comm.h - the communicator between data-parallel processes.
 *
 * A backend is a table of functions plus a context. The runner reduces
 * loader metrics and broadcasts master decisions through it at fixed points
 * of the loop, so every rank leaves the loop together. The local backend is
 * a world of one where every collective is the identity. */
#ifndef LOOM_COMM_H
#define LOOM_COMM_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>

#include "loom/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_comm loom_comm;

typedef struct loom_comm_ops {
  const char *name;
  /* In-place sum over all ranks. */
  int (*allreduce_sum_f64)(void *ctx, double *buf, size_t n);
  /* In-place mean over all ranks (gradients). */
  int (*allreduce_mean_f32)(void *ctx, float *buf, size_t n);
  /* Copies root's bytes to every rank. */
  int (*broadcast)(void *ctx, void *buf, size_t bytes, int root);
  int (*barrier)(void *ctx);
  /* Optional: frees ctx. */
  void (*destroy)(void *ctx);
  /* Optional, so that no rank waits forever (docs/distributed.md,
   * "Failures"): tells every other rank, without waiting for any, that this
   * one has failed with `message`; their collectives under way or to come
   * end with LOOM_ECOMM naming this rank and the message. */
  int (*notify_failure)(void *ctx, const char *message);
  /* Optional: a collective not complete after `seconds` (0: no limit) ends
   * with LOOM_ECOMM naming it and the ranks that did not arrive, and tells
   * the others so. */
  void (*set_timeout)(void *ctx, double seconds);
  /* Optional, to overlap the gradients' mean with backward: a request for
   * n floats, made once and reused; start copies buf's n floats in and
   * starts their sum over ranks without waiting; wait completes it and
   * writes the mean into buf (the sum, divided by the world size on every
   * rank); progress lets the started ones move on (MPI progresses only
   * inside MPI calls). Without them, wait runs allreduce_mean_f32. */
  void *(*request_create)(void *ctx, size_t n);
  int (*start_mean_f32)(void *ctx, void *request, const float *buf);
  int (*wait_mean_f32)(void *ctx, void *request, float *buf);
  int (*progress)(void *ctx);
  void (*request_destroy)(void *ctx, void *request);
  /* Optional, all five or none: device-aware sums, where the gradients
   * lie, without a copy to the host. sums_on says whether this
   * communicator sums memory of `backend` (its alloc's pointers);
   * device_request_create makes a request for n floats of it, reused;
   * device_start_sum_f32 starts the in-place sum over ranks of buf's n
   * floats, after the backend's ops issued so far, without the host
   * waiting for the device; device_wait_sum_f32 completes it (the
   * backend's ops issued after it see the sum; the host need not wait for
   * them, a device's stream orders them). */
  bool (*sums_on)(void *ctx, const loom_backend *backend);
  void *(*device_request_create)(void *ctx, loom_backend *backend, size_t n);
  int (*device_start_sum_f32)(void *ctx, void *request, float *buf);
  int (*device_wait_sum_f32)(void *ctx, void *request, float *buf);
  void (*device_request_destroy)(void *ctx, void *request);
} loom_comm_ops;

/* A reusable non-blocking mean of n floats (loom_comm_request_create). */
typedef struct loom_comm_request loom_comm_request;

/* The collectives' time limit unless set (LOOM_COMM_TIMEOUT in the
 * environment, in seconds, overrides it for the communicators made after). */
#define LOOM_COMM_TIMEOUT_DEFAULT 300.0

/* Wraps a backend; `ops` is copied, `ctx` is owned from here on. */
LOOM_API loom_comm *loom_comm_create(const loom_comm_ops *ops, void *ctx, int rank, int size);
/* A table whose host slots (the sums, broadcast, barrier, failures,
 * timeout and the requests) pass each call on to another communicator:
 * the one a `loom_comm *` first member of ctx points to. A communicator
 * that adds only device sums (loom/comm_nccl.h) starts from it, sets name,
 * destroy and the device slots, and overrides what it must. */
LOOM_API loom_comm_ops loom_comm_delegating_ops(void);
/* A world of one. */
LOOM_API loom_comm *loom_comm_local_create(void);
LOOM_API void loom_comm_destroy(loom_comm *comm);

LOOM_API int loom_comm_rank(const loom_comm *comm);
LOOM_API int loom_comm_size(const loom_comm *comm);
LOOM_API bool loom_comm_is_master(const loom_comm *comm);
LOOM_API const char *loom_comm_name(const loom_comm *comm);

LOOM_API int loom_comm_allreduce_sum_f64(loom_comm *comm, double *buf, size_t n);
LOOM_API int loom_comm_allreduce_mean_f32(loom_comm *comm, float *buf, size_t n);
LOOM_API int loom_comm_broadcast(loom_comm *comm, void *buf, size_t bytes, int root);
LOOM_API int loom_comm_barrier(loom_comm *comm);
/* A failure on this rank, told to the others (the runner does it when a run
 * fails on this rank, before on_exception): from here on every collective
 * of this communicator fails at once, as it does on a rank that has seen a
 * peer fail or a collective time out, so that no code that runs after the
 * failure (an on_exception callback, the unwind) waits for peers that will
 * not come. Returns 0, or the backend's error. */
LOOM_API int loom_comm_notify_failure(loom_comm *comm, const char *message);
/* Whether a collective has failed (a peer failed, a time limit passed, an
 * error of the backend) or this rank notified a failure. */
LOOM_API bool loom_comm_failed(const loom_comm *comm);
/* The time limit of each collective in seconds (0: none), where the backend
 * has one (set_timeout); the default is LOOM_COMM_TIMEOUT_DEFAULT. */
LOOM_API void loom_comm_set_timeout(loom_comm *comm, double seconds);
LOOM_API double loom_comm_timeout(const loom_comm *comm);
/* The non-blocking mean: every rank starts the same requests in the same
 * order, and waits for each (loom_comm_wait_mean_f32) before reading buf;
 * between start and wait buf may change (it was copied). A failure marks
 * the communicator failed as a blocking collective's does. */
LOOM_API loom_comm_request *loom_comm_request_create(loom_comm *comm, size_t n);
LOOM_API void loom_comm_request_destroy(loom_comm_request *request);
LOOM_API int loom_comm_start_mean_f32(loom_comm_request *request, const float *buf);
LOOM_API int loom_comm_wait_mean_f32(loom_comm_request *request, float *buf);
/* Lets started requests progress; 0 or the failure. */
LOOM_API int loom_comm_progress(loom_comm *comm);

/* Device-aware sums (the reducer's, for a model on a device backend):
 * whether comm sums `backend`'s memory where it lies (loom_comm_ops's
 * sums_on; false for a CPU backend's, whose memory the requests above
 * take). A device request is made for n floats of `backend` and
 * destroyed by loom_comm_request_destroy, before the backend (the step
 * graphs that hold its sums go with it); every rank starts the same ones
 * in the same order. loom_comm_start_sum_f32 starts the in-place sum over
 * ranks of buf (backend memory) without waiting for the device; nothing
 * may write buf until loom_comm_wait_sum_f32(request, the same buf), after
 * which buf holds the sum for the backend's later ops (dividing by the
 * world size is the caller's: loom_backend_scale). NULL, or LOOM_ENOTSUP,
 * where comm does not sum on backend; LOOM_ESTATE for a host request
 * given to these or a device request to the mean's. */
LOOM_API bool loom_comm_sums_on(const loom_comm *comm, const loom_backend *backend);
LOOM_API loom_comm_request *loom_comm_device_request_create(loom_comm *comm, loom_backend *backend, size_t n);
LOOM_API int loom_comm_start_sum_f32(loom_comm_request *request, float *buf);
LOOM_API int loom_comm_wait_sum_f32(loom_comm_request *request, float *buf);

/* Wall seconds this rank has spent inside the collectives above since the
 * communicator was created or last reset: the transfers and the waits for
 * slower ranks together (the timer callback reports a loader's share as
 * time/comm_s and time/comm_fraction). The local backend's are ~0. */
LOOM_API double loom_comm_wait_seconds(const loom_comm *comm);
LOOM_API void loom_comm_reset_wait_seconds(loom_comm *comm);

#ifdef __cplusplus
}
#endif
#endif
