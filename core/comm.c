#include "loom/comm.h"

#include <stdio.h>
#include <stdlib.h>

#include "core/clock.h"
#include "core/error_internal.h"
#include "core/op_log.h"

struct loom_comm {
  loom_comm_ops ops;
  void *ctx;
  int rank;
  int size;
  double timeout;
  /* Once a collective has failed or this rank has failed: the error every
   * later collective gives at once. */
  bool failed;
  char failure[768];
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
  comm->timeout = LOOM_COMM_TIMEOUT_DEFAULT;
  const char *env = getenv("LOOM_COMM_TIMEOUT");
  char *end = NULL;
  double t = env ? strtod(env, &end) : -1.0;
  if (env && end != env && *end == '\0' && t >= 0.0)
    comm->timeout = t;
  if (comm->ops.set_timeout)
    comm->ops.set_timeout(comm->ctx, comm->timeout);
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

/* Every collective: refused at once after a failure, which it records;
 * timed here, whatever the backend (from t0): the wall time a rank spends
 * inside one is its transfer plus its wait for the slowest rank, which is
 * what data parallelism costs over one process. */
static int collective(loom_comm *comm, uint64_t t0, int rc) {
  comm->wait_ns += loom_now_ns() - t0;
  if (rc < 0 && !comm->failed) {
    comm->failed = true;
    snprintf(comm->failure, sizeof comm->failure, "%s", loom_last_error());
  }
  return rc;
}

static int refused(const loom_comm *comm) {
  return loom_error_set(LOOM_ECOMM, "%s", comm->failure);
}

int loom_comm_allreduce_sum_f64(loom_comm *comm, double *buf, size_t n) {
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, comm->ops.allreduce_sum_f64(comm->ctx, buf, n));
}
int loom_comm_allreduce_mean_f32(loom_comm *comm, float *buf, size_t n) {
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, comm->ops.allreduce_mean_f32(comm->ctx, buf, n));
}
int loom_comm_broadcast(loom_comm *comm, void *buf, size_t bytes, int root) {
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, comm->ops.broadcast(comm->ctx, buf, bytes, root));
}
int loom_comm_barrier(loom_comm *comm) {
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, comm->ops.barrier(comm->ctx));
}

int loom_comm_notify_failure(loom_comm *comm, const char *message) {
  if (comm->failed || comm->size == 1)
    return 0; /* told already, or the peers know; or nobody to tell, and the next run may use it */
  comm->failed = true;
  snprintf(comm->failure, sizeof comm->failure, "this rank (%d) has failed: %s", comm->rank,
           message ? message : "no message");
  return comm->ops.notify_failure ? comm->ops.notify_failure(comm->ctx, message ? message : "no message") : 0;
}

bool loom_comm_failed(const loom_comm *comm) { return comm->failed; }

void loom_comm_set_timeout(loom_comm *comm, double seconds) {
  comm->timeout = seconds > 0.0 ? seconds : 0.0;
  if (comm->ops.set_timeout)
    comm->ops.set_timeout(comm->ctx, comm->timeout);
}

double loom_comm_timeout(const loom_comm *comm) { return comm->timeout; }

/* --- the non-blocking mean --- */

struct loom_comm_request {
  loom_comm *comm;
  void *backend; /* the backend's request; NULL: wait runs the blocking mean */
  size_t n;
  bool started;
  bool device;          /* a device request (loom_comm_device_request_create) */
  loom_backend *memory; /* a device request's: whose memory it sums, and whose step log takes its calls */
};

loom_comm_request *loom_comm_request_create(loom_comm *comm, size_t n) {
  loom_comm_request *q = calloc(1, sizeof *q);
  if (!q) {
    loom_error_oom("a communicator request");
    return NULL;
  }
  q->comm = comm, q->n = n;
  if (comm->ops.request_create && comm->ops.start_mean_f32 && comm->ops.wait_mean_f32 &&
      !(q->backend = comm->ops.request_create(comm->ctx, n))) {
    free(q);
    return NULL;
  }
  return q;
}

