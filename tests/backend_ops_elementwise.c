/* test_backend_ops: the elementwise ops (fill_rows, sum_rows, the
 * activations, dropout, mul, add). */
#include "backend_ops.h"

/* --- fill_rows, sum_rows --- */

void test_rows(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t shapes[][2] = {{1, 1}, {4, 10}, {128, 256}, {7, 3}};
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_FILL_ROWS, LOOM_OP_SUM_ROWS); i < n; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
      const int64_t rows = shapes[s][0], cols = shapes[s][1];
      float *x = malloc((size_t)(rows * cols) * sizeof *x), *row = malloc((size_t)cols * sizeof *row),
            *sum = malloc((size_t)cols * sizeof *sum);
      double *want = malloc((size_t)(rows * cols) * sizeof *want), *scale = malloc((size_t)cols * sizeof *scale);
      fill(x, rows * cols, 4), fill(row, cols, 5), fill(sum, cols, 6);

      float *d_y = upload(b[i], x, rows * cols), *d_row = upload(b[i], row, cols);
      assert_int_equal(loom_backend_fill_rows(b[i], d_y, d_row, rows, cols), 0);
      download(b[i], x, d_y, rows * cols);
      for (int64_t k = 0; k < rows * cols; k++)
        want[k] = row[k % cols];
      close_all("fill_rows", x, want, NULL, rows * cols, 0.0);

      fill(x, rows * cols, 7);
      float *d_x = upload(b[i], x, rows * cols), *d_sum = upload(b[i], sum, cols);
      assert_int_equal(loom_backend_sum_rows(b[i], d_sum, d_x, rows, cols), 0);
      for (int64_t j = 0; j < cols; j++) {
        want[j] = sum[j], scale[j] = fabs(sum[j]);
        for (int64_t r = 0; r < rows; r++)
          want[j] += x[r * cols + j], scale[j] += fabs(x[r * cols + j]);
      }
      download(b[i], sum, d_sum, cols);
      close_all("sum_rows", sum, want, scale, cols, (double)(rows + 1) * 0x1p-24);
      loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_row), loom_backend_free(b[i], d_x),
          loom_backend_free(b[i], d_sum);
      free(x), free(row), free(sum), free(want), free(scale);
    }
}

/* --- activations --- */

static double act_ref(loom_activation act, double param, double x) {
  switch (act) {
  case LOOM_ACT_RELU: return isnan(x) ? x : x > 0 ? x : 0;
  case LOOM_ACT_LEAKY_RELU: return x > 0 ? x : param * x;
  case LOOM_ACT_GELU: return 0.5 * x * (1 + erf(x / sqrt(2.0)));
  case LOOM_ACT_TANH: return tanh(x);
  case LOOM_ACT_SIGMOID: return 1 / (1 + exp(-x));
  case LOOM_ACT_COUNT: break;
  }
  return NAN;
}

static void check_activation(loom_backend *b, loom_activation act, float param, int64_t n) {
  float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *dy = malloc((size_t)n * sizeof *dy),
        *dx = malloc((size_t)n * sizeof *dx);
  double *want = malloc((size_t)n * sizeof *want), *dwant = malloc((size_t)n * sizeof *dwant);
  fill(x, n, 8), fill(dy, n, 9);
  for (int64_t i = 0; i < n; i++)
    x[i] *= 3.0f; /* the curved parts of tanh, sigmoid and GELU */
  x[n - 1] = NAN; /* NaN in, NaN out */
  const double h = 1e-4;
  for (int64_t i = 0; i < n; i++) {
    want[i] = act_ref(act, param, x[i]);
    /* ReLU's and LeakyReLU's slopes are exact (0 counts as negative, as
     * PyTorch's); the smooth ones' by central differences of the double
     * reference. */
    double slope = act == LOOM_ACT_RELU         ? (x[i] > 0 ? 1.0 : 0.0)
                   : act == LOOM_ACT_LEAKY_RELU ? (x[i] > 0 ? 1.0 : param)
                                                : (act_ref(act, param, x[i] + h) - act_ref(act, param, x[i] - h)) / (2 * h);
    /* At a NaN, as PyTorch: ReLU's threshold_backward passes dy (its
     * output is NaN, not <= 0), LeakyReLU's scales it, the rest are NaN. */
    if (isnan(x[i]))
      slope = act == LOOM_ACT_RELU ? 1.0 : act == LOOM_ACT_LEAKY_RELU ? param : NAN;
    dwant[i] = dy[i] * slope;
  }
  float *d_x = upload(b, x, n), *d_y = upload(b, y, n), *d_dy = upload(b, dy, n), *d_dx = upload(b, dx, n);
  assert_int_equal(loom_backend_act_forward(b, act, param, d_x, d_y, n), 0);
  assert_int_equal(loom_backend_act_backward(b, act, param, d_x, d_y, d_dy, d_dx, n), 0);
  download(b, y, d_y, n), download(b, dx, d_dx, n);
  char what[96];
  snprintf(what, sizeof what, "%s activation %d forward, n=%lld", loom_backend_name(b), (int)act, (long long)n);
  close_all(what, y, want, NULL, n, 4 * 0x1p-24);
  snprintf(what, sizeof what, "%s activation %d backward, n=%lld", loom_backend_name(b), (int)act, (long long)n);
  close_all(what, dx, dwant, NULL, n, 2e-6); /* the differences' own error is ~h^2 */
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

void test_activations(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* 70000 elements: ReLU's pooled path */
  static const int64_t sizes[] = {1, 9, 1000, 70000};
  for (size_t i = 0, n = BACKENDS(b, LOOM_OP_ACT_FORWARD, LOOM_OP_ACT_BACKWARD); i < n; i++)
    for (int act = 0; act < LOOM_ACT_COUNT; act++)
      for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++)
        check_activation(b[i], (loom_activation)act, act == LOOM_ACT_LEAKY_RELU ? 0.01f : 0.0f, sizes[s]);
}

