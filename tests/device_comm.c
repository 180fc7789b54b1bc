/* tests/device_comm.h: a device-aware communicator for the fake device. */
#include "device_comm.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dc_ctx {
  loom_comm *mpi;
  loom_backend *fake;
  fake_device *dev;
  MPI_Comm comm; /* the device sums' */
  device_comm_counts counts;
} dc_ctx;

typedef struct dc_request {
  size_t n;
  float *buf; /* the started sum's, on the host behind the device's pointer */
  MPI_Request req;
} dc_request;

static int sum_f64(void *ctx, double *buf, size_t n) { return loom_comm_allreduce_sum_f64(((dc_ctx *)ctx)->mpi, buf, n); }
static int mean_f32(void *ctx, float *buf, size_t n) {
  return loom_comm_allreduce_mean_f32(((dc_ctx *)ctx)->mpi, buf, n);
}
static int broadcast(void *ctx, void *buf, size_t bytes, int root) {
  return loom_comm_broadcast(((dc_ctx *)ctx)->mpi, buf, bytes, root);
}
static int barrier(void *ctx) { return loom_comm_barrier(((dc_ctx *)ctx)->mpi); }
static int notify_failure(void *ctx, const char *message) {
  return loom_comm_notify_failure(((dc_ctx *)ctx)->mpi, message);
}
static void *request_create(void *ctx, size_t n) { return loom_comm_request_create(((dc_ctx *)ctx)->mpi, n); }
static int start_mean(void *ctx, void *q, const float *buf) {
  (void)ctx;
  return loom_comm_start_mean_f32(q, buf);
}
static int wait_mean(void *ctx, void *q, float *buf) {
  (void)ctx;
  return loom_comm_wait_mean_f32(q, buf);
}
static int progress(void *ctx) { return loom_comm_progress(((dc_ctx *)ctx)->mpi); }
static void request_destroy(void *ctx, void *q) {
  (void)ctx;
  loom_comm_request_destroy(q);
}

static bool sums_on(void *ctx, const loom_backend *backend) { return backend == ((dc_ctx *)ctx)->fake; }

static void *device_request_create(void *ctx, loom_backend *backend, size_t n) {
  dc_ctx *c = ctx;
  if (backend != c->fake) {
    fprintf(stderr, "device_comm: a device request for backend \"%s\", not the fake device\n",
            loom_backend_name(backend));
    abort();
  }
  dc_request *q = calloc(1, sizeof *q);
  q->n = n;
  q->req = MPI_REQUEST_NULL;
  c->counts.requests++;
  return q;
}

static int device_start(void *ctx, void *request, float *buf) {
  dc_ctx *c = ctx;
  dc_request *q = request;
  q->buf = fake_device_memory(c->dev, "device_comm start", buf, q->n * sizeof *buf); /* aborts unless the device's */
  c->counts.starts++;
  c->counts.floats += (int64_t)q->n;
  if (MPI_Iallreduce(MPI_IN_PLACE, q->buf, (int)q->n, MPI_FLOAT, MPI_SUM, c->comm, &q->req) != MPI_SUCCESS) {
    fprintf(stderr, "device_comm: MPI_Iallreduce failed\n");
    abort();
  }
  return 0;
}

static int device_wait(void *ctx, void *request, float *buf) {
  dc_ctx *c = ctx;
  dc_request *q = request;
  if (fake_device_memory(c->dev, "device_comm wait", buf, q->n * sizeof *buf) != q->buf) {
    fprintf(stderr, "device_comm: waited for with another buffer than it started with\n");
    abort();
  }
  c->counts.waits++;
  if (MPI_Wait(&q->req, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
    fprintf(stderr, "device_comm: MPI_Wait failed\n");
    abort();
  }
  return 0;
}

static void device_request_destroy(void *ctx, void *request) {
  (void)ctx;
  free(request);
}

static void destroy(void *ctx) {
  dc_ctx *c = ctx;
  MPI_Comm_free(&c->comm);
  loom_comm_destroy(c->mpi);
  free(c);
}

static const loom_comm_ops dc_ops = {
    .name = "device_test",
    .allreduce_sum_f64 = sum_f64,
    .allreduce_mean_f32 = mean_f32,
    .broadcast = broadcast,
    .barrier = barrier,
    .destroy = destroy,
    .notify_failure = notify_failure,
    .request_create = request_create,
    .start_mean_f32 = start_mean,
    .wait_mean_f32 = wait_mean,
    .progress = progress,
    .request_destroy = request_destroy,
    .sums_on = sums_on,
    .device_request_create = device_request_create,
    .device_start_sum_f32 = device_start,
    .device_wait_sum_f32 = device_wait,
    .device_request_destroy = device_request_destroy,
};

loom_comm *device_comm_create(loom_comm *mpi, loom_backend *fake, fake_device *dev, device_comm_counts **counts) {
  dc_ctx *c = calloc(1, sizeof *c);
  c->mpi = mpi, c->fake = fake, c->dev = dev;
  if (MPI_Comm_dup(MPI_COMM_WORLD, &c->comm) != MPI_SUCCESS) {
    fprintf(stderr, "device_comm: MPI_Comm_dup failed\n");
    abort();
  }
  *counts = &c->counts;
  loom_comm *comm = loom_comm_create(&dc_ops, c, loom_comm_rank(mpi), loom_comm_size(mpi));
  if (!comm) {
    fprintf(stderr, "device_comm: %s\n", loom_last_error());
    destroy(c);
  }
  return comm;
}