void loom_comm_request_destroy(loom_comm_request *q) {
  if (!q)
    return;
  if (q->device) {
    loom_op_log_forget_request(q->memory, q); /* the graphs holding its sums first */
    q->comm->ops.device_request_destroy(q->comm->ctx, q->backend);
  } else if (q->backend && q->comm->ops.request_destroy) {
    q->comm->ops.request_destroy(q->comm->ctx, q->backend);
  }
  free(q);
}

/* Whether q is of the kind `fn` takes and not started; else the error. */
static int can_start(const loom_comm_request *q, bool device, const char *fn) {
  if (q->device != device)
    return loom_error_set(LOOM_ESTATE, "%s: the request is a %s one (made by %s)", fn, q->device ? "device" : "host",
                          q->device ? "loom_comm_device_request_create" : "loom_comm_request_create");
  if (q->started)
    return loom_error_set(LOOM_ESTATE, "%s: the request was started and not waited for", fn);
  return 0;
}

/* Whether q is of the kind `fn` takes and started; else the error. */
static int can_wait(const loom_comm_request *q, bool device, const char *fn) {
  if (q->device != device || !q->started)
    return loom_error_set(LOOM_ESTATE, "%s: the request %s", fn,
                          q->device != device ? (q->device ? "is a device one" : "is a host one") : "was not started");
  return 0;
}

int loom_comm_start_mean_f32(loom_comm_request *q, const float *buf) {
  loom_comm *comm = q->comm;
  if (comm->failed)
    return refused(comm);
  int rc = can_start(q, false, __func__);
  if (rc < 0)
    return rc;
  q->started = true;
  const uint64_t t0 = loom_now_ns();
  return q->backend ? collective(comm, t0, comm->ops.start_mean_f32(comm->ctx, q->backend, buf)) : 0;
}

int loom_comm_wait_mean_f32(loom_comm_request *q, float *buf) {
  loom_comm *comm = q->comm;
  int rc = can_wait(q, false, __func__);
  if (rc < 0)
    return rc;
  q->started = false;
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, q->backend ? comm->ops.wait_mean_f32(comm->ctx, q->backend, buf)
                                     : comm->ops.allreduce_mean_f32(comm->ctx, buf, q->n));
}

int loom_comm_progress(loom_comm *comm) {
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return comm->ops.progress ? collective(comm, t0, comm->ops.progress(comm->ctx)) : 0;
}

/* --- device-aware sums --- */

static bool has_device_ops(const loom_comm *comm) {
  const loom_comm_ops *o = &comm->ops;
  return o->sums_on && o->device_request_create && o->device_start_sum_f32 && o->device_wait_sum_f32 &&
         o->device_request_destroy;
}

bool loom_comm_sums_on(const loom_comm *comm, const loom_backend *backend) {
  return comm && backend && loom_backend_device(backend) != LOOM_DEVICE_CPU && has_device_ops(comm) &&
         comm->ops.sums_on(comm->ctx, backend);
}

loom_comm_request *loom_comm_device_request_create(loom_comm *comm, loom_backend *backend, size_t n) {
  if (!loom_comm_sums_on(comm, backend)) {
    loom_error_set(LOOM_ENOTSUP, "loom_comm_device_request_create: the %s communicator does not sum the memory of "
                                 "backend \"%s\" (loom_comm_sums_on): use loom_comm_request_create on a host copy",
                   loom_comm_name(comm), backend ? loom_backend_name(backend) : "(null)");
    return NULL;
  }
  loom_comm_request *q = calloc(1, sizeof *q);
  if (!q) {
    loom_error_oom("a communicator request");
    return NULL;
  }
  q->comm = comm, q->n = n, q->device = true, q->memory = backend;
  if (!(q->backend = comm->ops.device_request_create(comm->ctx, backend, n))) {
    free(q);
    return NULL;
  }
  return q;
}

