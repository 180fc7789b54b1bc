/* The residual block (loom_residual_create, config type "residual"): its
 * gradients against finite differences of double references (a projection
 * shortcut and the identity), and against its own float forward with
 * convolutions and BatchNorm; a forward and backward computed by hand; the
 * fake device's results bit for bit the CPU's, also after moving back; a
 * checkpoint round trip; the summary's counts; weight decay's prefix; the
 * error for branches of different shapes; and a small ResNet built from a
 * config that trains. */
#include "helpers.h"

#include <math.h>
#include <signal.h>

#include <loom/backend_cpu.h>
#include <loom/gradcheck.h>

#include "fake_device.h"

static loom_layer *lin(int64_t in, int64_t out, bool bias) { return loom_linear_create(in, out, bias); }

static loom_layer *conv(int64_t cout, int64_t k, int64_t stride) {
  loom_conv2d_options o = {.out_channels = cout, .kernel = {k, k}, .stride = {stride, stride},
                           .padding = {k / 2, k / 2}, .no_bias = true};
  return loom_conv2d_create(&o);
}

static loom_layer *bn(int64_t c) { return loom_batchnorm_create(c, 1e-5f, 0.1f); }

/* torchvision's BasicBlock: conv3x3(stride)-bn-relu-conv3x3-bn, plus the
 * input, or a 1x1 conv(stride)-bn of it when the shape changes; ReLU.
 * smooth: tanh inside and no activation after the sum, for differences of
 * a float forward (a ReLU's kink within the step of 1e-3 off its input
 * throws those off; the double references check the ReLUs). */
static loom_layer *block_of(int64_t cin, int64_t cout, int64_t stride, bool smooth) {
  loom_layer *main[] = {conv(cout, 3, stride), bn(cout), smooth ? loom_tanh_create() : loom_relu_create(),
                        conv(cout, 3, 1), bn(cout)};
  const bool project = stride != 1 || cin != cout;
  loom_layer *proj[] = {project ? conv(cout, 1, stride) : NULL, project ? bn(cout) : NULL};
  return loom_residual_create(main, 5, project ? proj : NULL, project ? 2 : 0, !smooth);
}

static loom_layer *basic_block(int64_t cin, int64_t cout, int64_t stride) { return block_of(cin, cout, stride, false); }

/* --- gradients --- */

static void matvec(const double *w, const double *b, const double *x, double *y, int64_t in, int64_t out) {
  for (int64_t o = 0; o < out; o++) {
    y[o] = b ? b[o] : 0.0;
    for (int64_t i = 0; i < in; i++)
      y[o] += w[o * in + i] * x[i];
  }
}

/* relu(W2 relu(W1 x) + b2 + Ws x + bs), x of 6 features, 5 out. The block
 * lays out its all-weight layers first: W1 (no bias), then [W2 b2], then
 * [Ws bs]. */
static void projection_ref(const void *ctx, const double *x, const double *p, double *out, int64_t n) {
  (void)ctx;
  const double *w1 = p, *w2 = w1 + 30, *b2 = w2 + 25, *ws = b2 + 5, *bs = ws + 30;
  for (int64_t s = 0; s < n; s++) {
    double h[5], m[5], sc[5];
    matvec(w1, NULL, x + 6 * s, h, 6, 5);
    for (int k = 0; k < 5; k++)
      h[k] = h[k] > 0 ? h[k] : 0;
    matvec(w2, b2, h, m, 5, 5);
    matvec(ws, bs, x + 6 * s, sc, 6, 5);
    for (int k = 0; k < 5; k++)
      out[5 * s + k] = m[k] + sc[k] > 0 ? m[k] + sc[k] : 0;
  }
}

static void test_gradcheck_projection(void **state) {
  (void)state;
  loom_layer *main[] = {lin(6, 5, false), loom_relu_create(), lin(5, 5, true)};
  loom_layer *shortcut[] = {lin(6, 5, true)};
  loom_layer *block = loom_residual_create(main, 3, shortcut, 1, true);
  assert_non_null(block);
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.batch = 3, o.reference = projection_ref;
  loom_gradcheck_report rep;
  const int64_t shape[] = {6};
  int rc = loom_layer_gradcheck(block, 1, shape, &o, &rep);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  assert_true(rep.checked > 3 * 5 + 30 + 30 + 30 + 3 * 6); /* outputs, every parameter, every input */
  loom_layer_destroy(block);
}

