/* Models on a device backend, checked without a GPU on the fake device
 * (tests/fake_device.h: tagged pointers, so any host read of device memory
 * faults; the CPU's ops behind them, so the results must be the CPU's bit
 * for bit). Each case builds the same model twice, keeps one on the CPU,
 * moves the other to the fake device, runs both and compares what comes
 * back from the device with memcmp. */
#include "helpers.h"

#include <math.h>
#include <signal.h>

#include <loom/backend_cpu.h>

#include "fake_device.h"

static loom_backend *fake;
static fake_device *dev;

/* What handled SIGSEGV before cmocka: ASan's (which reports the faulting
 * host read of device memory with its stack), or the default. cmocka's
 * own handler would only say "Segmentation fault". */
static struct sigaction segv_before;

static int setup(void **state) {
  (void)state;
  fake = fake_device_create((size_t)64 << 20, &dev);
  return 0;
}

/* First thing in each test (cmocka installs its handler around the test
 * function itself). */
static void report_faults(void) { sigaction(SIGSEGV, &segv_before, NULL); }

static int teardown(void **state) {
  (void)state;
  loom_backend_destroy(fake);
  return 0;
}

/* The same values on the fake device. */
static loom_tensor *on_device(const loom_tensor *h) {
  loom_tensor *d = loom_tensor_create_on(fake, loom_tensor_ndim(h), loom_tensor_shape(h));
  assert_non_null(d);
  assert_int_equal(loom_tensor_copy(d, h), 0);
  return d;
}

/* n floats of device memory, on the host. */
static float *download(const float *d, size_t n) {
  float *h = malloc((n ? n : 1) * sizeof *h);
  assert_int_equal(loom_backend_to_host(fake, h, d, n * sizeof *h), 0);
  return h;
}

/* The device model's parameters, gradients and buffers equal the CPU
 * model's, bit for bit. */
static void assert_state_equal(loom_model *cpu, loom_model *dm) {
  const size_t np = loom_model_num_params(cpu), nb = loom_model_num_buffers(cpu);
  assert_int_equal(loom_model_num_params(dm), np);
  float *p = download(loom_model_params(dm), np), *g = download(loom_model_grads(dm), np),
        *b = download(loom_model_buffers(dm), nb);
  assert_memory_equal(p, loom_model_params(cpu), np * sizeof *p);
  assert_memory_equal(g, loom_model_grads(cpu), np * sizeof *g);
  if (nb)
    assert_memory_equal(b, loom_model_buffers(cpu), nb * sizeof *b);
  free(p), free(g), free(b);
}

/* One training step's forward and backward through a criterion on both
 * models, from the same host batch: the outputs and losses agree. */
static void step_both(loom_model *cpu, loom_model *dm, loom_criterion *c_cpu, loom_criterion *c_dev,
                      const loom_tensor *x, const loom_tensor *target) {
  loom_tensor *dx = on_device(x), *dt = on_device(target);
  const loom_tensor *out_h, *out_d, *g;
  double loss_h, loss_d;
  loom_model_zero_grad(cpu), loom_model_zero_grad(dm);
  assert_int_equal(loom_model_forward(cpu, x, &out_h), 0);
  assert_int_equal(loom_model_forward(dm, dx, &out_d), 0);
  assert_ptr_equal(loom_tensor_backend(out_d), fake);
  assert_int_equal(loom_tensor_numel(out_d), loom_tensor_numel(out_h));
  assert_memory_equal(loom_tensor_host_data(out_d), loom_tensor_data(out_h),
                      (size_t)loom_tensor_numel(out_h) * sizeof(float));
  assert_int_equal(loom_criterion_forward(c_cpu, out_h, target, &loss_h), 0);
  assert_int_equal(loom_criterion_forward(c_dev, out_d, dt, &loss_d), 0);
  assert_memory_equal(&loss_h, &loss_d, sizeof loss_h);
  assert_int_equal(loom_criterion_backward(c_cpu, out_h, target, &g), 0);
  assert_int_equal(loom_model_backward(cpu, g), 0);
  assert_int_equal(loom_criterion_backward(c_dev, out_d, dt, &g), 0);
  assert_ptr_equal(loom_tensor_backend(g), fake); /* the criterion's gradient follows the output */
  /* The model's own backward reads nothing back: no transfer to the host. */
  fake_device_reset_counts(dev);
  assert_int_equal(loom_model_backward(dm, g), 0);
  assert_int_equal(fake_device_counts_of(dev).to_host, 0);
  loom_tensor_destroy(dx), loom_tensor_destroy(dt);
}

