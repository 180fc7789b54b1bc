/* The model summary (Lightning's ModelSummary): each layer's output shape,
 * parameters and multiply-adds against hand-computed counts, for an MLP
 * and a small CNN; the printed table, the console's verbose stage start
 * and <logdir>/model_summary.json. */
#include <unistd.h>

#include "helpers.h"

/* A user's layer without a macs op: the identity. */
static int same(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  (void)data;
  *out_ndim = ndim;
  memcpy(out, in, (size_t)ndim * sizeof *out);
  return 0;
}
static int copy_forward(void *data, const loom_tensor *in, loom_tensor *out, bool train, loom_rng *rng) {
  (void)data, (void)train, (void)rng;
  memcpy(loom_tensor_data(out), loom_tensor_data(in), (size_t)loom_tensor_numel(in) * sizeof(float));
  return 0;
}
static int copy_backward(void *data, const loom_tensor *in, const loom_tensor *out, const loom_tensor *dout,
                         loom_tensor *din, bool param_grads) {
  (void)data, (void)in, (void)out, (void)param_grads;
  if (din)
    memcpy(loom_tensor_data(din), loom_tensor_data(dout), (size_t)loom_tensor_numel(dout) * sizeof(float));
  return 0;
}
static const loom_layer_ops mine_ops = {.type = "Mine", .output_shape = same, .forward = copy_forward,
                                        .backward = copy_backward};

typedef struct expected {
  const char *name;
  int ndim;
  int64_t shape[3];
  size_t params;
  int64_t macs; /* -1: "?" */
} expected;

static void expect_layers(const loom_model *m, const expected *want, size_t n) {
  assert_int_equal(loom_model_num_layers(m), n);
  for (size_t i = 0; i < n; i++) {
    int64_t shape[LOOM_MAX_DIMS];
    size_t offset, count;
    assert_string_equal(loom_model_layer_name(m, i), want[i].name);
    assert_int_equal(loom_model_layer_output_shape(m, i, shape), want[i].ndim);
    for (int d = 0; d < want[i].ndim; d++)
      assert_int_equal(shape[d], want[i].shape[d]);
    loom_model_layer_params(m, i, &offset, &count);
    assert_int_equal(count, want[i].params);
    if (loom_model_layer_macs(m, i) != want[i].macs)
      fail_msg("layer %s: %lld multiply-adds, expected %lld", want[i].name, (long long)loom_model_layer_macs(m, i),
               (long long)want[i].macs);
  }
}

/* The summary printed into a string (the caller frees it). */
static char *printed(const loom_model *m) {
  char *text = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&text, &size);
  assert_int_equal(loom_model_print_summary(m, f), 0);
  fclose(f);
  return text;
}

/* MLP 4-3-2: fc1 has 4 x 3 weights + 3 biases and 4 x 3 multiply-adds,
 * fc2 3 x 2 + 2 and 3 x 2; ReLU none. fc1 frozen: 15 of the 23 frozen. */
static void test_mlp(void **state) {
  (void)state;
  const int64_t sizes[] = {4, 3, 2};
  loom_model *m = loom_mlp_create(sizes, 3, 1);
  assert_non_null(m);
  const int64_t in[] = {4};
  if (!loom_model_is_built(m))
    assert_int_equal(loom_model_build(m, 1, in, 1), 0);
  const expected want[] = {{"fc1", 1, {3}, 15, 12}, {"relu1", 1, {3}, 0, 0}, {"fc2", 1, {2}, 8, 6}};
  expect_layers(m, want, 3);
  assert_int_equal(loom_model_set_frozen(m, "fc1", true), 0);
  char *text = printed(m);
  assert_string_equal(text, "model summary (per sample of shape [4]):\n"
                            "  # | name  | type   | output shape | params | MACs | mode\n"
                            "  0 | fc1   | Linear | [3]          | 15     | 12   | frozen\n"
                            "  1 | relu1 | ReLU   | [3]          | 0      | 0    | -\n"
                            "  2 | fc2   | Linear | [2]          | 8      | 6    | trainable\n"
                            "  8 trainable params, 15 frozen params, 23 total params\n"
                            "  18 multiply-adds per sample\n");
  free(text);
  loom_model_destroy(m);
}

/* A small CNN on [1, 8, 8]:
 *   conv 1->2, 3x3, padding 1: [2, 8, 8], 2 x 9 + 2 = 20 params, 2 x 64 x 9 = 1152 MACs
 *   batchnorm(2): 4 params, one scale-and-shift per value, 128
 *   relu, maxpool 2: [2, 4, 4], none
 *   avgpool 2: [2, 2, 2], 8 outputs x a window of 4 = 32
 *   mine (a user's layer without macs): "?"
 *   global avgpool: [2], every one of the 8 inputs once = 8
 *   flatten, dropout: none
 *   linear 2->3: 9 params, 6 MACs. */