/* x + W2 tanh(W1 x + b1), no activation after the sum; the block lays out
 * W2 (all weight) first, then [W1 b1]. */
static void identity_ref(const void *ctx, const double *x, const double *p, double *out, int64_t n) {
  (void)ctx;
  const double *w2 = p, *w1 = w2 + 16, *b1 = w1 + 16;
  for (int64_t s = 0; s < n; s++) {
    double h[4], m[4];
    matvec(w1, b1, x + 4 * s, h, 4, 4);
    for (int k = 0; k < 4; k++)
      h[k] = tanh(h[k]);
    matvec(w2, NULL, h, m, 4, 4);
    for (int k = 0; k < 4; k++)
      out[4 * s + k] = x[4 * s + k] + m[k];
  }
}

static void test_gradcheck_identity(void **state) {
  (void)state;
  loom_layer *main[] = {lin(4, 4, true), loom_tanh_create(), lin(4, 4, false)};
  loom_layer *block = loom_residual_create(main, 3, NULL, 0, false);
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.batch = 3, o.reference = identity_ref;
  const int64_t shape[] = {4};
  int rc = loom_layer_gradcheck(block, 1, shape, &o, NULL);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  loom_layer_destroy(block);
}

/* BasicBlocks (smooth) in training (BatchNorm on the batch's statistics)
 * and in evaluation, against differences of their own float forward:
 * stride 2 with the projection, and the identity. */
static void test_gradcheck_basic_blocks(void **state) {
  (void)state;
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.batch = 3;
  const int64_t in[] = {2, 6, 6}, same[] = {3, 4, 4};
  for (int train = 0; train < 2; train++) {
    o.train = train;
    loom_layer *down = block_of(2, 3, 2, true), *keep = block_of(3, 3, 1, true);
    int rc = loom_layer_gradcheck(down, 3, in, &o, NULL);
    if (rc < 0)
      fail_msg("projection, train %d: %s", train, loom_last_error());
    rc = loom_layer_gradcheck(keep, 3, same, &o, NULL);
    if (rc < 0)
      fail_msg("identity, train %d: %s", train, loom_last_error());
    loom_layer_destroy(down), loom_layer_destroy(keep);
  }
}

/* --- by hand --- */

/* x -> I x (a Linear with identity weights, so that the block has a
 * trainable layer below it and must give its input's gradient) -> relu(W x
 * + x), W = [[1, 2], [3, -4]]: x = (1, 1) gives (4, 0), x = (0.5, -1)
 * gives (0, 4.5). With dy = 1 the ReLU passes g = (1, 0) and (0, 1): dW =
 * sum g x^T = [[1, 1], [0.5, -1]]; the block's dx = W^T g + g = (2, 2) and
 * (3, -3), so the identity layer's dI = sum dx x^T = [[3.5, -1], [0.5, 5]]. */
static void test_by_hand(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  loom_layer *main[] = {lin(2, 2, false)};
  assert_int_equal(loom_model_add(m, "pre", lin(2, 2, false)), 0);
  assert_int_equal(loom_model_add(m, "block", loom_residual_create(main, 1, NULL, 0, true)), 0);
  const int64_t sample = 2;
  assert_int_equal(loom_model_build(m, 1, &sample, 1), 0);
  const float w[] = {1, 0, 0, 1, 1, 2, 3, -4};
  memcpy(loom_model_params(m), w, sizeof w);
  float xs[] = {1, 1, 0.5f, -1}, ones[] = {1, 1, 1, 1};
  loom_tensor *x = loom_tensor_view(xs, 2, (int64_t[]){2, 2}), *dy = loom_tensor_view(ones, 2, (int64_t[]){2, 2});
  const loom_tensor *y;
  assert_int_equal(loom_model_forward(m, x, &y), 0);
  const float want_y[] = {4, 0, 0, 4.5f};
  assert_memory_equal(loom_tensor_data(y), want_y, sizeof want_y);
  loom_model_zero_grad(m);
  assert_int_equal(loom_model_backward(m, dy), 0);
  const float want_g[] = {3.5f, -1, 0.5f, 5, 1, 1, 0.5f, -1};
  const float *g = loom_model_grads(m);
  for (int i = 0; i < 8; i++)
    assert_float_equal(g[i], want_g[i], 1e-6);
  /* Without the activation: y = W x + x = (4, 0) and (-1, 4.5). */
  loom_model *plain = loom_model_create();
  loom_layer *main2[] = {lin(2, 2, false)};
  assert_int_equal(loom_model_add(plain, "block", loom_residual_create(main2, 1, NULL, 0, false)), 0);
  assert_int_equal(loom_model_build(plain, 1, &sample, 1), 0);
  memcpy(loom_model_params(plain), w + 4, 4 * sizeof *w);
  assert_int_equal(loom_model_forward(plain, x, &y), 0);
  const float want_plain[] = {4, 0, -1, 4.5f};
  assert_memory_equal(loom_tensor_data(y), want_plain, sizeof want_plain);
  loom_tensor_destroy(x), loom_tensor_destroy(dy);
  loom_model_destroy(m), loom_model_destroy(plain);
}

