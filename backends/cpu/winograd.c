/* Winograd F(2x2, 3x3) (models/winograd.h). With d a 4x4 input tile, g a
 * 3x3 filter and Y the 2x2 output tile, Y = A^T [(G g G^T) . (B^T d B)] A.
 * For a few samples at a time the transformed input V[16][cin][samples x
 * tiles] and products M[16][cout][samples x tiles] stay in cache; the 16
 * products are single-threaded OpenBLAS calls on the calling part's thread
 * (core/parallel.h). */
#include "backends/cpu/winograd.h"

#include <string.h>

#include "backends/cpu/simd.h"
#include "backends/cpu/gemm.h"

/* Each transform along one dimension, on the values p[0], p[s], p[2s],
 * p[3s] (or fewer) of floats or of loom_f8 lanes.
 * B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; BT applies it, B (its
 * adjoint) its transpose. */
#define BT(in, is, out, os)                                                                                            \
  do {                                                                                                                 \
    __typeof__((in)[0]) i0_ = (in)[0], i1_ = (in)[is], i2_ = (in)[2 * (is)], i3_ = (in)[3 * (is)];                    \
    (out)[0] = i0_ - i2_, (out)[os] = i1_ + i2_, (out)[2 * (os)] = i2_ - i1_, (out)[3 * (os)] = i1_ - i3_;             \
  } while (0)
#define B(in, is, out, os)                                                                                             \
  do {                                                                                                                 \
    __typeof__((in)[0]) i0_ = (in)[0], i1_ = (in)[is], i2_ = (in)[2 * (is)], i3_ = (in)[3 * (is)];                    \
    (out)[0] = i0_, (out)[os] = i1_ - i2_ + i3_, (out)[2 * (os)] = i1_ + i2_ - i0_, (out)[3 * (os)] = -i3_;            \
  } while (0)
/* A^T = [1 1 1 0; 0 1 -1 -1]: 4 values to 2; A: 2 to 4. */
#define AT(in, is, out, os)                                                                                            \
  do {                                                                                                                 \
    __typeof__((in)[0]) i0_ = (in)[0], i1_ = (in)[is], i2_ = (in)[2 * (is)], i3_ = (in)[3 * (is)];                    \
    (out)[0] = i0_ + i1_ + i2_, (out)[os] = i1_ - i2_ - i3_;                                                           \
  } while (0)
#define A(in, is, out, os)                                                                                             \
  do {                                                                                                                 \
    __typeof__((in)[0]) i0_ = (in)[0], i1_ = (in)[is];                                                               \
    (out)[0] = i0_, (out)[os] = i0_ + i1_, (out)[2 * (os)] = i0_ - i1_, (out)[3 * (os)] = -i1_;                        \
  } while (0)
/* G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]: 3 values to 4; G^T: 4 to 3. */
#define GT(in, is, out, os)                                                                                            \
  do {                                                                                                                 \
    float i0_ = (in)[0], i1_ = (in)[is], i2_ = (in)[2 * (is)];                                                         \
    (out)[0] = i0_, (out)[os] = 0.5f * (i0_ + i1_ + i2_), (out)[2 * (os)] = 0.5f * (i0_ - i1_ + i2_),                  \
    (out)[3 * (os)] = i2_;                                                                                             \
  } while (0)
#define G(in, is, out, os)                                                                                             \
  do {                                                                                                                 \
    float i0_ = (in)[0], i1_ = (in)[is], i2_ = (in)[2 * (is)], i3_ = (in)[3 * (is)];                                   \
    (out)[0] = i0_ + 0.5f * (i1_ + i2_), (out)[os] = 0.5f * (i1_ - i2_), (out)[2 * (os)] = 0.5f * (i1_ + i2_) + i3_;   \
  } while (0)

typedef loom_f8 vec;
#define LANES LOOM_F8_LANES
#define LOAD(v, p) memcpy(&(v), (p), sizeof(v))
#define STORE(p, v) memcpy((p), &(v), sizeof(v))

