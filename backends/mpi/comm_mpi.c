/* The MPI communicator: loom/comm.h's collectives on a duplicate of an MPI
 * communicator. Without MPI (LOOM_HAVE_MPI 0) the same functions say so. */
#include "loom/comm_mpi.h"

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error_internal.h"

#if LOOM_HAVE_MPI
#include <mpi.h>

bool loom_comm_mpi_available(void) { return true; }

/* The control communicator's messages: a rank's failure (its message), a
 * rank that timed out asking the others where they are, and their answer
 * (the number of collectives they have entered, and which one). */
enum { TAG_FAILED = 1, TAG_WHERE = 2, TAG_HERE = 3 };
#define NOTICE_BYTES 1024
#define WHAT_BYTES 64
typedef struct where {
  unsigned long long seq;
  char what[WHAT_BYTES];
} where;

/* Seconds a timed-out rank waits for the others to say where they are. */
#define ASK_SECONDS 2.0

typedef struct mpi_ctx {
  MPI_Comm comm; /* the collectives */
  MPI_Comm ctl;  /* notices beside them, never waited for */
  int size, rank;
  double timeout;
  unsigned long long seq; /* collectives entered */
  const char *what;       /* the one under way */
  bool broken;            /* a collective may be left pending: no more MPI on these */
  char notice[NOTICE_BYTES];
  where here;
  unsigned long long asked; /* the collective a timed-out rank asks about */
  /* A peer's failure notice: the last collective it will complete (it
   * posted every one up to there), and its message; peer -1: none. */
  int peer;
  unsigned long long peer_done;
  char peer_message[NOTICE_BYTES];
  MPI_Request *sends;       /* notices and answers in flight, one slot per peer */
  /* What the collectives run on: a request left behind after a failure or
   * a time limit may still complete later (a late rank joins it) and write
   * there, never into a caller's buffer, which may be gone by then. */
  void *scratch;
  size_t scratch_bytes;
  struct mean_request **requests; /* the gradient buckets' requests */
  int nrequests;
} mpi_ctx;

/* Buffers and contexts a pending request may still touch: kept to the end
 * of the process, reachable (no leak to report) and never freed. */
#define KEPT_MAX 64
static void *kept[KEPT_MAX];
static int nkept;
static void keep_for_good(void *p) {
  if (p && nkept < KEPT_MAX)
    kept[nkept++] = p;
}

/* The largest piece a collective moves at once (its scratch). */
#define PIECE_BYTES ((size_t)64 << 20)

static int mpi_error(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
    len = 0;
  text[len] = '\0';
  return loom_error_set(LOOM_ECOMM, "MPI %s failed: %s (error %d)", what, len ? text : "no description", code);
}

/* Sends `bytes` to every peer without waiting (they may be gone). */
static void tell_all(mpi_ctx *m, const void *buf, int bytes, int tag) {
  for (int p = 0; p < m->size; p++) {
    if (p == m->rank)
      continue;
    if (m->sends[p] != MPI_REQUEST_NULL)
      MPI_Request_free(&m->sends[p]); /* an older notice: let it finish on its own */
    MPI_Isend(buf, bytes, MPI_BYTE, p, tag, m->ctl, &m->sends[p]);
  }
}

/* Tells every peer that this rank completes no collective after number
 * `done`, and why. */
static void send_notice(mpi_ctx *m, unsigned long long done, const char *message) {
  snprintf(m->notice, sizeof m->notice, "%llu\n%.990s", done, message);
  tell_all(m, m->notice, (int)strlen(m->notice) + 1, TAG_FAILED);
}

/* The error for collective `seq` once a peer has failed, or 0 while the
 * peer posted it (it then completes: the peer's data is on its way). */
static int peer_failed(mpi_ctx *m, unsigned long long seq) {
  if (m->peer < 0 || seq <= m->peer_done)
    return 0;
  m->broken = true;
  return loom_error_set(LOOM_ECOMM, "rank %d failed: %s", m->peer, m->peer_message);
}

/* The control messages that have arrived: a failure notice is kept (and
 * ends a wait for collective `seq` that the peer will not complete, 0: no
 * wait); a question gets this rank's answer. */
