/* test_backend_ops: convolution and pooling, forward and backward. */
#include "backend_ops.h"

#include "reference.h"

/* --- convolution --- */

static double *to_double(const float *x, int64_t n) {
  double *d = malloc((size_t)n * sizeof *d);
  for (int64_t i = 0; i < n; i++)
    d[i] = x[i];
  return d;
}

static conv_ctx conv_shape(const loom_conv_desc *d) {
  return (conv_ctx){d->cin, d->h, d->w, d->cout, d->kh, d->kw, d->sh, d->sw, d->ph, d->pw, d->dh, d->dw, d->oh, d->ow};
}

/* The input position that kernel tap (ki, kj) of output (oy, ox) reads;
 * false in the padding. */
static bool tap(const conv_ctx *k, int64_t oy, int64_t ox, int64_t ki, int64_t kj, int64_t *iy, int64_t *ix) {
  *iy = oy * k->sh - k->ph + ki * k->dh, *ix = ox * k->sw - k->pw + kj * k->dw;
  return *iy >= 0 && *iy < k->h && *ix >= 0 && *ix < k->w;
}

/* The exact gradients of conv_ref in double, with the absolute sums of
 * their terms: dx, dw (added to dw0) and db (added to db0). */
static void conv_grads_ref(const conv_ctx *k, const float *x, const float *w, const float *dy, int64_t n,
                           const float *dw0, const float *db0, double *dx, double *sdx, double *dw, double *sdw,
                           double *db, double *sdb) {
  const int64_t nx = n * k->c * k->h * k->w, nw = k->o * k->c * k->kh * k->kw;
  for (int64_t i = 0; i < nx; i++)
    dx[i] = sdx[i] = 0;
  for (int64_t i = 0; i < nw; i++)
    dw[i] = dw0[i], sdw[i] = fabs(dw0[i]);
  for (int64_t o = 0; o < k->o; o++)
    db[o] = db0[o], sdb[o] = fabs(db0[o]);
  for (int64_t i = 0; i < n; i++)
    for (int64_t o = 0; o < k->o; o++)
      for (int64_t oy = 0; oy < k->oh; oy++)
        for (int64_t ox = 0; ox < k->ow; ox++) {
          const double g = dy[((i * k->o + o) * k->oh + oy) * k->ow + ox];
          db[o] += g, sdb[o] += fabs(g);
          for (int64_t c = 0; c < k->c; c++)
            for (int64_t ki = 0; ki < k->kh; ki++)
              for (int64_t kj = 0; kj < k->kw; kj++) {
                int64_t iy, ix;
                if (!tap(k, oy, ox, ki, kj, &iy, &ix))
                  continue;
                const int64_t wi = ((o * k->c + c) * k->kh + ki) * k->kw + kj,
                              xi = ((i * k->c + c) * k->h + iy) * k->w + ix;
                dx[xi] += w[wi] * g, sdx[xi] += fabs(w[wi] * g);
                dw[wi] += x[xi] * g, sdw[wi] += fabs(x[xi] * g);
              }
        }
}

/* One layer's passes through `plan` (NULL: a plan of its own, made and
 * destroyed here) for n samples, against conv_ref's. */