void loom_wino_init(loom_wino *w, int64_t cin, int64_t cout, int64_t h, int64_t wd, int64_t ph, int64_t pw,
                    int64_t oh, int64_t ow) {
  *w = (loom_wino){.cin = cin, .cout = cout, .h = h, .w = wd, .ph = ph, .pw = pw, .oh = oh, .ow = ow};
  w->th = (oh + 1) / 2, w->tw = (ow + 1) / 2;
  w->tiles = w->th * w->tw;
  /* Samples per product: enough columns that packing the filters is shared
   * (docs/performance.md), few enough that V and M stay near the core's cache. */
  w->chunk = w->tiles >= 256 ? 1 : w->tiles >= 96 ? 2 : 4;
  w->row = w->chunk * w->tiles;
  /* A row of tiles is done LANES at a time, the last group running past
   * the row's end: into the next row, which is written after it, or into
   * LANES floats of slack after each product's matrix. */
  w->vstride = cin * w->row + LANES, w->mstride = cout * w->row + LANES;
  /* Tile (ty, tx) reads parity planes at rows ty, ty + 1 and columns from
   * tx to tx + LANES. */
  w->qh = w->th + 1, w->qw = (w->tw + LANES - 1) / LANES * LANES + LANES;
}

int64_t loom_wino_scratch(const loom_wino *w) { return 16 * (w->vstride + w->mstride) + 4 * w->qh * w->qw; }

void loom_wino_filters(const loom_wino *w, const float *wt, float *U) {
  const int64_t plane = w->cout * w->cin;
  for (int64_t k = 0; k < plane; k++) { /* k = o cin + c, as in wt */
    float t[12], u[16];
    for (int j = 0; j < 3; j++) /* columns: 3 rows to 4 */
      GT(wt + k * 9 + j, 3, t + j, 3);
    for (int i = 0; i < 4; i++) /* rows: 3 columns to 4 */
      GT(t + 3 * i, 1, u + 4 * i, 1);
    for (int xi = 0; xi < 16; xi++)
      U[xi * plane + k] = u[xi];
  }
}

void loom_wino_filters_adjoint(const loom_wino *w, const float *dU, float *dw) {
  const int64_t plane = w->cout * w->cin;
  for (int64_t k = 0; k < plane; k++) {
    float u[16], t[12], d[9];
    for (int xi = 0; xi < 16; xi++)
      u[xi] = dU[xi * plane + k];
    for (int i = 0; i < 4; i++)
      G(u + 4 * i, 1, t + 3 * i, 1);
    for (int j = 0; j < 3; j++)
      G(t + j, 3, d + j, 3);
    for (int q = 0; q < 9; q++)
      dw[k * 9 + q] += d[q];
  }
}

/* Q[2 (y % 2) + x % 2][y / 2][x / 2] = src[y - py][x - px]: the 4 values
 * of a tile's row and column parities then lie at the same offsets for
 * every tile, so LANES tiles are one load each. The rest of Q must be 0:
 * every plane of a call writes the same positions, so the caller zeroes Q
 * once per call, not per plane. */
LOOM_HOT static void split_parity(const loom_wino *w, const float *src, int64_t h, int64_t wd, int64_t py, int64_t px,
                                  float *Q) {
  const int64_t plane = w->qh * w->qw;
  for (int64_t y = 0; y < h; y++) {
    const int64_t yy = y + py;
    const float *row = src + y * wd;
    float *even = Q + 2 * (yy & 1) * plane + (yy >> 1) * w->qw, *odd = even + plane;
    /* row[2j] and row[2j + 1] land at the same j in two planes (offset by
     * px): one loop of pairs, which compilers vectorise, not a branch per value. */
    float *a = (px & 1) ? odd + (px - 1) / 2 : even + px / 2, *b = (px & 1) ? even + (px + 1) / 2 : odd + px / 2;
    int64_t j = 0;
    for (; 2 * j + 1 < wd; j++)
      a[j] = row[2 * j], b[j] = row[2 * j + 1];
    if (2 * j < wd)
      a[j] = row[2 * j];
  }
}

/* The inverse for the input gradient: dx[y][x] = Q's value at y + py, x + px. */
LOOM_HOT static void join_parity(const loom_wino *w, const float *Q, float *dst) {
  const int64_t plane = w->qh * w->qw;
  for (int64_t y = 0; y < w->h; y++) {
    const int64_t yy = y + w->ph;
    const float *even = Q + 2 * (yy & 1) * plane + (yy >> 1) * w->qw, *odd = even + plane;
    for (int64_t x = 0; x < w->w; x++) {
      const int64_t xx = x + w->pw;
      dst[y * w->w + x] = ((xx & 1) ? odd : even)[xx >> 1];
    }
  }
}

