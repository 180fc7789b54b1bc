/* Every layer against an independent double-precision implementation:
 * the forward output, and each parameter's and input's gradient against
 * central differences of the double reference. Plus train/eval behaviour
 * of BatchNorm and Dropout. */
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "reference.h"
#include "backends/cpu/gemm.h"
#include "models/layer_internal.h"


/* A reference forward in double: out from x and params, for a batch. */
typedef void (*ref_fn)(const void *ctx, const double *x, const double *p, double *out, int64_t n);

typedef struct harness {
  loom_layer *layer;
  int ndim;
  int64_t shape[3], oshape[3];
  int ondim;
  int64_t n, in_size, out_size, np, nb;
  float *params, *grads, *buffers;
} harness;

static void setup_layer(harness *t, loom_layer *layer, int ndim, const int64_t *shape, int64_t n) {
  memset(t, 0, sizeof *t);
  t->layer = layer;
  t->ndim = ndim;
  t->n = n;
  memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
  assert_int_equal(layer->ops.output_shape(layer->data, ndim, shape, &t->ondim, t->oshape), 0);
  t->in_size = t->out_size = 1;
  for (int i = 0; i < ndim; i++)
    t->in_size *= shape[i];
  for (int i = 0; i < t->ondim; i++)
    t->out_size *= t->oshape[i];
  t->np = (int64_t)loom_layer_num_params(layer);
  t->nb = layer->ops.num_buffers ? (int64_t)layer->ops.num_buffers(layer->data) : 0;
  t->params = calloc((size_t)t->np + 1, sizeof(float));
  t->grads = calloc((size_t)t->np + 1, sizeof(float));
  t->buffers = calloc((size_t)t->nb + 1, sizeof(float));
  if (layer->ops.bind)
    layer->ops.bind(layer->data, t->params, t->grads, t->buffers);
  loom_rng rng;
  loom_rng_seed(&rng, 7, 0, 0);
  if (layer->ops.init)
    layer->ops.init(layer->data, &rng);
  /* Non-trivial parameters: perturb whatever init gave. */
  for (int64_t i = 0; i < t->np; i++)
    t->params[i] += 0.3f * (2.0f * loom_rng_uniform(&rng) - 1.0f);
}

static void teardown_layer(harness *t) {
  loom_layer_destroy(t->layer);
  free(t->params), free(t->grads), free(t->buffers);
}

static loom_tensor *batch_tensor(int64_t n, int ndim, const int64_t *shape) {
  int64_t full[4] = {n};
  memcpy(full + 1, shape, (size_t)ndim * sizeof *shape);
  return loom_tensor_create(ndim + 1, full);
}

/* Forward against the reference; gradients of sum(out * r) against its
 * central differences, for every parameter and every input value: the
 * public loom_layer_gradcheck on the harness's storage. */
static void check(harness *t, ref_fn ref, const void *ctx, bool train, double scale) {
  loom_gradcheck_options o = loom_gradcheck_defaults();
  o.batch = t->n, o.train = train, o.input_scale = scale;
  o.reference = ref, o.reference_ctx = ctx;
  o.params = t->params, o.grads = t->grads, o.buffers = t->buffers;
  if (loom_layer_gradcheck(t->layer, t->ndim, t->shape, &o, NULL) < 0)
    fail_msg("%s", loom_last_error());
}

/* --- Conv2d --- */