static void test_cnn(void **state) {
  (void)state;
  loom_model *m = loom_model_create();
  loom_conv2d_options conv = {.out_channels = 2, .kernel = {3, 3}, .padding = {1, 1}};
  assert_int_equal(loom_model_add(m, "conv", loom_conv2d_create(&conv)), 0);
  assert_int_equal(loom_model_add(m, "bn", loom_batchnorm_create(2, 1e-5f, 0.1f)), 0);
  assert_int_equal(loom_model_add(m, "relu", loom_relu_create()), 0);
  assert_int_equal(loom_model_add(m, "max", loom_maxpool2d_create(2, 0, 0)), 0);
  assert_int_equal(loom_model_add(m, "avg", loom_avgpool2d_create(2, 0, 0)), 0);
  assert_int_equal(loom_model_add(m, "mine", loom_layer_create(&mine_ops, NULL)), 0);
  assert_int_equal(loom_model_add(m, "gap", loom_global_avgpool_create()), 0);
  assert_int_equal(loom_model_add(m, "flat", loom_flatten_create()), 0);
  assert_int_equal(loom_model_add(m, "drop", loom_dropout_create(0.5f)), 0);
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(0, 3, true)), 0);
  assert_int_equal(loom_model_layer_macs(m, 0), -1); /* not built: shapes unknown */
  assert_int_equal(loom_model_print_summary(m, stderr), LOOM_ESTATE);
  const int64_t in[] = {1, 8, 8};
  assert_int_equal(loom_model_build(m, 3, in, 1), 0);
  const expected want[] = {
      {"conv", 3, {2, 8, 8}, 20, 1152}, {"bn", 3, {2, 8, 8}, 4, 128}, {"relu", 3, {2, 8, 8}, 0, 0},
      {"max", 3, {2, 4, 4}, 0, 0},      {"avg", 3, {2, 2, 2}, 0, 32},  {"mine", 3, {2, 2, 2}, 0, -1},
      {"gap", 1, {2}, 0, 8},            {"flat", 1, {2}, 0, 0},        {"drop", 1, {2}, 0, 0},
      {"fc", 1, {3}, 9, 6}};
  expect_layers(m, want, 10);
  char *text = printed(m);
  assert_non_null(strstr(text, "model summary (per sample of shape [1, 8, 8]):\n"));
  assert_non_null(strstr(text, "  0 | conv | Conv2d        | [2, 8, 8]    | 20     | 1152 | trainable\n"));
  assert_non_null(strstr(text, "  5 | mine | Mine          | [2, 2, 2]    | 0      | ?    | -\n"));
  assert_non_null(strstr(text, "  33 trainable params, 0 frozen params, 33 total params\n"));
  assert_non_null(strstr(text, "  1326 + ? multiply-adds per sample\n"));
  free(text);
  loom_model_destroy(m);
}

/* A run: the console prints the summary at stage start in verbose mode,
 * and the metrics logger writes it to model_summary.json, per stage (a
 * second stage that freezes fc1 says so). */
static void test_run_writes_the_summary(void **state) {
  (void)state;
  char *dir = test_tmpdir(), path[1100];
  loom_experiment *exp = loom_experiment_create("summary");
  loom_experiment_set_logdir(exp, dir);
  loom_stage *a = loom_experiment_add_stage(exp, "a", 1), *b = loom_experiment_add_stage(exp, "b", 1);
  const int64_t sizes[] = {2, 3, 2};
  assert_int_equal(loom_stage_set_model(a, loom_mlp_create(sizes, 3, 1)), 0);
  assert_int_equal(loom_stage_add_loader(a, "train", test_loader(4, 2, 2, 2, false)), 0);
  assert_int_equal(loom_stage_set_criterion(a, loom_cross_entropy_create()), 0);
  loom_sgd_options sgd = {.lr = 0.1};
  assert_int_equal(loom_stage_set_optimizer(a, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_freeze(b, "fc1"), 0);
  snprintf(path, sizeof path, "%s.console.txt", dir); /* the logdir of a new run is empty */
  FILE *out = fopen(path, "w");
  loom_console_logger_options o = {.out = out, .progress = LOOM_PROGRESS_OFF, .verbose = true};
  assert_int_equal(loom_experiment_add_callback(exp, loom_console_logger_create(&o)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  loom_runner *r = loom_runner_create();
  if (loom_run_experiment(r, exp) != 0)
    fail_msg("%s", loom_last_error());
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  fclose(out);
  char *text = test_read_file(path);
  unlink(path);
  assert_non_null(strstr(text, "  0 | fc1   | Linear | [3]          | 9      | 6    | trainable\n"));
  assert_non_null(strstr(text, "  0 | fc1   | Linear | [3]          | 9      | 6    | frozen\n"));
  assert_non_null(strstr(text, "  17 trainable params, 0 frozen params, 17 total params\n"));
  assert_non_null(strstr(text, "  8 trainable params, 9 frozen params, 17 total params\n"));
  free(text);
  snprintf(path, sizeof path, "%s/model_summary.json", dir);
  json_t *file = json_load_file(path, 0, NULL), *stages = json_object_get(file, "stages");
  assert_int_equal(json_object_size(stages), 2);
  json_t *sa = json_object_get(stages, "a"), *sb = json_object_get(stages, "b");
  assert_int_equal(json_integer_value(json_object_get(sa, "total_params")), 17);
  assert_int_equal(json_integer_value(json_object_get(sa, "macs")), 12);
  assert_true(json_is_true(json_object_get(sa, "macs_complete")));
  assert_int_equal(json_integer_value(json_object_get(sb, "frozen_params")), 9);
  json_t *fc2 = json_array_get(json_object_get(sb, "layers"), 2);
  assert_string_equal(json_string_value(json_object_get(fc2, "name")), "fc2");
  assert_string_equal(json_string_value(json_object_get(fc2, "type")), "Linear");
  assert_int_equal(json_integer_value(json_array_get(json_object_get(fc2, "output_shape"), 0)), 2);
  assert_int_equal(json_integer_value(json_object_get(fc2, "params")), 8);
  assert_int_equal(json_integer_value(json_object_get(fc2, "macs")), 6);
  assert_true(json_is_true(json_object_get(fc2, "trainable")));
  assert_true(json_is_false(json_object_get(json_array_get(json_object_get(sb, "layers"), 0), "trainable")));
  json_decref(file);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_mlp),
      cmocka_unit_test(test_cnn),
      cmocka_unit_test(test_run_writes_the_summary),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