/* --- models --- */

static loom_model *small_resnet(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "stem", conv(4, 3, 1)), 0);
  assert_int_equal(loom_model_add(m, "bn", bn(4)), 0);
  assert_int_equal(loom_model_add(m, "relu", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "block1", basic_block(4, 4, 1)), 0);
  assert_int_equal(loom_model_add(m, "block2", basic_block(4, 6, 2)), 0);
  assert_int_equal(loom_model_add(m, "pool", loom_global_avgpool_create()), 0);
  assert_int_equal(loom_model_add(m, "fc", lin(0, 3, true)), 0);
  return m;
}

static loom_tensor *labels(int64_t n, int classes) {
  loom_tensor *t = loom_tensor_create(1, &n);
  for (int64_t i = 0; i < n; i++)
    loom_tensor_data(t)[i] = (float)((i * 7) % classes);
  return t;
}

static const int64_t image[3] = {3, 8, 8};

/* Parameters: the stem 4*3*9 + bn 8; block1 2 x (4*4*9 + 8); block2
 * 6*4*9 + 12 + 6*6*9 + 12 + 6*4 + 12; fc 6*3 + 3. */
static void test_counts_summary_and_decay(void **state) {
  (void)state;
  loom_model *m = small_resnet();
  assert_int_equal(loom_model_build(m, 3, image, 5), 0);
  const size_t block1 = 2 * (144 + 8), block2 = 216 + 12 + 324 + 12 + 24 + 12;
  assert_int_equal(loom_model_num_params(m), 108 + 8 + block1 + block2 + 21);
  size_t off, count;
  loom_model_layer_params(m, 4, &off, &count);
  assert_int_equal(count, block2);
  assert_int_equal(loom_model_num_buffers(m), 8 + 16 + 36);
  assert_int_equal(loom_model_layer_decayed(m, 3), 288);           /* the two convolutions' weights */
  assert_int_equal(loom_model_layer_decayed(m, 4), 216 + 324 + 24); /* and the projection's */
  int64_t shape[LOOM_MAX_DIMS];
  assert_int_equal(loom_model_layer_output_shape(m, 4, shape), 3);
  assert_true(shape[0] == 6 && shape[1] == 4 && shape[2] == 4);
  /* MACs: each conv's outputs times cin k k; BatchNorm one per output. */
  assert_int_equal(loom_model_layer_macs(m, 3), 2 * (4 * 64 * 36 + 4 * 64));
  assert_int_equal(loom_model_layer_macs(m, 4), 6 * 16 * 36 + 96 + 6 * 16 * 54 + 96 + 6 * 16 * 4 + 96);
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  assert_int_equal(loom_model_print_summary(m, f), 0);
  fclose(f);
  const char *row = strstr(text, "| block2 ");
  assert_non_null(row);
  char line[256];
  snprintf(line, sizeof line, "%.*s", (int)strcspn(row, "\n"), row);
  assert_non_null(strstr(line, "| Residual "));
  assert_non_null(strstr(line, "| [6, 4, 4] "));
  assert_non_null(strstr(line, "| 600 "));
  free(text);
  loom_model_destroy(m);
}

static double std_of(const float *x, size_t n) {
  double sum = 0, sq = 0;
  for (size_t i = 0; i < n; i++)
    sum += x[i], sq += (double)x[i] * x[i];
  return sqrt(sq / (double)n - (sum / (double)n) * (sum / (double)n));
}

