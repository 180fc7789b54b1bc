/* Mixed precision (autocast, loom/backend.h): the ROUND op against
 * hand-worked values and the compiler's own _Float16 conversion, and the
 * format's bits a device stores (loom_lowp_bits); gemm and Conv2d under
 * autocast equal the fp32 op on operands rounded beforehand, bit for bit,
 * on the CPU and the fake device (with gemm_lowp and without); and experiment.precision
 * trains within a bound of the fp32 run and leaves autocast as it was.
 * Usage: test_precision CONFIGS_DIR (tests/configs) */
#include "helpers.h"

#include <math.h>

#include <loom/backend_cpu.h>

#include "backends/cpu/round_math.h"
#include "fake_device.h"

static const char *configs;

static float bits(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

static float round_cpu(loom_precision p, float x) {
  float y;
  assert_int_equal(loom_backend_round(loom_backend_cpu(), p, &x, &y, 1), 0);
  return y;
}

/* Same bits (so -0 is not 0, and NaN is NaN). */
static void expect(loom_precision p, float x, float want) {
  float got = round_cpu(p, x);
  if (memcmp(&got, &want, sizeof got) != 0 && !(isnan(got) && isnan(want)))
    fail_msg("%s(%a) = %a, expected %a", loom_precision_name(p), (double)x, (double)got, (double)want);
}

static void test_round_hand_values(void **state) {
  (void)state;
  const loom_precision B = LOOM_PRECISION_BF16, H = LOOM_PRECISION_FP16;
  /* bf16 keeps 7 mantissa bits: 1's ulp is 2^-7. */
  expect(B, 1.0f + 0x1p-8f, 1.0f);                 /* halfway: to even (1) */
  expect(B, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-6f);   /* halfway: to even (up) */
  expect(B, 1.0f + 0x1p-8f + 0x1p-20f, 1.0f + 0x1p-7f); /* past halfway: up */
  expect(B, -3.0f, -3.0f);
  expect(B, -0.0f, -0.0f);
  expect(B, bits(0x7f7fffffu), INFINITY);          /* FLT_MAX rounds past bf16's largest */
  expect(B, bits(0x7f7f0000u), bits(0x7f7f0000u)); /* bf16's largest */
  expect(B, bits(0x00008000u), 0.0f);              /* a subnormal halfway to 0: even */
  expect(B, INFINITY, INFINITY);
  expect(B, NAN, NAN);
  /* fp16: 10 mantissa bits, largest 65504, subnormal step 2^-24. */
  expect(H, 65519.0f, 65504.0f);
  expect(H, 65520.0f, INFINITY);
  expect(H, -70000.0f, -INFINITY);
  expect(H, 1.0f + 0x1p-11f, 1.0f);
  expect(H, 1.0f + 3 * 0x1p-11f, 1.0f + 0x1p-9f);
  expect(H, 0x1p-24f, 0x1p-24f);
  expect(H, 0x1p-25f, 0.0f);          /* halfway to 0: even */
  expect(H, 3 * 0x1p-25f, 0x1p-23f);  /* 1.5 steps: to 2 */
  expect(H, -1e-10f, -0.0f);
  expect(H, 0x1p-14f, 0x1p-14f);
  expect(H, NAN, NAN);
  expect(LOOM_PRECISION_FP32, 1.0f + 0x1p-20f, 1.0f + 0x1p-20f);
  assert_int_equal(loom_backend_round(loom_backend_cpu(), (loom_precision)7, NULL, NULL, 0), LOOM_EINVAL);
}

/* Floats over fp16's whole range and beyond, and bf16's by their bits. */
static float sample(uint32_t *seed, int i) {
  *seed = *seed * 1664525u + 1013904223u;
  if (i % 2)
    return bits(*seed); /* any bit pattern */
  float m = (float)(*seed >> 8) / (float)(1u << 24);
  return ldexpf(m, (int)(*seed % 64) - 40) * (*seed & 1 ? -1.0f : 1.0f);
}

static void test_round_matches_references(void **state) {
  (void)state;
  enum { N = 200000 };
  float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
  uint32_t seed = 12345;
  for (int i = 0; i < N; i++)
    x[i] = sample(&seed, i);
#ifdef __FLT16_MAX__
  /* fp16: the compiler's conversion (IEEE round to nearest even). */
  assert_int_equal(loom_backend_round(loom_backend_cpu(), LOOM_PRECISION_FP16, x, y, N), 0);
  for (int i = 0; i < N; i++) {
    float want = (float)(_Float16)x[i];
    if (memcmp(&want, &y[i], sizeof want) != 0 && !(isnan(want) && isnan(y[i])))
      fail_msg("fp16(%a) = %a, _Float16 gives %a", (double)x[i], (double)y[i], (double)want);
  }
#endif
  /* bf16: the nearest float with 8 significant bits, in double. */
  assert_int_equal(loom_backend_round(loom_backend_cpu(), LOOM_PRECISION_BF16, x, y, N), 0);
  for (int i = 0; i < N; i++) {
    if (!isfinite(x[i]) || x[i] == 0.0f)
      continue;
    int e;
    frexp(fabs((double)x[i]), &e);
    /* below bf16's normals, steps of 2^-133 */
    double q = ldexp(1.0, (e - 1 < -126 ? -126 : e - 1) - 7);
    double want = copysign(nearbyint(fabs((double)x[i]) / q) * q, (double)x[i]);
    if (fabs(want) >= 0x1.ffp127) /* past the largest bf16: infinity */
      want = copysign(INFINITY, want);
    if ((double)y[i] != want)
      fail_msg("bf16(%a) = %a, expected %a", (double)x[i], (double)y[i], want);
  }
  /* In place, and on the fake device: the same bits. */
  fake_device *dev;
  loom_backend *fake = fake_device_create((size_t)8 << 20, &dev);
  float *d = loom_backend_alloc(fake, N * sizeof *d), *back = malloc(N * sizeof *back);
  assert_int_equal(loom_backend_from_host(fake, d, x, N * sizeof *d), 0);
  assert_int_equal(loom_backend_round(fake, LOOM_PRECISION_BF16, d, d, N), 0);
  assert_int_equal(loom_backend_to_host(fake, back, d, N * sizeof *d), 0);
  assert_memory_equal(back, y, N * sizeof *y);
  loom_backend_free(fake, d);
  loom_backend_destroy(fake);
  free(x), free(y), free(back);
}


/* The 16 bits a device stores for gemm_lowp's operands (loom_lowp_bits):
 * fp16 the compiler's _Float16 conversion's, bf16 the rounded float's
 * upper half, and a NaN one of the format's NaNs, for any bit pattern. */
static void test_lowp_bits(void **state) {
  (void)state;
  uint32_t seed = 777;
  const float specials[] = {0.0f, -0.0f, 65504.0f, 65519.0f, 65520.0f, 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-14f,
                            0x1.ff8p-15f, INFINITY, -INFINITY, bits(0x7f800001u), bits(0xffc00000u), 1.0f / 3.0f};
  const int nspecial = (int)(sizeof specials / sizeof *specials);
  for (int i = 0; i < 200000 + nspecial; i++) {
    const float x = i < nspecial ? specials[i] : sample(&seed, i);
    const uint16_t b = loom_lowp_bits(LOOM_PRECISION_BF16, x);
    const uint32_t r = loom_float_bits(loom_round_bf16(x));
    if (isnan(x) ? (b & 0x7f80u) != 0x7f80u || (b & 0x7fu) == 0 : b != r >> 16 || (r & 0xffffu) != 0)
      fail_msg("bf16 bits of %a: 0x%04x, the rounded float 0x%08x", (double)x, b, r);
#ifdef __FLT16_MAX__
    const _Float16 h = (_Float16)x;
    uint16_t want;
    memcpy(&want, &h, sizeof want);
    const uint16_t got = loom_lowp_bits(LOOM_PRECISION_FP16, x);
    if (isnan(x) ? (got & 0x7c00u) != 0x7c00u || (got & 0x3ffu) == 0 : got != want)
      fail_msg("fp16 bits of %a: 0x%04x, _Float16 gives 0x%04x", (double)x, got, want);
#endif
  }
}

/* C (M x N, ldc N) = op(A) op(B) on `b` from host operands, back on the host. */
static void product(loom_backend *b, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                    const float *B, int64_t ldb, bool checked, float *C) {
  const size_t na = (size_t)((ta ? K : M) * lda), nb = (size_t)((tb ? N : K) * ldb), nc = (size_t)(M * N);
  float *a = loom_backend_alloc(b, na * 4), *bb = loom_backend_alloc(b, nb * 4), *c = loom_backend_alloc(b, nc * 4);
  assert_int_equal(loom_backend_from_host(b, a, A, na * 4), 0);
  assert_int_equal(loom_backend_from_host(b, bb, B, nb * 4), 0);
  assert_int_equal(loom_backend_zero(b, c, nc * 4), 0);
  bool finite = false;
  if (checked)
    assert_int_equal(loom_backend_gemm_checked(b, ta, tb, M, N, K, 1.0f, a, lda, bb, ldb, 0.0f, c, N, &finite), 0);
  else
    assert_int_equal(loom_backend_gemm(b, ta, tb, M, N, K, 1.0f, a, lda, bb, ldb, 0.0f, c, N), 0);
  assert_true(!checked || finite);
  assert_int_equal(loom_backend_to_host(b, C, c, nc * 4), 0);
  loom_backend_free(b, a), loom_backend_free(b, bb), loom_backend_free(b, c);
}

static void test_gemm_rounds_its_operands(void **state) {
  (void)state;
  fake_device *dev, *dev32;
  loom_backend *fake = fake_device_create((size_t)8 << 20, &dev);
  /* Without gemm_lowp the core rounds into fp32 copies; with it the
   * backend multiplies in the format. */
  loom_backend *fake32 = fake_device_create_without((size_t)8 << 20, FAKE_NO_LOWP, &dev32);
  loom_backend *backends[] = {loom_backend_cpu(), fake, fake32};
  const loom_precision ps[] = {LOOM_PRECISION_BF16, LOOM_PRECISION_FP16};
  enum { M = 37, N = 19, K = 53, PAD = 3 };
  for (int t = 0; t < 4; t++) {
    const bool ta = t & 1, tb = t & 2;
    const int64_t lda = (ta ? M : K) + PAD, ldb = (tb ? K : N) + PAD; /* strides past the rows */
    float A[(M > K ? M : K) * ((M > K ? M : K) + PAD)], B[(N > K ? N : K) * ((N > K ? N : K) + PAD)];
    test_fill(A, (int64_t)(sizeof A / sizeof *A), 7u + (uint32_t)t);
    test_fill(B, (int64_t)(sizeof B / sizeof *B), 11u + (uint32_t)t);
    float fp32[M * N], want[M * N], got[M * N], ra[sizeof A / sizeof *A], rb[sizeof B / sizeof *B];
    product(loom_backend_cpu(), ta, tb, M, N, K, A, lda, B, ldb, false, fp32);
    for (int pi = 0; pi < 2; pi++) {
      /* The reference: fp32 products of operands rounded beforehand. */
      assert_int_equal(loom_backend_round(loom_backend_cpu(), ps[pi], A, ra, (int64_t)(sizeof A / sizeof *A)), 0);
      assert_int_equal(loom_backend_round(loom_backend_cpu(), ps[pi], B, rb, (int64_t)(sizeof B / sizeof *B)), 0);
      product(loom_backend_cpu(), ta, tb, M, N, K, ra, lda, rb, ldb, false, want);
      assert_memory_not_equal(want, fp32, sizeof want); /* the rounding shows */
      for (int bi = 0; bi < 3; bi++)
        for (int checked = 0; checked < 2; checked++) {
          loom_precision before = loom_backend_set_autocast(ps[pi]);
          assert_int_equal(before, LOOM_PRECISION_FP32);
          product(backends[bi], ta, tb, M, N, K, A, lda, B, ldb, checked, got);
          loom_backend_set_autocast(before);
          if (memcmp(got, want, sizeof got) != 0)
            fail_msg("%s gemm%s (ta %d, tb %d) on %s differs from the rounded operands' product",
                     loom_precision_name(ps[pi]), checked ? "_checked" : "", ta, tb, loom_backend_name(backends[bi]));
        }
    }
  }
  assert_int_equal(fake_device_counts_of(dev).lowp_gemms, 4 * 2 * 2); /* transposes x formats x checked */
  assert_int_equal(fake_device_counts_of(dev32).lowp_gemms, 0);
  loom_backend_destroy(fake);
  loom_backend_destroy(fake32);
}

/* A Conv2d -> BatchNorm -> ReLU model (which the CPU fuses in fp32). */
static loom_model *conv_model(void) {
  loom_model *m = loom_model_create();
  loom_conv2d_options o = {.out_channels = 6, .kernel = {3, 3}, .padding = {1, 1}};
  assert_int_equal(loom_model_add(m, "conv", loom_conv2d_create(&o)), 0);
  assert_int_equal(loom_model_add(m, "bn", loom_batchnorm_create(6, 1e-5f, 0.1f)), 0);
  assert_int_equal(loom_model_add(m, "relu", loom_relu_create()), 0);
  const int64_t shape[3] = {4, 9, 9};
  assert_int_equal(loom_model_build(m, 3, shape, 5), 0);
  return m;
}

/* The model's output on x, on the host. */
static float *output(loom_model *m, const loom_tensor *x) {
  const loom_tensor *out;
  assert_int_equal(loom_model_forward(m, x, &out), 0);
  float *y = malloc((size_t)loom_tensor_numel(out) * sizeof *y);
  memcpy(y, loom_tensor_data((loom_tensor *)out), (size_t)loom_tensor_numel(out) * sizeof *y);
  return y;
}

static void test_conv_rounds_its_operands(void **state) {
  (void)state;
  const int64_t shape[4] = {3, 4, 9, 9};
  loom_tensor *x = loom_tensor_create(4, shape), *rx = loom_tensor_create(4, shape);
  test_fill(loom_tensor_data(x), loom_tensor_numel(x), 99);
  loom_model *m = conv_model(), *ref = conv_model();
  loom_model_set_train(m, true), loom_model_set_train(ref, true);
  const float *fp32 = output(m, x);
  /* The reference: the conv's weights and input rounded, in fp32 (the
   * BatchNorm and ReLU are fp32 under autocast too). */
  size_t off, count;
  loom_model_layer_params(ref, 0, &off, &count);
  float *w = loom_model_params(ref) + off;
  const int64_t nw = 6 * 4 * 3 * 3;
  assert_int_equal(loom_backend_round(loom_backend_cpu(), LOOM_PRECISION_BF16, w, w, nw), 0);
  assert_int_equal(loom_backend_round(loom_backend_cpu(), LOOM_PRECISION_BF16, loom_tensor_data(x),
                                      loom_tensor_data(rx), loom_tensor_numel(x)), 0);
  float *want = output(ref, rx);
  loom_backend_set_autocast(LOOM_PRECISION_BF16);
  float *got = output(m, x);
  loom_backend_set_autocast(LOOM_PRECISION_FP32);
  const size_t bytes = 3 * 6 * 9 * 9 * sizeof(float);
  assert_memory_equal(got, want, bytes);
  assert_memory_not_equal(got, fp32, bytes);
  /* Out of autocast again: the fp32 output (a training forward's output
   * depends on the weights and the input alone). */
  float *again = output(m, x);
  assert_memory_equal(again, fp32, bytes);
  free(again);
  free(got);
  loom_tensor_destroy(rx);
  free((void *)fp32), free(want);
  loom_model_destroy(m), loom_model_destroy(ref);
  loom_tensor_destroy(x);
}

/* What a run of tiny.json ended with. */
typedef struct trained {
  float *w;
  size_t n;
  double scale;
  int64_t skips, steps, batches;
} trained;

/* tiny.json (4 train batches an epoch) in `dir` with the overrides
 * (NULL-terminated), resumed from its last checkpoint if asked. */
static trained train_tiny_in(const char *dir, const char *const *sets, bool resume) {
  char path[1024], set[1200];
  snprintf(path, sizeof path, "%s/tiny.json", configs);
  loom_config *c = loom_config_load(path);
  assert_non_null(c);
  snprintf(set, sizeof set, "experiment.logdir=%s", dir);
  assert_int_equal(loom_config_set(c, set), 0);
  for (; *sets; sets++)
    if (loom_config_set(c, *sets) < 0)
      fail_msg("%s: %s", *sets, loom_last_error());
  loom_experiment *exp;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, "last"), 0);
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  assert_int_equal(loom_backend_autocast(), LOOM_PRECISION_FP32); /* restored */
  loom_model *m = loom_runner_model(r);
  trained t = {.n = loom_model_num_params(m), .scale = loom_runner_loss_scale(r), .skips = loom_runner_overflow_skips(r),
               .steps = loom_runner_optimizer_step_count(r), .batches = loom_runner_global_batch_step(r)};
  t.w = malloc(t.n * sizeof *t.w);
  assert_int_equal(loom_model_params_to_host(m, t.w), 0);
  loom_experiment_destroy(exp);
  loom_runner_destroy(r);
  loom_config_destroy(c);
  return t;
}

