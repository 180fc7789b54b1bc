/* The NCCL communicator on a GPU (loom/comm_nccl.h): a world of one rank,
 * its bootstrap over MPI when mpirun -np 1 started it, else over the local
 * communicator (loom_comm_for_dist's auto: MPI_Init would abort on a
 * machine without an MPI installation, such as the lent GPU machine that
 * scripts/gpu-check.sh runs on), and a device sum of gradient-like
 * buckets on the CUDA backend's memory, read back and checked (a world of
 * one sums each float to itself; the floats around a bucket stay as they
 * were). Without a CUDA device, or where NCCL does not load, it prints
 * "skipped: ..." and exits 77 (CTest's SKIP_RETURN_CODE): never counted
 * as passed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loom/backend_cpu.h"
#include "loom/backend_cuda.h"
#include "loom/comm_mpi.h"
#include "loom/comm_nccl.h"
#include "loom/error.h"

#define SKIP 77
#define N 4099 /* odd: no multiple of any vector width */

static int fail(const char *what) {
  fprintf(stderr, "test_nccl: FAILED: %s: %s\n", what, loom_last_error());
  return 1;
}

int main(void) {
  int count = 0;
  loom_cuda_device_count(&count);
  loom_backend *cuda = NULL;
  if (count == 0 || loom_backend_cuda_create(0, NULL, &cuda) < 0) {
    printf("skipped: no CUDA device (%s)\n", count ? loom_last_error() : "the runtime sees none");
    return SKIP;
  }
  loom_comm *boot = loom_comm_for_dist(LOOM_DIST_AUTO);
  if (!boot)
    return fail("loom_comm_for_dist");
  loom_comm *nccl = NULL;
  int rc = loom_comm_nccl_create(boot, cuda, &nccl);
  if (rc == LOOM_ENOTSUP) {
    printf("skipped: NCCL is not usable here (%s)\n", loom_last_error());
    loom_comm_destroy(boot), loom_backend_destroy(cuda);
    return SKIP;
  }
  if (rc < 0)
    return fail("loom_comm_nccl_create");
  int bad = 0;
  if (strcmp(loom_comm_name(nccl), "nccl") != 0 || loom_comm_size(nccl) != loom_comm_size(boot) ||
      !loom_comm_sums_on(nccl, cuda) || loom_comm_sums_on(nccl, loom_backend_cpu()))
    bad = fprintf(stderr, "test_nccl: FAILED: the communicator's name, size or sums_on\n") > 0;
  /* Two buckets of one buffer, as the reducer makes them: [0, 1000) and
   * [1000, N - 1); the last float is no bucket's. */
  float *host = malloc(N * sizeof *host), *back = malloc(N * sizeof *back);
  for (int i = 0; i < N; i++)
    host[i] = (float)((i * 37) % 101) / 7.0f - 3.0f;
  float *dev = loom_backend_alloc(cuda, N * sizeof *dev);
  loom_comm_request *a = loom_comm_device_request_create(nccl, cuda, 1000);
  loom_comm_request *b = loom_comm_device_request_create(nccl, cuda, N - 1 - 1000);
  if (!dev || !a || !b)
    return fail("device memory or requests");
  const float world = (float)loom_comm_size(nccl);
  for (int step = 0; step < 3 && !bad; step++) {
    if ((rc = loom_backend_from_host(cuda, dev, host, N * sizeof *dev)) < 0 ||
        (rc = loom_comm_start_sum_f32(b, dev + 1000)) < 0 || (rc = loom_comm_start_sum_f32(a, dev)) < 0 ||
        (rc = loom_comm_wait_sum_f32(b, dev + 1000)) < 0 || (rc = loom_comm_wait_sum_f32(a, dev)) < 0 ||
        (rc = loom_backend_scale(cuda, dev, 1.0f / world, N - 1)) < 0 ||
        (rc = loom_backend_to_host(cuda, back, dev, N * sizeof *back)) < 0)
      return fail("a step's sums");
    for (int i = 0; i < N && !bad; i++) /* every rank gave the same floats: the mean is each */
      if (back[i] != host[i])
        bad = fprintf(stderr, "test_nccl: FAILED: step %d, float %d: %g, not %g\n", step, i, back[i], host[i]) > 0;
  }
  loom_comm_request_destroy(a), loom_comm_request_destroy(b);
  loom_backend_free(cuda, dev);
  free(host), free(back);
  loom_comm_destroy(nccl);
  loom_comm_destroy(boot);
  loom_backend_destroy(cuda);
  if (!bad)
    printf("test_nccl: %d rank(s), 3 steps of 2 buckets summed on the GPU with NCCL: passed\n", (int)world);
  return bad;
}