static int poll_control(mpi_ctx *m, unsigned long long seq) {
  for (;;) {
    int flag = 0;
    MPI_Status st;
    if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, m->ctl, &flag, &st) != MPI_SUCCESS || !flag)
      return seq ? peer_failed(m, seq) : 0;
    char buf[NOTICE_BYTES];
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    if (count > (int)sizeof buf - 1)
      count = (int)sizeof buf - 1;
    MPI_Recv(buf, count, MPI_BYTE, st.MPI_SOURCE, st.MPI_TAG, m->ctl, MPI_STATUS_IGNORE);
    buf[count] = '\0';
    if (st.MPI_TAG == TAG_FAILED && m->peer < 0) { /* the first failure is the one reported */
      char *text = strchr(buf, '\n');
      m->peer = st.MPI_SOURCE;
      m->peer_done = strtoull(buf, NULL, 10);
      snprintf(m->peer_message, sizeof m->peer_message, "%s", text ? text + 1 : buf);
    } else if (st.MPI_TAG == TAG_WHERE) {
      m->here.seq = m->seq;
      snprintf(m->here.what, sizeof m->here.what, "%s", m->what ? m->what : "no collective");
      if (m->sends[st.MPI_SOURCE] != MPI_REQUEST_NULL)
        MPI_Request_free(&m->sends[st.MPI_SOURCE]);
      MPI_Isend(&m->here, sizeof m->here, MPI_BYTE, st.MPI_SOURCE, TAG_HERE, m->ctl, &m->sends[st.MPI_SOURCE]);
    } /* a late TAG_HERE, a second failure: dropped */
  }
}

/* Past the time limit: asks the others where they are, names those not in
 * this collective, and tells everyone, so that they stop waiting too. */
static int timed_out(mpi_ctx *m, unsigned long long seq, const char *what) {
  m->asked = seq;
  tell_all(m, &m->asked, sizeof m->asked, TAG_WHERE);
  bool *arrived = calloc((size_t)m->size, sizeof *arrived);
  if (!arrived)
    return loom_error_oom("the list of ranks that did not arrive");
  arrived[m->rank] = true;
  int answers = 0;
  for (double t0 = MPI_Wtime(); answers < m->size - 1 && MPI_Wtime() - t0 < ASK_SECONDS;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_HERE, m->ctl, &flag, &st);
    if (!flag) {
      int rc = poll_control(m, seq); /* a failure notice may come instead */
      if (rc < 0) {
        free(arrived);
        return rc;
      }
      nanosleep(&(struct timespec){0, 1000000}, NULL);
      continue;
    }
    where w = {0};
    MPI_Recv(&w, sizeof w, MPI_BYTE, st.MPI_SOURCE, TAG_HERE, m->ctl, MPI_STATUS_IGNORE);
    arrived[st.MPI_SOURCE] = w.seq >= seq; /* it started this collective, and maybe later ones */
    answers++;
  }
  char missing[512] = "";
  size_t len = 0;
  for (int p = 0; p < m->size && len < sizeof missing - 16; p++)
    if (!arrived[p])
      len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d", len ? ", " : "", p);
  free(arrived);
  if (len)
    snprintf(m->notice, sizeof m->notice, "MPI %s (collective %llu) did not complete within %g s: rank%s %s did not "
             "arrive (stuck, or waiting elsewhere); set the limit with LOOM_COMM_TIMEOUT or loom_comm_set_timeout",
             what, seq, m->timeout, strchr(missing, ',') ? "s" : "", missing);
  else
    snprintf(m->notice, sizeof m->notice, "MPI %s (collective %llu) did not complete within %g s: every rank arrived, "
             "some only after the limit; raise it with LOOM_COMM_TIMEOUT or loom_comm_set_timeout",
             what, seq, m->timeout);
  char message[NOTICE_BYTES];
  snprintf(message, sizeof message, "%s", m->notice);
  send_notice(m, seq - 1, message); /* this rank leaves collective seq: nobody completes it */
  m->broken = true;
  return loom_error_set(LOOM_ECOMM, "%s", message);
}

/* Spinning, then yielding, then sleeping: a peer oversubscribed on this
 * core gets it, and a long wait costs no CPU. */
static void idle(long spins) {
  if (spins < 2000)
    return;
  if (spins < 20000)
    sched_yield();
  else
    nanosleep(&(struct timespec){0, 200000}, NULL);
}

/* Waits for a started collective (number `seq`, `what`), watching the
 * control messages and the time limit. */
static int wait_for(mpi_ctx *m, MPI_Request *req, unsigned long long seq, const char *what) {
  const double t0 = MPI_Wtime();
  for (long spins = 0;; spins++) {
    int done = 0, rc = MPI_Test(req, &done, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
      m->broken = true;
      return mpi_error(rc, what);
    }
    if (done)
      return 0;
    if ((rc = poll_control(m, seq)) < 0)
      return rc;
    if (m->timeout > 0 && MPI_Wtime() - t0 > m->timeout)
      return timed_out(m, seq, what);
    idle(spins);
  }
}

