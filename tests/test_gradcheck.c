/* loom_layer_gradcheck on a layer written as a user writes one (y = a x^2
 * elementwise, one parameter), right and wrong, with and without a double
 * reference, and on a built-in layer. */
#include <math.h>

#include "helpers.h"

typedef struct square {
  float *a, *da;
  int wrong; /* 1: dA off by 2x; 2: din left unwritten */
} square;

static size_t sq_params(void *d) { return (void)d, 1; }
static int sq_shape(void *d, int ndim, const int64_t *in, int *ondim, int64_t *out) {
  (void)d;
  *ondim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *in);
  return 0;
}
static void sq_bind(void *d, float *p, float *g, float *b) {
  (void)b;
  square *s = d;
  s->a = p, s->da = g;
}
static int sq_forward(void *d, const loom_tensor *in, loom_tensor *out, bool train, loom_rng *rng) {
  (void)train, (void)rng;
  square *s = d;
  const float *x = loom_tensor_data(in);
  float *y = loom_tensor_data(out);
  for (int64_t i = 0; i < loom_tensor_numel(in); i++)
    y[i] = *s->a * x[i] * x[i];
  return 0;
}
static int sq_backward(void *d, const loom_tensor *in, const loom_tensor *out, const loom_tensor *dout,
                       loom_tensor *din, bool param_grads) {
  (void)out;
  square *s = d;
  const float *x = loom_tensor_data(in), *dy = loom_tensor_data(dout);
  for (int64_t i = 0; i < loom_tensor_numel(in); i++) {
    if (param_grads)
      *s->da += (s->wrong == 1 ? 2 : 1) * dy[i] * x[i] * x[i];
    if (din && s->wrong != 2)
      loom_tensor_data(din)[i] = dy[i] * 2 * *s->a * x[i];
  }
  return 0;
}
static void sq_destroy(void *d) { free(d); }

static const loom_layer_ops square_ops = {.type = "square", .num_params = sq_params, .output_shape = sq_shape,
                                          .bind = sq_bind, .forward = sq_forward, .backward = sq_backward,
                                          .destroy = sq_destroy};

static loom_layer *square_layer(int wrong) {
  square *s = calloc(1, sizeof *s);
  s->wrong = wrong;
  return loom_layer_create(&square_ops, s);
}

/* The reference in double: out = p[0] x^2 over n samples of 3 values. */
static void square_ref(const void *ctx, const double *x, const double *p, double *out, int64_t n) {
  (void)ctx;
  for (int64_t i = 0; i < n * 3; i++)
    out[i] = p[0] * x[i] * x[i];
}

static void test_right_layer_passes(void **state) {
  (void)state;
  const int64_t shape[] = {3};
  loom_gradcheck_report rep;
  loom_layer *l = square_layer(0);
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, NULL, &rep), 0);
  assert_int_equal(rep.checked, 1 + 2 * 3); /* dA, then din of a batch of 2 */
  assert_true(rep.max_error < 1e-2);
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.reference = square_ref;
  o.batch = 4;
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, &o, &rep), 0);
  assert_int_equal(rep.checked, 12 + 1 + 12); /* forward, dA, din */
  assert_true(rep.max_error < 1e-4);
  loom_layer_destroy(l);
}

static void test_wrong_layer_fails(void **state) {
  (void)state;
  const int64_t shape[] = {3};
  loom_gradcheck_report rep;
  loom_layer *l = square_layer(1);
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, NULL, &rep), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "layer square: gradient check failed at dparam[0]: the layer gives"));
  assert_string_equal(rep.worst, "dparam[0]");
  assert_true(rep.max_error > 0.1);
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.reference = square_ref;
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, &o, &rep), LOOM_EINVAL);
  assert_string_equal(rep.worst, "dparam[0]");
  loom_layer_destroy(l);
  l = square_layer(2);
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, NULL, &rep), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "dinput[0]: the layer gives nan"));
  loom_layer_destroy(l);
}

/* A built-in layer, through the same check: Linear(3 -> 2) with bias. */
static void test_builtin_linear(void **state) {
  (void)state;
  const int64_t shape[] = {3};
  loom_gradcheck_report rep;
  loom_layer *l = loom_linear_create(3, 2, true);
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, NULL, &rep), 0);
  assert_int_equal(rep.checked, 8 + 6);
  loom_layer_destroy(l);
  assert_int_equal(loom_layer_gradcheck(NULL, 1, shape, NULL, NULL), LOOM_EINVAL);
}

/* A layer that takes its input size from the input (in_features 0)
 * counts its parameters once it has seen the shape: the check's storage
 * holds them all (it held only the bias's, and the weights overran it). */
static void test_inferred_input_size(void **state) {
  (void)state;
  const int64_t shape[] = {3};
  loom_gradcheck_report rep;
  loom_layer *l = loom_linear_create(0, 2, true);
  assert_int_equal(loom_layer_gradcheck(l, 1, shape, NULL, &rep), 0);
  assert_int_equal(rep.checked, 8 + 6); /* every parameter, every input */
  loom_layer_destroy(l);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_right_layer_passes),
      cmocka_unit_test(test_wrong_layer_fails),
      cmocka_unit_test(test_builtin_linear),
      cmocka_unit_test(test_inferred_input_size),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