static loom_tensor *labels(int64_t n, int classes) {
  loom_tensor *t = loom_tensor_create(1, &n);
  for (int64_t i = 0; i < n; i++)
    loom_tensor_data(t)[i] = (float)((i * 7) % classes);
  return t;
}

static void test_mlp(void **state) {
  (void)state;
  report_faults();
  const int64_t sizes[] = {20, 16, 12, 5};
  loom_model *cpu = loom_mlp_create(sizes, 4, 42), *dm = loom_mlp_create(sizes, 4, 42);
  assert_ptr_equal(loom_model_backend(dm), loom_backend_cpu());
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  assert_ptr_equal(loom_model_backend(dm), fake);
  assert_true(fake_device_owns(dev, loom_model_params(dm)));
  loom_criterion *c_cpu = loom_cross_entropy_create(), *c_dev = loom_cross_entropy_create();
  loom_tensor *x = test_host_tensor(2, (int64_t[]){8, 20}, 1), *t = labels(8, 5);
  for (int step = 0; step < 2; step++) { /* the second accumulates onto zeroed gradients again */
    step_both(cpu, dm, c_cpu, c_dev, x, t);
    assert_state_equal(cpu, dm);
  }
  /* The gradient utilities run on the device, with the CPU's results. */
  assert_true(loom_model_grad_norm(dm) == loom_model_grad_norm(cpu));
  assert_true(loom_model_grads_finite(dm));
  loom_model_clip_grad_value(cpu, 0.01f), loom_model_clip_grad_value(dm, 0.01f);
  assert_state_equal(cpu, dm);
  loom_tensor_destroy(x), loom_tensor_destroy(t);
  loom_criterion_destroy(c_cpu), loom_criterion_destroy(c_dev);
  loom_model_destroy(cpu), loom_model_destroy(dm);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
}

/* conv, BatchNorm, ReLU, max pool (the CPU fuses them into blocks, which
 * the fake device plans through the CPU too), average pool, Dropout,
 * Flatten, Linear. */
static loom_model *cnn(void) {
  loom_model *m = loom_model_create();
  loom_conv2d_options c1 = {.out_channels = 4, .kernel = {3, 3}, .padding = {1, 1}};
  loom_conv2d_options c2 = {.out_channels = 8, .kernel = {3, 3}, .padding = {1, 1}, .algorithm = LOOM_CONV_WINOGRAD};
  assert_int_equal(loom_model_add(m, "conv1", loom_conv2d_create(&c1)), 0);
  assert_int_equal(loom_model_add(m, "bn1", loom_batchnorm_create(4, 1e-5f, 0.1f)), 0);
  assert_int_equal(loom_model_add(m, "relu1", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "pool1", loom_maxpool2d_create(2, 0, 0)), 0);
  assert_int_equal(loom_model_add(m, "conv2", loom_conv2d_create(&c2)), 0);
  assert_int_equal(loom_model_add(m, "bn2", loom_batchnorm_create(8, 1e-5f, 0.1f)), 0);
  assert_int_equal(loom_model_add(m, "gelu", loom_gelu_create()), 0);
  assert_int_equal(loom_model_add(m, "pool2", loom_avgpool2d_create(2, 0, 0)), 0);
  assert_int_equal(loom_model_add(m, "drop", loom_dropout_create(0.25f)), 0);
  assert_int_equal(loom_model_add(m, "flat", loom_flatten_create()), 0);
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(0, 6, true)), 0);
  return m;
}

