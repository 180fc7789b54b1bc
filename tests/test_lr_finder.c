/* The learning-rate finder on a problem whose answer is known: a linear
 * regression without bias, x = {1, -1, 2, -2}, y = {3.5, -3, 6, -6.5}, one
 * full batch a step. Its MSE loss is 2.5 (w - 3.15)^2 + 0.06875 (w* =
 * sum xy / sum x^2 = 3.15, the residual's mean square 0.275 / 4), the
 * gradient 5 (w - 3.15): gradient descent contracts the error by
 * |1 - 5 lr| a step and diverges above lr = 2/L = 0.4 (L = 5, the
 * gradient's Lipschitz constant). The residual keeps w* off the float grid,
 * so the error never becomes an exact 0 that no rate could grow. */
#include <dirent.h>
#include <math.h>

#include "helpers.h"

#define L_CONST 5.0
#define LR_DIVERGE (2.0 / L_CONST)
#define W_STAR 3.15
#define FLOOR 0.06875

static double loss_at(double w) { return 2.5 * (w - W_STAR) * (w - W_STAR) + FLOOR; }

static const float xs[] = {1, -1, 2, -2}, ys[] = {3.5, -3, 6, -6.5};

typedef struct regression {
  loom_experiment *exp;
  loom_stage *find;
  float w0;    /* the weight the run starts from */
  float *w;    /* the live weight */
} regression;

/* The experiment: stage "find" (the finder, and an exponential schedule
 * it must override) of `epochs` one-batch epochs, then, when `train_after`,
 * stage "train": one SGD step at lr 0.01. */
static regression make(const char *logdir, int epochs, loom_callback *finder, bool train_after) {
  regression g = {0};
  int64_t one = 1;
  loom_dataset *ds = loom_memory_dataset_create(xs, ys, 4, 1, &one, 1, &one);
  loom_loader_options lo = {.batch_size = 4};
  loom_loader *loader = loom_loader_create(ds, &lo);
  loom_model *model = loom_model_create();
  loom_layer *linear = loom_linear_create(1, 1, false);
  assert_int_equal(loom_model_add(model, "fc", linear), 0);
  assert_int_equal(loom_model_build(model, 1, &one, 5), 0);
  g.w = loom_linear_weight(linear);
  g.w0 = *g.w;
  g.exp = loom_experiment_create("lr_find");
  assert_int_equal(loom_experiment_set_logdir(g.exp, logdir), 0);
  g.find = loom_experiment_add_stage(g.exp, "find", epochs);
  assert_int_equal(loom_stage_set_model(g.find, model), 0);
  assert_int_equal(loom_stage_set_criterion(g.find, loom_mse_create()), 0);
  loom_sgd_options so = {.lr = 0.01};
  assert_int_equal(loom_stage_set_optimizer(g.find, loom_sgd_create(&so)), 0);
  assert_int_equal(loom_stage_add_loader(g.find, "train", loader), 0);
  assert_int_equal(loom_stage_add_callback(g.find, loom_scheduler_callback_create(loom_exponential_lr_create(0.5),
                                                                                   LOOM_SCHEDULE_PER_STEP, NULL, NULL)),
                   0);
  assert_int_equal(loom_stage_add_callback(g.find, finder), 0);
  if (train_after)
    assert_non_null(loom_experiment_add_stage(g.exp, "train", 1));
  return g;
}

static loom_lr_finder_result run(regression *g) {
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  if (loom_run_experiment(r, g->exp) != 0)
    fail_msg("run failed: %s", loom_last_error());
  /* The sweep's SKIP policy was the sweep's only. */
  assert_int_equal(loom_runner_options(r)->nonfinite, LOOM_NONFINITE_STOP);
  loom_runner_destroy(r);
  loom_callback_info *rows;
  size_t n;
  assert_int_equal(loom_experiment_callback_table(g->exp, 0, 0, 1, &rows, &n), 0);
  loom_callback *finder = NULL;
  for (size_t i = 0; i < n; i++)
    if (strcmp(rows[i].type, "lr_finder") == 0)
      finder = rows[i].callback;
  free(rows);
  loom_lr_finder_result res;
  assert_int_equal(loom_lr_finder_get_result(finder, &res), 0);
  return res;
}