/* Kaiming normal through the block: its convolutions' weights get std
 * sqrt(2 / fan_in) (PyTorch's default gave them 1 / sqrt(3 fan_in)), its
 * BatchNorms keep gamma 1 and beta 0, the layers not named are untouched. */
static void test_init_weights_reach_inside(void **state) {
  (void)state;
  loom_model *m = small_resnet();
  assert_int_equal(loom_model_build(m, 3, image, 5), 0);
  const size_t np = loom_model_num_params(m);
  float *before = malloc(np * sizeof *before);
  memcpy(before, loom_model_params(m), np * sizeof *before);
  loom_init init = {.scheme = LOOM_INIT_KAIMING_NORMAL};
  assert_int_equal(loom_model_init_weights(m, &init, (const char *[]){"block2"}, 1, 9), 0);
  size_t off, count;
  loom_model_layer_params(m, 4, &off, &count);
  const float *p = loom_model_params(m) + off; /* conv1 216, conv2 324, projection 24, then 3 BatchNorms */
  assert_true(fabs(std_of(p, 216) / sqrt(2.0 / 36) - 1) < 0.15);
  assert_true(fabs(std_of(p + 216, 324) / sqrt(2.0 / 54) - 1) < 0.15);
  assert_true(fabs(std_of(before + off + 216, 324) / sqrt(1.0 / (3 * 54)) - 1) < 0.15); /* PyTorch's default before */
  for (size_t k = 0; k < 3; k++)
    for (size_t c = 0; c < 6; c++)
      assert_true(p[564 + 12 * k + c] == 1.0f && p[564 + 12 * k + 6 + c] == 0.0f);
  assert_memory_equal(loom_model_params(m), before, off * sizeof *before); /* the layers before it */
  free(before);
  loom_model_destroy(m);
}

static void assert_same_floats(const float *a, const float *b, size_t n) { assert_memory_equal(a, b, n * sizeof *a); }

/* Trained a step, saved, loaded into a model of another seed: the same
 * parameters, running statistics and evaluation outputs. */
static void test_save_load(void **state) {
  (void)state;
  loom_model *a = small_resnet(), *b = small_resnet();
  assert_int_equal(loom_model_build(a, 3, image, 1), 0);
  assert_int_equal(loom_model_build(b, 3, image, 2), 0);
  loom_tensor *x = test_host_tensor(4, (int64_t[]){4, 3, 8, 8}, 3);
  const loom_tensor *ya, *yb;
  assert_int_equal(loom_model_forward(a, x, &ya), 0); /* moves a's running statistics */
  loom_state *s = loom_state_create();
  assert_int_equal(loom_model_save(a, s, false), 0);
  assert_int_equal(loom_model_load(b, s, false), 0);
  assert_same_floats(loom_model_params(b), loom_model_params(a), loom_model_num_params(a));
  assert_same_floats(loom_model_buffers(b), loom_model_buffers(a), loom_model_num_buffers(a));
  loom_model_set_train(a, false), loom_model_set_train(b, false);
  assert_int_equal(loom_model_forward(a, x, &ya), 0);
  assert_int_equal(loom_model_forward(b, x, &yb), 0);
  assert_same_floats(loom_tensor_data(yb), loom_tensor_data(ya), (size_t)loom_tensor_numel(ya));
  loom_state_destroy(s);
  loom_tensor_destroy(x);
  loom_model_destroy(a), loom_model_destroy(b);
}

/* The fake device (tagged pointers: a host read of device memory faults;
 * the CPU's ops behind them) gives the CPU's bits: outputs, losses,
 * gradients and running statistics, over three steps; then moved back to
 * the CPU it goes on as the CPU model. */
