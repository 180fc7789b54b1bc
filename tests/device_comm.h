/* A device-aware test communicator for machines without a GPU: it plays
 * what NCCL does for the CUDA backend, for the fake device
 * (tests/fake_device.h). It wraps an MPI communicator (owned) and
 * delegates everything to it but the device sums (loom/comm.h's sums_on
 * and device requests), which it runs on the host memory behind the fake
 * device's tagged pointers with MPI_Iallreduce (the MPI communicator's
 * own call for the host mean, so the sums are the same bits). Every
 * pointer it is handed must be the fake device's, live, for the bucket's
 * extent (else it aborts, naming it). While the device captures a step
 * graph, its starts and waits run nothing, as NCCL's under CUDA's capture
 * (the graph's launches run them). */
#ifndef LOOM_TEST_DEVICE_COMM_H
#define LOOM_TEST_DEVICE_COMM_H

#include <stdint.h>

#include <loom/comm.h>
#include <loom/error.h>

#include "fake_device.h"

typedef struct device_comm_counts {
  int64_t requests; /* device requests made */
  int64_t starts;   /* device sums started */
  int64_t waits;    /* ... and waited for */
  int64_t floats;   /* floats summed */
  int64_t captured; /* starts under a step graph's capture (recorded, not run: the launches run them) */
} device_comm_counts;

/* The communicator over `mpi`'s ranks (NULL with the error printed, on
 * failure); *counts stays valid while it lives. */
loom_comm *device_comm_create(loom_comm *mpi, loom_backend *fake, fake_device *dev, device_comm_counts **counts);

#endif
