/* tests/device_comm.h: a device-aware communicator for the fake device. */
#include "device_comm.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct dc_ctx {
  loom_comm *mpi; /* first, for loom_comm_delegating_ops */
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
  if (fake_device_capturing(c->dev)) { /* in a step's graph: it runs at each launch */
    c->counts.captured++;
    return 0;
  }
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
  if (fake_device_capturing(c->dev))
    return 0;
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

/* The MPI communicator's slots (its timeout left as it is), and the
 * device sums. */
static loom_comm_ops dc_ops(void) {
  loom_comm_ops o = loom_comm_delegating_ops();
  o.name = "device_test";
  o.destroy = destroy;
  o.set_timeout = NULL;
  o.sums_on = sums_on;
  o.device_request_create = device_request_create;
  o.device_start_sum_f32 = device_start;
  o.device_wait_sum_f32 = device_wait;
  o.device_request_destroy = device_request_destroy;
  return o;
}

loom_comm *device_comm_create(loom_comm *mpi, loom_backend *fake, fake_device *dev, device_comm_counts **counts) {
  dc_ctx *c = calloc(1, sizeof *c);
  c->mpi = mpi, c->fake = fake, c->dev = dev;
  if (MPI_Comm_dup(MPI_COMM_WORLD, &c->comm) != MPI_SUCCESS) {
    fprintf(stderr, "device_comm: MPI_Comm_dup failed\n");
    abort();
  }
  *counts = &c->counts;
  const loom_comm_ops ops = dc_ops();
  loom_comm *comm = loom_comm_create(&ops, c, loom_comm_rank(mpi), loom_comm_size(mpi));
  if (!comm) {
    fprintf(stderr, "device_comm: %s\n", loom_last_error());
    destroy(c);
  }
  return comm;
}