static void test_fake_device(void **state) {
  (void)state;
  fake_device *dev;
  loom_backend *fake = fake_device_create((size_t)64 << 20, &dev);
  loom_model *cpu = small_resnet(), *dm = small_resnet();
  assert_int_equal(loom_model_build(cpu, 3, image, 7), 0);
  assert_int_equal(loom_model_build(dm, 3, image, 7), 0);
  assert_int_equal(loom_model_set_backend(dm, fake), 0);
  loom_criterion *c_cpu = loom_cross_entropy_create(), *c_dev = loom_cross_entropy_create();
  loom_tensor *x = test_host_tensor(4, (int64_t[]){5, 3, 8, 8}, 2), *t = labels(5, 3);
  loom_tensor *dx = loom_tensor_create_on(fake, 4, loom_tensor_shape(x)), *dt = loom_tensor_create_on(fake, 1, (int64_t[]){5});
  assert_int_equal(loom_tensor_copy(dx, x), 0);
  assert_int_equal(loom_tensor_copy(dt, t), 0);
  const size_t np = loom_model_num_params(cpu), nb = loom_model_num_buffers(cpu);
  float *host = malloc((np + nb) * sizeof *host);
  loom_sgd_options so = {.lr = 0.1, .momentum = 0.9};
  loom_optimizer *o_cpu = loom_sgd_create(&so), *o_dev = loom_sgd_create(&so);
  for (int step = 0; step < 3; step++) {
    const loom_tensor *out_h, *out_d, *g;
    double loss_h, loss_d;
    loom_model_zero_grad(cpu), loom_model_zero_grad(dm);
    assert_int_equal(loom_model_forward(cpu, x, &out_h), 0);
    assert_int_equal(loom_model_forward(dm, dx, &out_d), 0);
    assert_same_floats(loom_tensor_host_data(out_d), loom_tensor_data(out_h), (size_t)loom_tensor_numel(out_h));
    assert_int_equal(loom_criterion_forward(c_cpu, out_h, t, &loss_h), 0);
    assert_int_equal(loom_criterion_forward(c_dev, out_d, dt, &loss_d), 0);
    assert_memory_equal(&loss_h, &loss_d, sizeof loss_h);
    assert_int_equal(loom_criterion_backward(c_cpu, out_h, t, &g), 0);
    assert_int_equal(loom_model_backward(cpu, g), 0);
    assert_int_equal(loom_criterion_backward(c_dev, out_d, dt, &g), 0);
    fake_device_reset_counts(dev);
    assert_int_equal(loom_model_backward(dm, g), 0);
    assert_int_equal(fake_device_counts_of(dev).to_host, 0); /* nothing read back in the backward */
    assert_int_equal(loom_model_grads_to_host(dm, host), 0);
    assert_same_floats(host, loom_model_grads(cpu), np);
    assert_int_equal(loom_model_buffers_to_host(dm, host + np), 0);
    assert_same_floats(host + np, loom_model_buffers(cpu), nb);
    assert_int_equal(loom_optimizer_step(o_cpu, cpu), 0);
    assert_int_equal(loom_optimizer_step(o_dev, dm), 0);
    assert_int_equal(loom_model_params_to_host(dm, host), 0);
    assert_same_floats(host, loom_model_params(cpu), np);
  }
  /* Back on the CPU (the block's activations and its inner layers' plans
   * let go of the device): the CPU model's output. */
  assert_int_equal(loom_model_set_backend(dm, NULL), 0);
  const loom_tensor *out_h, *out_d;
  assert_int_equal(loom_model_forward(cpu, x, &out_h), 0);
  assert_int_equal(loom_model_forward(dm, x, &out_d), 0);
  assert_same_floats(loom_tensor_data(out_d), loom_tensor_data(out_h), (size_t)loom_tensor_numel(out_h));
  assert_int_equal(fake_device_counts_of(dev).plans, 0); /* the inner layers' plans went with the move */
  free(host);
  loom_optimizer_destroy(o_cpu), loom_optimizer_destroy(o_dev);
  loom_tensor_destroy(x), loom_tensor_destroy(t), loom_tensor_destroy(dx), loom_tensor_destroy(dt);
  loom_criterion_destroy(c_cpu), loom_criterion_destroy(c_dev);
  loom_model_destroy(cpu), loom_model_destroy(dm);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(fake);
}

/* --- errors --- */

