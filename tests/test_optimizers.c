/* Optimizer steps against values computed by hand from torch.optim's
 * formulas (worked out in the comments). */
#include <math.h>

#include "helpers.h"

/* A model with exactly 3 parameters: Linear(2 -> 1) with bias. */
static loom_model *three_params(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(2, 1, true)), 0);
  int64_t in = 2;
  assert_int_equal(loom_model_build(m, 1, &in, 1), 0);
  assert_int_equal(loom_model_num_params(m), 3);
  return m;
}

static void set3(float *dst, float a, float b, float c) {
  dst[0] = a, dst[1] = b, dst[2] = c;
}

static void expect3(const float *p, double a, double b, double c) {
  const double want[3] = {a, b, c};
  for (int i = 0; i < 3; i++)
    if (fabs(p[i] - want[i]) > 2e-6 * fmax(1.0, fabs(want[i])))
      fail_msg("param %d: got %.9g, expected %.9g", i, p[i], want[i]);
}

static void test_sgd_plain_weight_decay(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* d = g + 0.01 p = [0.11, 0.18, -0.395]; p -= 0.1 d. */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 0.1f, 0.2f, -0.4f);
  loom_sgd_options o = {.lr = 0.1, .weight_decay = 0.01};
  loom_optimizer *opt = loom_sgd_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.989, -2.018, 0.5395);
  size_t n;
  assert_null(loom_optimizer_state(opt, &n)); /* plain SGD keeps no state */
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_sgd_momentum(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* g = [1, -1, 0.5] twice, lr 0.1, mu 0.9:
   * step 1: buf = g;            p = [0.9, -1.9, 0.45]
   * step 2: buf = 0.9 buf + g = 1.9 g; p -= 0.19 g = [0.71, -1.71, 0.355] */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
  loom_sgd_options o = {.lr = 0.1, .momentum = 0.9};
  loom_optimizer *opt = loom_sgd_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.9, -1.9, 0.45);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.71, -1.71, 0.355);
  size_t n;
  const float *buf = loom_optimizer_state(opt, &n);
  assert_int_equal(n, 3);
  expect3(buf, 1.9, -1.9, 0.95);
  assert_int_equal(loom_optimizer_steps(opt), 2);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_sgd_nesterov(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* step 1: buf = g; d = g + 0.9 buf = 1.9 g; p -= 0.19 g = [0.81, -1.81, 0.405]
   * step 2: buf = 1.9 g; d = g + 0.9 * 1.9 g = 2.71 g; p -= 0.271 g
   *         = [0.539, -1.539, 0.2695] */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
  loom_sgd_options o = {.lr = 0.1, .momentum = 0.9, .nesterov = true};
  loom_optimizer *opt = loom_sgd_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.81, -1.81, 0.405);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.539, -1.539, 0.2695);
  loom_optimizer_destroy(opt);
  /* Nesterov without momentum is refused, as in PyTorch. */
  loom_sgd_options bad = {.lr = 0.1, .nesterov = true};
  assert_null(loom_sgd_create(&bad));
  assert_non_null(strstr(loom_last_error(), "Nesterov"));
  loom_model_destroy(m);
}

