/* The MPI communicator: loom/comm.h's collectives on a duplicate of an MPI
 * communicator. Without MPI (LOOM_HAVE_MPI 0) the same functions say so. */
#include "loom/comm_mpi.h"

#include <stdlib.h>

#include "core/error_internal.h"

#if LOOM_HAVE_MPI
#include <mpi.h>

bool loom_comm_mpi_available(void) { return true; }

/* MPI counts are ints: larger buffers go in pieces of this many items. */
#define CHUNK (1 << 30)

typedef struct mpi_ctx {
  MPI_Comm comm;
  int size;
} mpi_ctx;

static int mpi_error(int code, const char *what) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(code, text, &len) != MPI_SUCCESS)
    len = 0;
  text[len] = '\0';
  return loom_error_set(LOOM_ECOMM, "MPI %s failed: %s (error %d)", what, len ? text : "no description", code);
}

static void finalize_at_exit(void) {
  int done = 0;
  MPI_Finalized(&done);
  if (!done)
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

static int sum_f64(void *ctx, double *buf, size_t n) {
  const mpi_ctx *m = ctx;
  for (size_t at = 0; at < n; at += CHUNK) {
    int count = (int)(n - at < CHUNK ? n - at : CHUNK);
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf + at, count, MPI_DOUBLE, MPI_SUM, m->comm);
    if (rc != MPI_SUCCESS)
      return mpi_error(rc, "all-reduce of doubles (MPI_Allreduce)");
  }
  return 0;
}

/* The sum, then a division on each rank: the same arithmetic everywhere,
 * so every rank keeps the same bits. */
static int mean_f32(void *ctx, float *buf, size_t n) {
  const mpi_ctx *m = ctx;
  for (size_t at = 0; at < n; at += CHUNK) {
    int count = (int)(n - at < CHUNK ? n - at : CHUNK);
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf + at, count, MPI_FLOAT, MPI_SUM, m->comm);
    if (rc != MPI_SUCCESS)
      return mpi_error(rc, "all-reduce of floats (MPI_Allreduce)");
  }
  const float world = (float)m->size;
  for (size_t i = 0; i < n; i++)
    buf[i] /= world;
  return 0;
}

static int broadcast(void *ctx, void *buf, size_t bytes, int root) {
  const mpi_ctx *m = ctx;
  for (size_t at = 0; at < bytes; at += CHUNK) {
    int count = (int)(bytes - at < CHUNK ? bytes - at : CHUNK);
    int rc = MPI_Bcast((char *)buf + at, count, MPI_BYTE, root, m->comm);
    if (rc != MPI_SUCCESS)
      return mpi_error(rc, "broadcast (MPI_Bcast)");
  }
  return 0;
}

static int barrier(void *ctx) {
  const mpi_ctx *m = ctx;
  int rc = MPI_Barrier(m->comm);
  return rc == MPI_SUCCESS ? 0 : mpi_error(rc, "barrier (MPI_Barrier)");
}

static void destroy(void *ctx) {
  mpi_ctx *m = ctx;
  int finalised = 0;
  MPI_Finalized(&finalised);
  if (!finalised)
    MPI_Comm_free(&m->comm);
  free(m);
}

static const loom_comm_ops mpi_ops = {
    .name = "mpi",
    .allreduce_sum_f64 = sum_f64,
    .allreduce_mean_f32 = mean_f32,
    .broadcast = broadcast,
    .barrier = barrier,
    .destroy = destroy,
};

loom_comm *loom_comm_mpi_create(const void *mpi_comm) {
  if (ensure_initialised() < 0)
    return NULL;
  mpi_ctx *m = calloc(1, sizeof *m);
  if (!m) {
    loom_error_oom("the MPI communicator");
    return NULL;
  }
  /* loom's own duplicate: its collectives never match the program's. */
  MPI_Comm base = mpi_comm ? *(const MPI_Comm *)mpi_comm : MPI_COMM_WORLD;
  int rc = MPI_Comm_dup(base, &m->comm);
  if (rc != MPI_SUCCESS) {
    free(m);
    mpi_error(rc, "duplicating the communicator (MPI_Comm_dup)");
    return NULL;
  }
  int rank = 0;
  if ((rc = MPI_Comm_set_errhandler(m->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
      (rc = MPI_Comm_rank(m->comm, &rank)) != MPI_SUCCESS || (rc = MPI_Comm_size(m->comm, &m->size)) != MPI_SUCCESS) {
    MPI_Comm_free(&m->comm);
    free(m);
    mpi_error(rc, "setting up the communicator");
    return NULL;
  }
  loom_comm *comm = loom_comm_create(&mpi_ops, m, rank, m->size);
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
