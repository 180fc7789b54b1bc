/* The fusions of the CPU backend's blocks (loom_backend_plan_block: a ReLU
 * into the BatchNorm before it, a pool into the BatchNorm before it, a
 * BatchNorm's statistics into the Conv2d before it), run by the model,
 * each against the same layers run apart (a layer with no descriptor is
 * one the backend does not know, so it runs alone): outputs,
 * gradients and running statistics bit for bit, in training and in
 * evaluation, and a check that the fusion really took place (the fused
 * model never calls the absorbed layer's passes, or the handed-over
 * statistics match a double reference). */
#include <math.h>

#include "helpers.h"
#include "reference.h"
#include "backends/cpu/nn.h"
#include "models/layer_internal.h"

/* A model of (name, layer) pairs ending with NULL, built for [c, h, w]. */
static loom_model *sequential(const int64_t shape[3], ...) {
  loom_model *m = loom_model_create();
  va_list ap;
  va_start(ap, shape);
  for (const char *name; (name = va_arg(ap, const char *)) != NULL;)
    assert_int_equal(loom_model_add(m, name, va_arg(ap, loom_layer *)), 0);
  va_end(ap);
  assert_int_equal(loom_model_build(m, 3, shape, 9), 0);
  return m;
}

static loom_layer *conv3x3(int64_t out, loom_conv_algorithm algorithm) {
  loom_conv2d_options c = {.out_channels = out, .kernel = {3, 3}, .padding = {1, 1}, .algorithm = algorithm};
  return loom_conv2d_create(&c);
}

/* One step of both models on x and dout: the same outputs, gradients and
 * buffers, bit for bit. */
static void same_step(loom_model *fused, loom_model *apart, const loom_tensor *x, const loom_tensor *dout,
                      bool train) {
  const loom_tensor *out[2];
  loom_model *ms[2] = {fused, apart};
  for (int k = 0; k < 2; k++) {
    loom_model_set_train(ms[k], train);
    loom_model_zero_grad(ms[k]);
    assert_int_equal(loom_model_forward(ms[k], x, &out[k]), 0);
    assert_int_equal(loom_model_backward(ms[k], dout), 0);
  }
  assert_memory_equal(loom_tensor_data(out[0]), loom_tensor_data(out[1]), loom_tensor_numel(dout) * sizeof(float));
  assert_memory_equal(loom_model_grads(fused), loom_model_grads(apart), loom_model_num_params(fused) * sizeof(float));
  assert_memory_equal(loom_model_buffers(fused), loom_model_buffers(apart),
                      loom_model_num_buffers(fused) * sizeof(float));
}

/* A batch of n samples [c, h, w] (values in a few repeated steps, so max
 * windows have ties, about `offset`) and an output gradient [n, k]. */
static void batch(int64_t n, int64_t c, int64_t h, int64_t w, float offset, int64_t k, loom_tensor **x,
                  loom_tensor **dout) {
  *x = loom_tensor_create(4, (int64_t[]){n, c, h, w});
  *dout = loom_tensor_create(2, (int64_t[]){n, k});
  for (int64_t i = 0; i < loom_tensor_numel(*x); i++)
    loom_tensor_data(*x)[i] = offset + (float)((i * 29) % 13) / 6.0f - 1.0f;
  for (int64_t i = 0; i < n * k; i++)
    loom_tensor_data(*dout)[i] = (float)(i % 7) - 3.0f;
}

/* --- BatchNorm + ReLU: the ReLU layer's own passes never run --- */

static int relu_calls;
static int (*relu_forward_op)(void *, const loom_tensor *, loom_tensor *, bool, loom_rng *);
static int counting_relu(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  relu_calls++;
  return relu_forward_op(data, x, y, train, rng);
}

static loom_model *bn_relu_model(bool fusable) {
  loom_layer *bn = loom_batchnorm_create(3, 1e-5f, 0.1f), *relu = loom_relu_create();
  if (!fusable)
    bn->describe = NULL;
  relu_forward_op = relu->ops.forward;
  relu->ops.forward = counting_relu;
  return sequential((int64_t[]){2, 5, 5}, "conv", conv3x3(3, LOOM_CONV_AUTO), "bn", bn, "relu", relu, "flat",
                    loom_flatten_create(), "fc", loom_linear_create(0, 4, true), NULL);
}

static void test_fused_bn_relu(void **state) {
  (void)state;
  loom_model *fused = bn_relu_model(true), *apart = bn_relu_model(false);
  loom_tensor *x, *dout;
  batch(6, 2, 5, 5, 0.0f, 4, &x, &dout);
  for (int train = 1; train >= 0; train--) {
    relu_calls = 0;
    same_step(fused, apart, x, dout, train);
    assert_int_equal(relu_calls, 1); /* the unfused model's only */
  }
  loom_tensor_destroy(x), loom_tensor_destroy(dout);
  loom_model_destroy(fused), loom_model_destroy(apart);
}

/* --- BatchNorm (with and without its ReLU) + max, overlapping max,
 * average and global average pooling: BatchNorm runs the pool's forward
 * and backward; the unfused model's pool has no descriptor, so it is not
 * fused --- */

static int pool_backward_calls, pool_forward_calls;
static int (*pool_forward_op)(void *, const loom_tensor *, loom_tensor *, bool, loom_rng *);
static int counting_pool_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  pool_forward_calls++;
  return pool_forward_op(data, x, y, train, rng);
}
static int (*pool_backward_op)(void *, const loom_tensor *, const loom_tensor *, const loom_tensor *, loom_tensor *,
                               bool);
static int counting_pool_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                                  loom_tensor *dx, bool param_grads) {
  pool_backward_calls++;
  return pool_backward_op(data, x, y, dy, dx, param_grads);
}

