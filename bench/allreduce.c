/* bench/allreduce: the all-reduce's latency and bandwidth terms, for the
 * scaling model of docs/distributed.md. MPI_Allreduce (in place, float
 * sum, as loom's gradient all-reduce) of 4 B .. MAX_BYTES on the ranks
 * mpirun starts; per size TRIALS times the mean time of a batch of calls
 * (enough calls for ~20 ms), the slowest rank's, of which the table gives
 * the minimum and the median. Then t = alpha + n * beta fitted by least
 * squares on relative residuals ((alpha + n beta - t) / t, so the 4-byte
 * points weigh as much as the 64 MB ones and alpha is not lost in the big
 * sizes' noise), once on the minima (the machine undisturbed: the model's
 * input) and once on the medians (what a shared machine gave).
 * Prints the table and two machine-readable lines:
 *   FIT alpha_us=<latency> beta_ns_per_byte=<inverse bandwidth> bw_gbs=<1/beta, GB/s> ranks=<p>
 *   FIT_MEDIAN ... (the same fields)
 * Usage: mpirun -np 2 allreduce [MAX_BYTES] [TRIALS] */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Mean seconds per call of `iters` all-reduces of n floats, the slowest rank's. */
static double timed(float *buf, int n, int iters) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  for (int i = 0; i < iters; i++)
    MPI_Allreduce(MPI_IN_PLACE, buf, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  double t = (MPI_Wtime() - t0) / iters;
  MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return t;
}

/* Least squares of t = a + n b with weights 1 / t^2 (relative residuals). */
static void fit(const double *n, const double *t, int k, double *a, double *b) {
  double sw = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (int i = 0; i < k; i++) {
    double w = 1.0 / (t[i] * t[i]);
    sw += w, sx += w * n[i], sy += w * t[i], sxx += w * n[i] * n[i], sxy += w * n[i] * t[i];
  }
  double det = sw * sxx - sx * sx;
  *b = (sw * sxy - sx * sy) / det;
  *a = (sy - *b * sx) / sw;
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  long max_bytes = argc > 1 ? atol(argv[1]) : 64L << 20;
  int trials = argc > 2 ? atoi(argv[2]) : 7;
  if (max_bytes < 4 || trials < 1 || trials > 64) {
    if (rank == 0)
      fprintf(stderr, "usage: allreduce [MAX_BYTES >= 4] [TRIALS 1..64]\n");
    MPI_Finalize();
    return 2;
  }
  float *buf = calloc((size_t)max_bytes / 4, sizeof *buf);
  if (!buf) {
    fprintf(stderr, "allreduce: no memory for %ld bytes\n", max_bytes);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  double sizes[64], mins[64], medians[64], trial[64];
  int k = 0;
  if (rank == 0)
    printf("%12s %12s %12s %12s\n", "bytes", "min_us", "median_us", "algbw_GB/s");
  for (long bytes = 4; bytes <= max_bytes && k < 64; bytes *= 2, k++) {
    int n = (int)(bytes / 4);
    /* As many calls as take ~20 ms, agreed on by every rank. */
    double once = timed(buf, n, 3);
    int iters = once > 0.02 ? 1 : (int)(0.02 / (once > 1e-7 ? once : 1e-7));
    MPI_Bcast(&iters, 1, MPI_INT, 0, MPI_COMM_WORLD);
    for (int j = 0; j < trials; j++)
      trial[j] = timed(buf, n, iters);
    qsort(trial, (size_t)trials, sizeof trial[0], by_value);
    sizes[k] = (double)bytes, mins[k] = trial[0], medians[k] = trial[trials / 2];
    if (rank == 0)
      printf("%12ld %12.2f %12.2f %12.3f\n", bytes, mins[k] * 1e6, medians[k] * 1e6, (double)bytes / mins[k] / 1e9);
  }
  if (rank == 0) {
    double a, b;
    fit(sizes, mins, k, &a, &b);
    printf("FIT alpha_us=%.3f beta_ns_per_byte=%.5f bw_gbs=%.3f ranks=%d\n", a * 1e6, b * 1e9, 1.0 / b / 1e9, size);
    fit(sizes, medians, k, &a, &b);
    printf("FIT_MEDIAN alpha_us=%.3f beta_ns_per_byte=%.5f bw_gbs=%.3f ranks=%d\n", a * 1e6, b * 1e9, 1.0 / b / 1e9,
           size);
  }
  free(buf);
  MPI_Finalize();
  return 0;
}