static void test_conv2d(void **state) {
  (void)state;
  /* Plain 3x3; strided, padded, dilated, non-square; and strides, padding
   * and dilation along the width (im2col's strided and clipped rows). */
  const conv_ctx cases[] = {{2, 5, 6, 3, 3, 3, 1, 1, 0, 0, 1, 1, 0, 0},
                            {2, 6, 7, 4, 3, 2, 2, 1, 1, 1, 1, 2, 0, 0},
                            {2, 7, 8, 3, 3, 3, 1, 2, 1, 1, 1, 1, 0, 0},
                            {1, 5, 9, 2, 2, 3, 1, 3, 0, 2, 1, 2, 0, 0},
                            /* rows of 8, 9-10 and 19-21 floats: im2col's and
                             * col2im's 8-lane moves, their tails and overlaps */
                            {1, 3, 8, 2, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0},
                            {2, 3, 10, 2, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0},
                            {1, 4, 21, 2, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    conv_ctx c = cases[k];
    loom_conv2d_options o = {.in_channels = c.c, .out_channels = c.o, .kernel = {c.kh, c.kw},
                             .stride = {c.sh, c.sw}, .padding = {c.ph, c.pw}, .dilation = {c.dh, c.dw}};
    harness t;
    const int64_t shape[3] = {c.c, c.h, c.w};
    setup_layer(&t, loom_conv2d_create(&o), 3, shape, 2);
    c.oh = t.oshape[1], c.ow = t.oshape[2];
    assert_int_equal(c.oh, (c.h + 2 * c.ph - c.dh * (c.kh - 1) - 1) / c.sh + 1);
    assert_int_equal(t.np, c.o * c.c * c.kh * c.kw + c.o);
    check(&t, conv_ref, &c, true, 1.0);
    check(&t, conv_ref, &c, false, 1.0); /* evaluation: the same map */
    teardown_layer(&t);
  }
  loom_conv2d_options bad = {.out_channels = 0, .kernel = {3, 3}};
  assert_null(loom_conv2d_create(&bad));
}

/* Winograd's F(2x2, 3x3) against the same double reference: odd outputs
 * (a last tile half outside), no, one-sided and wide padding, one tile;
 * 9 samples, so two full products of 4 samples and one of 1 (3 parts: 3
 * samples each, one product of 3). */
static void test_conv2d_winograd(void **state) {
  (void)state;
  const conv_ctx cases[] = {{2, 5, 6, 3, 3, 3, 1, 1, 0, 0, 1, 1, 0, 0},  {3, 7, 7, 4, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0},
                            {2, 6, 5, 3, 3, 3, 1, 1, 0, 1, 1, 1, 0, 0},  {1, 4, 9, 2, 3, 3, 1, 1, 2, 2, 1, 1, 0, 0},
                            {2, 3, 3, 2, 3, 3, 1, 1, 0, 0, 1, 1, 0, 0},  {9, 4, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, 0, 0}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
    conv_ctx c = cases[k];
    loom_conv2d_options o = {.in_channels = c.c, .out_channels = c.o, .kernel = {3, 3}, .padding = {c.ph, c.pw},
                             .algorithm = LOOM_CONV_WINOGRAD};
    harness t;
    const int64_t shape[3] = {c.c, c.h, c.w};
    setup_layer(&t, loom_conv2d_create(&o), 3, shape, 9);
    c.oh = t.oshape[1], c.ow = t.oshape[2];
    check(&t, conv_ref, &c, true, 1.0);
    teardown_layer(&t);
  }
  /* Only 3x3 kernels of stride and dilation 1 have it. */
  loom_conv2d_options strided = {.out_channels = 2, .kernel = {3, 3}, .stride = {2, 2}, .algorithm = LOOM_CONV_WINOGRAD};
  assert_null(loom_conv2d_create(&strided));
  assert_int_equal(loom_last_error_code(), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "Winograd"));
  loom_conv2d_options wide = {.out_channels = 2, .kernel = {5, 5}, .algorithm = LOOM_CONV_WINOGRAD};
  assert_null(loom_conv2d_create(&wide));
}

/* --- pooling --- */

typedef struct pool_ctx {
  int64_t c, h, w, k, s, p, oh, ow;
  bool max, global;
} pool_ctx;

static void pool_ref(const void *vctx, const double *x, const double *p, double *out, int64_t n) {
  (void)p;
  const pool_ctx *q = vctx;
  for (int64_t i = 0; i < n * q->c; i++) {
    const double *plane = x + i * q->h * q->w;
    if (q->global) {
      double s = 0;
      for (int64_t j = 0; j < q->h * q->w; j++)
        s += plane[j];
      out[i] = s / (double)(q->h * q->w);
      continue;
    }
    for (int64_t oy = 0; oy < q->oh; oy++)
      for (int64_t ox = 0; ox < q->ow; ox++) {
        double best = -INFINITY, sum = 0;
        for (int64_t a = 0; a < q->k; a++)
          for (int64_t b = 0; b < q->k; b++) {
            int64_t iy = oy * q->s - q->p + a, ix = ox * q->s - q->p + b;
            if (iy < 0 || iy >= q->h || ix < 0 || ix >= q->w)
              continue;
            best = fmax(best, plane[iy * q->w + ix]);
            sum += plane[iy * q->w + ix];
          }
        out[(i * q->oh + oy) * q->ow + ox] = q->max ? best : sum / (double)(q->k * q->k);
      }
  }
}

static void test_pooling(void **state) {
  (void)state;
  const int64_t shape[3] = {2, 7, 6};
  const struct { bool max, global; int64_t k, s, p; } cases[] = {
      {true, false, 2, 0, 0}, {true, false, 3, 2, 1}, {false, false, 2, 0, 0}, {false, false, 3, 2, 1}, {false, true, 1, 1, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    loom_layer *l = cases[i].global ? loom_global_avgpool_create()
                    : cases[i].max  ? loom_maxpool2d_create(cases[i].k, cases[i].s, cases[i].p)
                                    : loom_avgpool2d_create(cases[i].k, cases[i].s, cases[i].p);
    harness t;
    setup_layer(&t, l, 3, shape, 2);
    pool_ctx q = {2, 7, 6, cases[i].k, cases[i].s ? cases[i].s : cases[i].k, cases[i].p, 1, 1, cases[i].max, cases[i].global};
    if (!q.global)
      q.oh = t.oshape[1], q.ow = t.oshape[2];
    else
      assert_true(t.ondim == 1 && t.oshape[0] == 2);
    check(&t, pool_ref, &q, true, 1.0);
    check(&t, pool_ref, &q, false, 1.0);
    teardown_layer(&t);
  }
  /* The 2x2 max pool's 8-wide path: rows of 9 outputs (a chunk and an
   * overlapping one), an odd last column and row that no window covers. */
  const int64_t wide[3] = {2, 5, 19};
  harness t;
  setup_layer(&t, loom_maxpool2d_create(2, 0, 0), 3, wide, 3);
  assert_true(t.oshape[1] == 2 && t.oshape[2] == 9);
  pool_ctx q = {2, 5, 19, 2, 2, 0, 2, 9, true, false};
  check(&t, pool_ref, &q, true, 1.0);
  teardown_layer(&t);
}

/* --- BatchNorm --- */

typedef struct bn_ctx {
  int64_t c, s;
  const float *running; /* evaluation: [mean..., var...]; NULL: batch statistics */
} bn_ctx;

static void bn_ref(const void *vctx, const double *x, const double *p, double *out, int64_t n) {
  const bn_ctx *b = vctx;
  for (int64_t ch = 0; ch < b->c; ch++) {
    double m = 0, v = 0, M = (double)(n * b->s);
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < b->s; k++)
        m += x[(i * b->c + ch) * b->s + k];
    m /= M;
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < b->s; k++)
        v += pow(x[(i * b->c + ch) * b->s + k] - m, 2);
    v /= M;
    if (b->running)
      m = b->running[ch], v = b->running[b->c + ch];
    for (int64_t i = 0; i < n; i++)
      for (int64_t k = 0; k < b->s; k++) {
        int64_t at = (i * b->c + ch) * b->s + k;
        out[at] = p[ch] * (x[at] - m) / sqrt(v + 1e-5) + p[b->c + ch];
      }
  }
}