static void test_sgd_momentum_dampening_weight_decay(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* lr 0.1, mu 0.5, dampening 0.5, wd 0.1, g = [1, 0, -1], p0 = [1, -2, 0.5]
   * step 1: d = g + 0.1 p = [1.1, -0.2, -0.95]; buf = d; p1 = p0 - 0.1 d
   *         = [0.89, -1.98, 0.595]
   * step 2: d = g + 0.1 p1 = [1.089, -0.198, -0.9405]
   *         buf = 0.5 buf + 0.5 d = [1.0945, -0.199, -0.94525]
   *         p2 = p1 - 0.1 buf = [0.78055, -1.9601, 0.689525] */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, 0.0f, -1.0f);
  loom_sgd_options o = {.lr = 0.1, .momentum = 0.5, .dampening = 0.5, .weight_decay = 0.1};
  loom_optimizer *opt = loom_sgd_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.89, -1.98, 0.595);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.78055, -1.9601, 0.689525);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_adam(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* lr 0.1, betas (0.9, 0.999). Step 1, g = [1, -1, 0.5]: m = 0.1 g,
   * v = 0.001 g^2; with the bias corrections m^ = g, v^ = g^2, so each
   * parameter moves by lr * sign(g): p = [0.9, -1.9, 0.4].
   * Step 2, g = [-1, -1, 0.5]: for p[0], m = 0.09 - 0.1 = -0.01,
   * v = 0.000999 + 0.001 = 0.001999, m^ = -0.01 / 0.19, v^ = 1:
   * p[0] = 0.9 + 0.1 * 0.01 / 0.19 = 0.90526316; the others repeat step 1. */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
  loom_adam_options o = loom_adam_defaults();
  o.lr = 0.1;
  loom_optimizer *opt = loom_adam_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.9, -1.9, 0.4);
  loom_model_grads(m)[0] = -1.0f;
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.9 + 0.1 * 0.01 / 0.19, -1.8, 0.3);
  size_t n;
  const float *s = loom_optimizer_state(opt, &n);
  assert_int_equal(n, 6); /* [m | v] */
  assert_true(fabs(s[0] - (-0.01)) < 1e-7);
  assert_true(fabs(s[3] - 0.001999) < 1e-8);
  assert_true(fabs(loom_optimizer_momentum(opt) - 0.9) < 1e-12);
  /* reset forgets the moments: the next step is a first step again. */
  loom_optimizer_reset(opt);
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.9, -1.9, 0.4);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_adam_weight_decay(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* Adam's L2: g' = g + wd p. With g = [0, 0, 0] and wd 0.5, p = [1, -2, 0.5]:
   * g' = [0.5, -1, 0.25], first step moves by lr * sign(g') = 0.01. */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 0.0f, 0.0f, 0.0f);
  loom_adam_options o = loom_adam_defaults();
  o.lr = 0.01;
  o.weight_decay = 0.5;
  loom_optimizer *opt = loom_adam_create(&o);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.99, -1.99, 0.49);
  loom_optimizer_destroy(opt);
  /* Invalid options are refused with a message. */
  o.beta1 = 1.0;
  assert_null(loom_adam_create(&o));
  assert_non_null(strstr(loom_last_error(), "beta1"));
  loom_model_destroy(m);
}