static trained train_tiny(const char *const *sets) {
  char *dir = test_tmpdir();
  trained t = train_tiny_in(dir, sets, false);
  test_rm_rf(dir);
  free(dir);
  return t;
}

/* One epoch at `precision`; the trained weights. */
static float *train_at(const char *precision, size_t *n) {
  char set[64];
  snprintf(set, sizeof set, "experiment.precision=%s", precision);
  const char *sets[] = {"stages.train.num_epochs=1", set, NULL};
  trained t = train_tiny(sets);
  *n = t.n;
  return t.w;
}

static void test_experiment_precision(void **state) {
  (void)state;
  size_t n, n16, n32;
  float *fp32 = train_at("fp32", &n32), *bf16 = train_at("bf16", &n), *fp16 = train_at("fp16", &n16);
  assert_int_equal(n, n32);
  assert_int_equal(n16, n32);
  /* Different weights, but close: bf16 keeps 8 significant bits (a
   * relative error of 2^-9 per operand), fp16 11; over one epoch of this
   * small model the weights stay within 1e-2 (bf16) and 2e-3 (fp16) of
   * the fp32 run's, relative to the largest. */
  double scale = 0, d16 = 0, dbf = 0;
  for (size_t i = 0; i < n; i++) {
    scale = fmax(scale, fabs(fp32[i]));
    dbf = fmax(dbf, fabs((double)bf16[i] - fp32[i]));
    d16 = fmax(d16, fabs((double)fp16[i] - fp32[i]));
  }
  assert_memory_not_equal(bf16, fp32, n * sizeof *fp32);
  assert_memory_not_equal(fp16, fp32, n * sizeof *fp32);
  if (dbf > 1e-2 * scale || d16 > 2e-3 * scale)
    fail_msg("weights after one epoch: bf16 off by %g, fp16 by %g (largest weight %g)", dbf, d16, scale);
  free(fp32), free(bf16), free(fp16);
}