static void test_batchnorm(void **state) {
  (void)state;
  /* BatchNorm2d over [3, 4, 5] and BatchNorm1d over [6], in training. */
  const int64_t s2[3] = {3, 4, 5}, s1[1] = {6};
  harness t;
  setup_layer(&t, loom_batchnorm_create(3, 1e-5f, 0.1f), 3, s2, 3);
  bn_ctx c2 = {3, 20, NULL};
  check(&t, bn_ref, &c2, true, 2.0);
  /* Evaluation: the running statistics, an affine map (gradients through
   * it alone), and the statistics left as they are. */
  const float running[6] = {0.3f, -0.2f, 0.1f, 0.8f, 1.5f, 1.1f};
  memcpy(t.buffers, running, sizeof running);
  bn_ctx e2 = {3, 20, running};
  check(&t, bn_ref, &e2, false, 2.0);
  assert_memory_equal(t.buffers, running, sizeof running);
  teardown_layer(&t);
  setup_layer(&t, loom_batchnorm_create(6, 1e-5f, 0.1f), 1, s1, 5);
  bn_ctx c1 = {6, 1, NULL};
  check(&t, bn_ref, &c1, true, 2.0);

  /* Running statistics after one training forward: 0.9 init + 0.1 batch,
   * the variance unbiased; evaluation then uses them. */
  float xs[5 * 6];
  for (int i = 0; i < 30; i++)
    xs[i] = (float)(i % 6) + 0.5f * (float)(i / 6);
  int64_t shape[2] = {5, 6};
  loom_tensor *x = loom_tensor_view(xs, 2, shape), *y = loom_tensor_create(2, shape);
  for (int ch = 0; ch < 6; ch++)
    t.buffers[ch] = 0.0f, t.buffers[6 + ch] = 1.0f;
  assert_int_equal(t.layer->ops.forward(t.layer->data, x, y, true, NULL), 0);
  /* channel 0 holds 0, 0.5, 1, 1.5, 2: mean 1, biased var 0.5, unbiased 0.625 */
  assert_true(fabsf(t.buffers[0] - 0.1f) < 1e-6f);
  assert_true(fabsf(t.buffers[6] - (0.9f + 0.1f * 0.625f)) < 1e-6f);
  assert_int_equal(t.layer->ops.forward(t.layer->data, x, y, false, NULL), 0);
  float want = t.params[0] * (0.0f - t.buffers[0]) / sqrtf(t.buffers[6] + 1e-5f) + t.params[6];
  assert_true(fabsf(loom_tensor_data(y)[0] - want) < 1e-5f);
  loom_tensor_destroy(x), loom_tensor_destroy(y);
  /* A large offset (1000 + 0.1 k) does not cancel the variance away: the
   * outputs are (0.1 k - 0.2) / sqrt(0.02 + eps). */
  for (int i = 0; i < 30; i++)
    xs[i] = 1000.0f + 0.1f * (float)(i / 6);
  x = loom_tensor_view(xs, 2, shape), y = loom_tensor_create(2, shape);
  for (int ch = 0; ch < 6; ch++)
    t.params[ch] = 1.0f, t.params[6 + ch] = 0.0f;
  assert_int_equal(t.layer->ops.forward(t.layer->data, x, y, true, NULL), 0);
  for (int i = 0; i < 30; i++)
    assert_true(fabs(loom_tensor_data(y)[i] - (0.1 * (i / 6) - 0.2) / sqrt(0.02 + 1e-5)) < 5e-3);
  loom_tensor_destroy(x), loom_tensor_destroy(y);
  teardown_layer(&t);
}

/* --- elementwise --- */

typedef struct act_ctx {
  int kind; /* 0 leaky, 1 gelu, 2 tanh, 3 sigmoid, 4 flatten */
  int64_t size;
} act_ctx;

static void act_ref(const void *vctx, const double *x, const double *p, double *out, int64_t n) {
  (void)p;
  const act_ctx *a = vctx;
  for (int64_t i = 0; i < n * a->size; i++) {
    double v = x[i];
    switch (a->kind) {
    case 0: out[i] = v > 0 ? v : 0.1 * v; break;
    case 1: out[i] = 0.5 * v * (1 + erf(v / sqrt(2.0))); break;
    case 2: out[i] = tanh(v); break;
    case 3: out[i] = 1 / (1 + exp(-v)); break;
    default: out[i] = v; break;
    }
  }
}

