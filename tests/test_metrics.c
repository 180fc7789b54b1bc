/* Metric stores, sample-weighted loader means, best-valid tracking, the
 * accuracy callback, metrics.jsonl/csv read back, and reproducibility. */
#include <jansson.h>
#include <math.h>

#include "helpers.h"

static void test_metrics_store(void **state) {
  (void)state;
  loom_metrics *m = loom_metrics_create();
  assert_int_equal(loom_metrics_set(m, "loss", 1.5), 0);
  assert_int_equal(loom_metrics_set(m, "accuracy", 0.25), 0);
  assert_int_equal(loom_metrics_set(m, "loss", 2.5), 0);
  assert_int_equal(loom_metrics_count(m), 2);
  assert_string_equal(loom_metrics_name(m, 0), "loss");
  double v;
  assert_true(loom_metrics_get(m, "loss", &v) && v == 2.5);
  assert_false(loom_metrics_get(m, "nope", &v));
  loom_metrics_clear(m);
  assert_int_equal(loom_metrics_count(m), 0);
  /* After a clear, slots are reused, also for other and longer names. */
  assert_int_equal(loom_metrics_set(m, "a_much_longer_name", 3.0), 0);
  assert_int_equal(loom_metrics_set(m, "loss", 4.0), 0);
  assert_string_equal(loom_metrics_name(m, 0), "a_much_longer_name");
  assert_true(loom_metrics_get(m, "loss", &v) && v == 4.0);
  loom_metrics *p = loom_metrics_create();
  assert_int_equal(loom_metrics_copy(p, m, "valid", false), 0);
  assert_true(loom_metrics_get(p, "valid/loss", &v) && v == 4.0);
  loom_metrics_destroy(p);
  loom_metrics_destroy(m);
}

/* handle_batch puts the batch's first feature mean and a per-epoch value
 * into batch metrics; the loader mean must weight by batch size. */
static int value_batch(loom_runner *r, void *u) {
  (void)u;
  const loom_tensor *x = loom_runner_input(r);
  double sum = 0;
  for (int64_t i = 0; i < loom_tensor_dim(x, 0); i++)
    sum += loom_tensor_data(x)[i];
  loom_metrics *m = loom_runner_batch_metrics(r);
  /* valid "loss" by epoch: 3, 1, 2 -> best at epoch 2 (minimised). */
  const double by_epoch[3] = {3.0, 1.0, 2.0};
  int rc = loom_metrics_set(m, "mean_x", sum / (double)loom_tensor_dim(x, 0));
  if (rc == 0)
    rc = loom_metrics_set(m, "loss", by_epoch[loom_runner_epoch(r) - 1]);
  return rc;
}

typedef struct seen {
  double train_mean_x;
  bool best[3];
  double best_loss[3];
  int best_epoch[3];
  double epoch_train_loss[3];
} seen;

static int look_epoch_end(loom_callback *cb, loom_runner *r) {
  seen *s = loom_callback_data(cb);
  int e = loom_runner_epoch(r) - 1;
  s->best[e] = loom_runner_is_best_valid(r);
  loom_metrics_get(loom_runner_best_valid_metrics(r), "loss", &s->best_loss[e]);
  s->best_epoch[e] = loom_runner_best_epoch(r);
  loom_metrics_get(loom_runner_epoch_metrics(r), "train/loss", &s->epoch_train_loss[e]);
  loom_metrics_get(loom_runner_epoch_metrics(r), "train/mean_x", &s->train_mean_x);
  return 0;
}

