/* loom/comm_nccl.h - gradients summed between GPUs with NCCL.
 *
 * One process per GPU, started by mpirun: the MPI communicator
 * (loom/comm_mpi.h) carries what it carries today (metrics, decisions,
 * broadcasts, the bootstrap), and an NCCL communicator made from it sums
 * the gradient buckets of a model on a CUDA backend where they lie, on
 * the GPU (loom/comm.h's device-aware sums), overlapped with backward as
 * the MPI path is. The runner makes one by itself when its communicator is
 * MPI, the model's backend is CUDA and NCCL loads on every rank
 * (loom_run_options.host_staged_grads says not to); a program may also
 * make one and give it to loom_runner_set_comm.
 *
 * NCCL is loaded by the first communicator (libnccl.so.2, by the CUDA
 * module, which links no NCCL): loom built with the CUDA backend and
 * NCCL's header (-DLOOM_WITH_NCCL=AUTO, the default, or ON) runs where
 * NCCL is missing, and says so here. */
#ifndef LOOM_COMM_NCCL_H
#define LOOM_COMM_NCCL_H

#include "loom/api.h"

#include <stdbool.h>

#include "loom/backend.h"
#include "loom/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether this libloom was built with the NCCL communicator (the CUDA
 * backend and NCCL's header were found); NCCL itself is loaded later. */
LOOM_API bool loom_comm_nccl_available(void);

/* Whether the runner would try NCCL for `comm` and `backend`: a built-in
 * NCCL communicator, an MPI communicator of several ranks and a CUDA
 * backend. */
LOOM_API bool loom_comm_nccl_applies(const loom_comm *comm, const loom_backend *backend);

/* The NCCL communicator over the ranks of `comm` (borrowed: it must
 * outlive the result, which delegates everything but the device sums to
 * it), on `backend`'s GPU and after its stream: a collective call on every
 * rank of comm. Rank 0 makes NCCL's unique id and broadcasts it over
 * comm; each rank joins with ncclCommInitRank. Every rank returns the same
 * outcome: LOOM_ENOTSUP (the message names the ranks and what is missing)
 * when NCCL is not usable on one of them (a build without it, no CUDA
 * backend, libnccl.so.2 not found, no unique id); LOOM_ECOMM when joining
 * failed; else 0 and *out, whose name is "nccl" and whose loom_comm_sums_on
 * is true for `backend` alone. */
LOOM_API int loom_comm_nccl_create(loom_comm *comm, loom_backend *backend, loom_comm **out);

#ifdef __cplusplus
}
#endif
#endif
