/* LR schedules against hand-computed values; gradient accumulation and
 * clipping against updates computed independently. */
#include <math.h>

#include "helpers.h"

#define PI 3.14159265358979323846

static loom_optimizer *sgd(double lr) {
  loom_sgd_options o = {.lr = lr, .momentum = 0.9};
  return loom_sgd_create(&o);
}

/* Expected rates for t = 0, 1, ... with base rate 1. */
static void expect_rates(loom_scheduler *s, const double *want, int n, const char *what) {
  loom_optimizer *opt = sgd(1.0);
  assert_int_equal(loom_scheduler_start(s, opt), 0);
  for (int t = 0; t < n; t++) {
    if (t)
      assert_int_equal(loom_scheduler_step(s, opt, NAN), 0);
    if (fabs(loom_optimizer_lr(opt) - want[t]) > 1e-12)
      fail_msg("%s: t=%d lr %.15g, expected %.15g", what, t, loom_optimizer_lr(opt), want[t]);
  }
  loom_optimizer_destroy(opt);
  loom_scheduler_destroy(s);
}

static void test_closed_form_schedules(void **state) {
  (void)state;
  const double step[] = {1, 1, .5, .5, .25, .25};
  expect_rates(loom_step_lr_create(2, 0.5), step, 6, "StepLR(2, 0.5)");
  const int64_t ms[] = {2, 5};
  const double multi[] = {1, 1, .1, .1, .1, .01, .01};
  expect_rates(loom_multistep_lr_create(ms, 2, 0.1), multi, 7, "MultiStepLR([2,5], 0.1)");
  const double expo[] = {1, .9, .81, .729};
  expect_rates(loom_exponential_lr_create(0.9), expo, 4, "ExponentialLR(0.9)");
  /* warmup 2 from 0: 0, 0.5; then cosine over 4 steps to 0:
   * t=2 progress 0 -> 1; t=3 -> (1+cos(pi/4))/2; t=4 -> 0.5; t=6 -> 0; after: 0 */
  const double cosine[] = {0, .5, 1, (1 + cos(PI / 4)) / 2, .5, (1 + cos(3 * PI / 4)) / 2, 0, 0};
  expect_rates(loom_cosine_lr_create(2, 6, 0.0, 0.0), cosine, 8, "cosine(warmup 2, total 6)");
  /* min_lr 0.1: halfway is 0.1 + 0.9/2 */
  const double cosine_min[] = {1, (1 + 0.1) / 2 + (1 - 0.1) / 2 * cos(PI / 2), 0.1};
  expect_rates(loom_cosine_lr_create(0, 2, 0.1, 1.0), cosine_min, 3, "cosine(min 0.1)");
}

static void test_onecycle(void **state) {
  (void)state;
  /* max 1, total 10, pct 0.3: the rise ends at step 2 (0.3*10 - 1), the fall
   * at step 9. initial = 1/25 = 0.04, final = 0.04/1e4 = 4e-6.
   * t=1: halfway up: 1 + (0.04 - 1)/2 = 0.52; momentum 0.85 + 0.1/2 = 0.90. */
  loom_onecycle_options o = loom_onecycle_defaults(1.0, 10);
  loom_scheduler *s = loom_onecycle_lr_create(&o);
  loom_optimizer *opt = sgd(123.0);
  assert_int_equal(loom_scheduler_start(s, opt), 0);
  assert_true(fabs(loom_optimizer_lr(opt) - 0.04) < 1e-12);
  assert_true(fabs(loom_optimizer_momentum(opt) - 0.95) < 1e-12);
  loom_scheduler_step(s, opt, NAN);
  assert_true(fabs(loom_optimizer_lr(opt) - 0.52) < 1e-12);
  assert_true(fabs(loom_optimizer_momentum(opt) - 0.90) < 1e-12);
  loom_scheduler_step(s, opt, NAN);
  assert_true(fabs(loom_optimizer_lr(opt) - 1.0) < 1e-12);
  assert_true(fabs(loom_optimizer_momentum(opt) - 0.85) < 1e-12);
  for (int t = 3; t <= 9; t++)
    loom_scheduler_step(s, opt, NAN);
  assert_true(fabs(loom_optimizer_lr(opt) - 4e-6) < 1e-15);
  assert_true(fabs(loom_optimizer_momentum(opt) - 0.95) < 1e-12);
  loom_optimizer_destroy(opt);
  loom_scheduler_destroy(s);
}

