/* Double-precision references shared by the layer tests: a plain
 * convolution and a relative-tolerance comparison. Include after helpers.h. */
#ifndef LOOM_TEST_REFERENCE_H
#define LOOM_TEST_REFERENCE_H

#include <math.h>
#include <stdint.h>

/* Input [c, h, w], o filters of kh x kw, strides, padding, dilation; the
 * output's oh x ow. */
typedef struct conv_ctx {
  int64_t c, h, w, o, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow;
} conv_ctx;

/* out = the convolution of x ([n, c, h, w]) with p (weights, then o biases). */
static inline void conv_ref(const void *vctx, const double *x, const double *p, double *out, int64_t n) {
  const conv_ctx *k = vctx;
  const double *wt = p, *b = p + k->o * k->c * k->kh * k->kw;
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < k->o; o++)
      for (int64_t oy = 0; oy < k->oh; oy++)
        for (int64_t ox = 0; ox < k->ow; ox++) {
          double s = b[o];
          for (int64_t c = 0; c < k->c; c++)
            for (int64_t ki = 0; ki < k->kh; ki++)
              for (int64_t kj = 0; kj < k->kw; kj++) {
                int64_t iy = oy * k->sh - k->ph + ki * k->dh, ix = ox * k->sw - k->pw + kj * k->dw;
                if (iy >= 0 && iy < k->h && ix >= 0 && ix < k->w)
                  s += wt[((o * k->c + c) * k->kh + ki) * k->kw + kj] * x[((i * k->c + c) * k->h + iy) * k->w + ix];
              }
          out[((i * k->o + o) * k->oh + oy) * k->ow + ox] = s;
        }
}

static inline void close_to(double got, double want, double tol, const char *what, int64_t i) {
  if (!(fabs(got - want) <= tol * fmax(1.0, fabs(want)))) /* NaN fails too */
    fail_msg("%s[%lld]: loom %.8g, reference %.8g", what, (long long)i, got, want);
}

#endif