/* In fp32 a power-of-two scale changes no bit: the gradients are scaled
 * and unscaled exactly; the scale grows every growth_interval steps. */
static void test_scaling_is_exact_where_nothing_overflows(void **state) {
  (void)state;
  const char *plain[] = {NULL};
  const char *scaled[] = {"experiment.loss_scaling={\"init_scale\": 1024, \"growth_interval\": 5}", NULL};
  trained a = train_tiny(plain), b = train_tiny(scaled);
  assert_int_equal(a.steps, 12); /* 3 epochs of 4 batches */
  assert_int_equal(b.steps, 12);
  assert_int_equal(b.skips, 0);
  assert_true(a.scale == 1.0);
  assert_true(b.scale == 1024.0 * 4); /* grown after steps 5 and 10 */
  assert_memory_equal(a.w, b.w, a.n * sizeof *a.w);
  free(a.w), free(b.w);
}

/* fp16 with a scale far too large: every gradient overflows fp16 (an
 * infinity), so each step is skipped and the scale halves; the weights
 * stay as an lr 0 run leaves them. From a scale a few halvings too large
 * the run recovers: the first steps are skipped, then it trains. */
static void test_overflow_skips_then_recovers(void **state) {
  (void)state;
  const char *still[] = {"stages.train.optimizer.lr=0", "stages.train.num_epochs=1", NULL};
  const char *all_skip[] = {"experiment.precision=fp16", "stages.train.num_epochs=1",
                            "experiment.loss_scaling={\"init_scale\": 1e30}", NULL};
  trained s = train_tiny(still), k = train_tiny(all_skip);
  assert_int_equal(k.batches, 4);
  assert_int_equal(k.skips, 4);
  assert_int_equal(k.steps, 0);
  assert_true(k.scale == 1e30 / 16);
  assert_memory_equal(k.w, s.w, s.n * sizeof *s.w);

  const char *recover[] = {"experiment.precision=fp16",
                           "experiment.loss_scaling={\"init_scale\": 16777216, \"growth_interval\": 1000}", NULL};
  trained r = train_tiny(recover);
  assert_int_equal(r.batches, 12);
  assert_true(r.skips >= 1 && r.skips < 12);
  assert_int_equal(r.steps, 12 - r.skips);
  assert_true(r.scale == ldexp(1.0, 24 - (int)r.skips));
  assert_memory_not_equal(r.w, s.w, s.n * sizeof *s.w);
  for (size_t i = 0; i < r.n; i++)
    assert_true(isfinite(r.w[i]));
  free(s.w), free(k.w), free(r.w);
}