static void test_elementwise(void **state) {
  (void)state;
  const int64_t shape[3] = {2, 3, 4};
  loom_layer *layers[5] = {loom_leaky_relu_create(0.1f), loom_gelu_create(), loom_tanh_create(), loom_sigmoid_create(),
                           loom_flatten_create()};
  for (int k = 0; k < 5; k++) {
    harness t;
    setup_layer(&t, layers[k], 3, shape, 3);
    act_ctx a = {k, 24};
    if (k == 4)
      assert_true(t.ondim == 1 && t.oshape[0] == 24);
    check(&t, act_ref, &a, true, 3.0);
    check(&t, act_ref, &a, false, 3.0);
    teardown_layer(&t);
  }
}

static void test_dropout(void **state) {
  (void)state;
  enum { NUMEL = 20000 };
  int64_t shape[2] = {100, 200};
  loom_layer *l = loom_dropout_create(0.25f);
  loom_tensor *x = loom_tensor_create(2, shape), *y = loom_tensor_create(2, shape), *y2 = loom_tensor_create(2, shape);
  loom_tensor *dy = loom_tensor_create(2, shape), *dx = loom_tensor_create(2, shape);
  for (int i = 0; i < NUMEL; i++)
    loom_tensor_data(x)[i] = 1.0f + (float)(i % 7), loom_tensor_data(dy)[i] = (float)(i % 5) - 2.0f;
  /* Evaluation: the identity. */
  assert_int_equal(l->ops.forward(l->data, x, y, false, NULL), 0);
  assert_memory_equal(loom_tensor_data(x), loom_tensor_data(y), NUMEL * sizeof(float));
  /* Training without a stream is an error, not a silent identity. */
  assert_int_equal(l->ops.forward(l->data, x, y, true, NULL), LOOM_ESTATE);
  /* Training: each value 0 or x / 0.75, about a quarter dropped; the same
   * seed draws the same mask; backward uses that mask. */
  loom_rng a, b;
  loom_rng_seed(&a, 3, 1, 0);
  b = a;
  assert_int_equal(l->ops.forward(l->data, x, y2, true, &b), 0);
  assert_int_equal(l->ops.forward(l->data, x, y, true, &a), 0);
  assert_memory_equal(loom_tensor_data(y), loom_tensor_data(y2), NUMEL * sizeof(float));
  int dropped = 0;
  for (int i = 0; i < NUMEL; i++) {
    float v = loom_tensor_data(y)[i], in = loom_tensor_data(x)[i];
    assert_true(v == 0.0f || fabsf(v - in / 0.75f) < 1e-5f);
    dropped += v == 0.0f;
  }
  assert_true(fabs(dropped / (double)NUMEL - 0.25) < 0.02);
  /* The mask as documented: one key drawn from the stream, element i
   * dropped when SplitMix64's output for counter i is below p; the same
   * whatever the number of cores (test_layers_3_threads runs this too). */
  loom_rng c;
  loom_rng_seed(&c, 3, 1, 0);
  const uint64_t key = loom_rng_next(&c);
  for (int i = 0; i < NUMEL; i++) {
    uint64_t z = key + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const bool drop = (double)(z >> 40) / 16777216.0 < 0.25;
    if (drop != (loom_tensor_data(y)[i] == 0.0f))
      fail_msg("dropout mask[%d]: %s, expected %s", i, drop ? "kept" : "dropped", drop ? "dropped" : "kept");
  }
  assert_true(memcmp(&a, &c, sizeof a) == 0); /* one draw per forward */
  assert_int_equal(l->ops.backward(l->data, x, y, dy, dx, true), 0);
  for (int i = 0; i < NUMEL; i++) {
    float in = loom_tensor_data(x)[i], out = loom_tensor_data(y)[i];
    assert_true(fabsf(loom_tensor_data(dx)[i] - loom_tensor_data(dy)[i] * out / in) < 1e-5f);
  }
  assert_null(loom_dropout_create(1.0f));
  loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(y2), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
  loom_layer_destroy(l);
}

