/* bench/peak: OpenBLAS sgemm throughput in loom's default thread setting,
 * the yardstick for each model's achieved GFLOP/s. Square products, best of
 * several runs. First checks the kernel OpenBLAS chose against a double
 * product on the models' shapes (older OpenBLAS builds computed wrong
 * results on some CPUs, which is why some machines pin OPENBLAS_CORETYPE).
 * Prints
 *   PEAK gflops=<best over sizes> n=<that size> core=<kernel> max_rel_err=<e>
 * and fails if the kernel's error exceeds float rounding. With --check it
 * only checks, and prints CHECK core=<kernel> max_rel_err=<e>.
 * Usage: peak [--check] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The largest error of C = A B (M x K times K x N, both shapes of the MLP
 * and the CNN) relative to the sum of |a b| terms, against double. */
static double kernel_error(void) {
  static const int shapes[][3] = {{128, 256, 784}, {64, 196, 288}, {288, 196, 64}, {64, 288, 196}, {128, 10, 128}};
  double worst = 0;
  unsigned seed = 1;
  for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
    const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
    float *a = malloc((size_t)M * K * sizeof *a), *b = malloc((size_t)K * N * sizeof *b),
          *c = malloc((size_t)M * N * sizeof *c);
    if (!a || !b || !c) {
      free(a), free(b), free(c);
      return -1;
    }
    for (long i = 0; i < (long)M * K; i++)
      a[i] = (float)(seed = seed * 1103515245u + 12345u) / 4294967296.0f - 0.5f;
    for (long i = 0; i < (long)K * N; i++)
      b[i] = (float)(seed = seed * 1103515245u + 12345u) / 4294967296.0f - 0.5f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
    for (int i = 0; i < M; i++)
      for (int j = 0; j < N; j++) {
        double want = 0, scale = 0;
        for (int k = 0; k < K; k++)
          want += (double)a[(long)i * K + k] * b[(long)k * N + j], scale += fabs((double)a[(long)i * K + k] * b[(long)k * N + j]);
        double err = fabs(c[(long)i * N + j] - want) / (scale > 0 ? scale : 1);
        if (err > worst)
          worst = err;
      }
    free(a), free(b), free(c);
  }
  return worst;
}

int main(int argc, char **argv) {
  const double err = kernel_error();
  if (err < 0 || err > 1e-5) {
    fprintf(stderr, "bench peak: OpenBLAS kernel %s gives a relative error of %g on the models' shapes (float rounding "
                    "is below 1e-6); its results cannot be trusted on this CPU, set OPENBLAS_CORETYPE\n",
            openblas_get_corename(), err);
    return 1;
  }
  if (argc > 1 && strcmp(argv[1], "--check") == 0) {
    printf("CHECK core=%s max_rel_err=%.2g\n", openblas_get_corename(), err);
    return 0;
  }
  static const int sizes[] = {256, 512, 1024, 2048};
  double best = 0;
  int best_n = 0;
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    int n = sizes[s];
    float *a = malloc((size_t)n * n * sizeof *a), *b = malloc((size_t)n * n * sizeof *b),
          *c = malloc((size_t)n * n * sizeof *c);
    if (!a || !b || !c) {
      fprintf(stderr, "bench peak: out of memory for %dx%d matrices\n", n, n);
      free(a), free(b), free(c);
      return 1;
    }
    for (long i = 0; i < (long)n * n; i++)
      a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    int reps = (int)(2e10 / (2.0 * n * n * n)) + 1; /* ~20 GFLOP per timing */
    for (int trial = 0; trial < 4; trial++) {       /* the first warms up */
      double t0 = now();
      for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
      double gflops = 2.0 * n * n * (double)n * reps / (now() - t0) / 1e9;
      if (trial > 0 && gflops > best)
        best = gflops, best_n = n;
    }
    free(a), free(b), free(c);
  }
  printf("PEAK gflops=%.1f n=%d core=%s max_rel_err=%.2g\n", best, best_n, openblas_get_corename(), err);
  return 0;
}
