/* test_backend_ops: the optimizers' updates, update_ranges, the gradients'
 * whole-buffer ops and the deferred step's gate. */
#include "backend_ops.h"

/* --- the optimizers' updates and the gradients' whole-buffer ops --- */

/* n parameters, gradients and state (zero, or a previous step's) through
 * one update on the backend; the same formulas in double, step by step. */
static void check_updates(loom_backend *b, int64_t n) {
  float *p = malloc((size_t)n * sizeof *p), *g = malloc((size_t)n * sizeof *g),
        *s = malloc((size_t)(3 * n) * sizeof *s), *out = malloc((size_t)n * sizeof *out),
        *sout = malloc((size_t)(3 * n) * sizeof *sout);
  double *want = malloc((size_t)n * sizeof *want), *swant = malloc((size_t)(3 * n) * sizeof *swant);
  fill(p, n, 20), fill(g, n, 21), fill(s, 3 * n, 22);
  for (int64_t i = n; i < 3 * n; i++) /* second moments are squares */
    s[i] = s[i] * s[i];
  char what[96];
  for (int variant = 0; variant < 4; variant++) {
    /* SGD: momentum with dampening (not the first step), and Nesterov on the first */
    loom_sgd_step sg = {0.1, 0.01, 0.9, variant ? 0.0 : 0.25, variant == 1, variant == 1, NULL};
    for (int64_t i = 0; i < n; i++) {
      double d = (double)g[i] + sg.weight_decay * p[i];
      double buf = sg.first ? d : sg.momentum * s[i] + (1 - sg.dampening) * d;
      swant[i] = buf;
      want[i] = p[i] - sg.lr * (sg.nesterov ? d + sg.momentum * buf : buf);
    }
    float *dp = upload(b, p, n), *dg = upload(b, g, n), *ds = upload(b, s, 3 * n);
    assert_int_equal(loom_backend_sgd_update(b, &sg, dp, dg, ds, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s sgd_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-5);
    close_all(what, sout, swant, NULL, n, 1e-5);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);

    /* Adam (variant 0, 2) and AdamW (1, 3), at steps 1 and 7 */
    loom_adam_step ad = {1e-2, 0.1, 0.9, 0.999, 1e-8, variant < 2 ? 1 : 7, variant % 2 == 1, NULL};
    for (int64_t i = 0; i < n; i++) {
      double gi = (double)g[i] + (ad.decoupled ? 0 : ad.weight_decay * p[i]);
      double pi = p[i] * (ad.decoupled ? 1 - ad.lr * ad.weight_decay : 1);
      double m = ad.beta1 * s[i] + (1 - ad.beta1) * gi, v = ad.beta2 * s[n + i] + (1 - ad.beta2) * gi * gi;
      double bc1 = 1 - pow(ad.beta1, (double)ad.step), bc2 = 1 - pow(ad.beta2, (double)ad.step);
      swant[i] = m, swant[n + i] = v;
      want[i] = pi - ad.lr / bc1 * m / (sqrt(v) / sqrt(bc2) + ad.eps);
    }
    dp = upload(b, p, n), dg = upload(b, g, n), ds = upload(b, s, 3 * n);
    assert_int_equal(loom_backend_adam_update(b, &ad, dp, dg, ds, ds + n, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s adam_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-4);
    close_all(what, sout, swant, NULL, 2 * n, 1e-5);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);

    /* RMSprop: plain, centered, with momentum, both; a state [v | b | c]
     * with v - c^2 well away from 0, as a mean square and a mean give */
    loom_rmsprop_step rm = {1e-2, 0.01, 0.99, 1e-8, variant >= 2 ? 0.9 : 0.0, variant % 2 == 1, NULL};
    float *rs = malloc((size_t)(3 * n) * sizeof *rs);
    for (int64_t i = 0; i < n; i++)
      rs[i] = s[n + i] + 0.5f, rs[n + i] = s[i], rs[2 * n + i] = 0.3f * s[2 * n + i];
    for (int64_t i = 0; i < n; i++) {
      double gi = (double)g[i] + rm.weight_decay * p[i];
      double v = rm.alpha * rs[i] + (1 - rm.alpha) * gi * gi, c = rs[2 * n + i], buf = rs[n + i];
      if (rm.centered)
        c = rm.alpha * c + (1 - rm.alpha) * gi;
      double denom = sqrt(rm.centered ? v - c * c : v) + rm.eps;
      if (rm.momentum > 0)
        buf = rm.momentum * buf + gi / denom;
      swant[i] = v, swant[n + i] = buf, swant[2 * n + i] = c;
      want[i] = p[i] - rm.lr * (rm.momentum > 0 ? buf : gi / denom);
    }
    dp = upload(b, p, n), dg = upload(b, g, n), ds = upload(b, rs, 3 * n);
    free(rs);
    assert_int_equal(loom_backend_rmsprop_update(b, &rm, dp, dg, ds, ds + n, ds + 2 * n, n), 0);
    download(b, out, dp, n), download(b, sout, ds, 3 * n);
    snprintf(what, sizeof what, "%s rmsprop_update variant %d n=%lld", loom_backend_name(b), variant, (long long)n);
    close_all(what, out, want, NULL, n, 1e-4);
    close_all(what, sout, swant, NULL, 3 * n, 1e-4);
    loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);
  }
  free(p), free(g), free(s), free(out), free(sout), free(want), free(swant);
}

