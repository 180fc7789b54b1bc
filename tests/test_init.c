/* Initialisation schemes against torch.nn.init's formulas: the sample
 * standard deviation and the uniform bound of 100K+ weights, the fans of a
 * convolution, bias handling, the layer filter and determinism. */
#include <math.h>

#include "helpers.h"

/* fc1: Linear 400 -> 300 (120K weights); conv: Conv2d 16 -> 32, 3x3 on 16x8x8. */
static loom_model *linear_model(void) {
  loom_model *m = loom_model_create();
  const int64_t shape[] = {400};
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(400, 300, true)), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(300, 10, true)), 0);
  assert_int_equal(loom_model_build(m, 1, shape, 7), 0);
  return m;
}

typedef struct stats {
  double mean, std, max_abs;
} stats;

static stats measure(const float *w, size_t n) {
  double sum = 0, sq = 0, mx = 0;
  for (size_t i = 0; i < n; i++) {
    sum += w[i];
    sq += (double)w[i] * w[i];
    mx = fmax(mx, fabs(w[i]));
  }
  double mean = sum / (double)n;
  return (stats){mean, sqrt(sq / (double)n - mean * mean), mx};
}

static void check_scheme(loom_init_scheme scheme, bool fan_out, double slope, double gain, double want_std) {
  loom_model *m = linear_model();
  loom_init init = {.scheme = scheme, .fan_out = fan_out, .negative_slope = slope, .gain = gain};
  assert_int_equal(loom_model_init_weights(m, &init, (const char *[]){"fc1"}, 1, 11), 0);
  stats s = measure(loom_model_params(m), 120000);
  assert_true(fabs(s.mean) < 0.01 * want_std);
  assert_true(fabs(s.std / want_std - 1.0) < 0.01);
  bool uniform = scheme == LOOM_INIT_KAIMING_UNIFORM || scheme == LOOM_INIT_XAVIER_UNIFORM;
  if (uniform) /* bound b = std sqrt(3), reached to within 0.1% */
    assert_true(s.max_abs <= want_std * sqrt(3.0) && s.max_abs > 0.999 * want_std * sqrt(3.0));
  else /* a normal's tail: some weights beyond 4 std among 120K */
    assert_true(s.max_abs > 4.0 * want_std);
  loom_model_destroy(m);
}

static void test_kaiming(void **state) {
  (void)state;
  check_scheme(LOOM_INIT_KAIMING_UNIFORM, false, 0, 0, sqrt(2.0 / 400));
  check_scheme(LOOM_INIT_KAIMING_NORMAL, false, 0, 0, sqrt(2.0 / 400));
  check_scheme(LOOM_INIT_KAIMING_NORMAL, true, 0, 0, sqrt(2.0 / 300));
  check_scheme(LOOM_INIT_KAIMING_UNIFORM, false, 0.2, 0, sqrt(2.0 / 1.04) / sqrt(400.0));
}

static void test_xavier(void **state) {
  (void)state;
  check_scheme(LOOM_INIT_XAVIER_UNIFORM, false, 0, 0, sqrt(2.0 / 700));
  check_scheme(LOOM_INIT_XAVIER_NORMAL, false, 0, 0, sqrt(2.0 / 700));
  check_scheme(LOOM_INIT_XAVIER_NORMAL, false, 0, 2.0, 2.0 * sqrt(2.0 / 700));
}

/* Only fc1's weights move; its bias is zeroed on request; fc2 and the rest
 * keep their values; the same seed gives the same weights. */
static void test_filter_bias_and_seed(void **state) {
  (void)state;
  loom_model *m = linear_model(), *twin = linear_model();
  size_t n = loom_model_num_params(m);
  float *before = malloc(n * sizeof *before);
  memcpy(before, loom_model_params(m), n * sizeof *before);
  loom_init init = {.scheme = LOOM_INIT_XAVIER_UNIFORM};
  assert_int_equal(loom_model_init_weights(m, &init, (const char *[]){"fc1"}, 1, 3), 0);
  const float *p = loom_model_params(m);
  assert_memory_not_equal(p, before, 120000 * sizeof *p);
  assert_memory_equal(p + 120000, before + 120000, (n - 120000) * sizeof *p); /* fc1 bias, fc2 */
  init.zero_bias = true;
  assert_int_equal(loom_model_init_weights(m, &init, (const char *[]){"fc1"}, 1, 3), 0);
  assert_int_equal(loom_model_init_weights(twin, &init, (const char *[]){"fc1"}, 1, 3), 0);
  assert_memory_equal(p, loom_model_params(twin), n * sizeof *p);
  for (int i = 0; i < 300; i++)
    assert_true(p[120000 + i] == 0.0f);
  assert_memory_equal(p + 120300, before + 120300, (n - 120300) * sizeof *p);
  /* Errors: an unknown layer, an unbuilt model; nothing changes. */
  assert_int_equal(loom_model_init_weights(m, &init, (const char *[]){"fc1", "fc7"}, 2, 3), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "\"fc7\""));
  loom_model *unbuilt = loom_model_create();
  assert_int_equal(loom_model_init_weights(unbuilt, &init, NULL, 0, 3), LOOM_ESTATE);
  loom_model_destroy(unbuilt);
  free(before);
  loom_model_destroy(m);
  loom_model_destroy(twin);
}

/* A convolution's fans count its kernel: in 16 x 3 x 3, out 32 x 3 x 3. */
static void test_conv_fans(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  loom_conv2d_options o = {.out_channels = 32, .kernel = {3, 3}, .padding = {1, 1}};
  const int64_t shape[] = {16, 8, 8};
  assert_int_equal(loom_model_add(m, "conv", loom_conv2d_create(&o)), 0);
  assert_int_equal(loom_model_build(m, 3, shape, 1), 0);
  loom_init init = {.scheme = LOOM_INIT_KAIMING_NORMAL, .fan_out = true};
  assert_int_equal(loom_model_init_weights(m, &init, NULL, 0, 5), 0);
  stats s = measure(loom_model_params(m), 32 * 16 * 9);
  assert_true(fabs(s.std / sqrt(2.0 / 288) - 1.0) < 0.05); /* 4608 weights: ~1% sampling error */
  init = (loom_init){.scheme = LOOM_INIT_XAVIER_UNIFORM};
  assert_int_equal(loom_model_init_weights(m, &init, NULL, 0, 5), 0);
  s = measure(loom_model_params(m), 32 * 16 * 9);
  assert_true(s.max_abs <= sqrt(6.0 / (144 + 288)));
  assert_true(fabs(s.std / sqrt(2.0 / (144 + 288)) - 1.0) < 0.05);
  loom_model_destroy(m);
}

/* A model too large for the machine is refused with its size before
 * anything is allocated (found by fuzzing: a config asked for a 4 GiB
 * layer, was granted it by overcommit, and the process died initialising
 * it). 2^40 parameters: 8 TiB with their gradients. */
static void test_too_large_a_model(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "huge", loom_linear_create(1 << 20, 1 << 20, false)), 0);
  int64_t in = 1 << 20;
  assert_int_equal(loom_model_build(m, 1, &in, 1), LOOM_ENOMEM);
  assert_non_null(strstr(loom_last_error(), "the model has 1099511627776 parameters: 8192.0 GiB"));
  assert_non_null(strstr(loom_last_error(), "make the layers smaller"));
  assert_false(loom_model_is_built(m));
  loom_model_destroy(m);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kaiming),
      cmocka_unit_test(test_xavier),
      cmocka_unit_test(test_filter_bias_and_seed),
      cmocka_unit_test(test_too_large_a_model),
      cmocka_unit_test(test_conv_fans),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