static void test_cnn(void **state) {
  (void)state;
  report_faults();
  const int64_t sample[3] = {3, 8, 8};
  loom_model *cpu = cnn(), *dm = cnn();
  assert_int_equal(loom_model_build(cpu, 3, sample, 7), 0);
  /* Moved before it is built: built and initialised on the host, then moved. */
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  assert_int_equal(loom_model_build(dm, 3, sample, 7), 0);
  assert_ptr_equal(loom_model_backend(dm), fake);
  assert_true(fake_device_owns(dev, loom_model_buffers(dm)));
  loom_rng r_cpu, r_dev;
  loom_model_set_rng(cpu, &r_cpu), loom_model_set_rng(dm, &r_dev);
  loom_criterion *c_cpu = loom_cross_entropy_create(), *c_dev = loom_cross_entropy_create();
  loom_tensor *x = test_host_tensor(4, (int64_t[]){5, 3, 8, 8}, 2), *t = labels(5, 6);
  for (int step = 0; step < 3; step++) {
    loom_rng_seed(&r_cpu, 9, (uint64_t)step, 0), loom_rng_seed(&r_dev, 9, (uint64_t)step, 0); /* the same masks */
    step_both(cpu, dm, c_cpu, c_dev, x, t);
    assert_state_equal(cpu, dm); /* gradients, and the running statistics */
  }
  /* Evaluation: the running statistics, Dropout the identity. */
  loom_model_set_train(cpu, false), loom_model_set_train(dm, false);
  const loom_tensor *out_h, *out_d;
  loom_tensor *dx = on_device(x);
  assert_int_equal(loom_model_forward(cpu, x, &out_h), 0);
  assert_int_equal(loom_model_forward(dm, dx, &out_d), 0);
  assert_memory_equal(loom_tensor_host_data(out_d), loom_tensor_data(out_h),
                      (size_t)loom_tensor_numel(out_h) * sizeof(float));
  loom_tensor_destroy(dx), loom_tensor_destroy(x), loom_tensor_destroy(t);
  loom_criterion_destroy(c_cpu), loom_criterion_destroy(c_dev);
  loom_model_destroy(cpu), loom_model_destroy(dm);
  fake_device_counts c = fake_device_counts_of(dev);
  assert_int_equal(c.live, 0);
  assert_int_equal(c.plans, 0);
}

/* An input, or an output's gradient, on the wrong side is refused before
 * anything runs, with both places named. */
static void test_input_elsewhere(void **state) {
  (void)state;
  report_faults();
  const int64_t sizes[] = {4, 3};
  loom_model *dm = loom_mlp_create(sizes, 2, 1), *cpu = loom_mlp_create(sizes, 2, 1);
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  loom_tensor *x = test_host_tensor(2, (int64_t[]){2, 4}, 3), *dx = on_device(x);
  const loom_tensor *out;
  fake_device_reset_counts(dev);
  assert_int_equal(loom_model_forward(dm, x, &out), LOOM_EINVAL);
  assert_string_equal(loom_last_error(),
                      "loom_model_forward: the input is in host memory and the model on backend \"fake\"; copy the "
                      "input to the model's backend (loom_tensor_copy into a tensor of loom_tensor_create_on("
                      "loom_model_backend(model), ...)) or move the model (loom_model_set_backend)");
  assert_int_equal(fake_device_counts_of(dev).ops, 0);
  assert_int_equal(loom_model_forward(cpu, dx, &out), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "the input is on backend \"fake\" and the model on backend \"cpu\""));
  /* backward: the gradient of the output must be on the model's backend */
  assert_int_equal(loom_model_forward(dm, dx, &out), 0);
  loom_tensor *g = test_host_tensor(2, (int64_t[]){2, 3}, 4);
  assert_int_equal(loom_model_backward(dm, g), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "the output's gradient is in host memory and the model on backend \"fake\""));
  loom_tensor_destroy(g), loom_tensor_destroy(x), loom_tensor_destroy(dx);
  loom_model_destroy(dm), loom_model_destroy(cpu);
}

/* Back to the CPU: the values come along, the model runs on host inputs
 * again, and nothing is left on the device (which can then go first). */
