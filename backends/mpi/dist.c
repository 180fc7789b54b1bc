/* Choosing a communicator: local, MPI, or MPI when a launcher started us. */
#include "loom/comm_mpi.h"

#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"

/* What OpenMPI's mpirun, PMIx launchers and PMI ones (MPICH's Hydra,
 * Slurm's srun --mpi=pmi2) put in each rank's environment. */
static const char *launcher_variable(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    if (v && *v)
      return vars[i];
  }
  return NULL;
}

bool loom_comm_mpi_launched(void) { return launcher_variable() != NULL; }

int loom_comm_local_rank(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID",
                                     "PMIX_LOCAL_RANK"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
    const char *v = getenv(vars[i]);
    char *end;
    long n = v && *v ? strtol(v, &end, 10) : -1;
    if (n >= 0 && n < 65536 && *end == '\0')
      return (int)n;
  }
  return 0;
}

static const char *const names[] = {[LOOM_DIST_AUTO] = "auto", [LOOM_DIST_LOCAL] = "local", [LOOM_DIST_MPI] = "mpi"};

int loom_dist_parse(const char *name, loom_dist *out) {
  for (int i = 0; name && i < (int)(sizeof names / sizeof names[0]); i++)
    if (strcmp(name, names[i]) == 0) {
      *out = (loom_dist)i;
      return 0;
    }
  return loom_error_set(LOOM_EINVAL, "distributed: \"%s\" is not one of \"auto\", \"local\", \"mpi\"",
                        name ? name : "(null)");
}

const char *loom_dist_name(loom_dist dist) {
  return (unsigned)dist < sizeof names / sizeof names[0] ? names[dist] : "unknown";
}

loom_comm *loom_comm_for_dist(loom_dist dist) {
  if ((unsigned)dist >= sizeof names / sizeof names[0]) {
    loom_error_set(LOOM_EINVAL, "loom_comm_for_dist: %d is not a loom_dist", (int)dist);
    return NULL;
  }
  if (dist == LOOM_DIST_LOCAL || (dist == LOOM_DIST_AUTO && !loom_comm_mpi_launched()))
    return loom_comm_local_create();
  if (dist == LOOM_DIST_AUTO && !loom_comm_mpi_available()) {
    loom_error_set(LOOM_ENOTSUP, "an MPI launcher started this process (%s is set) but this libloom was built "
                                 "without MPI: rebuild it with OpenMPI installed, or pass --dist local to train "
                                 "each process alone",
                   launcher_variable());
    return NULL;
  }
  loom_comm *comm = loom_comm_mpi_create(NULL);
  if (!comm)
    loom_error_wrap(loom_last_error_code(), "opening the %s communicator", loom_dist_name(dist));
  return comm;
}
