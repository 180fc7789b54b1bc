/* Step graphs on the fake device (loom/backend.h, "Step graphs";
 * tests/fake_device.h: a capture checks its ops' operands and runs nothing,
 * a launch runs the new log's ops). A training run whose steps the runner
 * logs gives, with graphs, bit for bit the weights, the metrics
 * (metrics.jsonl) and the step counts of the same run op by op (a fake
 * device without the graph slots, and one with them but the run's
 * no_graphs) and of the CPU run, with one capture per shape of step and
 * every later step of that shape launched; an op's error in a launched or
 * an op-by-op step is the run's, naming the op; and what changes every
 * step reaches the replayed steps: a learning rate changed by a scheduler
 * (the table update_ranges carries) and dropout's key. */
#include "helpers.h"

#include "fake_device.h"

typedef struct spec {
  bool sgd;       /* SGD with momentum; else Adam */
  bool dropout;   /* a Dropout between the layers */
  bool scheduler; /* an exponential decay of the rate at every step */
  bool cnn;       /* a convolution, BatchNorm, ReLU and max pool (a fused block), on 2x6x6 images */
  bool bf16;      /* under bf16 autocast (the products' operands rounded to bf16) */
  bool frozen;    /* the MLP's every layer frozen: the step updates no range */
  int workers;    /* the MLP's loaders' threads (batches in up to 2 per worker upload slots) */
} spec;

/* 8-16-3: Linear, ReLU, (Dropout,) Linear; or the CNN. */
static loom_model *model_of(const spec *s) {
  loom_model *m = loom_model_create();
  if (s->cnn) {
    loom_conv2d_options conv = {.out_channels = 4, .kernel = {3, 3}, .padding = {1, 1}};
    assert_int_equal(loom_model_add(m, "conv1", loom_conv2d_create(&conv)), 0);
    assert_int_equal(loom_model_add(m, "bn1", loom_batchnorm_create(4, 1e-5f, 0.1f)), 0);
    assert_int_equal(loom_model_add(m, "relu1", loom_relu_create()), 0);
    assert_int_equal(loom_model_add(m, "pool1", loom_maxpool2d_create(2, 0, 0)), 0);
    assert_int_equal(loom_model_add(m, "flat", loom_flatten_create()), 0);
    assert_int_equal(loom_model_add(m, "fc", loom_linear_create(0, 3, true)), 0);
    return m;
  }
  assert_int_equal(loom_model_add(m, "fc1", loom_linear_create(8, 16, true)), 0);
  assert_int_equal(loom_model_add(m, "act1", loom_relu_create()), 0);
  if (s->dropout)
    assert_int_equal(loom_model_add(m, "drop1", loom_dropout_create(0.25f)), 0);
  assert_int_equal(loom_model_add(m, "fc2", loom_linear_create(16, 3, true)), 0);
  return m;
}

/* When set, the fifth op run from the start of training batch fail_at
 * fails (failing_op): the step's third, after the two copies of the batch
 * out of its upload slot (loom_runner_upload_fix). */
static fake_device *fail_dev;
static int64_t fail_at;

static int fail_in_batch(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_is_train_loader(r) && loom_runner_global_batch_step(r) == fail_at)
    fake_device_fail_op(fail_dev, 5);
  return 0;
}

/* n images of 2x6x6 with labels i % 3, in batches of 16. */
static loom_loader *image_loader(int64_t n, bool shuffle) {
  const int64_t shape[] = {2, 6, 6}, features = 2 * 6 * 6;
  float *x = malloc((size_t)(n * features) * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    y[i] = (float)(i % 3);
    for (int64_t j = 0; j < features; j++)
      x[i * features + j] = (float)((i * 29 + j * 13) % 19) / 19.0f - 0.5f + 0.4f * (float)(j % 3 == i % 3);
  }
  loom_dataset *ds = loom_memory_dataset_create(x, y, n, 3, shape, 0, NULL);
  free(x), free(y);
  loom_loader_options o = {.batch_size = 16, .shuffle = shuffle};
  return loom_loader_create(ds, &o);
}