static void test_weighted_means_and_best(void **state) {
  (void)state;
  /* 5 samples with x = 0..4, batches of 2: means 0.5, 2.5, 4 over sizes
   * 2, 2, 1; the sample-weighted mean is (1 + 5 + 4) / 5 = 2, while the
   * plain mean of batch means would be 2.333. */
  float x[5] = {0, 1, 2, 3, 4}, y[5] = {0};
  int64_t one = 1;
  loom_loader_options o = {.batch_size = 2};
  loom_experiment *exp = loom_experiment_create("means");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 3);
  assert_int_equal(loom_stage_add_loader(st, "train", loom_loader_create(loom_memory_dataset_create(x, y, 5, 1, &one, 0, NULL), &o)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", loom_loader_create(loom_memory_dataset_create(x, y, 5, 1, &one, 0, NULL), &o)), 0);
  static seen s;
  static const loom_callback_ops ops = {.type = "look", .on_epoch_end = look_epoch_end};
  assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&ops, &s, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, value_batch, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  assert_true(fabs(s.train_mean_x - 2.0) < 1e-12);
  assert_true(s.best[0] && s.best[1] && !s.best[2]);
  assert_true(s.best_loss[2] == 1.0);
  assert_int_equal(s.best_epoch[2], 2);
  assert_true(s.epoch_train_loss[0] == 3.0 && s.epoch_train_loss[2] == 2.0);
  assert_string_equal(loom_runner_main_metric(r), "loss");
  assert_true(loom_runner_minimize_metric(r));
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* handle_batch that publishes a fixed output tensor (the user pointer). */
static int fixed_output(loom_runner *r, void *u) {
  loom_runner_set_output(r, u);
  return 0;
}

/* Rows by hand: target 1 scored highest (top-1 hit); target 1 second
 * (top-2 hit); target 0 third (miss); target 1 tied with class 0, which
 * comes first, so second (top-2 hit): top-1 1/4, top-2 3/4. */
static void test_accuracy_callback(void **state) {
  (void)state;
  float logits[12] = {0.1f, 0.9f, 0.0f, 0.5f, 0.3f, 0.2f, 0.2f, 0.3f, 0.5f, 0.4f, 0.4f, 0.1f};
  int64_t shape[2] = {4, 3};
  loom_tensor *out = loom_tensor_view(logits, 2, shape);
  float x[4] = {0}, y[4] = {1, 1, 0, 1};
  int64_t one = 1;
  loom_loader_options o = {.batch_size = 4};
  loom_experiment *exp = loom_experiment_create("acc");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  assert_int_equal(loom_stage_add_loader(st, "valid", loom_loader_create(loom_memory_dataset_create(x, y, 4, 1, &one, 0, NULL), &o)), 0);
  const int topk[2] = {1, 2};
  assert_int_equal(loom_stage_add_callback(st, loom_accuracy_callback_create(topk, 2)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, fixed_output, out);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  double top1, top2;
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "valid/accuracy", &top1));
  assert_true(loom_metrics_get(loom_runner_epoch_metrics(r), "valid/accuracy@2", &top2));
  assert_true(top1 == 0.25);
  assert_true(top2 == 0.75);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_tensor_destroy(out);
}

/* A small real training run on in-memory data, logged to `logdir`. */
static int train_small(const char *logdir, uint64_t seed, int epochs, loom_callback *extra) {
  loom_experiment *exp = loom_experiment_create("small");
  loom_experiment_set_seed(exp, seed);
  loom_experiment_set_logdir(exp, logdir);
  const int64_t sizes[] = {8, 16, 3};
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs);
  loom_adam_options adam = loom_adam_defaults();
  adam.lr = 0.01;
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, seed)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(200, 8, 3, 16, true)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(60, 8, 3, 16, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  if (extra)
    assert_int_equal(loom_stage_add_callback(st, extra), 0);
  loom_runner *r = loom_runner_create();
  int rc = loom_run_experiment(r, exp);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return rc;
}

static void test_two_runs_identical(void **state) {
  (void)state;
  char *a = test_tmpdir(), *b = test_tmpdir(), *c = test_tmpdir();
  assert_int_equal(train_small(a, 5, 3, NULL), 0);
  assert_int_equal(train_small(b, 5, 3, NULL), 0);
  assert_int_equal(train_small(c, 6, 3, NULL), 0);
  char *ja = jsonl_without_time(a), *jb = jsonl_without_time(b), *jc = jsonl_without_time(c);
  assert_string_equal(ja, jb);
  assert_string_not_equal(ja, jc); /* the seed matters, so the check can fail */
  /* And training did something: valid loss fell over three epochs. */
  char *line1 = strstr(ja, "\"loader\":\"valid\""), *line3 = line1;
  assert_non_null(line1);
  for (char *p = line3; (p = strstr(p + 1, "\"loader\":\"valid\""));) /* the last valid row */
    line3 = p;
  double l1 = strtod(strstr(line1, "\"loss\":") + 7, NULL), l3 = strtod(strstr(line3, "\"loss\":") + 7, NULL);
  assert_true(l3 < l1);
  free(ja), free(jb), free(jc);
  test_rm_rf(a), test_rm_rf(b), test_rm_rf(c);
  free(a), free(b), free(c);
}

