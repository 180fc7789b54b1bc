#include "loom/comm.h"

#include <stdlib.h>

#include "core/clock.h"
#include "core/error_internal.h"

struct loom_comm {
  loom_comm_ops ops;
  void *ctx;
  int rank;
  int size;
  uint64_t wait_ns; /* inside collectives, since creation or the last reset */
};

loom_comm *loom_comm_create(const loom_comm_ops *ops, void *ctx, int rank, int size) {
  if (!ops || !ops->allreduce_sum_f64 || !ops->allreduce_mean_f32 || !ops->broadcast || !ops->barrier) {
    loom_error_set(LOOM_EINVAL, "loom_comm_create: the backend must implement allreduce_sum_f64, "
                                "allreduce_mean_f32, broadcast and barrier");
    return NULL;
  }
  if (size < 1 || rank < 0 || rank >= size) {
    loom_error_set(LOOM_EINVAL, "loom_comm_create: rank %d is not in a world of size %d", rank, size);
    return NULL;
  }
  loom_comm *comm = calloc(1, sizeof *comm);
  if (!comm) {
    loom_error_oom("a communicator");
    return NULL;
  }
  comm->ops = *ops;
  comm->ctx = ctx;
  comm->rank = rank;
  comm->size = size;
  return comm;
}

void loom_comm_destroy(loom_comm *comm) {
  if (!comm)
    return;
  if (comm->ops.destroy)
    comm->ops.destroy(comm->ctx);
  free(comm);
}

static int local_sum_f64(void *ctx, double *buf, size_t n) { (void)ctx, (void)buf, (void)n; return 0; }
static int local_mean_f32(void *ctx, float *buf, size_t n) { (void)ctx, (void)buf, (void)n; return 0; }
static int local_broadcast(void *ctx, void *buf, size_t bytes, int root) {
  (void)ctx, (void)buf, (void)bytes, (void)root;
  return 0;
}
static int local_barrier(void *ctx) { (void)ctx; return 0; }

static const loom_comm_ops local_ops = {
    .name = "local",
    .allreduce_sum_f64 = local_sum_f64,
    .allreduce_mean_f32 = local_mean_f32,
    .broadcast = local_broadcast,
    .barrier = local_barrier,
};

loom_comm *loom_comm_local_create(void) { return loom_comm_create(&local_ops, NULL, 0, 1); }

int loom_comm_rank(const loom_comm *comm) { return comm->rank; }
int loom_comm_size(const loom_comm *comm) { return comm->size; }
bool loom_comm_is_master(const loom_comm *comm) { return comm->rank == 0; }
const char *loom_comm_name(const loom_comm *comm) { return comm->ops.name ? comm->ops.name : "custom"; }

/* Every collective is timed here, whatever the backend: the wall time a
 * rank spends inside one is its transfer plus its wait for the slowest
 * rank, which is what data parallelism costs over one process. */
static int timed(loom_comm *comm, uint64_t t0, int rc) {
  comm->wait_ns += loom_now_ns() - t0;
  return rc;
}

int loom_comm_allreduce_sum_f64(loom_comm *comm, double *buf, size_t n) {
  uint64_t t0 = loom_now_ns();
  return timed(comm, t0, comm->ops.allreduce_sum_f64(comm->ctx, buf, n));
}
int loom_comm_allreduce_mean_f32(loom_comm *comm, float *buf, size_t n) {
  uint64_t t0 = loom_now_ns();
  return timed(comm, t0, comm->ops.allreduce_mean_f32(comm->ctx, buf, n));
}
int loom_comm_broadcast(loom_comm *comm, void *buf, size_t bytes, int root) {
  uint64_t t0 = loom_now_ns();
  return timed(comm, t0, comm->ops.broadcast(comm->ctx, buf, bytes, root));
}
int loom_comm_barrier(loom_comm *comm) {
  uint64_t t0 = loom_now_ns();
  return timed(comm, t0, comm->ops.barrier(comm->ctx));
}

double loom_comm_wait_seconds(const loom_comm *comm) { return (double)comm->wait_ns * 1e-9; }
void loom_comm_reset_wait_seconds(loom_comm *comm) { comm->wait_ns = 0; }