/* EPOCHS epochs of TRAIN_FULL full training batches of 16 and a last
 * partial one of 4, and a validation loader of 2 full batches and one of 8. */
#define EPOCHS 3
#define TRAIN_FULL 6
#define VALID_FULL 2
/* The evaluation steps' launches: a shape's first sight op by op, its
 * second captured and launched, the later ones launched (the first
 * evaluation batch already finds the criterion on the device). */
#define VALID_LAUNCHES ((EPOCHS * VALID_FULL - 1) + (EPOCHS - 1))
static loom_experiment *build(const char *logdir, loom_backend *b, const spec *s) {
  loom_experiment *exp = loom_experiment_create("graphs");
  loom_experiment_set_seed(exp, 7);
  loom_experiment_set_logdir(exp, logdir);
  loom_experiment_set_backend(exp, b);
  loom_stage *st = loom_experiment_add_stage(exp, "train", EPOCHS);
  assert_int_equal(loom_stage_set_model(st, model_of(s)), 0);
  if (s->frozen)
    assert_int_equal(loom_stage_freeze(st, "fc1") | loom_stage_freeze(st, "fc2"), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  if (s->sgd) {
    loom_sgd_options sgd = {.lr = 0.05, .momentum = 0.9};
    assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  } else {
    loom_adam_options adam = loom_adam_defaults();
    adam.lr = 0.01;
    assert_int_equal(loom_stage_set_optimizer(st, loom_adam_create(&adam)), 0);
  }
  const int64_t train = 16 * TRAIN_FULL + 4;
  assert_int_equal(loom_stage_add_loader(st, "train", s->cnn ? image_loader(train, true)
                                                             : test_loader_workers(train, 8, 3, 16, true, s->workers)),
                   0);
  assert_int_equal(loom_stage_add_loader(st, "valid", s->cnn ? image_loader(40, false) : test_loader(40, 8, 3, 16, false)),
                   0);
  if (s->bf16)
    assert_int_equal(loom_experiment_set_precision(exp, LOOM_PRECISION_BF16), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  if (s->scheduler)
    assert_int_equal(loom_experiment_add_callback(exp, loom_scheduler_callback_create(loom_exponential_lr_create(0.8),
                                                                                      LOOM_SCHEDULE_PER_STEP, NULL,
                                                                                      NULL)),
                     0);
  if (fail_dev) {
    static const loom_callback_ops failer = {.type = "failer", .on_batch_start = fail_in_batch};
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&failer, NULL, 0)), 0);
  }
  return exp;
}

typedef struct outcome {
  float *params;
  size_t n;
  char *jsonl;
  int64_t steps, batches;
} outcome;

static void outcome_free(outcome *o) { free(o->params), free(o->jsonl); }

/* A host copy of m's weights (*n of them). */
static float *weights_of(loom_model *m, size_t *n) {
  *n = loom_model_num_params(m);
  float *p = malloc(*n * sizeof *p);
  assert_int_equal(loom_model_params_to_host(m, p), 0);
  return p;
}

/* The run on b (NULL: the CPU), with or without graphs by its options;
 * the error it ended with, and what it left in *out (when not NULL). */
static int run_with(loom_backend *b, const spec *s, bool no_graphs, outcome *out) {
  char *dir = test_tmpdir();
  loom_experiment *exp = build(dir, b, s);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.no_graphs = no_graphs;
  loom_runner_set_options(r, &o);
  int rc = loom_run_experiment(r, exp);
  if (out) {
    if (rc < 0)
      fail_msg("%s", loom_last_error());
    out->params = weights_of(loom_runner_model(r), &out->n);
    out->jsonl = jsonl_without_time(dir);
    out->steps = loom_runner_optimizer_step_count(r);
    out->batches = loom_runner_global_batch_step(r);
  }
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
  return rc;
}