/* The scale and its run of good steps are in the checkpoint: one epoch,
 * then a resume to three, ends where three epochs in one go do. */
static void test_scaling_resumes(void **state) {
  (void)state;
  const char *three[] = {"experiment.precision=fp16",
                         "experiment.loss_scaling={\"init_scale\": 16777216, \"growth_interval\": 3}", NULL};
  const char *one[] = {"experiment.precision=fp16",
                       "experiment.loss_scaling={\"init_scale\": 16777216, \"growth_interval\": 3}",
                       "stages.train.num_epochs=1", NULL};
  trained whole = train_tiny(three);
  char *dir = test_tmpdir();
  trained first = train_tiny_in(dir, one, false), rest = train_tiny_in(dir, three, true);
  assert_true(first.scale != whole.scale);
  assert_true(rest.scale == whole.scale);
  assert_int_equal(rest.skips, whole.skips);
  assert_int_equal(rest.steps, whole.steps);
  assert_memory_equal(rest.w, whole.w, whole.n * sizeof *whole.w);
  test_rm_rf(dir);
  free(dir), free(whole.w), free(first.w), free(rest.w);
}

static void test_precision_errors(void **state) {
  (void)state;
  char path[1024];
  snprintf(path, sizeof path, "%s/tiny.json", configs);
  loom_config *c = loom_config_load(path);
  assert_int_equal(loom_config_set(c, "experiment.precision=fp8"), 0);
  loom_experiment *exp = NULL;
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "experiment.precision"));
  loom_config_destroy(c);
  loom_experiment *e = loom_experiment_create("e");
  assert_int_equal(loom_experiment_set_precision(e, (loom_precision)9), LOOM_EINVAL);
  assert_int_equal(loom_experiment_precision(e), LOOM_PRECISION_FP32);
  loom_experiment_destroy(e);
  loom_loss_scaling bad = loom_loss_scaling_defaults(LOOM_PRECISION_FP16);
  bad.backoff_factor = 1.5;
  e = loom_experiment_create("e");
  assert_int_equal(loom_experiment_set_loss_scaling(e, &bad), LOOM_EINVAL);
  assert_true(loom_experiment_loss_scaling(e).enabled == false); /* fp32's default */
  loom_experiment_destroy(e);
  c = loom_config_load(path);
  assert_int_equal(loom_config_set(c, "experiment.loss_scaling={\"init_scal\": 8}"), 0);
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "init_scal"));
  loom_config_destroy(c);
  loom_precision p;
  assert_false(loom_precision_parse("fp8", &p));
  assert_string_equal(loom_precision_name(LOOM_PRECISION_FP16), "fp16");
}

int main(int argc, char **argv) {
  configs = argc > 1 ? argv[1] : "tests/configs";
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_round_hand_values),       cmocka_unit_test(test_round_matches_references),
      cmocka_unit_test(test_lowp_bits),
      cmocka_unit_test(test_gemm_rounds_its_operands), cmocka_unit_test(test_conv_rounds_its_operands),
      cmocka_unit_test(test_experiment_precision),    cmocka_unit_test(test_scaling_is_exact_where_nothing_overflows),
      cmocka_unit_test(test_overflow_skips_then_recovers), cmocka_unit_test(test_scaling_resumes),
      cmocka_unit_test(test_precision_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