static void check_conv(loom_backend *b, loom_conv_desc d, loom_plan *given, int64_t n) {
  d.oh = (d.h + 2 * d.ph - d.dh * (d.kh - 1) - 1) / d.sh + 1;
  d.ow = (d.w + 2 * d.pw - d.dw * (d.kw - 1) - 1) / d.sw + 1;
  const conv_ctx k = conv_shape(&d);
  const int64_t nx = n * d.cin * d.h * d.w, nw = d.cout * d.cin * d.kh * d.kw, ny = n * d.cout * d.oh * d.ow;
  float *x = malloc((size_t)nx * sizeof *x), *p = malloc((size_t)(nw + d.cout) * sizeof *p),
        *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx), *g = malloc((size_t)(nw + d.cout) * sizeof *g);
  fill(x, nx, 15), fill(p, nw + d.cout, 16), fill(dy, ny, 17), fill(g, nw + d.cout, 18);
  if (!d.bias)
    for (int64_t o = 0; o < d.cout; o++)
      p[nw + o] = 0; /* conv_ref's bias */
  /* The forward, and the scale of its terms. */
  double *xd = to_double(x, nx), *pd = to_double(p, nw + d.cout), *want = malloc((size_t)ny * sizeof *want),
         *scale = malloc((size_t)ny * sizeof *scale);
  conv_ref(&k, xd, pd, want, n);
  for (int64_t i = 0; i < nx; i++)
    xd[i] = fabs(xd[i]);
  for (int64_t i = 0; i < nw + d.cout; i++)
    pd[i] = fabs(pd[i]);
  conv_ref(&k, xd, pd, scale, n);
  double *dxw = malloc((size_t)nx * sizeof *dxw), *sdx = malloc((size_t)nx * sizeof *sdx),
         *dww = malloc((size_t)nw * sizeof *dww), *sdw = malloc((size_t)nw * sizeof *sdw),
         *dbw = malloc((size_t)d.cout * sizeof *dbw), *sdb = malloc((size_t)d.cout * sizeof *sdb);
  conv_grads_ref(&k, x, p, dy, n, g, g + nw, dxw, sdx, dww, sdw, dbw, sdb);

  loom_plan *plan = given;
  if (!given)
    assert_int_equal(loom_backend_conv_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_p = upload(b, p, nw + d.cout), *d_y = upload(b, y, ny), *d_dy = upload(b, dy, ny),
        *d_dx = upload(b, dx, nx), *d_g = upload(b, g, nw + d.cout);
  assert_int_equal(loom_backend_conv_forward(b, plan, d_x, d_p, d.bias ? d_p + nw : NULL, d_y, n), 0);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, d_g, d.bias ? d_g + nw : NULL, d_dx, n), 0);
  download(b, y, d_y, ny), download(b, dx, d_dx, nx), download(b, g, d_g, nw + d.cout);
  /* Winograd's transforms round more than a dot product does, and in
   * proportion to a whole tile's values, not to one output's terms: its
   * scale is floored at the largest. */
  const double tol = (double)(d.cin * d.kh * d.kw + 8) * (d.algorithm == LOOM_CONV_IM2COL ? 1 : 8) * 0x1p-24;
  if (d.algorithm != LOOM_CONV_IM2COL) {
    double *scales[] = {scale, sdx, sdw}, top[3] = {0};
    const int64_t len[] = {ny, nx, nw};
    for (int s = 0; s < 3; s++) {
      for (int64_t i = 0; i < len[s]; i++)
        top[s] = fmax(top[s], scales[s][i]);
      for (int64_t i = 0; i < len[s]; i++)
        scales[s][i] += top[s];
    }
  }
  char what[160];
  snprintf(what, sizeof what,
           "%s conv c%lld %lldx%lld o%lld k%lldx%lld s%lldx%lld p%lldx%lld d%lldx%lld alg %d bias %d n %lld",
           loom_backend_name(b), (long long)d.cin, (long long)d.h, (long long)d.w, (long long)d.cout, (long long)d.kh,
           (long long)d.kw, (long long)d.sh, (long long)d.sw, (long long)d.ph, (long long)d.pw, (long long)d.dh,
           (long long)d.dw, (int)d.algorithm, d.bias, (long long)n);
  print_message("%s\n", what);
  close_all("conv forward", y, want, scale, ny, tol);
  close_all("conv backward dx", dx, dxw, sdx, nx, tol);
  close_all("conv backward dw", g, dww, sdw, nw, (double)(n * d.oh * d.ow + 8) * 8 * 0x1p-24);
  if (d.bias)
    close_all("conv backward dbias", g + nw, dbw, sdb, d.cout, (double)(n * d.oh * d.ow + 8) * 0x1p-24);
  /* Without parameter gradients and without dx: nothing written. */
  float *g2 = malloc((size_t)(nw + d.cout) * sizeof *g2);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, NULL, NULL, NULL, n), 0);
  download(b, g2, d_g, nw + d.cout);
  assert_memory_equal(g, g2, (size_t)(nw + d.cout) * sizeof *g);
  /* Frozen weights: dx alone, overwriting what was there (NaN). */
  for (int64_t i = 0; i < nx; i++)
    dx[i] = NAN;
  float *d_dx2 = upload(b, dx, nx);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, NULL, NULL, d_dx2, n), 0);
  download(b, dx, d_dx2, nx), download(b, g2, d_g, nw + d.cout);
  close_all("conv backward dx alone", dx, dxw, sdx, nx, tol);
  assert_memory_equal(g, g2, (size_t)(nw + d.cout) * sizeof *g);
  /* No input gradient (a first layer): the parameters' alone, added to
   * what the first backward left. */
  conv_grads_ref(&k, x, p, dy, n, g, g + nw, dxw, sdx, dww, sdw, dbw, sdb);
  assert_int_equal(loom_backend_conv_backward(b, plan, d_x, d_p, d_dy, d_g, d.bias ? d_g + nw : NULL, NULL, n), 0);
  download(b, g, d_g, nw + d.cout);
  close_all("conv backward dw alone", g, dww, sdw, nw, (double)(n * d.oh * d.ow + 8) * 8 * 0x1p-24);
  if (d.bias)
    close_all("conv backward dbias alone", g + nw, dbw, sdb, d.cout, (double)(n * d.oh * d.ow + 8) * 0x1p-24);
  loom_backend_free(b, d_dx2);
  if (!given)
    loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_p), loom_backend_free(b, d_y), loom_backend_free(b, d_dy),
      loom_backend_free(b, d_dx), loom_backend_free(b, d_g);
  free(x), free(p), free(y), free(dy), free(dx), free(g), free(g2), free(xd), free(pd), free(want), free(scale);
  free(dxw), free(sdx), free(dww), free(sdw), free(dbw), free(sdb);
}