/* A metric that appears only from epoch 2 on forces a CSV rewrite. */
static int late_metric(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_epoch(r) >= 2)
    return loom_metrics_set(loom_runner_batch_metrics(r), "late", 0.5);
  return 0;
}

static void test_metrics_files_read_back(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  static const loom_callback_ops ops = {.type = "late", .on_batch_end = late_metric};
  assert_int_equal(train_small(dir, 1, 3, loom_callback_create(&ops, NULL, LOOM_ORDER_METRIC)), 0);
  char path[512];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  int lines = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), lines++) {
    json_error_t err;
    json_t *row = json_loads(line, JSON_REJECT_DUPLICATES, &err);
    assert_non_null(row);
    assert_string_equal(json_string_value(json_object_get(row, "stage")), "train");
    assert_int_equal(json_integer_value(json_object_get(row, "epoch")), lines / 3 + 1);
    assert_int_equal(json_integer_value(json_object_get(row, "global_epoch")), lines / 3 + 1);
    json_t *m = json_object_get(row, "metrics");
    if (lines % 3 == 2) {
      /* The epoch's row: the rate and momentum it started with, not the
       * loaders' metrics again; time_s is theirs summed. */
      assert_true(json_is_null(json_object_get(row, "loader")));
      assert_int_equal(json_object_size(m), 2);
      assert_true(json_real_value(json_object_get(m, "lr")) == 0.01);
      assert_true(json_real_value(json_object_get(m, "momentum")) == 0.9);
      assert_true(json_is_real(json_object_get(row, "time_s")));
      json_decref(row);
      continue;
    }
    assert_string_equal(json_string_value(json_object_get(row, "loader")), lines % 3 ? "valid" : "train");
    assert_true(json_is_real(json_object_get(m, "loss")));
    assert_true(json_is_real(json_object_get(m, "accuracy")));
    assert_true((json_object_get(m, "late") != NULL) == (lines >= 3));
    json_decref(row);
  }
  assert_int_equal(lines, 9);
  free(text);
  snprintf(path, sizeof path, "%s/metrics.csv", dir);
  text = test_read_file(path);
  assert_non_null(text);
  /* The loader rows' columns, then the epoch rows'. */
  assert_int_equal(strncmp(text, "stage,epoch,global_epoch,loader,time_s,loss,accuracy,late,lr,momentum\n", 70), 0);
  int rows = 0;
  for (char *p = text; *p; p++)
    rows += *p == '\n';
  assert_int_equal(rows, 10);
  assert_non_null(strstr(text, "\ntrain,1,1,train,")); /* epoch 1 rows kept, late cell empty */
  assert_non_null(strstr(text, ",,,\ntrain,1,1,valid,"));
  assert_non_null(strstr(text, ",,,,0.01,0.90000000000000002\ntrain,2,2,train,")); /* epoch 1's rate */
  free(text);
  test_rm_rf(dir);
  free(dir);
}

static void test_unwritable_logdir(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char file[512];
  snprintf(file, sizeof file, "%s/not-a-dir", dir);
  FILE *f = fopen(file, "w");
  fclose(f);
  int rc = train_small(file, 1, 1, NULL);
  assert_int_equal(rc, LOOM_EIO);
  assert_non_null(strstr(loom_last_error(), "not-a-dir"));
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_metrics_store),       cmocka_unit_test(test_weighted_means_and_best),
      cmocka_unit_test(test_accuracy_callback),   cmocka_unit_test(test_two_runs_identical),
      cmocka_unit_test(test_metrics_files_read_back), cmocka_unit_test(test_unwritable_logdir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