/* Where 4x4 input tile (ty, tx) has its value (i, j), in parity planes. */
LOOM_INLINE int64_t tile_at(const loom_wino *w, int i, int j, int64_t ty, int64_t tx) {
  return (2 * (i & 1) + (j & 1)) * w->qh * w->qw + (ty + i / 2) * w->qw + tx + j / 2;
}

/* Where sample s's tile row ty, tiles tx onwards, lies in channel (or
 * output channel) c's row of a transform matrix. */
LOOM_INLINE int64_t col_at(const loom_wino *w, int64_t c, int64_t s, int64_t ty, int64_t tx) {
  return c * w->row + s * w->tiles + ty * w->tw + tx;
}

/* V[xi][c][s tiles + tile] = B^T d B for every input tile d of samples
 * x[0, n) (zeros outside). Channels outermost: a group's overrun lands on
 * columns written later. */
LOOM_HOT static void transform_input(const loom_wino *w, const float *x, int64_t n, float *V, float *Q) {
  const int64_t hw = w->h * w->w;
  memset(Q, 0, (size_t)(4 * w->qh * w->qw) * sizeof *Q); /* the padding, for every plane */
  for (int64_t c = 0; c < w->cin; c++)
    for (int64_t s = 0; s < n; s++) {
      split_parity(w, x + (s * w->cin + c) * hw, w->h, w->w, w->ph, w->pw, Q);
      for (int64_t ty = 0; ty < w->th; ty++)
        for (int64_t tx = 0; tx < w->tw; tx += LANES) {
          vec d[16], r[16], v[16];
          for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
              LOAD(d[4 * i + j], Q + tile_at(w, i, j, ty, tx));
          for (int j = 0; j < 4; j++)
            BT(d + j, 4, r + j, 4);
          for (int i = 0; i < 4; i++)
            BT(r + 4 * i, 1, v + 4 * i, 1);
          for (int xi = 0; xi < 16; xi++)
            STORE(V + xi * w->vstride + col_at(w, c, s, ty, tx), v[xi]);
        }
    }
}

/* dx = the adjoint of transform_input applied to dV: B dV B^T of every
 * tile added into its place in parity planes, then the planes joined. */
LOOM_HOT static void transform_input_adjoint(const loom_wino *w, const float *dV, int64_t n, float *dx, float *Q) {
  const int64_t hw = w->h * w->w;
  const loom_i8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  for (int64_t s = 0; s < n; s++)
    for (int64_t c = 0; c < w->cin; c++) {
      memset(Q, 0, (size_t)(4 * w->qh * w->qw) * sizeof *Q);
      for (int64_t ty = 0; ty < w->th; ty++)
        for (int64_t tx = 0; tx < w->tw; tx += LANES) {
          const loom_i8 keep = lane < (loom_i8){0} + (int32_t)(w->tw - tx); /* past the row: other tiles */
          vec v[16], r[16], d[16];
          for (int xi = 0; xi < 16; xi++) {
            LOAD(v[xi], dV + xi * w->vstride + col_at(w, c, s, ty, tx));
            v[xi] = (vec)((loom_i8)v[xi] & keep);
          }
          for (int i = 0; i < 4; i++)
            B(v + 4 * i, 1, r + 4 * i, 1);
          for (int j = 0; j < 4; j++)
            B(r + j, 4, d + j, 4);
          for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
              float *q = Q + tile_at(w, i, j, ty, tx);
              vec sum;
              LOAD(sum, q);
              sum += d[4 * i + j];
              STORE(q, sum);
            }
        }
      join_parity(w, Q, dx + (s * w->cin + c) * hw);
    }
}