/* The CSV read back: rows of lr, loss, smoothed; returns the row count. */
static size_t read_csv(const char *path, double *lr, double *loss, double *smoothed, size_t max) {
  char *text = test_read_file(path);
  assert_non_null(text);
  char *line = strtok(text, "\n");
  assert_string_equal(line, "lr,loss,smoothed");
  size_t n = 0;
  while ((line = strtok(NULL, "\n"))) {
    assert_true(n < max);
    char *end;
    lr[n] = strtod(line, &end);
    assert_int_equal(*end, ',');
    loss[n] = strtod(end + 1, &end);
    assert_int_equal(*end, ',');
    smoothed[n] = strtod(end + 1, &end);
    assert_int_equal(*end, '\0');
    n++;
  }
  free(text);
  return n;
}

static void close_rel(double got, double want, double tol, const char *what, size_t i) {
  if (!(fabs(got - want) <= tol * fabs(want)))
    fail_msg("%s[%zu]: %.17g, expected %.17g", what, i, got, want);
}

/* Five steps from 1e-3 to 10: the rates are the powers of ten in between,
 * whatever the stage's scheduler says; the weights and the optimizer's rate
 * are put back, so the next stage takes its one SGD step from w0. */
static void test_schedule_and_restore(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_lr_finder_options o = loom_lr_finder_defaults();
  o.min_lr = 1e-3, o.max_lr = 10, o.steps = 5, o.divergence = 0, o.skip_begin = 0, o.skip_end = 0;
  regression g = make(dir, 20, loom_lr_finder_callback_create(&o), true);
  loom_lr_finder_result res = run(&g);
  const double want[] = {1e-3, 1e-2, 1e-1, 1, 10};
  assert_int_equal(res.points, 5);
  assert_false(res.diverged);
  for (size_t i = 0; i < 5; i++)
    close_rel(res.lr[i], want[i], 1e-14, "result lr", i);
  double lr[8], loss[8], sm[8];
  char path[1200];
  snprintf(path, sizeof path, "%s/lr_find.csv", dir);
  assert_string_equal(res.csv_path, path);
  assert_int_equal(read_csv(path, lr, loss, sm, 8), 5);
  for (size_t i = 0; i < 5; i++) {
    close_rel(lr[i], want[i], 1e-14, "csv lr", i);
    assert_true(lr[i] == res.lr[i] && loss[i] == res.loss[i]);
  }
  /* The first loss is the untrained model's. */
  close_rel(loss[0], loss_at(g.w0), 1e-5, "loss", 0);
  /* Stage "train": one step at 0.01 from w0, as if no sweep had run. */
  double w1 = g.w0 - 0.01 * L_CONST * (g.w0 - W_STAR);
  close_rel(*g.w, w1, 1e-5, "weight after the next stage", 0);
  /* Nothing but the curve in the logdir (the lock file aside). */
  DIR *d = opendir(dir);
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.' && strcmp(e->d_name, "lr_find.csv") != 0)
      fail_msg("unexpected %s in the logdir", e->d_name);
  closedir(d);
  loom_experiment_destroy(g.exp);
  test_rm_rf(dir);
  free(dir);
}

/* 100 steps from 1e-4 to 10: the loss first falls, then diverges above
 * 0.4; the sweep stops there and suggests a rate well below it. The loss
 * column is checked against gradient descent run here in double, the
 * smoothed one against the moving average of the loss column. */
static void test_divergence_and_suggestion(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_lr_finder_options o = loom_lr_finder_defaults();
  o.min_lr = 1e-4, o.max_lr = 10, o.steps = 100, o.tensorboard = true;
  regression g = make(dir, 1000, loom_lr_finder_callback_create(&o), false);
  loom_lr_finder_result res = run(&g);
  assert_true(res.diverged);
  assert_true(res.points < 100);
  assert_true(res.diverged_lr > LR_DIVERGE);
  assert_non_null(strstr(res.reason, "passed 4 x its best"));
  double lr[128], loss[128], sm[128];
  char path[1200];
  snprintf(path, sizeof path, "%s/lr_find.csv", dir);
  size_t n = read_csv(path, lr, loss, sm, 128);
  assert_int_equal(n, (size_t)res.points);
  assert_true(lr[n - 1] == res.diverged_lr);
  double w = g.w0, avg = 0;
  for (size_t i = 0; i < n; i++) {
    close_rel(lr[i], 1e-4 * pow(1e5, (double)i / 99), 1e-13, "lr", i);
    if (lr[i] < LR_DIVERGE) /* past it, both grow float and double round-off apart */
      close_rel(loss[i], loss_at(w), 1e-4, "loss", i);
    w -= lr[i] * L_CONST * (w - W_STAR);
    avg = 0.98 * avg + 0.02 * loss[i];
    close_rel(sm[i], avg / (1 - pow(0.98, (double)i + 1)), 1e-12, "smoothed", i);
  }
  /* The suggestion: where the loss falls fastest, within two decades
   * below the divergence (the raw loss falls fastest per decade around
   * 0.02 to 0.05 in this sweep, the error having shrunk by then; the
   * smoothed curve lags it). */
  assert_true(isfinite(res.suggestion));
  if (!(res.suggestion > LR_DIVERGE / 100 && res.suggestion < LR_DIVERGE))
    fail_msg("suggestion %g, expected in (%g, %g)", res.suggestion, LR_DIVERGE / 100, LR_DIVERGE);
  /* The curve also went to TensorBoard through its logger. */
  DIR *d = opendir(dir);
  bool events = false;
  for (struct dirent *ent; (ent = readdir(d));)
    events = events || strncmp(ent->d_name, "events.out.tfevents.", 20) == 0;
  closedir(d);
  assert_true(events);
  loom_experiment_destroy(g.exp);
  test_rm_rf(dir);
  free(dir);
}