/* A small CNN trains end to end, and its BatchNorm statistics are saved. */
static void test_cnn_model(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  loom_conv2d_options c1 = {.out_channels = 4, .kernel = {3, 3}, .padding = {1, 1}};
  assert_int_equal(loom_model_add(m, "conv1", loom_conv2d_create(&c1)), 0);
  assert_int_equal(loom_model_add(m, "bn1", loom_batchnorm_create(4, 1e-5f, 0.1f)), 0);
  assert_int_equal(loom_model_add(m, "relu1", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "pool1", loom_maxpool2d_create(2, 0, 0)), 0);
  assert_int_equal(loom_model_add(m, "drop", loom_dropout_create(0.1f)), 0);
  assert_int_equal(loom_model_add(m, "flat", loom_flatten_create()), 0);
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(0, 3, true)), 0);
  const int64_t shape[3] = {1, 8, 8};
  assert_int_equal(loom_model_build(m, 3, shape, 1), 0);
  assert_int_equal(loom_model_num_params(m), 4 * 9 + 4 + 8 + 64 * 3 + 3);
  assert_int_equal(loom_model_num_buffers(m), 8);
  /* The batch split over the cores: two passes give bit-identical
   * gradients (the parts' partial sums add in a fixed order). */
  enum { N = 7 };
  const int64_t bshape[4] = {N, 1, 8, 8};
  loom_tensor *x = loom_tensor_create(4, bshape);
  for (int i = 0; i < N * 64; i++)
    loom_tensor_data(x)[i] = (float)((i * 37) % 23) / 11.0f - 1.0f;
  size_t np = loom_model_num_params(m);
  float *first = malloc(np * sizeof *first);
  loom_rng rng;
  loom_model_set_train(m, true);
  loom_model_set_rng(m, &rng);
  for (int pass = 0; pass < 2; pass++) {
    const loom_tensor *out;
    loom_rng_seed(&rng, 5, 0, 0); /* the same dropout mask */
    loom_model_zero_grad(m);
    assert_int_equal(loom_model_forward(m, x, &out), 0);
    loom_tensor *dout = loom_tensor_create(2, (int64_t[]){N, 3});
    for (int i = 0; i < N * 3; i++)
      loom_tensor_data(dout)[i] = (float)(i % 5) - 2.0f;
    assert_int_equal(loom_model_backward(m, dout), 0);
    loom_tensor_destroy(dout);
    if (pass == 0)
      memcpy(first, loom_model_grads(m), np * sizeof *first);
    else
      assert_memory_equal(first, loom_model_grads(m), np * sizeof *first);
  }
  free(first);
  loom_tensor_destroy(x);
  char *dir = test_tmpdir(), path[600];
  snprintf(path, sizeof path, "%s/w.h5", dir);
  loom_model_buffers(m)[0] = 0.25f;
  assert_int_equal(loom_model_save_weights(m, path), 0);
  loom_model_buffers(m)[0] = 0.0f;
  assert_int_equal(loom_model_load_weights(m, path), 0);
  assert_true(loom_model_buffers(m)[0] == 0.25f);
  loom_model_destroy(m);
  test_rm_rf(dir);
  free(dir);
}

/* A child forked after the pool started has no workers: its layers must
 * still run (on one thread) rather than wait for them. */
static void test_fork_after_pool(void **state) {
  (void)state;
  loom_conv2d_options o = {.out_channels = 2, .kernel = {3, 3}};
  harness t;
  const int64_t shape[3] = {1, 6, 6};
  setup_layer(&t, loom_conv2d_create(&o), 3, shape, 4);
  loom_tensor *x = batch_tensor(4, 3, shape), *y = batch_tensor(4, t.ondim, t.oshape);
  assert_int_equal(t.layer->ops.forward(t.layer->data, x, y, true, NULL), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    alarm(10); /* a deadlock ends the child with SIGALRM */
    _exit(t.layer->ops.forward(t.layer->data, x, y, true, NULL) == 0 ? 0 : 1);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  loom_tensor_destroy(x), loom_tensor_destroy(y);
  teardown_layer(&t);
}

/* --- Products and elementwise layers on their parallel paths --- */

/* loom_gemm against a double product, for each transpose and shapes that
 * are cut along rows (M >= N) or along columns, from operands stored with
 * wider rows than they use (lda, ldb, ldc beyond the minimum). */
static void test_gemm_products(void **state) {
  (void)state;
  const int64_t shapes[][3] = {{150, 40, 60}, {40, 150, 60}, {97, 131, 33}, {3, 5, 7}};
  loom_rng rng;
  loom_rng_seed(&rng, 21, 0, 0);
  for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        const int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        const int64_t ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        const int64_t lda = ac + 3, ldb = bc + 5, ldc = N + 2;
        float *a = malloc((size_t)(ar * lda) * sizeof *a), *b = malloc((size_t)(br * ldb) * sizeof *b);
        float *c = malloc((size_t)(M * ldc) * sizeof *c);
        for (int64_t i = 0; i < ar * lda; i++)
          a[i] = 2.0f * loom_rng_uniform(&rng) - 1.0f;
        for (int64_t i = 0; i < br * ldb; i++)
          b[i] = 2.0f * loom_rng_uniform(&rng) - 1.0f;
        for (int64_t i = 0; i < M * ldc; i++)
          c[i] = (float)(i % 9) - 4.0f;
        float *keep = malloc((size_t)(M * ldc) * sizeof *keep);
        memcpy(keep, c, (size_t)(M * ldc) * sizeof *c);
        loom_gemm(ta, tb, M, N, K, 0.5f, a, lda, b, ldb, 2.0f, c, ldc);
        for (int64_t i = 0; i < M; i++)
          for (int64_t j = 0; j < ldc; j++) {
            if (j >= N) { /* the padding of C's rows is not written */
              assert_true(c[i * ldc + j] == keep[i * ldc + j]);
              continue;
            }
            double want = 2.0 * keep[i * ldc + j];
            for (int64_t k = 0; k < K; k++)
              want += 0.5 * (double)(ta ? a[k * lda + i] : a[i * lda + k]) * (tb ? b[j * ldb + k] : b[k * ldb + j]);
            close_to(c[i * ldc + j], want, 1e-5, "gemm", i * ldc + j);
          }
        free(a), free(b), free(c), free(keep);
      }
}