static void test_adamw(void **state) {
  (void)state;
  loom_model *m = three_params();
  /* lr 0.1, wd 0.1: p shrinks by 1 - 0.01 first, then the Adam step of
   * lr sign(g): [0.99 - 0.1, -1.98 + 0.1, 0.495 - 0.1]. */
  set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
  set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
  loom_adam_options o = loom_adamw_defaults();
  assert_true(o.weight_decay == 0.01);
  o.lr = 0.1;
  o.weight_decay = 0.1;
  loom_optimizer *opt = loom_adamw_create(&o);
  assert_string_equal(loom_optimizer_type(opt), "adamw");
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  expect3(loom_model_params(m), 0.89, -1.88, 0.395);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_rmsprop(void **state) {
  (void)state;
  /* lr 0.01, alpha 0.99, g = [1, -1, 0.5] twice.
   * step 1: v = 0.01 g^2, sqrt(v) = 0.1 |g|: each p moves by 0.01 x 10 sign(g).
   * step 2: v = 0.99 v + 0.01 g^2 = 0.0199 g^2: p0 -= 0.01 / sqrt(0.0199). */
  const double s2 = sqrt(0.0199);
  for (int variant = 0; variant < 3; variant++) {
    loom_model *m = three_params();
    set3(loom_model_params(m), 1.0f, -2.0f, 0.5f);
    set3(loom_model_grads(m), 1.0f, -1.0f, 0.5f);
    loom_rmsprop_options o = loom_rmsprop_defaults();
    if (variant == 1)
      o.momentum = 0.9; /* step 2: b = 0.9 x 10 + 1/sqrt(0.0199) */
    if (variant == 2)
      o.centered = true; /* step 1: sqrt(v - c^2) = sqrt(0.01 - 0.0001) */
    loom_optimizer *opt = loom_rmsprop_create(&o);
    assert_int_equal(loom_optimizer_step(opt, m), 0);
    if (variant == 2) {
      expect3(loom_model_params(m), 1 - 0.01 / sqrt(0.0099), -2 + 0.01 / sqrt(0.0099), 0.5 - 0.005 / sqrt(0.002475));
    } else {
      expect3(loom_model_params(m), 0.9, -1.9, 0.4);
      assert_int_equal(loom_optimizer_step(opt, m), 0);
      double p0 = variant == 0 ? 0.9 - 0.01 / s2 : 0.9 - 0.01 * (9 + 1 / s2);
      assert_true(fabs(loom_model_params(m)[0] - p0) < 2e-6);
    }
    loom_optimizer_destroy(opt);
    loom_model_destroy(m);
  }
  loom_rmsprop_options bad = loom_rmsprop_defaults();
  bad.alpha = 2;
  assert_null(loom_rmsprop_create(&bad));
}

static void test_groups_and_no_decay(void **state) {
  (void)state;
  /* fc1: Linear(2, 2) = 4 weights + 2 biases; fc2: Linear(2, 1) = 2 + 1. */
  const int64_t sizes[] = {2, 2, 1};
  loom_model *m = loom_mlp_create(sizes, 3, 1);
  size_t n = loom_model_num_params(m);
  assert_int_equal(n, 9);
  float before[9];
  memcpy(before, loom_model_params(m), sizeof before);
  for (size_t i = 0; i < n; i++)
    loom_model_grads(m)[i] = 1.0f;
  /* SGD lr 0.1, weight decay 0.2; fc2 in a group at half the rate, no decay;
   * biases spared decay. */
  loom_sgd_options o = {.lr = 0.1, .weight_decay = 0.2};
  loom_optimizer *opt = loom_sgd_create(&o);
  loom_param_group g = {.layers = (const char *[]){"fc2"}, .num_layers = 1, .lr_scale = 0.5, .weight_decay = 0};
  assert_int_equal(loom_optimizer_add_group(opt, &g), 0);
  loom_optimizer_set_no_decay_bias_norm(opt, true);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  const float *p = loom_model_params(m);
  for (int i = 0; i < 4; i++) /* fc1 weights: lr 0.1, decay 0.2 */
    assert_true(fabsf(p[i] - (before[i] - 0.1f * (1.0f + 0.2f * before[i]))) < 1e-6f);
  for (int i = 4; i < 6; i++) /* fc1 biases: no decay */
    assert_true(fabsf(p[i] - (before[i] - 0.1f)) < 1e-6f);
  for (int i = 6; i < 9; i++) /* fc2: lr 0.05, no decay */
    assert_true(fabsf(p[i] - (before[i] - 0.05f)) < 1e-6f);
  loom_param_group bad = {.layers = (const char *[]){""}, .num_layers = 1, .lr_scale = 1};
  assert_int_equal(loom_optimizer_add_group(opt, &bad), LOOM_EINVAL);
  loom_optimizer_destroy(opt);
  /* A group naming a layer the model lacks fails the first step, untouched. */
  opt = loom_sgd_create(&o);
  loom_param_group typo = {.layers = (const char *[]){"fc1", "fc9"}, .num_layers = 2, .lr_scale = 1};
  assert_int_equal(loom_optimizer_add_group(opt, &typo), 0);
  memcpy(before, p, sizeof before);
  assert_int_equal(loom_optimizer_step(opt, m), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "\"fc9\""));
  assert_memory_equal(p, before, sizeof before);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

/* A model large enough that the update is split over the pool: every
 * parameter must take the same first Adam step, lr * sign(g) (see
 * test_adam), and SGD's p - lr g, wherever the split falls. */
static void test_large_model_steps(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(300, 101, true)), 0);
  int64_t in = 300;
  assert_int_equal(loom_model_build(m, 1, &in, 1), 0);
  const size_t n = loom_model_num_params(m);
  assert_int_equal(n, 300 * 101 + 101);
  float *p = loom_model_params(m), *g = loom_model_grads(m);
  for (int pass = 0; pass < 2; pass++) {
    for (size_t i = 0; i < n; i++)
      p[i] = (float)(i % 13) * 0.25f, g[i] = (float)(i % 7) - 3.0f;
    loom_optimizer *opt;
    if (pass == 0) {
      loom_adam_options o = loom_adam_defaults();
      o.lr = 0.01;
      opt = loom_adam_create(&o);
    } else {
      loom_sgd_options o = {.lr = 0.01, .momentum = 0.9}; /* the first step: buffer = g */
      opt = loom_sgd_create(&o);
    }
    assert_int_equal(loom_optimizer_step(opt, m), 0);
    for (size_t i = 0; i < n; i++) {
      double gi = (double)(i % 7) - 3.0, want = (double)(i % 13) * 0.25;
      want -= pass == 0 ? (gi > 0 ? 0.01 : gi < 0 ? -0.01 : 0.0) : 0.01 * gi;
      if (fabs(p[i] - want) > 2e-6 * fmax(1.0, fabs(want)))
        fail_msg("%s param %zu: got %.9g, expected %.9g", pass == 0 ? "adam" : "sgd", i, p[i], want);
    }
    loom_optimizer_destroy(opt);
  }
  loom_model_destroy(m);
}