/* Starts a collective (`rc` of its MPI_I... call) and waits for it. */
static int finish(mpi_ctx *m, int rc, MPI_Request *req) {
  if (rc != MPI_SUCCESS) {
    m->broken = true;
    return mpi_error(rc, m->what);
  }
  return wait_for(m, req, m->seq, m->what);
}

/* The next collective: refused when a peer has failed before it. */
static int enter(mpi_ctx *m, const char *what) {
  m->seq++;
  m->what = what;
  return peer_failed(m, m->seq);
}

/* --- the gradients' mean, started during backward and waited for later --- */

typedef struct mean_request {
  mpi_ctx *m;
  size_t n;
  float *scratch; /* what MPI sums in place: the caller's buffer may change meanwhile */
  MPI_Request req;
  unsigned long long seq;
  bool active; /* started, not yet waited for */
} mean_request;

static const char mean_what[] = "all-reduce of gradients (MPI_Iallreduce)";

static void *request_create(void *ctx, size_t n) {
  mpi_ctx *m = ctx;
  if (n > (size_t)1 << 30) {
    loom_error_set(LOOM_EINVAL, "a gradient bucket of %zu floats is larger than one MPI call takes (2^30): use "
                                "smaller buckets", n);
    return NULL;
  }
  mean_request *q = calloc(1, sizeof *q);
  mean_request **list = q ? realloc(m->requests, (size_t)(m->nrequests + 1) * sizeof *list) : NULL;
  if (list)
    m->requests = list;
  if (!q || !list || !(q->scratch = malloc((n ? n : 1) * sizeof *q->scratch))) {
    free(q);
    loom_error_oom("a gradient bucket's buffer");
    return NULL;
  }
  q->m = m, q->n = n, q->req = MPI_REQUEST_NULL;
  m->requests[m->nrequests++] = q;
  return q;
}

static void request_destroy(void *ctx, void *request) {
  mpi_ctx *m = ctx;
  mean_request *q = request;
  for (int i = 0; i < m->nrequests; i++)
    if (m->requests[i] == q)
      m->requests[i] = m->requests[--m->nrequests];
  if (q->active) { /* left behind by a failure: MPI may still write into it */
    keep_for_good(q->scratch);
    keep_for_good(q);
    return;
  }
  free(q->scratch);
  free(q);
}

static int start_mean_f32(void *ctx, void *request, const float *buf) {
  mpi_ctx *m = ctx;
  mean_request *q = request;
  memcpy(q->scratch, buf, q->n * sizeof *buf);
  int rc = enter(m, mean_what);
  q->seq = m->seq;
  if (rc < 0)
    return rc;
  rc = MPI_Iallreduce(MPI_IN_PLACE, q->scratch, (int)q->n, MPI_FLOAT, MPI_SUM, m->comm, &q->req);
  if (rc != MPI_SUCCESS) {
    m->broken = true;
    return mpi_error(rc, mean_what);
  }
  q->active = true;
  return 0;
}

static int wait_mean_f32(void *ctx, void *request, float *buf) {
  mpi_ctx *m = ctx;
  mean_request *q = request;
  int rc = wait_for(m, &q->req, q->seq, mean_what);
  if (rc < 0)
    return rc;
  q->active = false;
  const float world = (float)m->size; /* as mean_f32: the sum, then a division on each rank */
  for (size_t i = 0; i < q->n; i++)
    buf[i] = q->scratch[i] / world;
  return 0;
}

/* One test of each started request: MPI moves non-blocking collectives on
 * only inside its calls, so backward calls this between layers. */
