/* Losses: values computed by hand, gradients against central differences
 * of double-precision references. */
#include <math.h>

#include "helpers.h"

#define H 1e-6

static double loss_of(loom_criterion *c, const float *z, const float *t, int64_t n, int64_t k, bool classes) {
  int64_t zs[2] = {n, k}, ts[1] = {classes ? n : n * k};
  loom_tensor *zt = loom_tensor_view((float *)z, k > 1 || classes ? 2 : 1, classes || k > 1 ? zs : ts);
  loom_tensor *tt = loom_tensor_view((float *)t, 1, ts);
  double l;
  assert_int_equal(loom_criterion_forward(c, zt, tt, &l), 0);
  loom_tensor_destroy(zt), loom_tensor_destroy(tt);
  return l;
}

static void test_hand_values(void **state) {
  (void)state;
  /* Cross-entropy with class weights [1, 3]: row 0 logits [0, ln 3] gives
   * p = [1/4, 3/4], target 0: -ln(1/4) weighted 1; row 1 [0, 0], target 1:
   * -ln(1/2) weighted 3; mean over the weights: (ln 4 + 3 ln 2) / 4. */
  const float w[2] = {1, 3};
  loom_cross_entropy_options o = {.weights = w, .num_weights = 2};
  loom_criterion *ce = loom_cross_entropy_create_ex(&o);
  const float z[4] = {0, logf(3), 0, 0}, t[2] = {0, 1};
  assert_true(fabs(loss_of(ce, z, t, 2, 2, true) - (log(4) + 3 * log(2)) / 4) < 1e-6);
  loom_criterion_destroy(ce);
  /* Label smoothing 0.2 over 2 classes: q = [0.9, 0.1] for target 0:
   * 0.9 ln 4 + 0.1 (-ln(3/4)) on row 0. */
  loom_cross_entropy_options s = {.label_smoothing = 0.2f};
  ce = loom_cross_entropy_create_ex(&s);
  assert_true(fabs(loss_of(ce, z, t, 1, 2, true) - (0.9 * log(4) - 0.1 * log(0.75))) < 1e-6);
  loom_criterion_destroy(ce);
  /* BCE with logits: z = [0, 2, -1], t = [1, 0, 0.5]:
   * ln 2, 2 + ln(1 + e^-2), 0.5 + ln(1 + e^-1); their mean. */
  const float bz[3] = {0, 2, -1}, bt[3] = {1, 0, 0.5f};
  loom_criterion *c = loom_bce_with_logits_create();
  assert_true(fabs(loss_of(c, bz, bt, 3, 1, false) - (log(2) + 2 + log1p(exp(-2)) + 0.5 + log1p(exp(-1))) / 3) < 1e-6);
  loom_criterion_destroy(c);
  /* d = z - t = [1, 0, -2]: MSE (1 + 0 + 4)/3, L1 (1 + 0 + 2)/3,
   * SmoothL1 (beta 1) (0.5 + 0 + 1.5)/3. */
  const float mz[3] = {1, 2, 3}, mt[3] = {0, 2, 5};
  c = loom_mse_create();
  assert_true(fabs(loss_of(c, mz, mt, 3, 1, false) - 5.0 / 3) < 1e-6);
  loom_criterion_destroy(c);
  c = loom_l1_create();
  assert_true(fabs(loss_of(c, mz, mt, 3, 1, false) - 1.0) < 1e-6);
  loom_criterion_destroy(c);
  c = loom_smooth_l1_create(1.0f);
  assert_true(fabs(loss_of(c, mz, mt, 3, 1, false) - 2.0 / 3) < 1e-6);
  loom_criterion_destroy(c);
  /* Bad inputs are errors. */
  const float bad[2] = {1, -1};
  loom_cross_entropy_options bo = {.weights = bad, .num_weights = 2};
  assert_null(loom_cross_entropy_create_ex(&bo));
  assert_null(loom_smooth_l1_create(0));
}

/* --- references for finite differences --- */

typedef struct ref {
  int kind; /* 0 CE(smoothing, weights), 1 BCE, 2 MSE, 3 L1, 4 SmoothL1 */
  const float *t;
  int64_t n, c;
  double smoothing, beta;
  const float *w;
} ref;

