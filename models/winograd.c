/* Winograd F(2x2, 3x3) (models/winograd.h). With d a 4x4 input tile, g a
 * 3x3 filter and Y the 2x2 output tile, Y = A^T [(G g G^T) . (B^T d B)] A.
 * Per sample the transformed input V[16][cin][tiles] and products
 * M[16][cout][tiles] stay in cache; the 16 products are single-threaded
 * OpenBLAS calls on the calling part's thread (core/parallel.h). */
#include "models/winograd.h"

#include <cblas.h>
#include <string.h>

#include "core/simd.h"

/* Each transform along one dimension; s is the stride between the values.
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]. */
LOOM_INLINE void bt(const float *d, int ds, float *v, int vs) {
  float d0 = d[0], d1 = d[ds], d2 = d[2 * ds], d3 = d[3 * ds];
  v[0] = d0 - d2, v[vs] = d1 + d2, v[2 * vs] = d2 - d1, v[3 * vs] = d1 - d3;
}

/* B, the adjoint of bt. */
LOOM_INLINE void b(const float *v, int vs, float *d, int ds) {
  float v0 = v[0], v1 = v[vs], v2 = v[2 * vs], v3 = v[3 * vs];
  d[0] = v0, d[ds] = v1 - v2 + v3, d[2 * ds] = v1 + v2 - v0, d[3 * ds] = -v3;
}

/* A^T = [1 1 1 0; 0 1 -1 -1]: 4 values to 2. */
LOOM_INLINE void at(const float *m, int ms, float *y, int ys) {
  float m0 = m[0], m1 = m[ms], m2 = m[2 * ms], m3 = m[3 * ms];
  y[0] = m0 + m1 + m2, y[ys] = m1 - m2 - m3;
}

/* A, the adjoint of at: 2 values to 4. */
LOOM_INLINE void a(const float *y, int ys, float *m, int ms) {
  float y0 = y[0], y1 = y[ys];
  m[0] = y0, m[ms] = y0 + y1, m[2 * ms] = y0 - y1, m[3 * ms] = -y1;
}

/* G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]: 3 values to 4. */
LOOM_INLINE void gt(const float *w, int ws, float *u, int us) {
  float w0 = w[0], w1 = w[ws], w2 = w[2 * ws];
  u[0] = w0, u[us] = 0.5f * (w0 + w1 + w2), u[2 * us] = 0.5f * (w0 - w1 + w2), u[3 * us] = w2;
}

/* G^T, the adjoint of gt: 4 values to 3. */
LOOM_INLINE void g(const float *u, int us, float *w, int ws) {
  float u0 = u[0], u1 = u[us], u2 = u[2 * us], u3 = u[3 * us];
  w[0] = u0 + 0.5f * (u1 + u2), w[ws] = 0.5f * (u1 - u2), w[2 * ws] = 0.5f * (u1 + u2) + u3;
}

void loom_wino_init(loom_wino *w, int64_t cin, int64_t cout, int64_t h, int64_t wd, int64_t ph, int64_t pw,
                    int64_t oh, int64_t ow) {
  *w = (loom_wino){.cin = cin, .cout = cout, .h = h, .w = wd, .ph = ph, .pw = pw, .oh = oh, .ow = ow};
  w->th = (oh + 1) / 2, w->tw = (ow + 1) / 2;
  w->tiles = w->th * w->tw;
}

int64_t loom_wino_scratch(const loom_wino *w) { return 16 * w->tiles * (w->cin + w->cout); }

void loom_wino_filters(const loom_wino *w, const float *wt, float *U) {
  const int64_t plane = w->cout * w->cin;
  for (int64_t k = 0; k < plane; k++) { /* k = o cin + c, as in wt */
    float t[12], u[16];
    for (int j = 0; j < 3; j++) /* columns: 3 rows to 4 */
      gt(wt + k * 9 + j, 3, t + j, 3);
    for (int i = 0; i < 4; i++) /* rows: 3 columns to 4 */
      gt(t + 3 * i, 1, u + 4 * i, 1);
    for (int xi = 0; xi < 16; xi++)
      U[xi * plane + k] = u[xi];
  }
}

void loom_wino_filters_adjoint(const loom_wino *w, const float *dU, float *dw) {
  const int64_t plane = w->cout * w->cin;
  for (int64_t k = 0; k < plane; k++) {
    float u[16], t[12];
    for (int xi = 0; xi < 16; xi++)
      u[xi] = dU[xi * plane + k];
    for (int i = 0; i < 4; i++)
      g(u + 4 * i, 1, t + 3 * i, 1);
    float d[9];
    for (int j = 0; j < 3; j++)
      g(t + j, 3, d + j, 3);
    for (int q = 0; q < 9; q++)
      dw[k * 9 + q] += d[q];
  }
}

/* V[16][cin][tiles] = B^T d B for every input tile d (zeros outside). */
LOOM_HOT static void transform_input(const loom_wino *w, const float *x, float *V) {
  const int64_t T = w->tiles, stride = w->cin * T;
  for (int64_t c = 0; c < w->cin; c++) {
    const float *xc = x + c * w->h * w->w;
    for (int64_t ty = 0; ty < w->th; ty++) {
      const int64_t iy = 2 * ty - w->ph;
      for (int64_t tx = 0; tx < w->tw; tx++) {
        const int64_t ix = 2 * tx - w->pw, t = ty * w->tw + tx;
        float d[16], r[16], v[16];
        if (iy >= 0 && iy + 4 <= w->h && ix >= 0 && ix + 4 <= w->w)
          for (int i = 0; i < 4; i++)
            memcpy(d + 4 * i, xc + (iy + i) * w->w + ix, 4 * sizeof *d);
        else
          for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
              int64_t y = iy + i, xx = ix + j;
              d[4 * i + j] = y >= 0 && y < w->h && xx >= 0 && xx < w->w ? xc[y * w->w + xx] : 0.0f;
            }
        for (int j = 0; j < 4; j++)
          bt(d + j, 4, r + j, 4);
        for (int i = 0; i < 4; i++)
          bt(r + 4 * i, 1, v + 4 * i, 1);
        for (int xi = 0; xi < 16; xi++)
          V[xi * stride + c * T + t] = v[xi];
      }
    }
  }
}