void test_conv(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* cin, h, w, cout, kernel, stride, padding, dilation; im2col and, where
   * it applies, Winograd (odd sizes: partial tiles), and AUTO between 8
   * and 8 channels (Winograd on the CPU). */
  static const loom_conv_desc shapes[] = {
      {.cin = 3, .h = 7, .w = 6, .cout = 4, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1},
      {.cin = 2, .h = 9, .w = 8, .cout = 3, .kh = 3, .kw = 2, .sh = 2, .sw = 1, .ph = 1, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 3, .h = 10, .w = 11, .cout = 2, .kh = 3, .kw = 3, .sh = 1, .sw = 2, .ph = 2, .pw = 2, .dh = 2, .dw = 2},
      {.cin = 1, .h = 5, .w = 5, .cout = 2, .kh = 5, .kw = 5, .sh = 1, .sw = 1, .ph = 0, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 3, .h = 5, .w = 7, .cout = 2, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 0, .pw = 0, .dh = 1, .dw = 1},
      {.cin = 8, .h = 6, .w = 7, .cout = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1},
  };
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int alg = LOOM_CONV_AUTO; alg <= LOOM_CONV_WINOGRAD; alg++) {
        loom_conv_desc d = shapes[s];
        const bool wino_applies = d.kh == 3 && d.kw == 3 && d.sh == 1 && d.sw == 1 && d.dh == 1 && d.dw == 1;
        if (alg == LOOM_CONV_WINOGRAD && !wino_applies)
          continue;
        d.algorithm = (loom_conv_algorithm)alg;
        d.bias = s % 2 == 0;
        check_conv(b[i], d, NULL, s % 2 ? 5 : 3); /* 5 samples: parts of uneven size, Winograd's chunk and a remainder */
      }
  /* A plan the backend cannot run is refused with a reason. */
  loom_conv_desc bad = shapes[1];
  bad.algorithm = LOOM_CONV_WINOGRAD;
  bad.oh = 5, bad.ow = 7;
  loom_plan *plan = (loom_plan *)&bad;
  assert_int_equal(loom_backend_conv_plan(loom_backend_cpu(), &bad, &plan), LOOM_EINVAL);
  assert_null(plan);
  assert_non_null(strstr(loom_last_error(), "Winograd"));
}

/* Plans of one shape and one plan over several batch sizes: on CUDA,
 * the algorithms searched once per shape and batch size, found again in
 * the process's cache by a later plan (test_conv has searched the first
 * of these) and by a plan that comes back to a batch size. */
void test_conv_shapes_again(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  const loom_conv_desc d = {.cin = 8, .h = 6, .w = 7, .cout = 9, .kh = 3, .kw = 3, .sh = 1, .sw = 1, .ph = 1, .pw = 1,
                            .dh = 1, .dw = 1, .oh = 6, .ow = 7, .algorithm = LOOM_CONV_AUTO};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD); i < nb; i++) {
    loom_plan *first, *second;
    assert_int_equal(loom_backend_conv_plan(b[i], &d, &first), 0);
    assert_int_equal(loom_backend_conv_plan(b[i], &d, &second), 0);
    check_conv(b[i], d, first, 5);
    check_conv(b[i], d, first, 2); /* a second batch size */
    check_conv(b[i], d, first, 5); /* back to the first */
    check_conv(b[i], d, second, 2);
    check_conv(b[i], d, second, 5);
    loom_backend_plan_destroy(b[i], first);
    loom_backend_plan_destroy(b[i], second);
  }
}

/* --- pooling --- */

/* Forward and backward in double: a max takes its window's first greatest
 * value, or its last NaN; an average divides by k^2 (padding counted). */