static double ref_loss(const ref *r, const double *z) {
  double total = 0, weights = 0;
  if (r->kind == 0) {
    for (int64_t i = 0; i < r->n; i++) {
      double max = z[i * r->c], s = 0;
      for (int64_t j = 1; j < r->c; j++)
        max = fmax(max, z[i * r->c + j]);
      for (int64_t j = 0; j < r->c; j++)
        s += exp(z[i * r->c + j] - max);
      double lse = log(s) + max;
      int64_t y = (int64_t)r->t[i];
      for (int64_t j = 0; j < r->c; j++) {
        double q = (j == y ? 1 - r->smoothing : 0) + r->smoothing / (double)r->c;
        total += (r->w ? r->w[j] : 1) * q * (lse - z[i * r->c + j]);
      }
      weights += r->w ? r->w[y] : 1;
    }
    return total / weights;
  }
  for (int64_t i = 0; i < r->n * r->c; i++) {
    double d = z[i] - r->t[i];
    switch (r->kind) {
    case 1: total += fmax(z[i], 0) - z[i] * r->t[i] + log1p(exp(-fabs(z[i]))); break;
    case 2: total += d * d; break;
    case 3: total += fabs(d); break;
    default: total += fabs(d) < r->beta ? 0.5 * d * d / r->beta : fabs(d) - 0.5 * r->beta; break;
    }
  }
  return total / (double)(r->n * r->c);
}

static void fd_check(loom_criterion *c, const ref *r, const float *z) {
  const int64_t n = r->n * r->c;
  int64_t zs[2] = {r->n, r->c}, ts[1] = {r->kind == 0 ? r->n : n};
  loom_tensor *zt = loom_tensor_view((float *)z, 2, zs), *tt = loom_tensor_view((float *)r->t, r->kind == 0 ? 1 : 2,
                                                                                r->kind == 0 ? ts : zs);
  double l;
  const loom_tensor *d;
  assert_int_equal(loom_criterion_forward(c, zt, tt, &l), 0);
  assert_int_equal(loom_criterion_backward(c, zt, tt, &d), 0);
  double *zd = malloc((size_t)n * sizeof *zd);
  for (int64_t i = 0; i < n; i++)
    zd[i] = z[i];
  if (fabs(l - ref_loss(r, zd)) > 1e-5 * fmax(1, fabs(l)))
    fail_msg("%s: loss %.8g, reference %.8g", loom_criterion_type(c), l, ref_loss(r, zd));
  for (int64_t i = 0; i < n; i++) {
    double keep = zd[i];
    zd[i] = keep + H;
    double up = ref_loss(r, zd);
    zd[i] = keep - H;
    double down = ref_loss(r, zd);
    zd[i] = keep;
    double want = (up - down) / (2 * H);
    if (fabs(loom_tensor_data(d)[i] - want) > 1e-4 * fmax(1, fabs(want)))
      fail_msg("%s: dz[%lld] %.8g, reference %.8g", loom_criterion_type(c), (long long)i, loom_tensor_data(d)[i], want);
  }
  free(zd);
  loom_tensor_destroy(zt), loom_tensor_destroy(tt);
}

static void test_gradients(void **state) {
  (void)state;
  enum { N = 6, C = 5 };
  loom_rng rng;
  loom_rng_seed(&rng, 4, 0, 0);
  float z[N * C], t[N * C], cls[N] = {0, 4, 2, 1, 3, 4}, w[C] = {1, 0.5f, 2, 3, 0.25f};
  for (int i = 0; i < N * C; i++) {
    z[i] = 4 * loom_rng_uniform(&rng) - 2;
    t[i] = loom_rng_uniform(&rng);
    /* keep L1 and SmoothL1 off their kinks */
    if (fabsf(z[i] - t[i]) < 0.05f || fabsf(fabsf(z[i] - t[i]) - 1) < 0.05f)
      z[i] += 0.2f;
  }
  loom_cross_entropy_options o = {.label_smoothing = 0.1f, .weights = w, .num_weights = C};
  loom_criterion *ces[2] = {loom_cross_entropy_create(), loom_cross_entropy_create_ex(&o)};
  for (int k = 0; k < 2; k++) {
    ref r = {0, cls, N, C, k ? 0.1 : 0, 0, k ? w : NULL};
    fd_check(ces[k], &r, z);
    loom_criterion_destroy(ces[k]);
  }
  loom_criterion *others[4] = {loom_bce_with_logits_create(), loom_mse_create(), loom_l1_create(),
                               loom_smooth_l1_create(1.0f)};
  for (int k = 0; k < 4; k++) {
    ref r = {k + 1, t, N, C, 0, 1.0, NULL};
    fd_check(others[k], &r, z);
    loom_criterion_destroy(others[k]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_hand_values), cmocka_unit_test(test_gradients)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
