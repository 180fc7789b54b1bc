/* test_backend_ops: the criteria (cross-entropy, the pointwise losses) and
 * the accuracy's top-k hits. */
#include "backend_ops.h"

/* --- criteria --- */

/* The losses' sums are left in the backend's memory: read back here. */
static void xent_sums(loom_backend *b, const float *z, const float *t, const float *w, float smoothing, int64_t n,
                      int64_t c, float *probs, double *loss, double *wsum) {
  double *d = loom_backend_alloc(b, 2 * sizeof *d), host[2];
  assert_non_null(d);
  assert_int_equal(loom_backend_xent_forward(b, z, t, w, smoothing, n, c, probs, d), 0);
  assert_int_equal(loom_backend_to_host(b, host, d, sizeof host), 0);
  loom_backend_free(b, d);
  *loss = host[0], *wsum = host[1];
}

static double pointwise_sum(loom_backend *b, loom_pointwise_loss loss, float beta, const float *z, const float *t,
                            int64_t n) {
  double *d = loom_backend_alloc(b, sizeof *d), sum;
  assert_non_null(d);
  assert_int_equal(loom_backend_loss_forward(b, loss, beta, z, t, n, d), 0);
  assert_int_equal(loom_backend_to_host(b, &sum, d, sizeof sum), 0);
  loom_backend_free(b, d);
  return sum;
}

/* Softmax cross-entropy in double: the loss sum, the weight sum and the
 * gradient (dL/dz of loss_sum * scale), checked also by central
 * differences of the double loss. */
static double xent_ref(const float *z, const float *t, const float *w, double e, int64_t n, int64_t c, double *wsum) {
  double total = 0, ws = 0;
  for (int64_t i = 0; i < n; i++) {
    double max = z[i * c], lse = 0;
    for (int64_t j = 1; j < c; j++)
      max = fmax(max, z[i * c + j]);
    for (int64_t j = 0; j < c; j++)
      lse += exp(z[i * c + j] - max);
    lse = log(lse) + max;
    int64_t y = (int64_t)t[i];
    for (int64_t j = 0; j < c; j++) {
      double q = (j == y ? 1 - e : 0) + e / (double)c;
      total += (w ? w[j] : 1.0) * q * (lse - z[i * c + j]);
    }
    ws += w ? w[y] : 1.0;
  }
  *wsum = ws;
  return total;
}

static void check_xent(loom_backend *b, int64_t n, int64_t c, bool weighted, float smoothing) {
  float *z = malloc((size_t)(n * c) * sizeof *z), *t = malloc((size_t)n * sizeof *t), *w = malloc((size_t)c * sizeof *w),
        *probs = malloc((size_t)(n * c) * sizeof *probs), *dz = malloc((size_t)(n * c) * sizeof *dz);
  double *want = malloc((size_t)(n * c) * sizeof *want);
  fill(z, n * c, 10);
  for (int64_t i = 0; i < n * c; i++)
    z[i] *= 4.0f;
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 7) % c);
  fill(w, c, 11);
  for (int64_t j = 0; j < c; j++)
    w[j] = 0.5f + fabsf(w[j]);
  const float *wp = weighted ? w : NULL;
  double wsum_ref, loss_ref = xent_ref(z, t, wp, smoothing, n, c, &wsum_ref);

  float *d_z = upload(b, z, n * c), *d_t = upload(b, t, n), *d_w = upload(b, w, c), *d_p = upload(b, probs, n * c),
        *d_dz = upload(b, dz, n * c);
  double loss = 0, wsum = 0;
  xent_sums(b, d_z, d_t, weighted ? d_w : NULL, smoothing, n, c, d_p, &loss, &wsum);
  if (!(fabs(loss - loss_ref) <= 1e-5 * (fabs(loss_ref) + (double)n)) || !(fabs(wsum - wsum_ref) <= 1e-9 * wsum_ref))
    fail_msg("%s xent_forward %lldx%lld: loss %.9g want %.9g, weights %.9g want %.9g", loom_backend_name(b),
             (long long)n, (long long)c, loss, loss_ref, wsum, wsum_ref);
  const float scale = (float)(1.0 / wsum_ref);
  assert_int_equal(loom_backend_xent_backward(b, d_p, d_t, weighted ? d_w : NULL, smoothing, scale, n, c, d_dz), 0);
  download(b, dz, d_dz, n * c);
  const double h = 1e-3;
  for (int64_t k = 0; k < n * c; k++) {
    float keep = z[k];
    double up, down, ws;
    z[k] = keep + (float)h, up = xent_ref(z, t, wp, smoothing, n, c, &ws);
    z[k] = keep - (float)h, down = xent_ref(z, t, wp, smoothing, n, c, &ws);
    z[k] = keep;
    want[k] = (up - down) / (2 * h) * scale;
  }
  char what[96];
  snprintf(what, sizeof what, "%s xent_backward %lldx%lld w=%d e=%g", loom_backend_name(b), (long long)n, (long long)c,
           weighted, (double)smoothing);
  close_all(what, dz, want, NULL, n * c, 1e-3);
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_w), loom_backend_free(b, d_p),
      loom_backend_free(b, d_dz);
  free(z), free(t), free(w), free(probs), free(dz), free(want);
}