/* dx = the adjoint of transform_input applied to dV: B dV B^T added into
 * each tile's place, except where the tile lies on padding. */
LOOM_HOT static void transform_input_adjoint(const loom_wino *w, const float *dV, float *dx) {
  const int64_t T = w->tiles, stride = w->cin * T;
  memset(dx, 0, (size_t)(w->cin * w->h * w->w) * sizeof *dx);
  for (int64_t c = 0; c < w->cin; c++) {
    float *dxc = dx + c * w->h * w->w;
    for (int64_t ty = 0; ty < w->th; ty++) {
      const int64_t iy = 2 * ty - w->ph;
      for (int64_t tx = 0; tx < w->tw; tx++) {
        const int64_t ix = 2 * tx - w->pw, t = ty * w->tw + tx;
        float v[16], r[16], d[16];
        for (int xi = 0; xi < 16; xi++)
          v[xi] = dV[xi * stride + c * T + t];
        for (int i = 0; i < 4; i++)
          b(v + 4 * i, 1, r + 4 * i, 1);
        for (int j = 0; j < 4; j++)
          b(r + j, 4, d + j, 4);
        for (int i = 0; i < 4; i++)
          for (int j = 0; j < 4; j++) {
            int64_t y = iy + i, xx = ix + j;
            if (y >= 0 && y < w->h && xx >= 0 && xx < w->w)
              dxc[y * w->w + xx] += d[4 * i + j];
          }
      }
    }
  }
}

void loom_wino_forward(const loom_wino *w, const float *U, const float *bias, const float *x, float *y,
                       float *scratch) {
  const int64_t T = w->tiles, cin = w->cin, cout = w->cout;
  float *V = scratch, *M = scratch + 16 * cin * T;
  transform_input(w, x, V);
  for (int xi = 0; xi < 16; xi++)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)cout, (int)T, (int)cin, 1.0f, U + xi * cout * cin,
                (int)cin, V + xi * cin * T, (int)T, 0.0f, M + xi * cout * T, (int)T);
  const int64_t stride = cout * T;
  for (int64_t o = 0; o < cout; o++) {
    float *yo = y + o * w->oh * w->ow;
    const float b0 = bias ? bias[o] : 0.0f;
    for (int64_t t = 0; t < T; t++) {
      const int64_t oy = 2 * (t / w->tw), ox = 2 * (t % w->tw);
      float m[16], r[8], out[4];
      for (int xi = 0; xi < 16; xi++)
        m[xi] = M[xi * stride + o * T + t];
      for (int j = 0; j < 4; j++) /* columns: 4 rows to 2 */
        at(m + j, 4, r + j, 4);
      for (int i = 0; i < 2; i++) /* rows: 4 columns to 2 */
        at(r + 4 * i, 1, out + 2 * i, 1);
      for (int i = 0; i < 2 && oy + i < w->oh; i++)
        for (int j = 0; j < 2 && ox + j < w->ow; j++)
          yo[(oy + i) * w->ow + ox + j] = out[2 * i + j] + b0;
    }
  }
}

void loom_wino_backward(const loom_wino *w, const float *U, const float *x, const float *dy, float *dU, float *dx,
                        float *scratch) {
  const int64_t T = w->tiles, cin = w->cin, cout = w->cout, stride = cout * T;
  float *V = scratch, *dM = scratch + 16 * cin * T;
  /* dM = A dY A^T per output tile, the outputs past the edge counting 0. */
  for (int64_t o = 0; o < cout; o++) {
    const float *dyo = dy + o * w->oh * w->ow;
    for (int64_t t = 0; t < T; t++) {
      const int64_t oy = 2 * (t / w->tw), ox = 2 * (t % w->tw);
      float dt[4] = {0}, r[8], m[16];
      for (int i = 0; i < 2 && oy + i < w->oh; i++)
        for (int j = 0; j < 2 && ox + j < w->ow; j++)
          dt[2 * i + j] = dyo[(oy + i) * w->ow + ox + j];
      for (int i = 0; i < 2; i++)
        a(dt + 2 * i, 1, r + 4 * i, 1);
      for (int j = 0; j < 4; j++)
        a(r + j, 4, m + j, 4);
      for (int xi = 0; xi < 16; xi++)
        dM[xi * stride + o * T + t] = m[xi];
    }
  }
  if (dU) { /* dU[xi] += dM[xi] V[xi]^T */
    transform_input(w, x, V);
    for (int xi = 0; xi < 16; xi++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout, (int)cin, (int)T, 1.0f, dM + xi * cout * T,
                  (int)T, V + xi * cin * T, (int)T, 1.0f, dU + xi * cout * cin, (int)cin);
  }
  if (dx) { /* dV[xi] = U[xi]^T dM[xi], into V's place */
    for (int xi = 0; xi < 16; xi++)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)cin, (int)T, (int)cout, 1.0f, U + xi * cout * cin,
                  (int)cin, dM + xi * cout * T, (int)T, 0.0f, V + xi * cin * T, (int)T);
    transform_input_adjoint(w, V, dx);
  }
}