static void test_mismatched_branches(void **state) {
  (void)state;
  /* A stride-2 main branch with the identity. */
  loom_model *m = loom_model_create();
  loom_layer *main[] = {conv(4, 3, 2), bn(4)};
  assert_int_equal(loom_model_add(m, "block", loom_residual_create(main, 2, NULL, 0, true)), 0);
  const int64_t in[] = {4, 8, 8};
  assert_int_equal(loom_model_build(m, 3, in, 1), LOOM_ESHAPE);
  const char *e = loom_last_error();
  assert_non_null(strstr(e, "building layer \"block\" (Residual)"));
  assert_non_null(strstr(e, "the main branch gives [4, 4, 4] per sample but the identity shortcut (the block's "
                            "input) gives [4, 8, 8]"));
  loom_model_destroy(m);
  /* A shortcut of other channels. */
  m = loom_model_create();
  loom_layer *main2[] = {conv(6, 3, 1)}, *proj[] = {conv(5, 1, 1)};
  assert_int_equal(loom_model_add(m, "block", loom_residual_create(main2, 1, proj, 1, false)), 0);
  assert_int_equal(loom_model_build(m, 3, in, 1), LOOM_ESHAPE);
  assert_non_null(strstr(loom_last_error(), "gives [6, 8, 8] per sample but the shortcut gives [5, 8, 8]"));
  loom_model_destroy(m);
  /* An inner layer's own error names its branch and place. */
  m = loom_model_create();
  loom_layer *main3[] = {conv(4, 3, 1)}, *proj3[] = {bn(3)};
  assert_int_equal(loom_model_add(m, "block", loom_residual_create(main3, 1, proj3, 1, false)), 0);
  assert_int_equal(loom_model_build(m, 3, in, 1), LOOM_ESHAPE);
  assert_non_null(strstr(loom_last_error(), "residual block, shortcut layer 0 (BatchNorm): BatchNorm has 3 channels"));
  loom_model_destroy(m);
  /* No main branch; a NULL layer (its constructor failed) keeps its message. */
  assert_null(loom_residual_create(NULL, 0, NULL, 0, true));
  assert_non_null(strstr(loom_last_error(), "the main branch needs at least one layer"));
  loom_layer *with_null[] = {lin(2, 2, true), loom_linear_create(2, 0, true)};
  assert_null(loom_residual_create(with_null, 2, NULL, 0, true));
  assert_non_null(strstr(loom_last_error(), "loom_residual_create: a layer is NULL"));
  assert_non_null(strstr(loom_last_error(), "Linear(2, 0)"));
}

/* --- config --- */

/* n images of 8x8 bytes in an IDX file, each bright in one quadrant that
 * its label (0 to 3) names, with noise. */
static void write_idx(const char *dir, int n) {
  char path[512];
  snprintf(path, sizeof path, "%s/images.idx", dir);
  FILE *f = fopen(path, "wb");
  const unsigned char head[] = {0, 0, 8, 3, 0, 0, 0, (unsigned char)n, 0, 0, 0, 8, 0, 0, 0, 8};
  fwrite(head, 1, sizeof head, f);
  uint32_t seed = 1;
  for (int i = 0; i < n; i++)
    for (int p = 0; p < 64; p++) {
      seed = seed * 1664525u + 1013904223u;
      const int quadrant = (p / 8 >= 4) * 2 + (p % 8 >= 4);
      fputc((int)(seed >> 26) + (quadrant == i % 4 ? 160 : 40), f);
    }
  fclose(f);
  snprintf(path, sizeof path, "%s/labels.idx", dir);
  f = fopen(path, "wb");
  const unsigned char lhead[] = {0, 0, 8, 1, 0, 0, 0, (unsigned char)n};
  fwrite(lhead, 1, sizeof lhead, f);
  for (int i = 0; i < n; i++)
    fputc(i % 4, f);
  fclose(f);
}