static void test_move_back(void **state) {
  (void)state;
  report_faults();
  const int64_t sample[3] = {3, 8, 8};
  loom_model *cpu = cnn(), *dm = cnn();
  assert_int_equal(loom_model_build(cpu, 3, sample, 11), 0);
  assert_int_equal(loom_model_build(dm, 3, sample, 11), 0);
  fake_device *dev2;
  loom_backend *fake2 = fake_device_create((size_t)16 << 20, &dev2);
  assert_int_equal(loom_model_set_backend(dm, fake2), 0);
  loom_rng r_cpu, r_dev;
  loom_model_set_rng(cpu, &r_cpu), loom_model_set_rng(dm, &r_dev);
  loom_rng_seed(&r_cpu, 3, 0, 0), loom_rng_seed(&r_dev, 3, 0, 0);
  loom_tensor *x = test_host_tensor(4, (int64_t[]){4, 3, 8, 8}, 5), *dx = loom_tensor_create_on(fake2, 1, (int64_t[]){1});
  assert_int_equal(loom_tensor_copy(dx, x), 0);
  const loom_tensor *out;
  assert_int_equal(loom_model_forward(cpu, x, &out), 0); /* trains: running statistics move */
  assert_int_equal(loom_model_forward(dm, dx, &out), 0);
  loom_tensor_destroy(dx);
  assert_true(fake_device_counts_of(dev2).plans > 0);
  assert_int_equal(loom_model_set_backend(dm, NULL), 0);
  assert_ptr_equal(loom_model_backend(dm), loom_backend_cpu());
  fake_device_counts c = fake_device_counts_of(dev2);
  assert_int_equal(c.live, 0);
  assert_int_equal(c.plans, 0);
  loom_backend_destroy(fake2);
  const size_t np = loom_model_num_params(cpu), nb = loom_model_num_buffers(cpu);
  assert_memory_equal(loom_model_params(dm), loom_model_params(cpu), np * sizeof(float));
  assert_memory_equal(loom_model_buffers(dm), loom_model_buffers(cpu), nb * sizeof(float));
  /* and it trains on the host as the CPU model does */
  loom_tensor *dout = test_host_tensor(2, (int64_t[]){4, 6}, 6);
  const loom_tensor *o_dev;
  loom_rng_seed(&r_cpu, 4, 0, 0), loom_rng_seed(&r_dev, 4, 0, 0);
  loom_model_zero_grad(cpu), loom_model_zero_grad(dm);
  assert_int_equal(loom_model_forward(cpu, x, &out), 0);
  assert_int_equal(loom_model_forward(dm, x, &o_dev), 0);
  assert_memory_equal(loom_tensor_data(o_dev), loom_tensor_data(out), 4 * 6 * sizeof(float));
  assert_int_equal(loom_model_backward(cpu, dout), 0);
  assert_int_equal(loom_model_backward(dm, dout), 0);
  assert_memory_equal(loom_model_grads(dm), loom_model_grads(cpu), np * sizeof(float));
  loom_tensor_destroy(dout), loom_tensor_destroy(x);
  loom_model_destroy(cpu), loom_model_destroy(dm);
}

/* A model whose last layers are one fused block (Conv2d, BatchNorm,
 * ReLU): its forward has no output gradient to hand the block yet. */
static void test_ends_in_block(void **state) {
  (void)state;
  report_faults();
  loom_model *m[2];
  for (int k = 0; k < 2; k++) {
    m[k] = loom_model_create();
    loom_conv2d_options c = {.out_channels = 4, .kernel = {3, 3}, .padding = {1, 1}};
    assert_int_equal(loom_model_add(m[k], "conv", loom_conv2d_create(&c)), 0);
    assert_int_equal(loom_model_add(m[k], "bn", loom_batchnorm_create(4, 1e-5f, 0.1f)), 0);
    assert_int_equal(loom_model_add(m[k], "relu", loom_relu_create()), 0);
    assert_int_equal(loom_model_build(m[k], 3, (int64_t[]){2, 5, 5}, 3), 0);
  }
  assert_int_equal(loom_model_set_backend(m[1], fake), 0);
  loom_tensor *x = test_host_tensor(4, (int64_t[]){3, 2, 5, 5}, 7), *dx = on_device(x);
  loom_tensor *g = test_host_tensor(4, (int64_t[]){3, 4, 5, 5}, 8), *dg = on_device(g);
  const loom_tensor *out[2];
  assert_int_equal(loom_model_forward(m[0], x, &out[0]), 0);
  assert_int_equal(loom_model_forward(m[1], dx, &out[1]), 0);
  assert_memory_equal(loom_tensor_host_data(out[1]), loom_tensor_data(out[0]), 3 * 4 * 25 * sizeof(float));
  assert_int_equal(loom_model_backward(m[0], g), 0);
  assert_int_equal(loom_model_backward(m[1], dg), 0);
  assert_state_equal(m[0], m[1]);
  loom_tensor_destroy(x), loom_tensor_destroy(dx), loom_tensor_destroy(g), loom_tensor_destroy(dg);
  loom_model_destroy(m[0]), loom_model_destroy(m[1]);
}

