/* bench/gemm: the models' matrix products on one core, OpenBLAS's sgemm
 * against loom_gemm_here (libxsmm's JIT kernel when loom uses libxsmm on
 * this machine, else the same sgemm). Shapes are row-major M x N x K as the
 * layers call them, with their transposes: linear32's, the MLP's per-core
 * parts and the CNN's per-chunk ones. Each side runs in three alternating
 * rounds of about 0.1 s; the fastest round counts. Prints a table, then
 *   RESULT gemm products=<libxsmm-avx512|openblas> geomean_speedup=<x>
 * Usage: gemm */
#include <cblas.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "backends/cpu/gemm.h"
#include "backends/cpu/xsmm_gemm.h"

typedef struct shape {
  const char *name;
  bool ta, tb;
  int M, N, K;
  float beta;
} shape;

static const shape shapes[] = {
    {"linear32 forward", false, true, 32, 10, 784, 1.0f},
    {"linear32 weight grad", true, false, 10, 784, 32, 1.0f},
    {"mlp fc1 forward (half)", false, true, 128, 128, 784, 1.0f},
    {"mlp fc1 weight grad (half)", true, false, 256, 392, 128, 1.0f},
    {"mlp fc2 forward (half)", false, true, 128, 64, 256, 1.0f},
    {"mlp fc2 input grad (half)", false, false, 64, 256, 128, 0.0f},
    {"mlp fc3 forward", false, true, 128, 10, 128, 1.0f},
    {"cnn conv1 forward (sample)", false, false, 32, 784, 9, 1.0f},
    {"cnn conv1 weight grad (sample)", false, true, 32, 9, 784, 1.0f},
    {"cnn winograd forward", false, false, 64, 196, 32, 0.0f},
    {"cnn winograd weight grad", false, true, 64, 32, 196, 1.0f},
    {"cnn winograd input grad", true, false, 32, 196, 64, 0.0f},
};

static float *filled(long n, unsigned *seed) {
  float *p = malloc((size_t)n * sizeof *p);
  for (long i = 0; p && i < n; i++)
    p[i] = (float)(*seed = *seed * 1103515245u + 12345u) / 4294967296.0f - 0.5f;
  return p;
}

/* Seconds per product: `reps` calls timed together, averaged. */
static double timed(const shape *s, bool loom, int reps, const float *A, const float *B, float *C) {
  const int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
  uint64_t t0 = uv_hrtime();
  for (int r = 0; r < reps; r++) {
    if (loom)
      loom_gemm_here(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, s->beta, C, s->N);
    else
      cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans, s->M, s->N,
                  s->K, 1.0f, A, lda, B, ldb, s->beta, C, s->N);
  }
  return 1e-9 * (double)(uv_hrtime() - t0) / reps;
}

int main(void) {
  openblas_set_num_threads(1);
  printf("%-32s %16s %10s %10s %10s %10s %8s\n", "product", "M x N x K", "blas_us", "blas_GF", "loom_us", "loom_GF",
         "speedup");
  double log_sum = 0;
  unsigned seed = 7;
  const int n_shapes = (int)(sizeof shapes / sizeof shapes[0]);
  for (int i = 0; i < n_shapes; i++) {
    const shape *s = &shapes[i];
    const double flop = 2.0 * s->M * s->N * s->K;
    float *A = filled((long)s->M * s->K, &seed), *B = filled((long)s->K * s->N, &seed),
          *C = filled((long)s->M * s->N, &seed);
    if (!A || !B || !C) {
      fprintf(stderr, "bench gemm: out of memory for %s\n", s->name);
      free(A), free(B), free(C);
      return 1;
    }
    const int reps = (int)fmax(20, 1e8 / flop); /* about 0.1 s per round at 100 GFLOP/s */
    double best[2] = {INFINITY, INFINITY};
    for (int round = 0; round < 3; round++)
      for (int side = 0; side < 2; side++)
        best[side] = fmin(best[side], timed(s, side, reps, A, B, C));
    char dims[32];
    snprintf(dims, sizeof dims, "%dx%dx%d", s->M, s->N, s->K);
    printf("%-32s %16s %10.1f %10.1f %10.1f %10.1f %8.2f\n", s->name, dims, best[0] * 1e6, flop / best[0] / 1e9,
           best[1] * 1e6, flop / best[1] / 1e9, best[0] / best[1]);
    log_sum += log(best[0] / best[1]);
    free(A), free(B), free(C);
  }
  printf("RESULT gemm products=%s geomean_speedup=%.2f\n", loom_xsmm_active() ? "libxsmm-avx512" : "openblas",
         exp(log_sum / n_shapes));
  return 0;
}
