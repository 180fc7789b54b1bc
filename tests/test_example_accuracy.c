/* Reads the metrics.jsonl of a 10-epoch run of examples/fashion_mnist_mlp
 * (a CTest fixture) and checks the final valid accuracy against the
 * dataset's published MLP figure. Usage: test_example_accuracy METRICS.jsonl */
#include <jansson.h>

#include "helpers.h"

static const char *metrics_path;

static void test_final_valid_accuracy(void **state) {
  (void)state;
  if (!metrics_path)
    skip(); /* dataset-fashion-mnist not installed: the example was not run */
  char *text = test_read_file(metrics_path);
  assert_non_null(text);
  int rows = 0, last_epoch = 0;
  double accuracy = -1, first_loss = -1, last_loss = -1;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"), rows++) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    assert_non_null(row);
    const char *loader = json_string_value(json_object_get(row, "loader")); /* NULL: the epoch's row */
    if (loader && strcmp(loader, "valid") == 0) {
      last_epoch = (int)json_integer_value(json_object_get(row, "global_epoch"));
      json_t *m = json_object_get(row, "metrics");
      accuracy = json_real_value(json_object_get(m, "accuracy"));
      last_loss = json_real_value(json_object_get(m, "loss"));
      if (first_loss < 0)
        first_loss = last_loss;
    }
    json_decref(row);
  }
  free(text);
  assert_int_equal(rows, 30); /* 10 epochs x (train, valid, the epoch's row) */
  assert_int_equal(last_epoch, 10);
  print_message("final valid accuracy %.4f (target >= 0.885)\n", accuracy);
  assert_true(accuracy >= 0.885);
  assert_true(last_loss < first_loss);
}

int main(int argc, char **argv) {
  metrics_path = argc > 1 ? argv[1] : NULL;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_final_valid_accuracy)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