/* Many rows (several blocks of a device's reduction), forward only; then
 * one target at `bad` (< n) made no class: both sums NaN, as
 * loom/backend.h promises, nothing read out of range. */
static void check_xent_rows(loom_backend *b, int64_t n, int64_t c, int64_t bad) {
  float *z = malloc((size_t)(n * c) * sizeof *z), *t = malloc((size_t)n * sizeof *t);
  fill(z, n * c, 12);
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 3) % c);
  double wsum_ref, loss_ref = xent_ref(z, t, NULL, 0.0, n, c, &wsum_ref), loss, wsum;
  float *d_z = upload(b, z, n * c), *d_t = upload(b, t, n), *d_p = upload(b, z, n * c);
  xent_sums(b, d_z, d_t, NULL, 0.0f, n, c, d_p, &loss, &wsum);
  if (!(fabs(loss - loss_ref) <= 1e-6 * fabs(loss_ref)) || wsum != wsum_ref)
    fail_msg("%s xent_forward %lldx%lld: loss %.12g want %.12g, weights %.9g want %.9g", loom_backend_name(b),
             (long long)n, (long long)c, loss, loss_ref, wsum, wsum_ref);
  const float not_classes[] = {(float)c, -1.0f, 0.5f, NAN, 1e30f};
  for (size_t k = 0; k < sizeof not_classes / sizeof not_classes[0]; k++) {
    const float keep = t[bad];
    t[bad] = not_classes[k];
    assert_int_equal(loom_backend_from_host(b, d_t, t, (size_t)n * sizeof *t), 0);
    xent_sums(b, d_z, d_t, NULL, 0.0f, n, c, d_p, &loss, &wsum);
    if (!isnan(loss) || !isnan(wsum))
      fail_msg("%s xent_forward with target %g at %lld: loss %g, weights %g; expected NaN", loom_backend_name(b),
               (double)not_classes[k], (long long)bad, loss, wsum);
    t[bad] = keep;
  }
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_p);
  free(z), free(t);
}

static double pointwise_ref(loom_pointwise_loss loss, double beta, double z, double t) {
  double d = z - t;
  switch (loss) {
  case LOOM_LOSS_BCE_WITH_LOGITS: return -(t * log(1 / (1 + exp(-z))) + (1 - t) * log(1 - 1 / (1 + exp(-z))));
  case LOOM_LOSS_MSE: return d * d;
  case LOOM_LOSS_L1: return fabs(d);
  case LOOM_LOSS_SMOOTH_L1: return fabs(d) < beta ? 0.5 * d * d / beta : fabs(d) - 0.5 * beta;
  case LOOM_LOSS_COUNT: break;
  }
  return NAN;
}

static void check_pointwise(loom_backend *b, loom_pointwise_loss loss, float beta, int64_t n) {
  float *z = malloc((size_t)n * sizeof *z), *t = malloc((size_t)n * sizeof *t), *dz = malloc((size_t)n * sizeof *dz);
  double *want = malloc((size_t)n * sizeof *want);
  fill(z, n, 12), fill(t, n, 13);
  double sum_ref = 0;
  const double h = 1e-4;
  for (int64_t i = 0; i < n; i++) {
    z[i] *= 3.0f;
    if (loss == LOOM_LOSS_BCE_WITH_LOGITS)
      t[i] = fabsf(t[i]); /* probabilities */
    else if (fabsf(z[i] - t[i]) < 1e-3f || fabsf(fabsf(z[i] - t[i]) - beta) < 1e-3f)
      t[i] += 0.01f; /* away from the kinks, where the difference quotient straddles */
    sum_ref += pointwise_ref(loss, beta, z[i], t[i]);
    want[i] = (pointwise_ref(loss, beta, z[i] + h, t[i]) - pointwise_ref(loss, beta, z[i] - h, t[i])) / (2 * h) * 0.5;
  }
  float *d_z = upload(b, z, n), *d_t = upload(b, t, n), *d_dz = upload(b, dz, n);
  double sum = pointwise_sum(b, loss, beta, d_z, d_t, n);
  if (!(fabs(sum - sum_ref) <= 1e-5 * (fabs(sum_ref) + 1)))
    fail_msg("%s loss %d forward n=%lld: %.9g want %.9g", loom_backend_name(b), (int)loss, (long long)n, sum, sum_ref);
  assert_int_equal(loom_backend_loss_backward(b, loss, beta, d_z, d_t, 0.5f, n, d_dz), 0);
  download(b, dz, d_dz, n);
  char what[96];
  snprintf(what, sizeof what, "%s loss %d backward n=%lld", loom_backend_name(b), (int)loss, (long long)n);
  close_all(what, dz, want, NULL, n, 1e-5);
  loom_backend_free(b, d_z), loom_backend_free(b, d_t), loom_backend_free(b, d_dz);
  free(z), free(t), free(dz), free(want);
}