static void test_plateau_and_state(void **state) {
  (void)state;
  /* patience 1, factor 0.5, no threshold: a third non-improving step halves. */
  loom_plateau_options o = loom_plateau_defaults();
  o.factor = 0.5;
  o.patience = 1;
  o.threshold = 0;
  loom_scheduler *s = loom_plateau_lr_create(&o);
  loom_optimizer *opt = sgd(1.0);
  loom_scheduler_start(s, opt);
  const double metric[] = {1.0, 1.0, 1.0, 0.9, 0.95, 0.95};
  const double want[] = {1, 1, .5, .5, .5, .25};
  loom_state *saved = loom_state_create();
  for (int i = 0; i < 6; i++) {
    assert_int_equal(loom_scheduler_step(s, opt, metric[i]), 0);
    assert_true(fabs(loom_optimizer_lr(opt) - want[i]) < 1e-12);
    if (i == 3)
      assert_int_equal(loom_scheduler_save(s, saved), 0);
  }
  /* A fresh schedule restored after step 4 continues identically. */
  loom_scheduler *t = loom_plateau_lr_create(&o);
  loom_optimizer *opt2 = sgd(7.0);
  loom_scheduler_start(t, opt2);
  assert_int_equal(loom_scheduler_load(t, saved), 0);
  loom_scheduler_step(t, opt2, 0.95);
  loom_scheduler_step(t, opt2, 0.95);
  assert_true(fabs(loom_optimizer_lr(opt2) - 0.25) < 1e-12);
  assert_int_equal(loom_scheduler_steps(t), 6);
  /* Cooldown (PyTorch's semantics): patience 0, cooldown 2, a flat metric:
   * a cut, two steps of cooldown, a cut, ... */
  loom_plateau_options oc = loom_plateau_defaults();
  oc.factor = 0.5, oc.patience = 0, oc.threshold = 0, oc.cooldown = 2;
  loom_scheduler *cool = loom_plateau_lr_create(&oc);
  loom_optimizer *opt3 = sgd(1.0);
  loom_scheduler_start(cool, opt3);
  const double cooled[] = {1, .5, .5, .5, .25, .25, .25, .125};
  for (int i = 0; i < 8; i++) {
    assert_int_equal(loom_scheduler_step(cool, opt3, 1.0), 0);
    if (fabs(loom_optimizer_lr(opt3) - cooled[i]) > 1e-12)
      fail_msg("cooldown: step %d lr %g, expected %g", i + 1, loom_optimizer_lr(opt3), cooled[i]);
  }
  loom_scheduler_destroy(cool);
  loom_optimizer_destroy(opt3);
  /* A metric-less step is refused; a plateau schedule per step is refused. */
  assert_int_equal(loom_scheduler_step(t, opt2, NAN), LOOM_EINVAL);
  assert_null(loom_scheduler_callback_create(loom_plateau_lr_create(&o), LOOM_SCHEDULE_PER_STEP, NULL, NULL));
  /* Saved values out of range are refused, the schedule unchanged: a
   * negative step count (the callback's catch-up loop would run 2^63
   * times), a rate that is not a finite non-negative number. */
  const int64_t steps_before = loom_scheduler_steps(t);
  assert_int_equal(loom_state_set_i64(saved, "steps", -5), 0);
  assert_int_equal(loom_scheduler_load(t, saved), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "out of range (step -5"));
  assert_int_equal(loom_state_set_i64(saved, "steps", 4), 0);
  assert_int_equal(loom_state_set_f64(saved, "lr", NAN), 0);
  assert_int_equal(loom_scheduler_load(t, saved), LOOM_EFORMAT);
  assert_int_equal(loom_scheduler_steps(t), steps_before);
  loom_state_destroy(saved);
  loom_scheduler_destroy(s);
  loom_scheduler_destroy(t);
  loom_optimizer_destroy(opt);
  loom_optimizer_destroy(opt2);
}