/* Starting and waiting for a device sum are ops of the memory's backend:
 * logged while its step log is open (so that a step's graph holds the
 * all-reduce), else run at once. */
static int submit(loom_comm_request *request, float *buf, bool wait) {
  loom_backend *b = request->memory;
  LOOM_RUN_OP(b, comm);
}

int loom_comm_request_run(loom_comm_request *q, float *buf, bool wait) {
  loom_comm *comm = q->comm;
  if (comm->failed)
    return refused(comm);
  const uint64_t t0 = loom_now_ns();
  return collective(comm, t0, (wait ? comm->ops.device_wait_sum_f32 : comm->ops.device_start_sum_f32)(
                                  comm->ctx, q->backend, buf));
}

int loom_comm_start_sum_f32(loom_comm_request *q, float *buf) {
  loom_comm *comm = q->comm;
  if (comm->failed)
    return refused(comm);
  int rc = can_start(q, true, __func__);
  if (rc < 0)
    return rc;
  q->started = true;
  return submit(q, buf, false);
}

int loom_comm_wait_sum_f32(loom_comm_request *q, float *buf) {
  loom_comm *comm = q->comm;
  int rc = can_wait(q, true, __func__);
  if (rc < 0)
    return rc;
  q->started = false;
  if (comm->failed)
    return refused(comm);
  return submit(q, buf, true);
}

double loom_comm_wait_seconds(const loom_comm *comm) { return (double)comm->wait_ns * 1e-9; }
void loom_comm_reset_wait_seconds(loom_comm *comm) { comm->wait_ns = 0; }

/* The delegating table's slots: ctx starts with the inner communicator. */
static loom_comm *inner(void *ctx) { return *(loom_comm **)ctx; }
static int d_sum_f64(void *ctx, double *buf, size_t n) { return loom_comm_allreduce_sum_f64(inner(ctx), buf, n); }
static int d_mean_f32(void *ctx, float *buf, size_t n) { return loom_comm_allreduce_mean_f32(inner(ctx), buf, n); }
static int d_broadcast(void *ctx, void *buf, size_t bytes, int root) {
  return loom_comm_broadcast(inner(ctx), buf, bytes, root);
}
static int d_barrier(void *ctx) { return loom_comm_barrier(inner(ctx)); }
static int d_notify_failure(void *ctx, const char *message) { return loom_comm_notify_failure(inner(ctx), message); }
static void d_set_timeout(void *ctx, double seconds) { loom_comm_set_timeout(inner(ctx), seconds); }
static void *d_request_create(void *ctx, size_t n) { return loom_comm_request_create(inner(ctx), n); }
static int d_start_mean_f32(void *ctx, void *request, const float *buf) {
  (void)ctx;
  return loom_comm_start_mean_f32(request, buf);
}
static int d_wait_mean_f32(void *ctx, void *request, float *buf) {
  (void)ctx;
  return loom_comm_wait_mean_f32(request, buf);
}
static int d_progress(void *ctx) { return loom_comm_progress(inner(ctx)); }
static void d_request_destroy(void *ctx, void *request) {
  (void)ctx;
  loom_comm_request_destroy(request);
}

loom_comm_ops loom_comm_delegating_ops(void) {
  return (loom_comm_ops){.allreduce_sum_f64 = d_sum_f64,
                         .allreduce_mean_f32 = d_mean_f32,
                         .broadcast = d_broadcast,
                         .barrier = d_barrier,
                         .notify_failure = d_notify_failure,
                         .set_timeout = d_set_timeout,
                         .request_create = d_request_create,
                         .start_mean_f32 = d_start_mean_f32,
                         .wait_mean_f32 = d_wait_mean_f32,
                         .progress = d_progress,
                         .request_destroy = d_request_destroy};
}