void test_optimizer_updates(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 33, 40000}; /* 40000: the pooled path */
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE, LOOM_OP_RMSPROP_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_updates(b[i], sizes[k]);
}

/* update_ranges (one launch on a device) against the rule's own op on the
 * CPU, range by range with each range's rate and decay: the same bits;
 * parameters and state between the ranges untouched; a set gate holds
 * the whole step back; ranges out of order refused. */
static void check_update_ranges(loom_backend *b, int64_t total) {
  const loom_update_range ranges[] = {{0, total / 4, 0.1, 0.01},
                                      {total / 4, total / 8, 0.05, 0.0},
                                      {total / 2, total / 4, 0.2, 0.001}, /* a gap before: a frozen layer */
                                      {total - total / 8, total / 8, 0.01, 0.0}};
  const int nr = 4;
  float *p = malloc((size_t)total * sizeof *p), *g = malloc((size_t)total * sizeof *g),
        *st = malloc((size_t)(3 * total) * sizeof *st), *want = malloc((size_t)(4 * total) * sizeof *want),
        *got = malloc((size_t)(4 * total) * sizeof *got);
  fill(p, total, 40), fill(g, total, 41), fill(st, 3 * total, 42);
  for (int64_t i = 0; i < 3 * total; i++)
    st[i] = fabsf(st[i]) + 0.25f; /* second moments, and v - c^2 > 0 */
  for (int rule = 0; rule < 3; rule++) {
    loom_update_step s = {.rule = (loom_update_rule)rule};
    if (rule == LOOM_RULE_SGD)
      s.u.sgd = (loom_sgd_step){0, 0, 0.9, 0.1, false, false, NULL};
    else if (rule == LOOM_RULE_ADAM)
      s.u.adam = (loom_adam_step){0, 0, 0.9, 0.999, 1e-8, 5, true, NULL};
    else
      s.u.rmsprop = (loom_rmsprop_step){0, 0, 0.99, 1e-8, 0.9, true, NULL};
    const int arrays = rule + 1;
    /* the reference: the CPU's own op per range, on host copies */
    memcpy(want, p, (size_t)total * sizeof *p), memcpy(want + total, st, (size_t)(arrays * total) * sizeof *st);
    for (int r = 0; r < nr; r++) {
      const int64_t o = ranges[r].off, n = ranges[r].len;
      float *wp = want + o, *ws = want + total;
      if (rule == LOOM_RULE_SGD) {
        loom_sgd_step k = s.u.sgd;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_sgd_update(loom_backend_cpu(), &k, wp, g + o, ws + o, n), 0);
      } else if (rule == LOOM_RULE_ADAM) {
        loom_adam_step k = s.u.adam;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_adam_update(loom_backend_cpu(), &k, wp, g + o, ws + o, ws + total + o, n), 0);
      } else {
        loom_rmsprop_step k = s.u.rmsprop;
        k.lr = ranges[r].lr, k.weight_decay = ranges[r].wd;
        assert_int_equal(loom_backend_rmsprop_update(loom_backend_cpu(), &k, wp, g + o, ws + o, ws + total + o,
                                                     ws + 2 * total + o, n),
                         0);
      }
    }
    for (int gated = 0; gated < 2; gated++) {
      float *dp = upload(b, p, total), *dg = upload(b, g, total), *ds = upload(b, st, arrays * total);
      int *gate = loom_backend_alloc(b, sizeof *gate), one = 1;
      assert_non_null(gate);
      assert_int_equal(loom_backend_from_host(b, gate, gated ? &one : &(int){0}, sizeof one), 0);
      loom_backend_set_update_gate(b, gate);
      assert_int_equal(loom_backend_update_ranges(b, &s, ranges, nr, dp, dg, ds, total), 0);
      loom_backend_set_update_gate(b, NULL);
      download(b, got, dp, total), download(b, got + total, ds, arrays * total);
      const size_t bytes = (size_t)((1 + arrays) * total) * sizeof *got;
      if (gated ? memcmp(got, p, (size_t)total * sizeof *p) || memcmp(got + total, st, bytes - (size_t)total * sizeof *p)
                : memcmp(got, want, bytes))
        fail_msg("%s update_ranges rule %d total %lld gated %d: not %s", loom_backend_name(b), rule, (long long)total,
                 gated, gated ? "held back" : "the ops' range by range");
      loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds), loom_backend_free(b, gate);
    }
    assert_true(memcmp(want, p, (size_t)total * sizeof *p) != 0);
  }
  const loom_update_range backwards[] = {{total / 2, 1, 0.1, 0}, {0, 1, 0.1, 0}};
  loom_update_step s = {LOOM_RULE_SGD, .u.sgd = {0, 0, 0, 0, false, false, NULL}};
  float *dp = upload(b, p, total), *dg = upload(b, g, total);
  assert_int_equal(loom_backend_update_ranges(b, &s, backwards, 2, dp, dg, NULL, total), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "not sorted"));
  loom_backend_free(b, dp), loom_backend_free(b, dg);
  free(p), free(g), free(st), free(want), free(got);
}