/* --- runs --- */

static loom_experiment *linear_run(int64_t n, int64_t batch, int epochs, double lr, loom_callback *a, loom_callback *b) {
  loom_experiment *exp = loom_experiment_create("steps");
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs);
  const int64_t sizes[] = {4, 3};
  loom_sgd_options o = {.lr = lr};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 3)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&o)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(n, 4, 3, batch, false)), 0);
  if (a)
    assert_int_equal(loom_stage_add_callback(st, a), 0);
  if (b)
    assert_int_equal(loom_stage_add_callback(st, b), 0);
  return exp;
}

static void test_step_scheduler_counts_optimizer_steps(void **state) {
  (void)state;
  /* 10 batches, accumulation 3: steps after batches 3, 6, 9 and a partial
   * window at the loader's end = 4 optimizer steps per epoch; StepLR(1, 0.5)
   * per step: lr = 0.1 * 0.5^4 after one epoch, 0.1 * 0.5^8 after two. */
  loom_optimizer_callback_options oo = {.accumulation_steps = 3};
  loom_callback *sched = loom_scheduler_callback_create(loom_step_lr_create(1, 0.5), LOOM_SCHEDULE_PER_STEP, NULL, NULL);
  loom_experiment *exp = linear_run(10, 1, 2, 0.1, loom_optimizer_callback_create(&oo), sched);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_optimizer_step_count(r), 8);
  assert_int_equal(loom_runner_global_batch_step(r), 20);
  assert_true(fabs(loom_optimizer_lr(loom_runner_optimizer(r)) - 0.1 * pow(0.5, 8)) < 1e-15);
  double lr;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "lr", &lr)); /* at epoch 2's start */
  assert_true(fabs(lr - 0.1 * pow(0.5, 4)) < 1e-15);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* A per-step schedule of a second stage counts that stage's optimizer
 * steps only: 6 steps of a first stage without a schedule, then 6 under
 * StepLR(1, 0.5) from the inherited rate 0.1: lr = 0.1 * 0.5^6. */
static void test_step_scheduler_in_a_later_stage(void **state) {
  (void)state;
  loom_experiment *exp = linear_run(6, 1, 1, 0.1, NULL, NULL);
  loom_stage *second = loom_experiment_add_stage(exp, "finetune", 1);
  assert_int_equal(loom_stage_add_callback(second, loom_scheduler_callback_create(loom_step_lr_create(1, 0.5),
                                                                                  LOOM_SCHEDULE_PER_STEP, NULL, NULL)),
                   0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_optimizer_step_count(r), 12);
  assert_true(fabs(loom_optimizer_lr(loom_runner_optimizer(r)) - 0.1 * pow(0.5, 6)) < 1e-15);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* Saves a checkpoint to the path in its data after train batch 4. */
static int save_after_batch_4(loom_callback *cb, loom_runner *r) {
  return loom_runner_loader_batch_step(r) == 4 ? loom_runner_save_checkpoint(r, loom_callback_data(cb)) : 0;
}
static const loom_callback_ops saver_ops = {.type = "saver", .on_batch_end = save_after_batch_4};

/* A scheduler added to a resumed run starts where the run resumes: 4 of 6
 * steps were taken without one, the 2 after the resume follow StepLR(1,
 * 0.5) from 0.1 (not the 4 steps before it too). */
static void test_scheduler_added_on_resume_starts_there(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char path[512];
  snprintf(path, sizeof path, "%s/batch4.h5", dir);
  loom_experiment *exp = linear_run(6, 1, 1, 0.1, loom_callback_create(&saver_ops, path, 300), NULL);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);

  loom_callback *sched = loom_scheduler_callback_create(loom_step_lr_create(1, 0.5), LOOM_SCHEDULE_PER_STEP, NULL, NULL);
  exp = linear_run(6, 1, 1, 0.1, sched, NULL);
  r = loom_runner_create();
  assert_int_equal(loom_runner_set_resume(r, path), 0);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_optimizer_step_count(r), 6);
  assert_true(fabs(loom_optimizer_lr(loom_runner_optimizer(r)) - 0.1 * pow(0.5, 2)) < 1e-15);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