/* y[s][o] = A^T M A of every output tile, plus the bias. */
LOOM_HOT static void transform_output(const loom_wino *w, const float *M, const float *bias, int64_t n, float *y) {
  for (int64_t s = 0; s < n; s++)
    for (int64_t o = 0; o < w->cout; o++) {
      float *yo = y + (s * w->cout + o) * w->oh * w->ow;
      const vec b0 = (vec){0} + (bias ? bias[o] : 0.0f);
      for (int64_t ty = 0; ty < w->th; ty++)
        for (int64_t tx = 0; tx < w->tw; tx += LANES) {
          vec m[16], r[8], out[4];
          for (int xi = 0; xi < 16; xi++)
            LOAD(m[xi], M + xi * w->mstride + col_at(w, o, s, ty, tx));
          for (int j = 0; j < 4; j++) /* columns: 4 rows to 2 */
            AT(m + j, 4, r + j, 4);
          for (int i = 0; i < 2; i++) /* rows: 4 columns to 2 */
            AT(r + 4 * i, 1, out + 2 * i, 1);
          const int64_t k = w->tw - tx < LANES ? w->tw - tx : LANES;
          for (int i = 0; i < 2 && 2 * ty + i < w->oh; i++) {
            float *row = yo + (2 * ty + i) * w->ow + 2 * tx;
            const vec even = out[2 * i] + b0, odd = out[2 * i + 1] + b0;
            for (int64_t l = 0; l < k; l++) {
              row[2 * l] = even[l];
              if (2 * (tx + l) + 1 < w->ow)
                row[2 * l + 1] = odd[l];
            }
          }
        }
    }
}

/* dM[xi][o][s tiles + tile] = A dY A^T, the adjoint of transform_output;
 * outputs past the edge count 0. Output channels outermost, as
 * transform_input's channels. */
LOOM_HOT static void transform_output_adjoint(const loom_wino *w, const float *dy, int64_t n, float *dM, float *Q) {
  const int64_t ohw = w->oh * w->ow;
  memset(Q, 0, (size_t)(4 * w->qh * w->qw) * sizeof *Q); /* past the edges, for every plane */
  for (int64_t o = 0; o < w->cout; o++)
    for (int64_t s = 0; s < n; s++) {
      split_parity(w, dy + (s * w->cout + o) * ohw, w->oh, w->ow, 0, 0, Q);
      for (int64_t ty = 0; ty < w->th; ty++)
        for (int64_t tx = 0; tx < w->tw; tx += LANES) {
          vec dt[4], r[8], m[16];
          for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++)
              LOAD(dt[2 * i + j], Q + tile_at(w, i, j, ty, tx));
          for (int i = 0; i < 2; i++)
            A(dt + 2 * i, 1, r + 4 * i, 1);
          for (int j = 0; j < 4; j++)
            A(r + j, 4, m + j, 4);
          for (int xi = 0; xi < 16; xi++)
            STORE(dM + xi * w->mstride + col_at(w, o, s, ty, tx), m[xi]);
        }
    }
}

void loom_wino_forward(const loom_wino *w, const float *U, const float *bias, const float *x, int64_t n, float *y,
                       float *scratch) {
  const int64_t cin = w->cin, cout = w->cout, N = n * w->tiles;
  float *V = scratch, *M = V + 16 * w->vstride, *Q = M + 16 * w->mstride;
  transform_input(w, x, n, V, Q);
  for (int xi = 0; xi < 16; xi++) {
    loom_gemm_here(false, false, cout, N, cin, 1.0f, U + xi * cout * cin, cin, V + xi * w->vstride, w->row, 0.0f,
                   M + xi * w->mstride, w->row);
    memset(M + xi * w->mstride + cout * w->row, 0, LANES * sizeof *M); /* the slack the last group reads */
  }
  transform_output(w, M, bias, n, y);
}

void loom_wino_backward(const loom_wino *w, const float *U, const float *x, const float *dy, int64_t n, float *dU,
                        float *dx, float *scratch) {
  const int64_t cin = w->cin, cout = w->cout, N = n * w->tiles;
  float *V = scratch, *dM = V + 16 * w->vstride, *Q = dM + 16 * w->mstride;
  transform_output_adjoint(w, dy, n, dM, Q);
  if (dU) { /* dU[xi] += dM[xi] V[xi]^T */
    transform_input(w, x, n, V, Q);
    for (int xi = 0; xi < 16; xi++)
      loom_gemm_here(false, true, cout, cin, N, 1.0f, dM + xi * w->mstride, w->row, V + xi * w->vstride, w->row, 1.0f,
                     dU + xi * cout * cin, cin);
  }
  if (dx) { /* dV[xi] = U[xi]^T dM[xi], into V's place */
    for (int xi = 0; xi < 16; xi++)
      loom_gemm_here(true, false, cin, N, cout, 1.0f, U + xi * cout * cin, cin, dM + xi * w->mstride, w->row, 0.0f,
                     V + xi * w->vstride, w->row);
    transform_input_adjoint(w, V, n, dx, Q);
  }
}
