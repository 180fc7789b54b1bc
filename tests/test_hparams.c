/* Hyperparameters of one run: the tensorboard logger's HParams summaries,
 * decoded by Google's protobuf runtime (tests/tfevents/decode.py), and
 * hparams.json, for C runs (loom_tensorboard_logger_set_hparam*) and
 * config runs (the resolved config's scalars).
 * Usage: test_hparams CONFIGS_DIR */
#include "tfevents.h"

static const char *configs;

static int fail_at_epoch_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  return loom_runner_global_epoch(r) == 1 ? loom_error_set(LOOM_EINVAL, "planted failure") : 0;
}

static int interrupt_at_batch_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_global_epoch(r) == 2)
    loom_runner_interrupt(r, "planted interrupt");
  return 0;
}

typedef enum { RUN_OK, RUN_FAILS, RUN_INTERRUPTED } run_end;

/* Two epochs of an MLP with accuracy, the metrics logger and `tb`. */
static int run_c(const char *dir, loom_callback *tb, run_end end) {
  loom_experiment *exp = loom_experiment_create("hparams");
  loom_experiment_set_logdir(exp, dir);
  const int64_t sizes[] = {8, 6, 3};
  loom_sgd_options sgd = {.lr = 0.1};
  loom_stage *s = loom_experiment_add_stage(exp, "train", 2);
  assert_int_equal(loom_stage_set_model(s, loom_mlp_create(sizes, 3, 2)), 0);
  assert_int_equal(loom_stage_set_criterion(s, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(s, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(s, "train", test_loader(32, 8, 3, 8, true)), 0);
  assert_int_equal(loom_stage_add_loader(s, "valid", test_loader(16, 8, 3, 8, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  assert_int_equal(loom_experiment_add_callback(exp, tb), 0);
  static const loom_callback_ops fail_ops = {.type = "fail", .on_epoch_end = fail_at_epoch_end};
  static const loom_callback_ops stop_ops = {.type = "stop", .on_batch_end = interrupt_at_batch_end};
  if (end != RUN_OK)
    assert_int_equal(
        loom_experiment_add_callback(exp, loom_callback_create(end == RUN_FAILS ? &fail_ops : &stop_ops, NULL, 50)), 0);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  int rc = loom_run_experiment(r, exp);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return rc;
}

static json_t *decode_only_file(const char *dir) {
  char files[4][1024];
  assert_int_equal(tfevents_files(dir, files, 4), 1);
  return tfevents_decode(files[0]);
}

static json_t *load_json(const char *dir, const char *name) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  json_error_t err;
  json_t *j = json_load_file(path, 0, &err);
  if (!j)
    fail_msg("%s: %s", path, err.text);
  return j;
}

/* The last "<loader>/<metric>" of metrics.jsonl, as it was printed. */
static double jsonl_last(const char *dir, const char *loader, const char *metric) {
  char path[1200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  double v = NAN;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    json_t *row = json_loads(line, 0, NULL);
    const char *name = json_string_value(json_object_get(row, "loader"));
    json_t *m = json_object_get(json_object_get(row, "metrics"), metric);
    if (name && strcmp(name, loader) == 0 && m)
      v = json_number_value(m);
    json_decref(row);
  }
  free(text);
  return v;
}

static void assert_discrete(json_t *info, const char *type, json_t *expected_values) {
  assert_non_null(info);
  assert_string_equal(json_string_value(json_object_get(info, "type")), type);
  assert_true(json_equal(json_object_get(info, "domain_discrete"), expected_values));
  json_decref(expected_values);
}

static void test_c_run(void **state) {
  (void)state;
  if (!tfevents_decoder_available())
    skip();
  char *dir = test_tmpdir();
  loom_callback *tb = loom_tensorboard_logger_create(0);
  assert_int_equal(loom_tensorboard_logger_set_hparam(tb, "lr", 0.001), 0);
  assert_int_equal(loom_tensorboard_logger_set_hparam_string(tb, "layout", "cna"), 0);
  assert_int_equal(loom_tensorboard_logger_set_hparam_bool(tb, "augment", false), 0);
  assert_int_equal(loom_tensorboard_logger_set_hparam(tb, "lr", 0.003), 0); /* replaces */
  assert_int_equal(run_c(dir, tb, RUN_OK), 0);

  json_t *events = decode_only_file(dir);
  json_t *start = tfevents_hparams(events, "_hparams_/session_start_info", "session_start_info");
  assert_non_null(start);
  json_t *want = json_pack("{s:f, s:s, s:b}", "lr", 0.003, "layout", "cna", "augment", 0);
  assert_true(json_equal(json_object_get(start, "hparams"), want));
  json_decref(want);
  assert_true(json_number_value(json_object_get(start, "start_time_secs")) > 1.6e9);
  assert_null(json_object_get(start, "group_name"));

  json_t *exp = tfevents_hparams(events, "_hparams_/experiment", "experiment");
  assert_non_null(exp);
  assert_int_equal(json_array_size(json_object_get(exp, "hparam_infos")), 3);
  assert_discrete(tfevents_hparam_info(exp, "lr"), "DATA_TYPE_FLOAT64", json_pack("[f]", 0.003));
  assert_discrete(tfevents_hparam_info(exp, "layout"), "DATA_TYPE_STRING", json_pack("[s]", "cna"));
  assert_discrete(tfevents_hparam_info(exp, "augment"), "DATA_TYPE_BOOL", json_pack("[b]", 0));
  /* One metric per loader metric, the dataset from the loader's name. */
  json_t *metrics = json_object_get(exp, "metric_infos");
  assert_int_equal(json_array_size(metrics), 4);
  const char *tags[] = {"train/loss", "train/accuracy", "valid/loss", "valid/accuracy"};
  for (int k = 0; k < 4; k++) {
    bool found = false;
    size_t i;
    json_t *m;
    json_array_foreach(metrics, i, m) {
      json_t *name = json_object_get(m, "name");
      if (strcmp(json_string_value(json_object_get(name, "tag")), tags[k]) != 0)
        continue;
      found = true;
      assert_null(json_object_get(name, "group")); /* "": the session's own run */
      assert_string_equal(json_string_value(json_object_get(m, "dataset_type")),
                          k < 2 ? "DATASET_TRAINING" : "DATASET_VALIDATION");
    }
    assert_true(found);
  }
  json_t *end = tfevents_hparams(events, "_hparams_/session_end_info", "session_end_info");
  assert_non_null(end);
  assert_string_equal(json_string_value(json_object_get(end, "status")), "STATUS_SUCCESS");
  assert_true(json_number_value(json_object_get(end, "end_time_secs")) >=
              json_number_value(json_object_get(start, "start_time_secs")));

  /* hparams.json: the same values, and each metric's last value, which is
   * metrics.jsonl's last and the event file's last scalar of that tag. */
  json_t *doc = load_json(dir, "hparams.json");
  want = json_pack("{s:f, s:s, s:b}", "lr", 0.003, "layout", "cna", "augment", 0);
  assert_true(json_equal(json_object_get(doc, "hparams"), want));
  json_decref(want);
  assert_string_equal(json_string_value(json_object_get(doc, "status")), "done");
  json_t *final = json_object_get(doc, "final");
  assert_int_equal(json_object_size(final), 4);
  for (int k = 0; k < 4; k++) {
    double v = json_number_value(json_object_get(final, tags[k]));
    char loader[8];
    snprintf(loader, sizeof loader, "%.5s", tags[k]);
    assert_true(v == jsonl_last(dir, loader, tags[k] + 6));
    int64_t step = 0;
    assert_true((float)v == (float)tfevents_last_scalar(events, tags[k], &step));
    assert_int_equal(step, 2);
  }
  json_decref(doc);
  json_decref(events);
  test_rm_rf(dir);
  free(dir);
}

/* A failed run ends its session as a failure; an interrupted one leaves it
 * open (its resume goes on with it); hparams.json says which. */
static void test_failed_and_interrupted(void **state) {
  (void)state;
  if (!tfevents_decoder_available())
    skip();
  const run_end ends[] = {RUN_FAILS, RUN_INTERRUPTED};
  const char *status[] = {"failed", "interrupted"};
  for (int k = 0; k < 2; k++) {
    char *dir = test_tmpdir();
    loom_callback *tb = loom_tensorboard_logger_create(0);
    assert_int_equal(loom_tensorboard_logger_set_hparam(tb, "lr", 0.1), 0);
    assert_int_equal(run_c(dir, tb, ends[k]), k == 0 ? LOOM_EINVAL : LOOM_EINTERRUPTED);
    json_t *events = decode_only_file(dir);
    assert_non_null(tfevents_hparams(events, "_hparams_/session_start_info", "session_start_info"));
    assert_non_null(tfevents_hparams(events, "_hparams_/experiment", "experiment"));
    json_t *end = tfevents_hparams(events, "_hparams_/session_end_info", "session_end_info");
    if (k == 0)
      assert_string_equal(json_string_value(json_object_get(end, "status")), "STATUS_FAILURE");
    else
      assert_null(end);
    json_t *doc = load_json(dir, "hparams.json");
    assert_string_equal(json_string_value(json_object_get(doc, "status")), status[k]);
    /* The epoch that ran (failed: epoch 1 whole; interrupted: epoch 1). */
    assert_true(json_number_value(json_object_get(json_object_get(doc, "final"), "valid/loss")) ==
                jsonl_last(dir, "valid", "loss"));
    json_decref(doc);
    json_decref(events);
    test_rm_rf(dir);
    free(dir);
  }
}

/* No hyperparameters: no HParams summary (the file as before), and
 * hparams.json with none. */
static void test_no_hparams(void **state) {
  (void)state;
  if (!tfevents_decoder_available())
    skip();
  char *dir = test_tmpdir();
  assert_int_equal(run_c(dir, loom_tensorboard_logger_create(0), RUN_OK), 0);
  json_t *events = decode_only_file(dir);
  size_t i, j;
  json_t *e, *v;
  json_array_foreach(events, i, e) {
    json_array_foreach(json_object_get(e, "values"), j, v) { assert_null(json_object_get(v, "plugin")); }
  }
  json_t *doc = load_json(dir, "hparams.json");
  assert_int_equal(json_object_size(json_object_get(doc, "hparams")), 0);
  assert_int_equal(json_object_size(json_object_get(doc, "final")), 4);
  json_decref(doc);
  json_decref(events);
  test_rm_rf(dir);
  free(dir);
}

/* A config run: every scalar of the resolved config, under its --set key. */
static void test_config_run(void **state) {
  (void)state;
  if (!tfevents_decoder_available())
    skip();
  char *dir = test_tmpdir(), path[1200];
  snprintf(path, sizeof path, "%s/tiny.json", configs);
  loom_config *c = loom_config_load(path);
  assert_non_null(c);
  assert_int_equal(loom_config_set(c, "stages.train.callbacks[+]={\"type\": \"tensorboard\"}"), 0);
  assert_int_equal(loom_config_set(c, "stages.train.num_epochs=1"), 0);
  assert_int_equal(loom_config_set(c, "stages.train.optimizer.lr=0.05"), 0);
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), 0);
  assert_int_equal(loom_experiment_set_logdir(exp, dir), 0);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);

  json_t *events = decode_only_file(dir);
  json_t *hp = json_object_get(tfevents_hparams(events, "_hparams_/session_start_info", "session_start_info"),
                               "hparams");
  json_t *doc = load_json(dir, "hparams.json");
  json_t *file_hp = json_object_get(doc, "hparams");
  struct {
    const char *key;
    json_t *value;
  } want[] = {
      {"stages.train.optimizer.lr", json_real(0.05)},
      {"stages.train.optimizer.momentum", json_real(0.9)},
      {"stages.train.num_epochs", json_real(1)},
      {"experiment.name", json_string("tiny")},
      {"model.sizes[1]", json_real(3)},
      {"stages.train.loaders[1]", json_string("valid")},
      {"stages.train.callbacks[0].type", json_string("accuracy")},
      {"loaders.train.transforms[0].std", json_real(70)},
  };
  for (size_t k = 0; k < sizeof want / sizeof *want; k++) {
    if (!json_equal(json_object_get(hp, want[k].key), want[k].value))
      fail_msg("event file: %s", want[k].key);
    if (!json_equal(json_object_get(file_hp, want[k].key), want[k].value))
      fail_msg("hparams.json: %s", want[k].key);
    json_decref(want[k].value);
  }
  /* Only scalars: no object or array is a hyperparameter. */
  assert_null(json_object_get(hp, "model.sizes"));
  assert_null(json_object_get(hp, "stages.train"));
  json_t *exp_summary = tfevents_hparams(events, "_hparams_/experiment", "experiment");
  assert_int_equal(json_array_size(json_object_get(exp_summary, "hparam_infos")), json_object_size(hp));
  json_decref(doc);
  json_decref(events);
  test_rm_rf(dir);
  free(dir);
}

static void test_refusals(void **state) {
  (void)state;
  loom_callback *timer = loom_timer_callback_create();
  assert_int_equal(loom_tensorboard_logger_set_hparam(timer, "lr", 1), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "not a tensorboard logger"));
  loom_callback_destroy(timer);
  loom_callback *tb = loom_tensorboard_logger_create(0);
  assert_int_equal(loom_tensorboard_logger_set_hparam(tb, "", 1), LOOM_EINVAL);
  assert_int_equal(loom_tensorboard_logger_set_hparam_string(tb, "x", NULL), LOOM_EINVAL);
  loom_callback_destroy(tb);
}

int main(int argc, char **argv) {
  configs = argc > 1 ? argv[1] : CONFIGS;
  if (!tfevents_decoder_available())
    fprintf(stderr, "test_hparams: no python3 with google.protobuf or no protoc (scripts/install-deps.sh installs "
                    "them): the decoding tests are skipped\n");
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_c_run),
      cmocka_unit_test(test_failed_and_interrupted),
      cmocka_unit_test(test_no_hparams),
      cmocka_unit_test(test_config_run),
      cmocka_unit_test(test_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