static void assert_same(const outcome *want, const outcome *got) {
  assert_string_equal(want->jsonl, got->jsonl);
  assert_int_equal(want->n, got->n);
  assert_memory_equal(want->params, got->params, want->n * sizeof(float));
  assert_int_equal(want->steps, got->steps);
  assert_int_equal(want->batches, got->batches);
}

/* The run on a fake device made without `missing`, with or without
 * graphs: its outcome, and its counts once the experiment has gone (the
 * graphs stay with the backend until it goes, but for those naming the
 * CNN's plans, which went with the model). */
static void fake_run(unsigned missing, const spec *s, bool no_graphs, outcome *out, fake_device_counts *counts) {
  fake_device *d;
  loom_backend *b = fake_device_create_without((size_t)64 << 20, missing, &d);
  run_with(b, s, no_graphs, out);
  *counts = fake_device_counts_of(d);
  /* What the core says became of the logs: the device's own counts, every
   * batch, training and evaluation, logged where graphs are on. */
  const loom_graph_counts g = loom_backend_graph_counts(b);
  assert_int_equal(g.captures, counts->captures);
  assert_int_equal(g.launches, counts->launches);
  assert_int_equal(g.logs, no_graphs || (missing & FAKE_NO_GRAPHS) ? 0 : out->batches + EPOCHS * (VALID_FULL + 1));
  assert_int_equal(counts->live, 0);
  /* Kept until the backend goes, 4 at most (the least recently used go). */
  assert_int_equal(counts->graphs, s->cnn ? 0 : counts->captures < 4 ? counts->captures : 4);
  /* ... with the ops' own memory their captures took (gemm_lowp's copies),
   * which moved where later allocations land: the logs matched all the same. */
  assert_true(counts->graphs && s->bf16 && !(missing & FAKE_NO_LOWP) ? counts->scratch > 0 : counts->scratch == 0);
  loom_backend_destroy(b);
}

/* With graphs, the step of each shape (full, and the last partial one) is
 * run op by op the first time, captured the second and launched then and
 * every time after; the same bits as op by op and as on the CPU. */
static void check_graphs(const spec *s) {
  outcome cpu = {0}, plain = {0}, opted_out = {0}, graphs = {0};
  fake_device_counts c;
  run_with(NULL, s, false, &cpu);
  fake_run(FAKE_NO_GRAPHS, s, false, &plain, &c);
  assert_int_equal(c.captures + c.launches, 0);
  fake_run(0, s, true, &opted_out, &c);
  assert_int_equal(c.captures + c.launches, 0);
  fake_run(0, s, false, &graphs, &c);
  assert_same(&cpu, &plain);
  assert_same(&cpu, &opted_out);
  assert_same(&cpu, &graphs);
  assert_int_equal(graphs.steps, EPOCHS * (TRAIN_FULL + 1));
  /* 2 training shapes and 2 evaluation ones, each captured once. The
   * first batch reads on the host (the criterion's buffers move to the
   * device): not captured, op by op. The second is the full step's first
   * sight (op by op), the third its capture and launch, every later full
   * one a launch; the partial step's first sight is op by op, its second a
   * capture and launch, its third a launch; the evaluation's likewise
   * (VALID_LAUNCHES). Under autocast the products are the backend's
   * (gemm_lowp): nothing allocated inside the step. */
  assert_int_equal(c.captures, 4);
  assert_int_equal(c.launches, (EPOCHS * TRAIN_FULL - 2) + (EPOCHS - 1) + VALID_LAUNCHES);
  assert_true(s->bf16 ? c.lowp_gemms > 0 : c.lowp_gemms == 0);
  if (s->bf16) {
    /* Without gemm_lowp autocast's rounded copies are allocated at every
     * product: where the fake's first-fit arena puts them may change from
     * one epoch to the next (after the evaluation's), which is another log
     * (op by op once, then captured in its turn). The same bits. */
    outcome copies = {0};
    fake_run(FAKE_NO_LOWP, s, false, &copies, &c);
    assert_same(&cpu, &copies);
    assert_true(c.captures >= 2);
    assert_true(c.launches >= EPOCHS * TRAIN_FULL / 2);
    assert_int_equal(c.lowp_gemms, 0);
    outcome_free(&copies);
  }
  outcome_free(&cpu), outcome_free(&plain), outcome_free(&opted_out), outcome_free(&graphs);
}