/* Saved state does not depend on the backend: saved on the device, loaded
 * on the CPU, and the reverse, bit for bit; each array crosses once. */
static void test_save_load(void **state) {
  (void)state;
  report_faults();
  const int64_t sample[3] = {3, 8, 8};
  loom_model *cpu = cnn(), *dm = cnn();
  assert_int_equal(loom_model_build(cpu, 3, sample, 5), 0);
  assert_int_equal(loom_model_build(dm, 3, sample, 5), 0);
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  loom_rng r_cpu, r_dev;
  loom_model_set_rng(cpu, &r_cpu), loom_model_set_rng(dm, &r_dev);
  loom_rng_seed(&r_cpu, 1, 0, 0), loom_rng_seed(&r_dev, 1, 0, 0);
  loom_criterion *c_cpu = loom_cross_entropy_create(), *c_dev = loom_cross_entropy_create();
  loom_tensor *x = test_host_tensor(4, (int64_t[]){4, 3, 8, 8}, 12), *t = labels(4, 6);
  step_both(cpu, dm, c_cpu, c_dev, x, t); /* running statistics and gradients of a step */
  assert_state_equal(cpu, dm);

  /* device -> CPU */
  loom_state *s = loom_state_create();
  fake_device_reset_counts(dev);
  assert_int_equal(loom_model_save(dm, s, true), 0);
  assert_int_equal(fake_device_counts_of(dev).to_host, 3); /* params, buffers, grads */
  loom_model *other = cnn();
  assert_int_equal(loom_model_build(other, 3, sample, 99), 0);
  assert_int_equal(loom_model_load(other, s, true), 0);
  const size_t np = loom_model_num_params(cpu), nb = loom_model_num_buffers(cpu);
  assert_memory_equal(loom_model_params(other), loom_model_params(cpu), np * sizeof(float));
  assert_memory_equal(loom_model_buffers(other), loom_model_buffers(cpu), nb * sizeof(float));
  assert_memory_equal(loom_model_grads(other), loom_model_grads(cpu), np * sizeof(float));
  loom_model_destroy(other);
  loom_state_destroy(s);

  /* CPU -> device */
  s = loom_state_create();
  assert_int_equal(loom_model_save(cpu, s, true), 0);
  other = cnn();
  assert_int_equal(loom_model_build(other, 3, sample, 99), 0);
  assert_int_equal(loom_model_set_backend(other, fake), 0);
  fake_device_reset_counts(dev);
  assert_int_equal(loom_model_load(other, s, true), 0);
  assert_int_equal(fake_device_counts_of(dev).from_host, 3);
  assert_state_equal(cpu, other);
  bool finite;
  assert_false(loom_model_grads_checked(other, &finite)); /* loaded gradients were never checked */
  loom_state_destroy(s);

  /* A weights file written on the device loads on the CPU. */
  char *dir = test_tmpdir(), path[600];
  snprintf(path, sizeof path, "%s/w.h5", dir);
  assert_int_equal(loom_model_save_weights(dm, path), 0);
  loom_model *file = cnn();
  assert_int_equal(loom_model_build(file, 3, sample, 98), 0);
  assert_int_equal(loom_model_load_weights(file, path), 0);
  assert_memory_equal(loom_model_params(file), loom_model_params(cpu), np * sizeof(float));
  assert_memory_equal(loom_model_buffers(file), loom_model_buffers(cpu), nb * sizeof(float));
  /* and back onto the device */
  assert_int_equal(loom_model_load_weights(other, path), 0);
  float *p = download(loom_model_params(other), np);
  assert_memory_equal(p, loom_model_params(cpu), np * sizeof(float));
  free(p);
  test_rm_rf(dir);
  free(dir);

  loom_tensor_destroy(x), loom_tensor_destroy(t);
  loom_criterion_destroy(c_cpu), loom_criterion_destroy(c_dev);
  loom_model_destroy(file), loom_model_destroy(other), loom_model_destroy(cpu), loom_model_destroy(dm);
}

