/* Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions of stride
 * and dilation 1 (Lavin and Gray, 2016): each 2x2 output tile is computed
 * from a 4x4 input tile with 16 multiplications per channel pair instead of
 * 36, as 16 small matrix products per few samples. Backward is the exact adjoint
 * of each linear step, so gradients are those of the computed forward. */
#ifndef LOOM_BACKENDS_CPU_WINOGRAD_H
#define LOOM_BACKENDS_CPU_WINOGRAD_H

#include <stdint.h>

typedef struct loom_wino {
  int64_t cin, cout, h, w, ph, pw, oh, ow;
  int64_t th, tw, tiles; /* 2x2 output tiles per sample: th x tw */
  int64_t chunk, row;     /* samples per product, and its columns: chunk x tiles */
  /* Scratch geometry: the transform matrices of each of the 16 products
   * lie vstride (input side) or mstride (output side) floats apart, and a
   * plane split by row and column parity is 4 planes of qh x qw. */
  int64_t vstride, mstride, qh, qw;
} loom_wino;

/* The tiling of an h x w input padded by ph, pw, giving oh x ow outputs. */
void loom_wino_init(loom_wino *g, int64_t cin, int64_t cout, int64_t h, int64_t w, int64_t ph, int64_t pw,
                    int64_t oh, int64_t ow);

/* Floats of scratch one thread needs for `chunk` samples. */
int64_t loom_wino_scratch(const loom_wino *g);

/* U[16][cout][cin] = G w G^T for weights w[cout][cin][3][3]. */
void loom_wino_filters(const loom_wino *g, const float *w, float *U);
/* dw[cout][cin][3][3] += G^T dU G: the adjoint of loom_wino_filters. */
void loom_wino_filters_adjoint(const loom_wino *g, const float *dU, float *dw);

/* y[n][cout][oh][ow] of samples x[n][cin][h][w], n <= chunk; bias may be
 * NULL. */
void loom_wino_forward(const loom_wino *g, const float *U, const float *bias, const float *x, int64_t n, float *y,
                       float *scratch);

/* The backward of n <= chunk samples from dy[n][cout][oh][ow]:
 * dU[16][cout][cin] += the transformed filters' gradient (unless dU is NULL)
 * and dx[n][cin][h][w] = the input gradient (unless dx is NULL). */
void loom_wino_backward(const loom_wino *g, const float *U, const float *x, const float *dy, int64_t n, float *dU,
                        float *dx, float *scratch);

#endif