static void adam_steps_replay_bit_for_bit(void **state) {
  (void)state;
  check_graphs(&(spec){0});
}

static void sgd_momentum_steps_replay_bit_for_bit(void **state) {
  (void)state;
  check_graphs(&(spec){.sgd = true});
}

/* Loader workers: each batch is uploaded into one of several slots, and
 * copied out of it before the step (loom_runner_upload_fix): still one
 * capture per shape, not one per slot. */
static void workers_capture_once_per_shape(void **state) {
  (void)state;
  check_graphs(&(spec){.workers = 2});
}

/* Dropout's key, new every batch, reaches each launch (the masks, hence
 * the bits, are the op-by-op run's), and its steps capture as any. */
static void dropout_steps_replay_with_their_keys(void **state) {
  (void)state;
  check_graphs(&(spec){.dropout = true});
}

/* The rate decays at every step: a launched step updates with its own
 * rate, not the captured one's (graph_launch gets the new log). */
static void scheduled_rate_reaches_replayed_steps(void **state) {
  (void)state;
  check_graphs(&(spec){.scheduler = true});
  check_graphs(&(spec){.sgd = true, .scheduler = true});
}

/* The step's third op of training batch `batch` fails: the run fails with the
 * device's message, naming the op's place in the step's log and the batch,
 * and leaves nothing behind (ASan: no host memory either). */
static void failing_op(int64_t batch, const char *where, bool launched) {
  loom_backend *b = fake_device_create((size_t)64 << 20, &fail_dev);
  fail_at = batch;
  assert_int_equal(run_with(b, &(spec){0}, false, NULL), LOOM_EIO);
  const char *e = loom_last_error();
  assert_non_null(strstr(e, where));
  /* "op 2 of N of the step's log (NAME) on backend "fake": fake device: NAME failed, ..." */
  const char *op = strstr(e, "op 2 of "), *name = strstr(e, "of the step's log (");
  assert_non_null(op);
  assert_non_null(name);
  name += strlen("of the step's log (");
  char want[128];
  snprintf(want, sizeof want, "%.*s) on backend \"fake\": fake device: %.*s failed, as the test asked",
           (int)strcspn(name, ")"), name, (int)strcspn(name, ")"), name);
  assert_non_null(strstr(name, want));
  assert_int_equal(strstr(e, "launching the step's graph") != NULL, launched);
  fake_device_counts c = fake_device_counts_of(fail_dev);
  assert_int_equal(c.live, 0);
  assert_int_equal(c.launches > 0, launched);
  loom_backend_destroy(b);
  fail_dev = NULL;
}

/* Planned ops and a fused block (its layers' memory copied into the log),
 * and autocast's rounded copies (freed at the log's end). */
static void cnn_and_autocast_steps_replay_bit_for_bit(void **state) {
  (void)state;
  check_graphs(&(spec){.cnn = true});
  check_graphs(&(spec){.bf16 = true});
  check_graphs(&(spec){.cnn = true, .sgd = true, .bf16 = true});
}

/* An op refusing the capture (as a CUDA call that cannot be captured):
 * nothing ran, so that step's log runs op by op then and from then on,
 * with the same bits; the partial step's still captures. */
