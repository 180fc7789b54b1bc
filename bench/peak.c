/* bench/peak: OpenBLAS sgemm throughput in loom's default thread setting,
 * the yardstick for each model's achieved GFLOP/s. Square products, best of
 * several runs; prints
 *   PEAK gflops=<best over sizes> n=<that size>
 * Usage: peak */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
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
  printf("PEAK gflops=%.1f n=%d\n", best, best_n);
  return 0;
}