/* Initialisation on a device gives the CPU's values; the host copies
 * round-trip and take one transfer each. */
static void test_init_and_host_copies(void **state) {
  (void)state;
  report_faults();
  const int64_t sizes[] = {6, 5, 4};
  loom_model *cpu = loom_mlp_create(sizes, 3, 2), *dm = loom_mlp_create(sizes, 3, 2);
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  const loom_init init = {.scheme = LOOM_INIT_KAIMING_NORMAL, .zero_bias = true};
  const char *only[] = {"fc2"};
  for (int k = 0; k < 2; k++) {
    fake_device_reset_counts(dev);
    assert_int_equal(loom_model_init_weights(cpu, &init, k ? only : NULL, (size_t)k, 17 + (uint64_t)k), 0);
    assert_int_equal(loom_model_init_weights(dm, &init, k ? only : NULL, (size_t)k, 17 + (uint64_t)k), 0);
    fake_device_counts c = fake_device_counts_of(dev);
    assert_int_equal(c.to_host, 1);
    assert_int_equal(c.from_host, 1);
    assert_state_equal(cpu, dm);
  }
  const size_t np = loom_model_num_params(cpu);
  float *h = malloc(np * sizeof *h), *back = malloc(np * sizeof *back);
  assert_int_equal(loom_model_params_to_host(dm, h), 0);
  assert_memory_equal(h, loom_model_params(cpu), np * sizeof *h);
  for (size_t i = 0; i < np; i++)
    h[i] = (float)i * 0.5f;
  assert_int_equal(loom_model_params_from_host(dm, h), 0);
  assert_int_equal(loom_model_grads_from_host(dm, h), 0);
  bool finite;
  assert_false(loom_model_grads_checked(dm, &finite));
  assert_int_equal(loom_model_params_to_host(dm, back), 0);
  assert_memory_equal(back, h, np * sizeof *h);
  assert_int_equal(loom_model_grads_to_host(dm, back), 0);
  assert_memory_equal(back, h, np * sizeof *h);
  /* on the CPU the same calls are copies */
  assert_int_equal(loom_model_params_from_host(cpu, h), 0);
  assert_memory_equal(loom_model_params(cpu), h, np * sizeof *h);
  assert_int_equal(loom_model_buffers_to_host(cpu, back), 0); /* no buffers: nothing */
  free(h), free(back);
  loom_model_destroy(cpu), loom_model_destroy(dm);
}

/* The built-in optimizers step a model on the device where it is, their
 * state there too: parameters and state equal the CPU's bit for bit, the
 * checked step included; the state saved on the device loads on the CPU. */
static loom_optimizer *make_optimizer(int kind) {
  loom_sgd_options sgd = {.lr = 0.1, .momentum = 0.9, .nesterov = kind == 1, .weight_decay = 0.01};
  loom_adam_options adam = kind == 2 ? loom_adam_defaults() : loom_adamw_defaults();
  loom_rmsprop_options rms = loom_rmsprop_defaults();
  rms.centered = true, rms.momentum = 0.5, rms.weight_decay = 0.001;
  adam.lr = 0.01;
  switch (kind) {
  case 0: sgd.momentum = 0, sgd.weight_decay = 0; /* plain: no state */ return loom_sgd_create(&sgd);
  case 1: return loom_sgd_create(&sgd);
  case 2: return loom_adam_create(&adam);
  case 3: return loom_adamw_create(&adam);
  default: return loom_rmsprop_create(&rms);
  }
}