static void refused_capture_runs_op_by_op(void **state) {
  (void)state;
  outcome cpu = {0}, got = {0};
  run_with(NULL, &(spec){0}, false, &cpu);
  fake_device *d;
  loom_backend *b = fake_device_create_without((size_t)64 << 20, 0, &d);
  fake_device_refuse_capture(d, 3); /* in the first capture: the full step's */
  run_with(b, &(spec){0}, false, &got);
  assert_same(&cpu, &got);
  fake_device_counts c = fake_device_counts_of(d);
  assert_int_equal(c.captures, 4); /* the refused one's graph was dropped */
  assert_int_equal(c.graphs, 3);
  assert_int_equal(c.launches, EPOCHS - 1 + VALID_LAUNCHES); /* the partial step's and the evaluation's */
  loom_backend_destroy(b);
  outcome_free(&cpu), outcome_free(&got);
}

static void op_errors_name_the_op(void **state) {
  (void)state;
  /* The second batch's log, the first of its shape: op by op at its end. */
  failing_op(2, "handle_batch (stage \"train\", epoch 1, loader \"train\", batch 2): op 2 of ", false);
  /* The fifth's: launched. */
  failing_op(5, "handle_batch (stage \"train\", epoch 1, loader \"train\", batch 5): launching the step's graph",
             true);
}

/* The log itself, without the runner: n floats at x scaled by 2 and
 * copied to y, logged and ended; what ran on the device. */
static int64_t logged_step(loom_backend *b, fake_device *d, float *x, float *y, int64_t n) {
  int64_t before = fake_device_counts_of(d).ops;
  assert_int_equal(loom_backend_log_begin(b), 0);
  assert_true(loom_backend_logging(b));
  assert_int_equal(loom_backend_scale(b, x, 2.0f, n), 0);
  assert_int_equal(loom_backend_copy(b, y, x, (size_t)n * sizeof *x), 0);
  float *scratch = loom_backend_alloc(b, (size_t)n * sizeof *scratch);
  loom_backend_free(b, scratch); /* freed at the log's end, after the ops */
  assert_int_equal(fake_device_counts_of(d).ops, before); /* nothing ran yet */
  assert_int_equal(loom_backend_log_end(b, true), 0);
  assert_false(loom_backend_logging(b));
  return fake_device_counts_of(d).ops - before;
}

static void x_times(loom_backend *b, const float *x, float want) {
  float h[4];
  assert_int_equal(loom_backend_to_host(b, h, x, sizeof h), 0);
  for (int i = 0; i < 4; i++)
    assert_true(h[i] == want);
}

/* A step that updates no range (every layer frozen: the optimizer's
 * update_ranges gets none) logs like any other step. */
static void empty_update_is_logged(void **state) {
  (void)state;
  fake_device *d;
  loom_backend *b = fake_device_create((size_t)1 << 20, &d);
  float *p = loom_backend_alloc(b, 8 * sizeof *p);
  assert_int_equal(loom_backend_zero(b, p, 8 * sizeof *p), 0);
  const loom_update_range none[1] = {{0, 4, 0.1, 0.0}};
  const loom_update_step s = {LOOM_RULE_SGD, .u.sgd = {0.1, 0.0, 0.0, 0.0, false, false, NULL}};
  for (int i = 0; i < 3; i++) {
    assert_int_equal(loom_backend_log_begin(b), 0);
    assert_int_equal(loom_backend_update_ranges(b, &s, none, 0, p, p + 4, NULL, 4), 0);
    assert_int_equal(loom_backend_log_end(b, true), 0);
  }
  loom_backend_free(b, p);
  loom_backend_destroy(b);
}

/* A graph goes with a plan its log names: the backend's graph holds the
 * plan's own memory (CUDA: a max pool's positions, BatchNorm's
 * statistics), which the plan gives back, and a later plan made at the same
 * address would make an equal log launch it. */