/* ReLU on a tensor large enough to be split over the pool. */
static void test_relu_large(void **state) {
  (void)state;
  enum { N = 300000 };
  int64_t shape[1] = {N};
  loom_layer *l = loom_relu_create();
  loom_tensor *x = loom_tensor_create(1, shape), *y = loom_tensor_create(1, shape);
  loom_tensor *dy = loom_tensor_create(1, shape), *dx = loom_tensor_create(1, shape);
  for (int i = 0; i < N; i++)
    loom_tensor_data(x)[i] = (float)(i % 11) - 5.0f, loom_tensor_data(dy)[i] = (float)(i % 3) + 1.0f;
  assert_int_equal(l->ops.forward(l->data, x, y, true, NULL), 0);
  assert_int_equal(l->ops.backward(l->data, x, y, dy, dx, false), 0);
  for (int i = 0; i < N; i++) {
    float v = (float)(i % 11) - 5.0f;
    assert_true(loom_tensor_data(y)[i] == (v > 0 ? v : 0.0f));
    assert_true(loom_tensor_data(dx)[i] == (v > 0 ? (float)(i % 3) + 1.0f : 0.0f));
  }
  loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
  loom_layer_destroy(l);
}

/* --- NaN goes through as through PyTorch's layers --- */

static void run_layer(loom_layer *l, loom_tensor *x, loom_tensor *y, loom_tensor *dy, loom_tensor *dx, bool train,
                      loom_rng *rng) {
  assert_int_equal(l->ops.forward(l->data, x, y, train, rng), 0);
  assert_int_equal(l->ops.backward(l->data, x, y, dy, dx, false), 0);
}

/* ReLU, split over the pool: relu(NaN) = NaN, and the gradient passes
 * where the output is not <= 0 (PyTorch's threshold_backward), so at a
 * NaN too. */
static void test_relu_nan(void **state) {
  (void)state;
  enum { N = 300000 };
  int64_t shape[1] = {N};
  loom_layer *l = loom_relu_create();
  loom_tensor *x = loom_tensor_create(1, shape), *y = loom_tensor_create(1, shape);
  loom_tensor *dy = loom_tensor_create(1, shape), *dx = loom_tensor_create(1, shape);
  for (int i = 0; i < N; i++)
    loom_tensor_data(x)[i] = i % 13 == 0 ? NAN : (float)(i % 11) - 5.0f,
    loom_tensor_data(dy)[i] = (float)(i % 3) + 1.0f;
  run_layer(l, x, y, dy, dx, true, NULL);
  for (int i = 0; i < N; i++) {
    float v = (float)(i % 11) - 5.0f, g = (float)(i % 3) + 1.0f;
    if (i % 13 == 0) {
      assert_true(isnan(loom_tensor_data(y)[i]));
      assert_true(loom_tensor_data(dx)[i] == g);
    } else {
      assert_true(loom_tensor_data(y)[i] == (v > 0 ? v : 0.0f));
      assert_true(loom_tensor_data(dx)[i] == (v > 0 ? g : 0.0f));
    }
  }
  loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
  loom_layer_destroy(l);
}

/* The other activations and Dropout: a NaN input gives a NaN output and
 * leaves its neighbours alone; the input gradient at the NaN is PyTorch's
 * (LeakyReLU's backward selects slope * dy, the others multiply by NaN). */
static void test_activations_nan(void **state) {
  (void)state;
  int64_t shape[1] = {3};
  loom_layer *layers[5] = {loom_leaky_relu_create(0.1f), loom_gelu_create(), loom_tanh_create(), loom_sigmoid_create(),
                           loom_dropout_create(0.5f)};
  loom_tensor *x = loom_tensor_create(1, shape), *y = loom_tensor_create(1, shape);
  loom_tensor *dy = loom_tensor_create(1, shape), *dx = loom_tensor_create(1, shape);
  const float in[3] = {NAN, -1.0f, 2.0f};
  memcpy(loom_tensor_data(x), in, sizeof in);
  loom_rng rng;
  loom_rng_seed(&rng, 3, 0, 0);
  for (int k = 0; k < 5; k++) {
    for (int i = 0; i < 3; i++)
      loom_tensor_data(dy)[i] = 1.0f;
    run_layer(layers[k], x, y, dy, dx, true, &rng);
    assert_true(isnan(loom_tensor_data(y)[0])); /* Dropout: NaN * 0 is NaN, as x * mask in PyTorch */
    assert_true(isfinite(loom_tensor_data(y)[1]) && isfinite(loom_tensor_data(y)[2]));
    if (k == 0)
      assert_true(loom_tensor_data(dx)[0] == 0.1f);
    else if (k < 4)
      assert_true(isnan(loom_tensor_data(dx)[0]));
    loom_layer_destroy(layers[k]);
  }
  loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
}

/* PyTorch's max_pool2d rule, in double: a value takes the max if greater or
 * NaN, the window's first position otherwise; the input gradient adds dy
 * at each window's max. */
static void max_pool_nan_ref(const pool_ctx *q, const float *x, double *out, int32_t *at) {
  for (int64_t oy = 0; oy < q->oh; oy++)
    for (int64_t ox = 0; ox < q->ow; ox++) {
      double best = -INFINITY;
      int32_t where = -1;
      for (int64_t a = 0; a < q->k; a++)
        for (int64_t b = 0; b < q->k; b++) {
          int64_t iy = oy * q->s - q->p + a, ix = ox * q->s - q->p + b;
          if (iy < 0 || iy >= q->h || ix < 0 || ix >= q->w)
            continue;
          double v = x[iy * q->w + ix];
          if (where < 0 || v > best || isnan(v))
            best = v, where = (int32_t)(iy * q->w + ix);
        }
      out[oy * q->ow + ox] = best, at[oy * q->ow + ox] = where;
    }
}