static int progress(void *ctx) {
  mpi_ctx *m = ctx;
  for (int i = 0; i < m->nrequests; i++) {
    mean_request *q = m->requests[i];
    int done = 0;
    if (q->active && q->req != MPI_REQUEST_NULL && MPI_Test(&q->req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
      m->broken = true;
      return mpi_error(MPI_ERR_OTHER, mean_what);
    }
  }
  return poll_control(m, 0); /* a notice is kept for the wait it concerns */
}

/* At exit every rank meets the others before MPI_Finalize, which would
 * wait forever for a rank that never comes (one stuck or gone after a
 * failure): past the longest time limit of loom's communicators the job is
 * ended instead (mpirun then stops every rank). */
static double exit_wait = LOOM_COMM_TIMEOUT_DEFAULT;

static bool all_at_exit(void) {
  MPI_Request req;
  if (MPI_Ibarrier(MPI_COMM_WORLD, &req) != MPI_SUCCESS)
    return false;
  const double t0 = MPI_Wtime();
  for (long spins = 0;; spins++) {
    int done = 0;
    if (MPI_Test(&req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS)
      return false;
    if (done)
      return true;
    if (exit_wait > 0 && MPI_Wtime() - t0 > exit_wait)
      return false;
    nanosleep(&(struct timespec){0, spins < 1000 ? 20000 : 1000000}, NULL);
  }
}

static void finalize_at_exit(void) {
  int done = 0;
  MPI_Finalized(&done);
  if (done)
    return;
  if (!all_at_exit())
    MPI_Abort(MPI_COMM_WORLD, 1);
  MPI_Finalize();
}

/* MPI as the program left it, or initialised here and finalised at exit. */
static int ensure_initialised(void) {
  int initialised = 0, finalised = 0;
  MPI_Initialized(&initialised);
  MPI_Finalized(&finalised);
  if (finalised)
    return loom_error_set(LOOM_ESTATE, "loom_comm_mpi_create: MPI was already finalised (MPI_Finalize); create "
                                       "loom's communicator before finalising MPI");
  if (initialised)
    return 0;
  int provided = 0, rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
  if (rc != MPI_SUCCESS)
    return mpi_error(rc, "initialisation (MPI_Init_thread)");
  if (atexit(finalize_at_exit) != 0)
    return loom_error_set(LOOM_ESTATE, "loom_comm_mpi_create: cannot register MPI_Finalize to run at exit");
  return 0;
}

static int ensure_scratch(mpi_ctx *m, size_t bytes) {
  if (bytes <= m->scratch_bytes)
    return 0;
  void *p = malloc(bytes);
  if (!p)
    return loom_error_oom("the MPI communicator's buffer");
  free(m->scratch);
  m->scratch = p;
  m->scratch_bytes = bytes;
  return 0;
}

/* The collectives, piece by piece through the scratch buffer: in, the
 * collective, out (the gradients' mean divides on the way out). */
typedef enum kind { SUM_F64, MEAN_F32, BROADCAST } kind;

static int run_collective(mpi_ctx *m, kind k, void *buf, size_t n, int root) {
  const size_t item = k == SUM_F64 ? sizeof(double) : k == MEAN_F32 ? sizeof(float) : 1;
  const size_t piece = PIECE_BYTES / item;
  int rc = ensure_scratch(m, (n < piece ? n : piece) * item);
  for (size_t at = 0; rc == 0 && at < n; at += piece) {
    const size_t count = n - at < piece ? n - at : piece;
    char *part = (char *)buf + at * item;
    memcpy(m->scratch, part, count * item);
    MPI_Request req;
    if (k == SUM_F64) {
      if ((rc = enter(m, "all-reduce of doubles (MPI_Iallreduce)")) == 0)
        rc = finish(m, MPI_Iallreduce(MPI_IN_PLACE, m->scratch, (int)count, MPI_DOUBLE, MPI_SUM, m->comm, &req), &req);
    } else if (k == MEAN_F32) {
      if ((rc = enter(m, "all-reduce of floats (MPI_Iallreduce)")) == 0)
        rc = finish(m, MPI_Iallreduce(MPI_IN_PLACE, m->scratch, (int)count, MPI_FLOAT, MPI_SUM, m->comm, &req), &req);
    } else {
      if ((rc = enter(m, "broadcast (MPI_Ibcast)")) == 0)
        rc = finish(m, MPI_Ibcast(m->scratch, (int)count, MPI_BYTE, root, m->comm, &req), &req);
    }
    if (rc < 0)
      break;
    if (k == MEAN_F32) { /* the sum, then a division on each rank: every rank keeps the same bits */
      const float world = (float)m->size, *sum = m->scratch;
      float *out = (float *)part;
      for (size_t i = 0; i < count; i++)
        out[i] = sum[i] / world;
    } else {
      memcpy(part, m->scratch, count * item);
    }
  }
  return rc;
}

static int sum_f64(void *ctx, double *buf, size_t n) { return run_collective(ctx, SUM_F64, buf, n, 0); }
static int mean_f32(void *ctx, float *buf, size_t n) { return run_collective(ctx, MEAN_F32, buf, n, 0); }
static int broadcast(void *ctx, void *buf, size_t bytes, int root) {
  return run_collective(ctx, BROADCAST, buf, bytes, root);
}

static int barrier(void *ctx) {
  mpi_ctx *m = ctx;
  MPI_Request req;
  int rc = enter(m, "barrier (MPI_Ibarrier)");
  return rc < 0 ? rc : finish(m, MPI_Ibarrier(m->comm, &req), &req);
}

static int notify_failure(void *ctx, const char *message) {
  mpi_ctx *m = ctx;
  send_notice(m, m->seq, message); /* it posted every collective it entered */
  m->broken = true; /* the peers may be inside a collective this rank never joins */
  return 0;
}

static void set_timeout(void *ctx, double seconds) {
  ((mpi_ctx *)ctx)->timeout = seconds;
  if (seconds <= 0 || (exit_wait > 0 && seconds > exit_wait))
    exit_wait = seconds; /* the longest wait any of them allows */
}

/* What loom_comm_mpi_create made; the requests are their owners' to
 * destroy first. */
static void free_ctx(mpi_ctx *m) {
  if (m->ctl != MPI_COMM_NULL)
    MPI_Comm_free(&m->ctl);
  if (m->comm != MPI_COMM_NULL)
    MPI_Comm_free(&m->comm);
  free(m->scratch);
  free(m->sends);
  free(m->requests);
  free(m);
}

static void destroy(void *ctx) {
  mpi_ctx *m = ctx;
  int finalised = 0;
  MPI_Finalized(&finalised);
  /* After a failure a request may still complete into the scratch or send
   * from the notices, and freeing the communicators is collective (a peer
   * may never come): all of it stays. */
  if (m->broken && !finalised) {
    keep_for_good(m->scratch);
    keep_for_good(m->sends);
    keep_for_good(m->requests);
    keep_for_good(m);
    return;
  }
  for (int p = 0; !finalised && p < m->size; p++)
    if (m->sends[p] != MPI_REQUEST_NULL)
      MPI_Request_free(&m->sends[p]);
  if (finalised)
    m->ctl = m->comm = MPI_COMM_NULL;
  free_ctx(m);
}

static const loom_comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce_sum_f64 = sum_f64,
    .allreduce_mean_f32 = mean_f32,
    .broadcast = broadcast,
    .barrier = barrier,
    .destroy = destroy,
    .notify_failure = notify_failure,
    .set_timeout = set_timeout,
    .request_create = request_create,
    .start_mean_f32 = start_mean_f32,
    .wait_mean_f32 = wait_mean_f32,
    .progress = progress,
    .request_destroy = request_destroy,
};

loom_comm *loom_comm_mpi_create(const void *mpi_comm) {
  if (ensure_initialised() < 0)
    return NULL;
  mpi_ctx *m = calloc(1, sizeof *m);
  if (!m) {
    loom_error_oom("the MPI communicator");
    return NULL;
  }
  m->comm = m->ctl = MPI_COMM_NULL;
  /* loom's own duplicates: its collectives and notices never match the
   * program's. */
  MPI_Comm base = mpi_comm ? *(const MPI_Comm *)mpi_comm : MPI_COMM_WORLD;
  int rc = MPI_Comm_dup(base, &m->comm);
  if (rc == MPI_SUCCESS)
    rc = MPI_Comm_dup(base, &m->ctl);
  if (rc != MPI_SUCCESS) {
    free_ctx(m);
    mpi_error(rc, "duplicating the communicator (MPI_Comm_dup)");
    return NULL;
  }
  if ((rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
      (rc = MPI_Comm_set_errhandler(m->ctl, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
      (rc = MPI_Comm_rank(m->comm, &m->rank)) != MPI_SUCCESS || (rc = MPI_Comm_size(m->comm, &m->size)) != MPI_SUCCESS) {
    free_ctx(m);
    mpi_error(rc, "setting up the communicator");
    return NULL;
  }
  m->sends = malloc((size_t)m->size * sizeof *m->sends);
  if (!m->sends) {
    free_ctx(m);
    loom_error_oom("the MPI communicator's notices");
    return NULL;
  }
  for (int p = 0; p < m->size; p++)
    m->sends[p] = MPI_REQUEST_NULL;
  m->peer = -1;
  m->timeout = LOOM_COMM_TIMEOUT_DEFAULT;
  loom_comm *comm = loom_comm_create(&mpi_ops, m, m->rank, m->size);
  if (!comm)
    destroy(m);
  return comm;
}

#else /* no MPI in this build */

bool loom_comm_mpi_available(void) { return false; }

loom_comm *loom_comm_mpi_create(const void *mpi_comm) {
  (void)mpi_comm;
  loom_error_set(LOOM_ENOTSUP, "this libloom was built without MPI (cmake found none, or -DLOOM_WITH_MPI=OFF): "
                               "install OpenMPI (scripts/install-deps.sh) and rebuild, or run with --dist local");
  return NULL;
}

#endif