static loom_model *bn_pool_model(bool relu, int kind, bool fusable) {
  loom_layer *pool = kind == 0   ? loom_maxpool2d_create(2, 2, 0)
                     : kind == 1 ? loom_maxpool2d_create(3, 2, 1)
                     : kind == 2 ? loom_avgpool2d_create(2, 2, 0)
                                 : loom_global_avgpool_create();
  pool_forward_op = pool->ops.forward, pool_backward_op = pool->ops.backward;
  if (!fusable)
    pool->describe = NULL;
  loom_layer *conv = conv3x3(3, LOOM_CONV_AUTO), *bn = loom_batchnorm_create(3, 1e-5f, 0.1f);
  const int64_t shape[3] = {2, 6, 6};
  loom_model *m = relu ? sequential(shape, "conv", conv, "bn", bn, "relu", loom_relu_create(), "pool", pool, "flat",
                                    loom_flatten_create(), "fc", loom_linear_create(0, 4, true), NULL)
                       : sequential(shape, "conv", conv, "bn", bn, "pool", pool, "flat", loom_flatten_create(), "fc",
                                    loom_linear_create(0, 4, true), NULL);
  /* Counted from here on: the fused model never calls them. */
  pool->ops.forward = counting_pool_forward;
  pool->ops.backward = counting_pool_backward;
  return m;
}

static void test_fused_bn_pool(void **state) {
  (void)state;
  loom_tensor *x, *dout;
  batch(5, 2, 6, 6, 0.0f, 4, &x, &dout);
  for (int relu = 0; relu < 2; relu++)
    for (int kind = 0; kind < 4; kind++) {
      loom_model *fused = bn_pool_model(relu, kind, true), *apart = bn_pool_model(relu, kind, false);
      for (int train = 1; train >= 0; train--) {
        pool_backward_calls = pool_forward_calls = 0;
        same_step(fused, apart, x, dout, train);
        assert_int_equal(pool_forward_calls, 1); /* the unfused model's */
        assert_int_equal(pool_backward_calls, 1);
        /* the gradient reached the convolution under BatchNorm */
        size_t off, count;
        loom_model_layer_params(fused, 0, &off, &count);
        double norm = 0;
        for (size_t i = 0; i < count; i++)
          norm += fabs(loom_model_grads(fused)[off + i]);
        assert_true(norm > 0);
      }
      loom_model_destroy(fused), loom_model_destroy(apart);
    }
  loom_tensor_destroy(x), loom_tensor_destroy(dout);
}

/* --- Conv2d (im2col or Winograd) + BatchNorm: the convolution computes
 * its output planes' moments for the BatchNorm; the unfused model's
 * convolution has no descriptor, so it is not fused --- */

static loom_model *conv_bn_model(loom_conv_algorithm algorithm, bool fusable) {
  loom_layer *conv = conv3x3(5, algorithm);
  if (!fusable)
    conv->describe = NULL;
  return sequential((int64_t[]){2, 7, 6}, "conv", conv, "bn", loom_batchnorm_create(5, 1e-5f, 0.1f), "flat",
                    loom_flatten_create(), "fc", loom_linear_create(0, 3, true), NULL);
}

static void test_conv_bn_moments(void **state) {
  (void)state;
  enum { N = 7 };
  loom_tensor *x, *dout;
  batch(N, 2, 7, 6, 40.0f, 3, &x, &dout); /* far from zero: the shifted sums must not cancel */
  for (int algorithm = LOOM_CONV_IM2COL; algorithm <= LOOM_CONV_WINOGRAD; algorithm++) {
    loom_model *fused = conv_bn_model(algorithm, true), *apart = conv_bn_model(algorithm, false);
    for (int step = 0; step < 3; step++) /* two training steps, then evaluation */
      same_step(fused, apart, x, dout, step < 2);
    /* The moments the convolution handed over, against its output
     * computed here in double (conv_ref) from the same weights and bias. */
    loom_model_set_train(fused, true);
    const loom_tensor *out;
    assert_int_equal(loom_model_forward(fused, x, &out), 0);
    const double *m = loom_cpu_block_moments(loom_model_block_plan(fused, 0));
    assert_non_null(m);
    const conv_ctx k = {2, 7, 6, 5, 3, 3, 1, 1, 1, 1, 1, 1, 7, 6};
    double *xd = malloc(N * 84 * sizeof *xd), *pd = malloc(95 * sizeof *pd), *yd = malloc(N * 5 * 42 * sizeof *yd);
    for (int i = 0; i < N * 84; i++)
      xd[i] = loom_tensor_data(x)[i];
    for (int i = 0; i < 95; i++)
      pd[i] = loom_model_params(fused)[i];
    conv_ref(&k, xd, pd, yd, N);
    for (int q = 0; q < N * 5; q++) {
      const double *plane = yd + q * 42;
      double s = 0, ss = 0;
      for (int j = 0; j < 42; j++)
        s += plane[j] - plane[0], ss += (plane[j] - plane[0]) * (plane[j] - plane[0]);
      close_to(m[3 * q], plane[0], 1e-5, "moment first value", q);
      close_to(m[3 * q + 1], s, 1e-3, "moment sum", q);
      close_to(m[3 * q + 2], ss, 1e-3, "moment sum of squares", q);
    }
    free(xd), free(pd), free(yd);
    loom_model_destroy(fused), loom_model_destroy(apart);
  }
  loom_tensor_destroy(x), loom_tensor_destroy(dout);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fused_bn_relu),
      cmocka_unit_test(test_fused_bn_pool),
      cmocka_unit_test(test_conv_bn_moments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