void test_update_ranges(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {8, 1000, 100003};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE, LOOM_OP_RMSPROP_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_update_ranges(b[i], sizes[k]);
}

void test_gradient_ops(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 100000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_SUM_SQUARES, LOOM_OP_ALL_FINITE, LOOM_OP_SCALE, LOOM_OP_CLAMP); i < nb;
       i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      const int64_t n = sizes[k];
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
      double *want = malloc((size_t)n * sizeof *want);
      fill(x, n, 23);
      double sum_ref = 0;
      for (int64_t j = 0; j < n; j++)
        sum_ref += (double)x[j] * x[j];
      float *d = upload(b[i], x, n);
      double sum = 0;
      assert_int_equal(loom_backend_sum_squares(b[i], d, n, &sum), 0);
      assert_true(fabs(sum - sum_ref) <= 1e-12 * (sum_ref + 1));
      bool finite = false;
      assert_int_equal(loom_backend_all_finite(b[i], d, n, &finite), 0);
      assert_true(finite);
      assert_int_equal(loom_backend_scale(b[i], d, -2.5f, n), 0);
      download(b[i], y, d, n);
      for (int64_t j = 0; j < n; j++)
        want[j] = (double)(x[j] * -2.5f);
      close_all("scale", y, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_clamp(b[i], d, 1.0f, n), 0);
      download(b[i], y, d, n);
      for (int64_t j = 0; j < n; j++)
        want[j] = fmin(1.0, fmax(-1.0, (double)(x[j] * -2.5f)));
      close_all("clamp", y, want, NULL, n, 0.0);
      /* one Inf, then one NaN, anywhere: the first element, the middle, the
       * last (the vector loop's and the scalar remainder's) */
      static const float bad[] = {INFINITY, -INFINITY, NAN};
      const int64_t at[] = {0, n / 2, n - 1};
      for (size_t v = 0; v < 3; v++)
        for (size_t w = 0; w < 3; w++) {
          const float kept = x[at[w]];
          x[at[w]] = bad[v];
          float *e = upload(b[i], x, n);
          assert_int_equal(loom_backend_all_finite(b[i], e, n, &finite), 0);
          assert_false(finite);
          loom_backend_free(b[i], e);
          x[at[w]] = kept;
        }
      loom_backend_free(b[i], d);
      free(x), free(y), free(want);
    }
}

/* The deferred step's gate: flag_nonfinite sets it for any non-finite
 * float or double and never clears it; an update with a set gate (in the
 * step, or the backend's) writes nothing, one with a clear gate is the
 * ungated update, bit for bit. */