/* Max pooling's three paths (2x2 in 8-wide chunks, 2x2 scalar, the
 * general loop) with NaNs: one alone in a window, two in one window (the
 * last one takes the gradient), one at a window's first position. */
static void test_max_pool_nan(void **state) {
  (void)state;
  const struct { int64_t h, w, k, s, p; } cases[] = {{4, 18, 2, 2, 0}, {4, 6, 2, 2, 0}, {5, 7, 3, 2, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const int64_t h = cases[c].h, w = cases[c].w, shape[2] = {h, w};
    loom_layer *l = loom_maxpool2d_create(cases[c].k, cases[c].s, cases[c].p);
    harness t;
    setup_layer(&t, l, 2, shape, 1);
    pool_ctx q = {1, h, w, cases[c].k, cases[c].s, cases[c].p, t.oshape[1], t.oshape[2], true, false};
    loom_tensor *x = batch_tensor(1, 2, shape), *y = batch_tensor(1, t.ondim, t.oshape);
    loom_tensor *dy = batch_tensor(1, t.ondim, t.oshape), *dx = batch_tensor(1, 2, shape);
    float *xd = loom_tensor_data(x);
    for (int64_t i = 0; i < h * w; i++)
      xd[i] = (float)((i * 7) % 17) - 8.0f;
    xd[2] = NAN, xd[w + 3] = NAN, xd[2 * w + 4] = NAN; /* rows 0-1: two in a window; row 2: a first position */
    const int64_t no = q.oh * q.ow;
    for (int64_t i = 0; i < no; i++)
      loom_tensor_data(dy)[i] = (float)(i + 1);
    run_layer(l, x, y, dy, dx, true, NULL);
    double *want = malloc((size_t)no * sizeof *want), *dwant = calloc((size_t)(h * w), sizeof *dwant);
    int32_t *at = malloc((size_t)no * sizeof *at);
    max_pool_nan_ref(&q, xd, want, at);
    int nans = 0;
    for (int64_t i = 0; i < no; i++) {
      float got = loom_tensor_data(y)[i];
      nans += isnan(want[i]);
      assert_true(isnan(want[i]) ? isnan(got) : got == (float)want[i]);
      dwant[at[i]] += (double)(i + 1);
    }
    assert_true(nans >= 2);
    assert_true(dwant[2] == 0.0); /* the window's other NaN took it */
    for (int64_t i = 0; i < h * w; i++)
      assert_true(loom_tensor_data(dx)[i] == (float)dwant[i]);
    free(want), free(dwant), free(at);
    loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
    teardown_layer(&t);
  }
}

/* BatchNorm with its ReLU fused (the CPU backend's block of the two,
 * driven directly, so that dx is computed): in evaluation only a NaN's own element is NaN, and the
 * gradient passes where the output was positive or NaN, as through the
 * ReLU layer (dbeta sums dy there; dx = gamma invstd dy); NaNs in
 * the 8-lane part and in the tail of a plane. In training a NaN makes its
 * channel NaN (the batch statistics), and the ReLU keeps it. */
static void test_batchnorm_relu_nan(void **state) {
  (void)state;
  enum { C = 2, S = 12, NS = 2, ALL = NS * C * S };
  const int64_t shape[3] = {C, 3, 4};
  harness t;
  setup_layer(&t, loom_batchnorm_create(C, 1e-5f, 0.1f), 3, shape, NS);
  loom_layer *l = t.layer, *relu = loom_relu_create();
  loom_backend *cpu = loom_backend_cpu();
  loom_layer_desc d[2];
  assert_true(l->describe(l->data, &d[0]) && relu->describe(relu->data, &d[1]));
  loom_block fused;
  assert_int_equal(loom_backend_plan_block(cpu, d, 2, &fused), 0);
  assert_int_equal(fused.count, 2);
  assert_int_equal(fused.kept, 2); /* the BatchNorm's own output is never written */
  loom_tensor *x = batch_tensor(NS, 3, shape), *y = batch_tensor(NS, 3, shape);
  loom_tensor *dy = batch_tensor(NS, 3, shape), *dx = batch_tensor(NS, 3, shape);
  const loom_block_io io[2] = {{.params = t.params, .grads = t.grads, .buffers = t.buffers},
                               {.y = loom_tensor_data(y), .dy = loom_tensor_data(dy)}};
  float *xd = loom_tensor_data(x);
  for (int i = 0; i < ALL; i++)
    xd[i] = (float)(i % 7) - 3.0f, loom_tensor_data(dy)[i] = (float)(i % 3) + 1.0f;
  const int nan_at[2] = {3, (1 * C + 1) * S + 10}; /* sample 0 channel 0 lane 3; sample 1 channel 1 tail */
  xd[nan_at[0]] = NAN, xd[nan_at[1]] = NAN;
  /* Evaluation: running mean 0 and variance 1 as initialised. */
  assert_int_equal(loom_backend_block_forward(cpu, fused.plan, false, xd, io, NS), 0);
  assert_int_equal(loom_backend_block_backward(cpu, fused.plan, 0, xd, io, loom_tensor_data(dx), NS), 0);
  double dbeta[C] = {0};
  for (int i = 0; i < ALL; i++) {
    const int ch = (i / S) % C;
    const bool is_nan = i == nan_at[0] || i == nan_at[1];
    const double scale = t.params[ch] / sqrt(1.0 + 1e-5), v = scale * xd[i] + t.params[C + ch];
    const bool pass = is_nan || v > 0;
    if (is_nan)
      assert_true(isnan(loom_tensor_data(y)[i]));
    else
      close_to(loom_tensor_data(y)[i], pass ? v : 0.0, 1e-6, "bn+relu y", i);
    if (!is_nan) /* there loom's dx has the term (x - mean) k, 0 in evaluation but NaN * 0 */
      close_to(loom_tensor_data(dx)[i], pass ? scale * loom_tensor_data(dy)[i] : 0.0, 1e-6, "bn+relu dx", i);
    dbeta[ch] += pass ? loom_tensor_data(dy)[i] : 0.0;
  }
  close_to(t.grads[C], dbeta[0], 1e-6, "dbeta", 0);
  close_to(t.grads[C + 1], dbeta[1], 1e-6, "dbeta", 1);
  /* Training: channel 0 and channel 1 each hold a NaN, so all is NaN;
   * without the second NaN channel 1 is finite again. */
  assert_int_equal(loom_backend_block_forward(cpu, fused.plan, true, xd, io, NS), 0);
  for (int i = 0; i < ALL; i++)
    assert_true(isnan(loom_tensor_data(y)[i]));
  xd[nan_at[1]] = 1.0f;
  assert_int_equal(loom_backend_block_forward(cpu, fused.plan, true, xd, io, NS), 0);
  for (int i = 0; i < ALL; i++)
    assert_true((i / S) % C == 0 ? isnan(loom_tensor_data(y)[i]) : isfinite(loom_tensor_data(y)[i]));
  loom_tensor_destroy(x), loom_tensor_destroy(y), loom_tensor_destroy(dy), loom_tensor_destroy(dx);
  loom_backend_plan_destroy(cpu, fused.plan);
  loom_layer_destroy(relu);
  teardown_layer(&t);
}

/* loom_tensor_move_to carries a tensor's values to another backend's memory
 * and back (a criterion keeps its buffers on the logits' backend this way);
 * the device here is host memory behind the copy calls, counted. */
static int device_copies;
static void *dev_alloc(void *ctx, size_t bytes) { return (void)ctx, malloc(bytes); }
static void dev_free(void *ctx, void *p) { (void)ctx, free(p); }
static int dev_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  (void)ctx, device_copies++;
  memcpy(dst, src, bytes);
  return 0;
}
static int dev_zero(void *ctx, void *p, size_t bytes) { return (void)ctx, memset(p, 0, bytes), 0; }