/* The expected update of one window, computed batch by batch with the
 * model API: mean of the batch-mean gradients, one SGD step. */
static void expected_after_windows(float *params, size_t n, int64_t samples, int64_t batch, int accumulate, double lr,
                                   bool real_size) {
  const int64_t sizes[] = {4, 3};
  loom_model *m = loom_mlp_create(sizes, 2, 3);
  loom_criterion *ce = loom_cross_entropy_create();
  loom_loader *l = test_loader(samples, 4, 3, batch, false);
  loom_epoch_plan plan = {0, 0, 1, true};
  loom_loader_start_epoch(l, &plan);
  float *acc = calloc(n, sizeof *acc);
  loom_tensor *x, *y;
  int in_window = 0;
  for (int more = loom_loader_next(l, &x, &y); more >= 0;) {
    if (more == 1) {
      const loom_tensor *out, *d;
      double loss;
      loom_model_zero_grad(m);
      loom_model_forward(m, x, &out);
      loom_criterion_forward(ce, out, y, &loss);
      loom_criterion_backward(ce, out, y, &d);
      loom_model_backward(m, d);
      for (size_t i = 0; i < n; i++)
        acc[i] += loom_model_grads(m)[i];
      in_window++;
      more = loom_loader_next(l, &x, &y);
    }
    if (in_window == accumulate || (more == 0 && in_window > 0)) {
      for (size_t i = 0; i < n; i++)
        loom_model_params(m)[i] -= (float)(lr * acc[i] / (real_size ? in_window : accumulate));
      memset(acc, 0, n * sizeof *acc);
      in_window = 0;
    }
    if (more == 0)
      break;
  }
  memcpy(params, loom_model_params(m), n * sizeof(float));
  free(acc);
  loom_loader_destroy(l);
  loom_criterion_destroy(ce);
  loom_model_destroy(m);
}