static const char *resnet_config =
    "{\"experiment\": {\"name\": \"resnet\", \"seed\": 1, \"logdir\": \"%s/logs\"},"
    " \"datasets\": {\"d\": {\"type\": \"idx\", \"images\": \"%s/images.idx\", \"labels\": \"%s/labels.idx\"}},"
    " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 16}},"
    " \"model\": {\"type\": \"sequential\", \"layers\": ["
    "  {\"type\": \"conv2d\", \"out_channels\": 8, \"kernel\": 3, \"padding\": 1, \"bias\": false},"
    "  {\"type\": \"batchnorm\", \"num_features\": 8}, {\"type\": \"relu\"},"
    "  {\"type\": \"residual\", \"name\": \"block1\", \"layers\": ["
    "    {\"type\": \"conv2d\", \"out_channels\": 8, \"kernel\": 3, \"padding\": 1, \"bias\": false},"
    "    {\"type\": \"batchnorm\", \"num_features\": 8}, {\"type\": \"relu\"},"
    "    {\"type\": \"conv2d\", \"out_channels\": 8, \"kernel\": 3, \"padding\": 1, \"bias\": false},"
    "    {\"type\": \"batchnorm\", \"num_features\": 8}]},"
    "  {\"type\": \"residual\", \"name\": \"block2\", %s \"layers\": ["
    "    {\"type\": \"conv2d\", \"out_channels\": 16, \"kernel\": 3, \"stride\": 2, \"padding\": 1, \"bias\": false},"
    "    {\"type\": \"batchnorm\", \"num_features\": 16}, {\"type\": \"relu\"},"
    "    {\"type\": \"conv2d\", \"out_channels\": 16, \"kernel\": 3, \"padding\": 1, \"bias\": false},"
    "    {\"type\": \"batchnorm\", \"num_features\": 16}],"
    "   \"shortcut\": [{\"type\": \"conv2d\", \"out_channels\": 16, \"kernel\": 1, \"stride\": 2, \"bias\": false},"
    "    {\"type\": \"batchnorm\", \"num_features\": 16}]},"
    "  {\"type\": \"global_avgpool\"}, {\"type\": \"linear\", \"out_features\": 4}]},"
    " \"stages\": {\"train\": {\"num_epochs\": 4, \"loaders\": [\"train\"],"
    "  \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1, \"momentum\": 0.9}}}}";

typedef struct losses {
  double v[8];
  int n;
} losses;

static int on_loader_end(loom_callback *cb, loom_runner *r) {
  losses *l = loom_callback_data(cb);
  if (l->n < 8)
    loom_metrics_get(loom_runner_loader_metrics(r), "loss", &l->v[l->n++]);
  return 0;
}

static loom_config *resnet(const char *dir, const char *extra) {
  char text[8192];
  snprintf(text, sizeof text, resnet_config, dir, dir, dir, extra);
  loom_config *c = loom_config_parse(text, "resnet.json");
  if (!c)
    fail_msg("%s", loom_last_error());
  return c;
}

/* Four epochs of two batches: the loss falls. */
static void test_config_trains(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  write_idx(dir, 32);
  loom_config *c = resnet(dir, "\"activation\": \"relu\",");
  loom_experiment *exp = NULL;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  static const loom_callback_ops ops = {.type = "losses", .on_loader_end = on_loader_end};
  losses l = {0};
  assert_int_equal(loom_stage_add_callback(loom_experiment_stage(exp, 0), loom_callback_create(&ops, &l, LOOM_ORDER_LOGGING)), 0);
  loom_runner *r = loom_runner_create();
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  assert_int_equal(l.n, 4);
  for (int i = 0; i < 4; i++)
    assert_true(isfinite(l.v[i]));
  assert_true(l.v[3] < 0.8 * l.v[0]);
  loom_model *m = loom_config_model(c);
  assert_string_equal(loom_layer_type(loom_model_find_layer(m, "block2")), "Residual");
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* Each key is checked: an unknown one inside the block or one of its
 * layers, an activation that is not relu; null is none. */
static void test_config_errors(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  write_idx(dir, 8);
  static const struct {
    const char *extra, *want;
  } cases[] = {
      {"\"activaton\": \"relu\",", "unknown key"},
      {"\"activation\": \"gelu\",", "activation"},
      {"\"layerz\": [],", "unknown key"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    loom_config *c = resnet(dir, cases[i].extra);
    loom_experiment *exp = NULL;
    assert_true(loom_config_build(c, &exp) < 0);
    if (!strstr(loom_last_error(), cases[i].want) || !strstr(loom_last_error(), "model.layers[4]"))
      fail_msg("case %zu: %s", i, loom_last_error());
    loom_config_destroy(c);
  }
  loom_config *c = resnet(dir, "\"activation\": null,");
  loom_experiment *exp = NULL;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gradcheck_projection),
      cmocka_unit_test(test_gradcheck_identity),
      cmocka_unit_test(test_gradcheck_basic_blocks),
      cmocka_unit_test(test_by_hand),
      cmocka_unit_test(test_counts_summary_and_decay),
      cmocka_unit_test(test_init_weights_reach_inside),
      cmocka_unit_test(test_save_load),
      cmocka_unit_test(test_fake_device),
      cmocka_unit_test(test_mismatched_branches),
      cmocka_unit_test(test_config_trains),
      cmocka_unit_test(test_config_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