static void pool_ref(const loom_pool_desc *d, int64_t n, const float *x, const float *dy, double *y, double *dx) {
  const int64_t hw = d->h * d->w, ohw = d->oh * d->ow;
  for (int64_t i = 0; i < n * d->c * hw; i++)
    dx[i] = 0;
  for (int64_t q = 0; q < n * d->c; q++) {
    const float *in = x + q * hw;
    if (d->mode == LOOM_POOL_GLOBAL_AVG) {
      double s = 0;
      for (int64_t j = 0; j < hw; j++)
        s += in[j];
      y[q] = s / (double)hw;
      for (int64_t j = 0; j < hw; j++)
        dx[q * hw + j] = dy[q] / (double)hw;
      continue;
    }
    for (int64_t oy = 0; oy < d->oh; oy++)
      for (int64_t ox = 0; ox < d->ow; ox++) {
        double best = -INFINITY, sum = 0;
        int64_t at = -1;
        for (int64_t ky = 0; ky < d->k; ky++)
          for (int64_t kx = 0; kx < d->k; kx++) {
            int64_t iy = oy * d->s - d->p + ky, ix = ox * d->s - d->p + kx;
            if (iy < 0 || iy >= d->h || ix < 0 || ix >= d->w)
              continue;
            const double v = in[iy * d->w + ix];
            sum += v;
            if (at < 0 || v > best || isnan(v))
              best = v, at = iy * d->w + ix;
          }
        const int64_t o = q * ohw + oy * d->ow + ox;
        y[o] = d->mode == LOOM_POOL_MAX ? best : sum / (double)(d->k * d->k);
        if (d->mode == LOOM_POOL_MAX) {
          dx[q * hw + at] += dy[o];
          continue;
        }
        for (int64_t ky = 0; ky < d->k; ky++)
          for (int64_t kx = 0; kx < d->k; kx++) {
            int64_t iy = oy * d->s - d->p + ky, ix = ox * d->s - d->p + kx;
            if (iy >= 0 && iy < d->h && ix >= 0 && ix < d->w)
              dx[q * hw + iy * d->w + ix] += dy[o] / (double)(d->k * d->k);
          }
      }
  }
}

static void check_pool(loom_backend *b, loom_pool_desc d, int64_t n) {
  if (d.mode == LOOM_POOL_GLOBAL_AVG)
    d.oh = d.ow = 1;
  else
    d.oh = (d.h + 2 * d.p - d.k) / d.s + 1, d.ow = (d.w + 2 * d.p - d.k) / d.s + 1;
  const int64_t nx = n * d.c * d.h * d.w, ny = n * d.c * d.oh * d.ow;
  float *x = malloc((size_t)nx * sizeof *x), *y = malloc((size_t)ny * sizeof *y), *dy = malloc((size_t)ny * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx);
  double *want = malloc((size_t)ny * sizeof *want), *dwant = malloc((size_t)nx * sizeof *dwant);
  fill(x, nx, 19), fill(dy, ny, 20);
  if (d.mode == LOOM_POOL_MAX)
    x[nx / 2] = NAN; /* its window's max, and its gradient */
  pool_ref(&d, n, x, dy, want, dwant);
  loom_plan *plan;
  assert_int_equal(loom_backend_pool_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_y = upload(b, y, ny), *d_dy = upload(b, dy, ny), *d_dx = upload(b, dx, nx);
  assert_int_equal(loom_backend_pool_forward(b, plan, d_x, d_y, n), 0);
  assert_int_equal(loom_backend_pool_backward(b, plan, d_dy, d_dx, n), 0);
  download(b, y, d_y, ny), download(b, dx, d_dx, nx);
  char what[96];
  snprintf(what, sizeof what, "%s pool %d c%lld %lldx%lld k%lld s%lld p%lld", loom_backend_name(b), (int)d.mode,
           (long long)d.c, (long long)d.h, (long long)d.w, (long long)d.k, (long long)d.s, (long long)d.p);
  print_message("%s\n", what);
  close_all("pool forward", y, want, NULL, ny, d.mode == LOOM_POOL_MAX ? 0.0 : 1e-6);
  close_all("pool backward", dx, dwant, NULL, nx, 1e-6);
  loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

void test_pool(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* mode, c, h, w, _, _, k, s, p: 2x2 stride 2 (the CPU's short rows and
   * its 8-wide chunks), overlapping windows with padding, averages, the
   * global average */
  static const loom_pool_desc shapes[] = {
      {LOOM_POOL_MAX, 3, 6, 6, 0, 0, 2, 2, 0},       {LOOM_POOL_MAX, 2, 4, 18, 0, 0, 2, 2, 0},
      {LOOM_POOL_MAX, 2, 7, 5, 0, 0, 3, 2, 1},       {LOOM_POOL_MAX, 1, 5, 5, 0, 0, 3, 1, 1},
      {LOOM_POOL_AVG, 3, 6, 6, 0, 0, 2, 2, 0},       {LOOM_POOL_AVG, 2, 7, 5, 0, 0, 3, 2, 1},
      {LOOM_POOL_GLOBAL_AVG, 4, 5, 3, 0, 0, 1, 1, 0}, {LOOM_POOL_GLOBAL_AVG, 2, 1, 1, 0, 0, 1, 1, 0},
  };
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_POOL_FORWARD, LOOM_OP_POOL_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      check_pool(b[i], shapes[s], 3);
}