/* The checked step: with every gradient finite it equals the plain step bit
 * for bit; with one Inf or NaN anywhere (the first, a middle and the last
 * element, so in each core's slice) it changes nothing at all. A model of
 * 30,401 parameters takes the pooled path, a small one the serial one. */
static void test_checked_step(void **state) {
  (void)state;
  for (int size = 0; size < 2; size++) {
    loom_model *a = loom_model_create(), *b = loom_model_create();
    int64_t in = size ? 300 : 4, out = size ? 101 : 3;
    assert_int_equal(loom_model_add(a, "fc", loom_linear_create(in, out, true)), 0);
    assert_int_equal(loom_model_add(b, "fc", loom_linear_create(in, out, true)), 0);
    assert_int_equal(loom_model_build(a, 1, &in, 1), 0);
    assert_int_equal(loom_model_build(b, 1, &in, 1), 0);
    const size_t n = loom_model_num_params(a);
    loom_adam_options o = loom_adam_defaults();
    loom_optimizer *oa = loom_adam_create(&o), *ob = loom_adam_create(&o);
    for (int step = 0; step < 3; step++) {
      for (size_t i = 0; i < n; i++)
        loom_model_grads(a)[i] = loom_model_grads(b)[i] = (float)((i * 7 + (size_t)step) % 11) - 5.0f;
      bool finite = false;
      assert_int_equal(loom_optimizer_step(oa, a), 0);
      assert_int_equal(loom_optimizer_step_checked(ob, b, &finite), 0);
      assert_true(finite);
      assert_memory_equal(loom_model_params(a), loom_model_params(b), n * sizeof(float));
    }
    size_t ns;
    float *sb = loom_optimizer_state(ob, &ns);
    float *params = malloc(n * sizeof *params), *moments = malloc(ns * sizeof *moments);
    const size_t where[] = {0, n / 2, n - 1};
    const float bad[] = {NAN, INFINITY, -INFINITY};
    for (size_t w = 0; w < 3; w++) {
      memcpy(params, loom_model_params(b), n * sizeof *params);
      memcpy(moments, sb, ns * sizeof *moments);
      loom_model_grads(b)[where[w]] = bad[w];
      bool finite = true;
      assert_int_equal(loom_optimizer_step_checked(ob, b, &finite), 0);
      assert_false(finite);
      assert_memory_equal(loom_model_params(b), params, n * sizeof(float));
      assert_memory_equal(sb, moments, ns * sizeof(float));
      assert_int_equal(loom_optimizer_steps(ob), 3);
      loom_model_grads(b)[where[w]] = 1.0f;
    }
    free(params), free(moments);
    loom_optimizer_destroy(oa), loom_optimizer_destroy(ob);
    loom_model_destroy(a), loom_model_destroy(b);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sgd_plain_weight_decay), cmocka_unit_test(test_sgd_momentum),
      cmocka_unit_test(test_sgd_nesterov),           cmocka_unit_test(test_sgd_momentum_dampening_weight_decay),
      cmocka_unit_test(test_adam),                   cmocka_unit_test(test_adam_weight_decay),
      cmocka_unit_test(test_adamw),                  cmocka_unit_test(test_rmsprop),
      cmocka_unit_test(test_groups_and_no_decay),    cmocka_unit_test(test_large_model_steps),
      cmocka_unit_test(test_checked_step),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