static void test_tensor_move_to(void **state) {
  (void)state;
  loom_backend_ops ops = {.name = "device", .device = LOOM_DEVICE_CUDA, .alloc = dev_alloc, .free = dev_free,
                          .to_host = dev_copy, .from_host = dev_copy, .copy = dev_copy, .zero = dev_zero};
  loom_backend *dev = loom_backend_create(&ops, NULL);
  const int64_t shape[2] = {3, 2};
  loom_tensor *t = loom_tensor_create(2, shape);
  for (int i = 0; i < 6; i++)
    t->data[i] = (float)i - 2.5f;
  assert_int_equal(loom_tensor_move_to(t, dev), 0);
  assert_ptr_equal(loom_tensor_backend(t), dev);
  assert_int_equal(device_copies, 1); /* one upload */
  assert_int_equal(loom_tensor_move_to(t, dev), 0); /* already there: nothing */
  assert_int_equal(device_copies, 1);
  const float *h = loom_tensor_host_data(t);
  for (int i = 0; i < 6; i++)
    assert_true(h[i] == (float)i - 2.5f);
  assert_int_equal(loom_tensor_move_to(t, NULL), 0); /* back to host memory */
  assert_null(loom_tensor_backend(t));
  for (int i = 0; i < 6; i++)
    assert_true(t->data[i] == (float)i - 2.5f);
  float mem[6];
  loom_tensor *view = loom_tensor_view(mem, 2, shape);
  assert_int_equal(loom_tensor_move_to(view, dev), LOOM_ESTATE); /* a view stays where its memory is */
  loom_tensor_destroy(view), loom_tensor_destroy(t);
  loom_backend_destroy(dev);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fork_after_pool), cmocka_unit_test(test_conv2d), cmocka_unit_test(test_conv2d_winograd),   cmocka_unit_test(test_pooling), cmocka_unit_test(test_batchnorm),
      cmocka_unit_test(test_elementwise), cmocka_unit_test(test_dropout), cmocka_unit_test(test_cnn_model),
      cmocka_unit_test(test_gemm_products), cmocka_unit_test(test_relu_large), cmocka_unit_test(test_relu_nan),
      cmocka_unit_test(test_activations_nan), cmocka_unit_test(test_max_pool_nan),
      cmocka_unit_test(test_batchnorm_relu_nan), cmocka_unit_test(test_tensor_move_to),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