void test_criteria(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_XENT_FORWARD, LOOM_OP_XENT_BACKWARD, LOOM_OP_LOSS_FORWARD,
                                  LOOM_OP_LOSS_BACKWARD);
       i < n; i++) {
    check_xent(b[i], 1, 2, false, 0.0f);
    check_xent(b[i], 16, 10, false, 0.0f);
    check_xent(b[i], 16, 10, true, 0.0f);
    check_xent(b[i], 7, 5, true, 0.1f);
    check_xent(b[i], 5, 3, false, 0.2f);
    check_xent_rows(b[i], 3000, 10, 2999);
    check_xent_rows(b[i], 5, 4, 0);
    for (int loss = 0; loss < LOOM_LOSS_COUNT; loss++)
      for (int64_t n = 1; n <= 1000; n *= 10)
        check_pointwise(b[i], (loom_pointwise_loss)loss, loss == LOOM_LOSS_SMOOTH_L1 ? 0.5f : 0.0f, n);
  }
}

/* --- the accuracy's hits --- */

/* Sample i's target's place in its row sorted by score, highest first,
 * ties by class index: an insertion sort of the classes. */
static int64_t sorted_place(const float *x, int64_t c, int64_t y) {
  int64_t order[64];
  for (int64_t j = 0; j < c; j++) {
    int64_t k = j;
    for (; k > 0 && x[order[k - 1]] < x[j]; k--)
      order[k] = order[k - 1];
    order[k] = j;
  }
  for (int64_t k = 0; k < c; k++)
    if (order[k] == y)
      return k;
  return c;
}

static void check_topk(loom_backend *b, int64_t n, int64_t c, int64_t bad) {
  float *x = malloc((size_t)(n * c) * sizeof *x), *t = malloc((size_t)n * sizeof *t);
  fill(x, n * c, 21); /* every 7th a zero: ties */
  for (int64_t i = 0; i < n * c; i++)
    x[i] = roundf(x[i] * 4.0f) / 4.0f; /* more ties */
  for (int64_t i = 0; i < n; i++)
    t[i] = (float)((i * 5) % c);
  if (bad >= 0)
    t[bad] = bad % 2 ? (float)c : 0.5f;
  const int ks[] = {1, 3, 5, 1};
  int64_t want[4] = {0}, got[4], got_bad;
  for (int64_t i = 0; i < n; i++)
    for (int k = 0; k < 4 && i != bad; k++)
      want[k] += sorted_place(x + i * c, c, (int64_t)t[i]) < ks[k];
  float *d_x = upload(b, x, n * c), *d_t = upload(b, t, n);
  /* The counts land in the backend's memory, written over what was there. */
  int64_t counts[5], junk[5] = {7, -3, 1000, 2, 5};
  int64_t *d_counts = loom_backend_alloc(b, sizeof counts);
  assert_non_null(d_counts);
  assert_int_equal(loom_backend_from_host(b, d_counts, junk, sizeof junk), 0);
  assert_int_equal(loom_backend_topk_hits(b, d_x, d_t, n, c, ks, 4, d_counts, d_counts + 4), 0);
  assert_int_equal(loom_backend_to_host(b, counts, d_counts, sizeof counts), 0);
  memcpy(got, counts, sizeof got);
  got_bad = counts[4];
  assert_int_equal(got_bad, bad);
  for (int k = 0; k < 4; k++)
    if (got[k] != want[k])
      fail_msg("%s topk_hits %lldx%lld k=%d: %lld hits, want %lld", loom_backend_name(b), (long long)n, (long long)c,
               ks[k], (long long)got[k], (long long)want[k]);
  assert_int_equal(loom_backend_topk_hits(b, d_x, d_t, n, c, ks, 0, d_counts, d_counts + 4), LOOM_EINVAL);
  loom_backend_free(b, d_x), loom_backend_free(b, d_t), loom_backend_free(b, d_counts);
  free(x), free(t);
}

void test_topk_hits(void **state) {
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_TOPK_HITS); i < n; i++) {
    check_topk(b[i], 1, 1, -1);
    check_topk(b[i], 128, 10, -1);
    check_topk(b[i], 3000, 7, 2998);
    check_topk(b[i], 50, 64, 0);
  }
}
