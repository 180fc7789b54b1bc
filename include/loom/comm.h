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
} loom_comm_ops;

/* Wraps a backend; `ops` is copied, `ctx` is owned from here on. */
LOOM_API loom_comm *loom_comm_create(const loom_comm_ops *ops, void *ctx, int rank, int size);
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