static void test_optimizers(void **state) {
  (void)state;
  report_faults();
  const int64_t sizes[] = {10, 8, 4};
  loom_tensor *x = test_host_tensor(2, (int64_t[]){6, 10}, 21), *t = labels(6, 4);
  for (int kind = 0; kind < 5; kind++) {
    loom_model *cpu = loom_mlp_create(sizes, 3, 8), *dm = loom_mlp_create(sizes, 3, 8);
    assert_int_equal(loom_model_set_backend(dm, fake), 0);
    loom_optimizer *o_cpu = make_optimizer(kind), *o_dev = make_optimizer(kind);
    loom_criterion *c_cpu = loom_cross_entropy_create(), *c_dev = loom_cross_entropy_create();
    for (int step = 0; step < 3; step++) {
      step_both(cpu, dm, c_cpu, c_dev, x, t);
      if (step < 2) {
        assert_int_equal(loom_optimizer_step(o_cpu, cpu), 0);
        assert_int_equal(loom_optimizer_step(o_dev, dm), 0);
      } else {
        bool f_cpu, f_dev;
        assert_int_equal(loom_optimizer_step_checked(o_cpu, cpu, &f_cpu), 0);
        assert_int_equal(loom_optimizer_step_checked(o_dev, dm, &f_dev), 0);
        assert_true(f_cpu && f_dev);
      }
      assert_state_equal(cpu, dm);
      size_t n_cpu, n_dev;
      float *s_cpu = loom_optimizer_state(o_cpu, &n_cpu), *s_dev = loom_optimizer_state(o_dev, &n_dev);
      assert_int_equal(n_cpu, n_dev);
      assert_true(kind == 0 ? !s_dev : fake_device_owns(dev, s_dev));
      if (s_dev) {
        float *h = download(s_dev, n_dev);
        assert_memory_equal(h, s_cpu, n_cpu * sizeof *h);
        free(h);
      }
    }
    /* A non-finite gradient: the checked step takes no step on the device either. */
    const size_t np = loom_model_num_params(dm);
    float *g = malloc(np * sizeof *g), *before = malloc(np * sizeof *before), *after = malloc(np * sizeof *after);
    assert_int_equal(loom_model_grads_to_host(dm, g), 0);
    g[np / 2] = NAN;
    assert_int_equal(loom_model_grads_from_host(dm, g), 0);
    assert_int_equal(loom_model_params_to_host(dm, before), 0);
    bool finite = true;
    assert_int_equal(loom_optimizer_step_checked(o_dev, dm, &finite), 0);
    assert_false(finite);
    assert_int_equal(loom_optimizer_steps(o_dev), 3);
    assert_int_equal(loom_model_params_to_host(dm, after), 0);
    assert_memory_equal(before, after, np * sizeof *after);
    /* Saved on the device, loaded on the CPU: the same state. */
    loom_state *st = loom_state_create();
    assert_int_equal(loom_optimizer_save(o_dev, st), 0);
    loom_optimizer *o_back = make_optimizer(kind);
    assert_int_equal(loom_optimizer_load(o_back, st), 0);
    size_t n_back, n_cpu;
    float *s_back = loom_optimizer_state(o_back, &n_back), *s_cpu = loom_optimizer_state(o_cpu, &n_cpu);
    assert_int_equal(n_back, n_cpu);
    if (n_cpu)
      assert_memory_equal(s_back, s_cpu, n_cpu * sizeof *s_cpu);
    /* and loaded into an optimizer of a model on the device, it moves there at its next step */
    assert_int_equal(loom_optimizer_load(o_dev, st), 0);
    loom_model_zero_grad(dm);
    assert_int_equal(loom_optimizer_step(o_dev, dm), 0);
    assert_true(kind == 0 || fake_device_owns(dev, loom_optimizer_state(o_dev, NULL)));
    loom_state_destroy(st);
    free(g), free(before), free(after);
    loom_optimizer_destroy(o_cpu), loom_optimizer_destroy(o_dev), loom_optimizer_destroy(o_back);
    loom_criterion_destroy(c_cpu), loom_criterion_destroy(c_dev);
    loom_model_destroy(cpu), loom_model_destroy(dm);
  }
  loom_tensor_destroy(x), loom_tensor_destroy(t);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
}

/* A user's optimizer without update_on cannot step a model on a device:
 * a clear error, and nothing is counted or allocated. */
static int host_only_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                            int64_t step, double lr, double wd) {
  (void)data, (void)state, (void)total, (void)step, (void)wd;
  for (size_t i = off; i < off + len; i++)
    p[i] -= (float)lr * g[i];
  return 0;
}