static void test_accumulation_with_partial_window(void **state) {
  (void)state;
  /* 10 samples in batches of 2: 5 batches; windows of 3: a full window,
   * then a partial one of 2 batches at the loader's end, averaged over 2. */
  loom_optimizer_callback_options oo = {.accumulation_steps = 3};
  loom_experiment *exp = linear_run(10, 2, 1, 0.5, loom_optimizer_callback_create(&oo), NULL);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_int_equal(loom_runner_optimizer_step_count(r), 2);
  size_t n = loom_model_num_params(loom_runner_model(r));
  float *want = malloc(n * sizeof *want);
  expected_after_windows(want, n, 10, 2, 3, 0.5, true);
  for (size_t i = 0; i < n; i++)
    if (fabsf(want[i] - loom_model_params(loom_runner_model(r))[i]) > 1e-6f)
      fail_msg("param %zu: %.8g, expected %.8g", i, loom_model_params(loom_runner_model(r))[i], want[i]);
  /* Dividing the partial window by 3 instead would differ visibly. */
  float *wrong = malloc(n * sizeof *wrong);
  expected_after_windows(wrong, n, 10, 2, 3, 0.5, false);
  float diff = 0;
  for (size_t i = 0; i < n; i++)
    diff = fmaxf(diff, fabsf(wrong[i] - loom_model_params(loom_runner_model(r))[i]));
  assert_true(diff > 1e-4f);
  free(want);
  free(wrong);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* Equal batches accumulated into one window make the full-batch step: 12
 * samples as 3 x 4 equal one batch of 12; 8 samples as a partial window of
 * 2 x 4 (of 3) equal one batch of 8. */
static void full_batch_equivalence(int64_t samples) {
  loom_optimizer_callback_options oo = {.accumulation_steps = 3};
  loom_experiment *acc = linear_run(samples, 4, 1, 0.5, loom_optimizer_callback_create(&oo), NULL);
  loom_experiment *full = linear_run(samples, samples, 1, 0.5, NULL, NULL);
  loom_runner *ra = loom_runner_create(), *rf = loom_runner_create();
  assert_int_equal(loom_run_experiment(ra, acc), 0);
  assert_int_equal(loom_run_experiment(rf, full), 0);
  assert_int_equal(loom_runner_optimizer_step_count(ra), 1);
  assert_int_equal(loom_runner_optimizer_step_count(rf), 1);
  loom_model *a = loom_runner_model(ra), *f = loom_runner_model(rf);
  for (size_t i = 0; i < loom_model_num_params(a); i++)
    if (fabsf(loom_model_params(a)[i] - loom_model_params(f)[i]) > 1e-6f)
      fail_msg("%lld samples, param %zu: accumulated %.8g, full batch %.8g", (long long)samples, i,
               loom_model_params(a)[i], loom_model_params(f)[i]);
  loom_runner_destroy(ra);
  loom_runner_destroy(rf);
  loom_experiment_destroy(acc);
  loom_experiment_destroy(full);
}

static void test_accumulation_equals_full_batch(void **state) {
  (void)state;
  full_batch_equivalence(12);
  full_batch_equivalence(8);
}

/* handle_batch that sets every gradient to 1 (no backward). */
static int unit_grads(loom_runner *r, void *u) {
  (void)u;
  loom_model *m = loom_runner_model(r);
  for (size_t i = 0; i < loom_model_num_params(m); i++)
    loom_model_grads(m)[i] = 1.0f;
  return loom_metrics_set(loom_runner_batch_metrics(r), "loss", 0.0);
}

static void run_clip(double clip_norm, double clip_value, float *delta, double *grad_norm) {
  loom_optimizer_callback_options oo = {.accumulation_steps = 1, .clip_norm = clip_norm, .clip_value = clip_value};
  loom_experiment *exp = linear_run(2, 2, 1, 1.0, loom_optimizer_callback_create(&oo), NULL);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, unit_grads, NULL);
  const int64_t sizes[] = {4, 3};
  loom_model *fresh = loom_mlp_create(sizes, 2, 3); /* the same initial weights */
  assert_int_equal(loom_run_experiment(r, exp), 0);
  *delta = loom_model_params(loom_runner_model(r))[0] - loom_model_params(fresh)[0];
  *grad_norm = NAN;
  loom_metrics_get(loom_runner_epoch_metrics(r), "train/grad_norm", grad_norm);
  loom_model_destroy(fresh);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_clipping(void **state) {
  (void)state;
  /* 15 parameters, all gradients 1: norm sqrt(15). Clipped to norm 1 each
   * becomes 1/(sqrt(15) + 1e-6); with lr 1 that is the step. */
  float delta;
  double norm;
  run_clip(1.0, 0, &delta, &norm);
  assert_true(fabs(norm - sqrt(15.0)) < 1e-9);
  assert_true(fabsf(delta + (float)(1.0 / (sqrt(15.0) + 1e-6))) < 1e-6f);
  run_clip(0, 0.25, &delta, &norm);
  assert_true(fabsf(delta + 0.25f) < 1e-6f);
  run_clip(100.0, 0, &delta, &norm); /* below the limit: untouched */
  assert_true(fabsf(delta + 1.0f) < 1e-6f);
}

/* A callback that sets an epoch-level metric of its own: "temperature" =
 * 1 / epoch, at on_epoch_end before the loggers. */
static int set_temperature(loom_callback *cb, loom_runner *r) {
  (void)cb;
  return loom_metrics_set(loom_runner_epoch_metrics(r), "temperature", 1.0 / loom_runner_epoch(r));
}

/* The CSV cell of `column` in `line` (no quoted cells here); "" if none. */
static void csv_field(const char *header, const char *line, const char *column, char *out, size_t size) {
  int index = -1, i = 0;
  char head[1024];
  snprintf(head, sizeof head, "%s", header);
  for (char *save, *name = strtok_r(head, ",", &save); name; name = strtok_r(NULL, ",", &save), i++)
    if (strcmp(name, column) == 0)
      index = i;
  assert_true(index >= 0);
  const char *p = line;
  for (i = 0; i < index && p; i++)
    p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL;
  size_t n = p ? strcspn(p, ",\n") : 0;
  snprintf(out, size, "%.*s", (int)n, p ? p : "");
}

/* metrics.jsonl and metrics.csv carry every epoch metric, so the LR
 * schedule is plotted from the files alone: StepLR(step_size 2, gamma 0.5)
 * from 0.1, stepped after each epoch, starts epochs 1..5 at 0.1, 0.1, 0.05,
 * 0.05, 0.025 (torch.optim.lr_scheduler.StepLR); momentum stays 0.9; a
 * callback's own epoch metric comes along. */
static void test_lr_schedule_in_the_metrics_files(void **state) {
  (void)state;
  const double want_lr[] = {0.1, 0.1, 0.05, 0.05, 0.025};
  char *dir = test_tmpdir(), path[1100];
  loom_experiment *exp = loom_experiment_create("lr_files");
  loom_experiment_set_logdir(exp, dir);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 5);
  const int64_t sizes[] = {2, 2};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 1)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, sgd(0.1)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 2, 2, 4, false)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(4, 2, 2, 4, false)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_scheduler_callback_create(loom_step_lr_create(2, 0.5),
                                                                              LOOM_SCHEDULE_PER_EPOCH, NULL, NULL)),
                   0);
  static const loom_callback_ops temperature = {.type = "temperature", .on_epoch_end = set_temperature};
  assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&temperature, NULL, LOOM_ORDER_METRIC)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_metrics_logger_create()), 0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  /* metrics.jsonl: the epoch rows, in order. */
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  int epoch = 0;
  for (char *save, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    json_t *row = json_loads(line, 0, NULL), *m = json_object_get(row, "metrics");
    if (json_is_null(json_object_get(row, "loader"))) {
      assert_int_equal(json_integer_value(json_object_get(row, "epoch")), ++epoch);
      assert_true(fabs(json_number_value(json_object_get(m, "lr")) - want_lr[epoch - 1]) < 1e-15);
      assert_true(json_number_value(json_object_get(m, "momentum")) == 0.9);
      assert_true(json_number_value(json_object_get(m, "temperature")) == 1.0 / epoch);
    }
    json_decref(row);
  }
  assert_int_equal(epoch, 5);
  free(text);
  /* metrics.csv: the same, from the rows whose loader cell is empty. */
  snprintf(path, sizeof path, "%s/metrics.csv", dir);
  text = test_read_file(path);
  char *save, *header = strtok_r(text, "\n", &save), cell[64];
  epoch = 0;
  for (char *line = strtok_r(NULL, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
    csv_field(header, line, "loader", cell, sizeof cell);
    if (cell[0])
      continue;
    epoch++;
    csv_field(header, line, "lr", cell, sizeof cell);
    assert_true(fabs(strtod(cell, NULL) - want_lr[epoch - 1]) < 1e-15);
    csv_field(header, line, "momentum", cell, sizeof cell);
    assert_true(strtod(cell, NULL) == 0.9);
    csv_field(header, line, "temperature", cell, sizeof cell);
    assert_true(strtod(cell, NULL) == 1.0 / epoch);
  }
  assert_int_equal(epoch, 5);
  free(text);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_closed_form_schedules),
      cmocka_unit_test(test_onecycle),
      cmocka_unit_test(test_plateau_and_state),
      cmocka_unit_test(test_step_scheduler_counts_optimizer_steps),
      cmocka_unit_test(test_step_scheduler_in_a_later_stage),
      cmocka_unit_test(test_scheduler_added_on_resume_starts_there),
      cmocka_unit_test(test_accumulation_with_partial_window),
      cmocka_unit_test(test_accumulation_equals_full_batch),
      cmocka_unit_test(test_clipping),
      cmocka_unit_test(test_lr_schedule_in_the_metrics_files),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