/* --- dropout, mul --- */

/* The documented counter rule, written out again here. */
static double counter_uniform_ref(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (double)(z >> 40) / 16777216.0;
}

void test_dropout(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 40000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_DROPOUT_FORWARD, LOOM_OP_MUL); i < nb; i++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      const int64_t n = sizes[s];
      const float p = 0.3f;
      const uint64_t key = 0x1234567890abcdefull + (uint64_t)s;
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *mask = malloc((size_t)n * sizeof *mask),
            *dx = malloc((size_t)n * sizeof *dx);
      double *want = malloc((size_t)n * sizeof *want), *want_mask = malloc((size_t)n * sizeof *want_mask);
      fill(x, n, 14);
      int64_t dropped = 0;
      for (int64_t k = 0; k < n; k++) {
        want_mask[k] = counter_uniform_ref(key, (uint64_t)k) < p ? 0.0 : (double)(1.0f / (1.0f - p));
        want[k] = (double)(x[k] * (float)want_mask[k]); /* one float product */
        dropped += want_mask[k] == 0.0;
      }
      float *d_x = upload(b[i], x, n), *d_y = upload(b[i], y, n), *d_m = upload(b[i], mask, n), *d_dx = upload(b[i], dx, n);
      assert_int_equal(loom_backend_dropout_forward(b[i], key, p, d_x, d_y, d_m, n), 0);
      download(b[i], y, d_y, n), download(b[i], mask, d_m, n);
      close_all("dropout mask", mask, want_mask, NULL, n, 0.0);
      close_all("dropout forward", y, want, NULL, n, 0.0);
      if (n >= 40000) /* the rule drops about p of them */
        assert_true(fabs((double)dropped / (double)n - p) < 0.01);
      assert_int_equal(loom_backend_mul(b[i], d_x, d_m, d_dx, n), 0); /* the backward: dy mask */
      download(b[i], dx, d_dx, n);
      close_all("mul", dx, want, NULL, n, 0.0);
      loom_backend_free(b[i], d_x), loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_m),
          loom_backend_free(b[i], d_dx);
      free(x), free(y), free(mask), free(dx), free(want), free(want_mask);
    }
}

/* --- add --- */

/* y = a + b into a third array and in place over either operand (a
 * residual block's sum, and its input's gradient from both branches):
 * one float sum per element. */
void test_add(void **state) {
  loom_backend *b[MAX_BACKENDS];
  static const int64_t sizes[] = {1, 100, 40000};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_ADD); i < nb; i++)
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
      const int64_t n = sizes[s];
      float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y), *got = malloc((size_t)n * sizeof *got);
      double *want = malloc((size_t)n * sizeof *want);
      fill(x, n, 21), fill(y, n, 22);
      x[0] = NAN; /* NaN in, NaN out */
      for (int64_t k = 0; k < n; k++)
        want[k] = (double)(x[k] + y[k]);
      float *d_x = upload(b[i], x, n), *d_y = upload(b[i], y, n), *d_out = upload(b[i], y, n);
      assert_int_equal(loom_backend_add(b[i], d_x, d_y, d_out, n), 0);
      download(b[i], got, d_out, n);
      close_all("add", got, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_add(b[i], d_x, d_y, d_y, n), 0); /* in place over b */
      download(b[i], got, d_y, n);
      close_all("add into b", got, want, NULL, n, 0.0);
      assert_int_equal(loom_backend_add(b[i], d_x, d_x, d_x, n), 0); /* a + a into a */
      download(b[i], got, d_x, n);
      for (int64_t k = 0; k < n; k++)
        want[k] = (double)(x[k] + x[k]);
      close_all("add into a", got, want, NULL, n, 0.0);
      loom_backend_free(b[i], d_x), loom_backend_free(b[i], d_y), loom_backend_free(b[i], d_out);
      free(x), free(y), free(got), free(want);
    }
}