static void test_host_only_optimizer(void **state) {
  (void)state;
  report_faults();
  const loom_optimizer_ops ops = {.type = "mine", .state_per_param = 1, .update = host_only_update};
  loom_optimizer *opt = loom_optimizer_create(&ops, NULL, 0.1);
  const int64_t sizes[] = {3, 2};
  loom_model *dm = loom_mlp_create(sizes, 2, 1);
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  assert_int_equal(loom_optimizer_step(opt, dm), LOOM_ENOTSUP);
  assert_string_equal(loom_last_error(), "mine step: the model is on backend \"fake\" and this optimizer cannot update "
                                         "it there (its loom_optimizer_ops have no update_on); give it an update_on, "
                                         "as the built-in optimizers have, or keep the model on the CPU");
  assert_int_equal(loom_optimizer_steps(opt), 0);
  assert_null(loom_optimizer_state(opt, NULL));
  /* on the CPU it steps */
  assert_int_equal(loom_model_set_backend(dm, NULL), 0);
  assert_int_equal(loom_optimizer_step(opt, dm), 0);
  loom_optimizer_destroy(opt);
  loom_model_destroy(dm);
}

/* Targets on the device are checked through the op's result (loom/backend.h,
 * xent_forward): a batch of classes costs one copy to the host, of the two
 * sums, and none of the targets; a target that is no class is found and
 * named as on the host. */
static void test_cross_entropy_device_targets(void **state) {
  (void)state;
  report_faults();
  int64_t shape[2] = {4, 3}, n = 4;
  const float logits[12] = {0.5f, -1, 2, 0, 0, 0, 3, 1, -2, 0.25f, 0.75f, -0.5f};
  const float good[4] = {0, 1, 2, 1};
  loom_tensor *out = loom_tensor_create_on(fake, 2, shape), *t = loom_tensor_create_on(fake, 1, &n);
  loom_tensor *host_out = loom_tensor_create(2, shape), *host_t = loom_tensor_create(1, &n);
  memcpy(loom_tensor_data(host_out), logits, sizeof logits);
  memcpy(loom_tensor_data(host_t), good, sizeof good);
  assert_int_equal(loom_backend_from_host(fake, loom_tensor_data(out), logits, sizeof logits), 0);
  loom_criterion *c = loom_cross_entropy_create(), *c_host = loom_cross_entropy_create();
  double loss, want;
  assert_int_equal(loom_criterion_forward(c_host, host_out, host_t, &want), 0);

  const struct {
    float targets[4];
    const char *error; /* NULL: the host's loss */
  } cases[] = {
      {{0, 1, 2, 1}, NULL},
      {{0, 1, 3, 1}, "cross-entropy: target 3 of sample 2 is not a class in [0, 3)"},
      {{0, 0.5f, 2, 1}, "cross-entropy: target 0.5 of sample 1 is not a class in [0, 3)"},
      {{-1, 1, 2, 1}, "cross-entropy: target -1 of sample 0 is not a class in [0, 3)"},
      {{0, 1, 2, NAN}, "cross-entropy: target nan of sample 3 is not a class in [0, 3)"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(loom_backend_from_host(fake, loom_tensor_data(t), cases[i].targets, sizeof cases[i].targets), 0);
    fake_device_reset_counts(dev);
    int rc = loom_criterion_forward(c, out, t, &loss);
    if (!cases[i].error) {
      assert_int_equal(rc, 0);
      assert_true(loss == want);
      assert_int_equal(fake_device_counts_of(dev).to_host, 1);
      assert_int_equal(fake_device_counts_of(dev).host_results, 0);
    } else {
      assert_int_equal(rc, LOOM_EINVAL);
      assert_string_equal(loom_last_error(), cases[i].error);
    }
  }
  loom_criterion_destroy(c), loom_criterion_destroy(c_host);
  loom_tensor_destroy(out), loom_tensor_destroy(t), loom_tensor_destroy(host_out), loom_tensor_destroy(host_t);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
}

int main(void) {
  sigaction(SIGSEGV, NULL, &segv_before);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mlp),
      cmocka_unit_test(test_cnn),
      cmocka_unit_test(test_input_elsewhere),
      cmocka_unit_test(test_move_back),
      cmocka_unit_test(test_ends_in_block),
      cmocka_unit_test(test_save_load),
      cmocka_unit_test(test_init_and_host_copies),
      cmocka_unit_test(test_optimizers),
      cmocka_unit_test(test_host_only_optimizer),
      cmocka_unit_test(test_cross_entropy_device_targets),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