static void check_gate(loom_backend *b, int64_t n) {
  float *x = malloc((size_t)n * sizeof *x), *s = malloc((size_t)(2 * n) * sizeof *s),
        *want = malloc((size_t)n * sizeof *want), *got = malloc((size_t)(2 * n) * sizeof *got);
  fill(x, n, 30), fill(s, 2 * n, 31);
  for (int64_t i = n; i < 2 * n; i++)
    s[i] = s[i] * s[i];
  const double sums_host[2] = {1.5, 4.0};
  float *dx = upload(b, x, n);
  double *dd = loom_backend_alloc(b, 2 * sizeof *dd);
  int *flag = loom_backend_alloc(b, sizeof *flag), host = -1, one = 1;
  assert_non_null(dd), assert_non_null(flag);
  assert_int_equal(loom_backend_from_host(b, dd, sums_host, sizeof sums_host), 0);
  assert_int_equal(loom_backend_zero(b, flag, sizeof *flag), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, n, dd, 2, flag), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, 0, dd, 0, flag), 0);
  assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
  assert_int_equal(host, 0);
  /* the first, middle and last float; then each double */
  const int64_t at[] = {0, n / 2, n - 1};
  for (int k = 0; k < 5; k++) {
    float *e = upload(b, x, n);
    double bad_sums[2] = {sums_host[0], sums_host[1]};
    if (k < 3) {
      const float inf = INFINITY;
      assert_int_equal(loom_backend_from_host(b, e + at[k], &inf, sizeof inf), 0);
    } else {
      bad_sums[k - 3] = NAN;
    }
    assert_int_equal(loom_backend_from_host(b, dd, bad_sums, sizeof bad_sums), 0);
    assert_int_equal(loom_backend_zero(b, flag, sizeof *flag), 0);
    assert_int_equal(loom_backend_flag_nonfinite(b, e, n, dd, 2, flag), 0);
    assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
    if (host != 1)
      fail_msg("%s flag_nonfinite n=%lld: case %d not flagged", loom_backend_name(b), (long long)n, k);
    loom_backend_free(b, e);
  }
  assert_int_equal(loom_backend_from_host(b, dd, sums_host, sizeof sums_host), 0);
  assert_int_equal(loom_backend_flag_nonfinite(b, dx, n, dd, 2, flag), 0); /* all finite: stays set */
  assert_int_equal(loom_backend_to_host(b, &host, flag, sizeof host), 0);
  assert_int_equal(host, 1);

  /* Updates: with the gate clear, as without one; set, nothing written. */
  float *p_ref = malloc((size_t)n * sizeof *p_ref);
  const loom_sgd_step sg = {0.1, 0.01, 0.9, 0.0, false, false, NULL};
  const loom_adam_step ad = {1e-2, 0.1, 0.9, 0.999, 1e-8, 3, false, NULL};
  for (int gate = -1; gate <= 1; gate++) { /* -1: no gate */
    for (int rule = 0; rule < 2; rule++) {
      float *dp = upload(b, x, n), *dg = upload(b, s + n, n), *ds = upload(b, s, 2 * n);
      if (gate >= 0)
        assert_int_equal(loom_backend_from_host(b, flag, gate ? &one : &(int){0}, sizeof *flag), 0);
      /* the gate as the step's field for SGD, as the backend's for Adam */
      loom_sgd_step sgs = sg;
      sgs.gate = gate >= 0 ? flag : NULL;
      if (rule == 0) {
        assert_int_equal(loom_backend_sgd_update(b, &sgs, dp, dg, ds, n), 0);
      } else {
        loom_backend_set_update_gate(b, gate >= 0 ? flag : NULL);
        assert_int_equal(loom_backend_adam_update(b, &ad, dp, dg, ds, ds + n, n), 0);
        loom_backend_set_update_gate(b, NULL);
      }
      download(b, got, dp, n), download(b, got + n, ds, n);
      if (gate == -1)
        memcpy(rule ? want : p_ref, got, (size_t)n * sizeof *got);
      const float *expect = gate == 1 ? x : rule ? want : p_ref;
      if (memcmp(got, expect, (size_t)n * sizeof *got) != 0 || (gate == 1 && memcmp(got + n, s, (size_t)n * sizeof *s)))
        fail_msg("%s %s_update n=%lld with gate %d: not %s", loom_backend_name(b), rule ? "adam" : "sgd", (long long)n,
                 gate, gate == 1 ? "held back" : "the ungated update");
      loom_backend_free(b, dp), loom_backend_free(b, dg), loom_backend_free(b, ds);
    }
  }
  assert_false(memcmp(p_ref, x, (size_t)n * sizeof *x) == 0); /* the updates did move p */

  /* set_if: x[0] only, and only while the flag is set */
  for (int set = 0; set < 2; set++) {
    assert_int_equal(loom_backend_from_host(b, flag, set ? &one : &(int){0}, sizeof *flag), 0);
    float *e = upload(b, x, n);
    assert_int_equal(loom_backend_set_if(b, flag, e, NAN), 0);
    download(b, got, e, n);
    assert_true(set ? isnan(got[0]) : got[0] == x[0]);
    assert_memory_equal(got + 1, x + 1, (size_t)(n - 1) * sizeof *x);
    loom_backend_free(b, e);
  }
  loom_backend_free(b, dx), loom_backend_free(b, dd), loom_backend_free(b, flag);
  free(x), free(s), free(want), free(got), free(p_ref);
}

void test_gate(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 100000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_FLAG_NONFINITE, LOOM_OP_SET_IF, LOOM_OP_SGD_UPDATE, LOOM_OP_ADAM_UPDATE); i < nb; i++)
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++)
      check_gate(b[i], sizes[k]);
}