static void plan_destroy_drops_its_graphs(void **state) {
  (void)state;
  fake_device *d;
  loom_backend *b = fake_device_create((size_t)1 << 20, &d);
  const loom_pool_desc desc = {LOOM_POOL_MAX, 1, 4, 4, 2, 2, 2, 2, 0};
  loom_plan *plan, *other;
  assert_int_equal(loom_backend_pool_plan(b, &desc, &plan), 0);
  assert_int_equal(loom_backend_pool_plan(b, &desc, &other), 0);
  float *x = loom_backend_alloc(b, 16 * sizeof *x), *y = loom_backend_alloc(b, 4 * sizeof *y);
  assert_int_equal(loom_backend_zero(b, x, 16 * sizeof *x), 0);
  for (int i = 0; i < 4; i++) { /* each plan's log seen twice: two graphs */
    assert_int_equal(loom_backend_log_begin(b), 0);
    assert_int_equal(loom_backend_pool_forward(b, i < 2 ? plan : other, x, y, 1), 0);
    assert_int_equal(loom_backend_log_end(b, true), 0);
  }
  assert_int_equal(fake_device_counts_of(d).graphs, 2);
  loom_backend_plan_destroy(b, plan);
  assert_int_equal(fake_device_counts_of(d).graphs, 1);
  /* Destroyed while a log is open: at the log's end, its graphs with it. */
  assert_int_equal(loom_backend_log_begin(b), 0);
  loom_backend_plan_destroy(b, other);
  assert_int_equal(fake_device_counts_of(d).graphs, 1);
  assert_int_equal(loom_backend_log_end(b, true), 0);
  assert_int_equal(fake_device_counts_of(d).graphs, 0);
  loom_backend_free(b, x), loom_backend_free(b, y);
  loom_backend_destroy(b);
}

/* A model whose every layer is frozen trains (its steps update nothing)
 * with graphs as on the CPU. */
static void frozen_steps_run(void **state) {
  (void)state;
  const spec s = {.frozen = true};
  outcome cpu = {0}, graphs = {0};
  fake_device_counts c;
  run_with(NULL, &s, false, &cpu);
  fake_run(0, &s, false, &graphs, &c);
  assert_same(&cpu, &graphs);
  assert_true(c.launches > 0);
  outcome_free(&cpu), outcome_free(&graphs);
}

