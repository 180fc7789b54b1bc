/* loom/comm_mpi.h - the communicator on MPI, and choosing a communicator.
 *
 * loom_comm_mpi_create gives loom/comm.h's collectives on MPI (OpenMPI or
 * any MPI-3 library), for programs started by `mpirun -np N`: hand the
 * result to loom_runner_set_comm and each rank trains its shard of the data
 * (docs/distributed.md). This header does not include <mpi.h>: a program
 * that never uses MPI needs neither its headers nor a launcher.
 *
 * Every function is present in every libloom; in one built without MPI
 * (cmake found none, or -DLOOM_WITH_MPI=OFF) loom_comm_mpi_available is
 * false and asking for MPI is an error that says so. */
#ifndef LOOM_COMM_MPI_H
#define LOOM_COMM_MPI_H

#include "loom/api.h"

#include "loom/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether this libloom was built with MPI. */
LOOM_API bool loom_comm_mpi_available(void);

/* Whether an MPI launcher started this process: OpenMPI's mpirun
 * (OMPI_COMM_WORLD_SIZE), a PMIx launcher (PMIX_RANK) or a PMI one such as
 * MPICH's Hydra or Slurm's srun (PMI_RANK, PMI_SIZE). */
LOOM_API bool loom_comm_mpi_launched(void);

/* This process's index among the ranks the launcher started on its node
 * (OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID, SLURM_LOCALID or
 * PMIX_LOCAL_RANK); 0 without a launcher. A config's "cuda" without an
 * index trains on this device, so one rank per GPU needs no per-rank
 * config. */
LOOM_API int loom_comm_local_rank(void);

/* A communicator on MPI. `mpi_comm` points to an MPI_Comm (pass &comm), or
 * is NULL for MPI_COMM_WORLD; loom works on its own duplicate of it
 * (MPI_Comm_dup, so a collective call on every rank of that communicator),
 * with errors returned rather than fatal. MPI is initialised here
 * (MPI_Init_thread, MPI_THREAD_SERIALIZED) unless the program did it, and
 * then finalised when the program exits. Collectives are called from the
 * thread that runs the experiment only. NULL with the error on failure. */
LOOM_API loom_comm *loom_comm_mpi_create(const void *mpi_comm);

/* How a program picks its communicator: `--dist` and the config's
 * "distributed" key. */
typedef enum loom_dist {
  LOOM_DIST_AUTO,  /* MPI when an MPI launcher started the process, else local */
  LOOM_DIST_LOCAL, /* a world of one, whatever started the process */
  LOOM_DIST_MPI    /* MPI_COMM_WORLD; an error in a build without MPI */
} loom_dist;

/* "auto", "local" or "mpi" -> *out; LOOM_EINVAL naming the choices. */
LOOM_API int loom_dist_parse(const char *name, loom_dist *out);
LOOM_API const char *loom_dist_name(loom_dist dist);

/* The communicator `dist` asks for: auto is MPI under a launcher
 * (loom_comm_mpi_launched) and local otherwise. Under a launcher, a build
 * without MPI is an error for auto too: the ranks would each train the
 * whole run alone into the same logdir. NULL with the error on failure. */
LOOM_API loom_comm *loom_comm_for_dist(loom_dist dist);

#ifdef __cplusplus
}
#endif
#endif