/* Rates up to 1e6 without the 4x rule: the loss overflows; the sweep ends
 * there as diverged instead of failing the run. */
static void test_nonfinite_ends_sweep(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_lr_finder_options o = loom_lr_finder_defaults();
  o.min_lr = 1, o.max_lr = 1e6, o.steps = 60, o.divergence = 0;
  regression g = make(dir, 1000, loom_lr_finder_callback_create(&o), true);
  loom_lr_finder_result res = run(&g);
  assert_true(res.diverged);
  assert_true(res.points < 60);
  assert_false(isfinite(res.loss[res.points - 1]));
  assert_true(isnan(res.smoothed[res.points - 1]));
  assert_non_null(strstr(res.reason, "not finite"));
  assert_true(isfinite(*g.w)); /* put back, then one step at 0.01 */
  loom_experiment_destroy(g.exp);
  test_rm_rf(dir);
  free(dir);
}

/* The rule on hand-made curves (spacing one decade: the gradient is the
 * difference of neighbours over 2, over 1 at the ends). */
static void test_suggest_rule(void **state) {
  (void)state;
  const double lr[] = {1, 10, 100, 1e3, 1e4, 1e5}, s[] = {5, 5, 4, 1, 0.5, 0.4};
  double got;
  char why[256];
  /* gradients: 0, -0.5, -2, -1.75, -0.3, -0.1 */
  assert_int_equal(loom_lr_finder_suggest(lr, s, 6, 0, 0, &got, why, sizeof why), 0);
  assert_true(got == 100);
  /* from 1e3 on: -0.5, -0.3, -0.1 */
  assert_int_equal(loom_lr_finder_suggest(lr, s, 6, 3, 0, &got, why, sizeof why), 0);
  assert_true(got == 1e3);
  /* A NaN point is left out, and the last: 5, 5, 1, 0.5 at 1, 10, 1e3,
   * 1e4 give 0, -4/3 (over 3 decades), -1.5 (over 3), -0.5. */
  const double s_nan[] = {5, 5, NAN, 1, 0.5, 0.4};
  assert_int_equal(loom_lr_finder_suggest(lr, s_nan, 6, 0, 1, &got, why, sizeof why), 0);
  assert_true(got == 1e3);
  const double rising[] = {1, 2, 3, 4, 5, 6};
  assert_int_equal(loom_lr_finder_suggest(lr, rising, 6, 0, 0, &got, why, sizeof why), 0);
  assert_true(isnan(got));
  assert_non_null(strstr(why, "never fell"));
  assert_int_equal(loom_lr_finder_suggest(lr, s, 6, 5, 1, &got, why, sizeof why), 0);
  assert_true(isnan(got));
  assert_non_null(strstr(why, "0 usable points of 6"));
}

static void test_bad_options(void **state) {
  (void)state;
  loom_lr_finder_options o = loom_lr_finder_defaults();
  o.min_lr = 1, o.max_lr = 1;
  assert_null(loom_lr_finder_callback_create(&o));
  assert_non_null(strstr(loom_last_error(), "0 < min_lr < max_lr"));
  o = loom_lr_finder_defaults();
  o.steps = 1;
  assert_null(loom_lr_finder_callback_create(&o));
  assert_non_null(strstr(loom_last_error(), "steps"));
  loom_lr_finder_result res;
  loom_callback *timer = loom_timer_callback_create();
  assert_int_equal(loom_lr_finder_get_result(timer, &res), LOOM_EINVAL);
  loom_callback_destroy(timer);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_schedule_and_restore), cmocka_unit_test(test_divergence_and_suggestion),
      cmocka_unit_test(test_nonfinite_ends_sweep), cmocka_unit_test(test_suggest_rule),
      cmocka_unit_test(test_bad_options),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