static void log_captures_on_second_sight(void **state) {
  (void)state;
  fake_device *d;
  loom_backend *b = fake_device_create((size_t)1 << 20, &d);
  float *x = loom_backend_alloc(b, 16 * sizeof *x), *y = loom_backend_alloc(b, 16 * sizeof *y);
  const float ones[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  assert_int_equal(loom_backend_from_host(b, x, ones, sizeof ones), 0);
  /* first sight: op by op; second: captured (nothing runs) and launched;
   * third: launched. Each runs its scale once (the fake counts no copy):
   * x doubles every time, y follows. */
  for (int i = 1; i <= 3; i++) {
    assert_int_equal(logged_step(b, d, x, y, 4), 1);
    x_times(b, x, (float)(1 << i));
    x_times(b, y, (float)(1 << i));
    assert_int_equal(fake_device_counts_of(d).captures, i >= 2);
    assert_int_equal(fake_device_counts_of(d).launches, i - 1);
  }
  /* Another size is another log: op by op, then captured; the first log's
   * graph is still there. */
  logged_step(b, d, x, y, 3);
  assert_int_equal(fake_device_counts_of(d).captures, 1);
  logged_step(b, d, x, y, 3);
  assert_int_equal(fake_device_counts_of(d).captures, 2);
  logged_step(b, d, x, y, 4);
  assert_int_equal(fake_device_counts_of(d).captures, 2);
  assert_int_equal(fake_device_counts_of(d).launches, 4);
  /* 4 more sizes seen twice each evict the least recently used graphs. */
  for (int64_t n = 5; n <= 8; n++)
    logged_step(b, d, x, y, n), logged_step(b, d, x, y, n);
  assert_int_equal(fake_device_counts_of(d).captures, 6);
  assert_int_equal(fake_device_counts_of(d).graphs, 4);
  /* Dropout's key is new every batch and no part of a log's identity: the
   * second sight is captured, and each launch draws its own key's mask,
   * the CPU's bit for bit (a launch with the captured key would not). */
  int64_t captures = fake_device_counts_of(d).captures, launches = fake_device_counts_of(d).launches;
  float *in = loom_backend_alloc(b, 16 * sizeof *in), *out = loom_backend_alloc(b, 16 * sizeof *out),
        *mask = loom_backend_alloc(b, 16 * sizeof *mask);
  assert_int_equal(loom_backend_from_host(b, in, ones, sizeof ones), 0);
  for (uint64_t key = 1; key <= 3; key++) {
    assert_int_equal(loom_backend_log_begin(b), 0);
    assert_int_equal(loom_backend_dropout_forward(b, key, 0.5f, in, out, mask, 16), 0);
    assert_int_equal(loom_backend_log_end(b, true), 0);
    float got[16], want[16], want_mask[16];
    assert_int_equal(loom_backend_to_host(b, got, out, sizeof got), 0);
    assert_int_equal(loom_backend_dropout_forward(loom_backend_cpu(), key, 0.5f, ones, want, want_mask, 16), 0);
    assert_memory_equal(got, want, sizeof got);
  }
  assert_int_equal(fake_device_counts_of(d).captures, captures + 1);
  assert_int_equal(fake_device_counts_of(d).launches, launches + 2);
  loom_backend_free(b, in), loom_backend_free(b, out), loom_backend_free(b, mask);
  captures = fake_device_counts_of(d).captures;
  /* A result on the host mid-log runs what was logged, then the rest at
   * once: never captured. */
  for (int i = 0; i < 3; i++) {
    assert_int_equal(loom_backend_log_begin(b), 0);
    assert_int_equal(loom_backend_zero(b, y, 4 * sizeof *y), 0);
    float h[4] = {1, 1, 1, 1};
    assert_int_equal(loom_backend_to_host(b, h, y, sizeof h), 0);
    assert_true(h[0] == 0.0f && h[3] == 0.0f);
    assert_false(loom_backend_logging(b));
    assert_int_equal(loom_backend_scale(b, y, 2.0f, 4), 0);
    assert_int_equal(loom_backend_log_end(b, true), 0);
  }
  assert_int_equal(fake_device_counts_of(d).captures, captures);
  /* A dropped log runs nothing; a second begin is refused. */
  int64_t ops = fake_device_counts_of(d).ops;
  assert_int_equal(loom_backend_log_begin(b), 0);
  assert_int_equal(loom_backend_log_begin(b), LOOM_ESTATE);
  assert_int_equal(loom_backend_scale(b, y, 2.0f, 4), 0);
  assert_int_equal(loom_backend_log_end(b, false), 0);
  assert_int_equal(fake_device_counts_of(d).ops, ops);
  assert_int_equal(loom_backend_log_end(b, true), LOOM_ESTATE);
  loom_backend_free(b, x), loom_backend_free(b, y);
  assert_int_equal(fake_device_counts_of(d).live, 0);
  loom_backend_destroy(b); /* with its graphs (ASan: no leak) */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(log_captures_on_second_sight),
      cmocka_unit_test(empty_update_is_logged),
      cmocka_unit_test(frozen_steps_run),
      cmocka_unit_test(plan_destroy_drops_its_graphs),
      cmocka_unit_test(adam_steps_replay_bit_for_bit),
      cmocka_unit_test(sgd_momentum_steps_replay_bit_for_bit),
      cmocka_unit_test(workers_capture_once_per_shape),
      cmocka_unit_test(refused_capture_runs_op_by_op),
      cmocka_unit_test(dropout_steps_replay_with_their_keys),
      cmocka_unit_test(scheduled_rate_reaches_replayed_steps),
      cmocka_unit_test(cnn_and_autocast_steps_replay_bit_for_bit),
      cmocka_unit_test(op_errors_name_the_op),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
