/* loom_config_validate: the build's checks without the data or the model's
 * memory. Every golden bad config (tests/configs/invalid) gives the error
 * loom_config_build gives, except the cases only the data decides.
 * Usage: test_config_validate DIR (tests/configs/invalid) */
#include <dirent.h>
#include <unistd.h>
#include <uv.h>

#include "helpers.h"

static const char *cases_dir;

/* tiny.json's experiment with `dataset` and `model` (JSON text). */
static loom_config *config_with(const char *dataset, const char *model) {
  char text[4096];
  snprintf(text, sizeof text,
           "{\"experiment\": {\"name\": \"v\", \"seed\": 1, \"logdir\": \"/nonexistent/loom-validate\"},"
           " \"datasets\": {\"d\": %s},"
           " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2}},"
           " \"model\": %s,"
           " \"stages\": {\"s\": {\"num_epochs\": 1, \"loaders\": [\"train\"], \"criterion\": {\"type\": "
           "\"cross_entropy\"}, \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1}}}}",
           dataset, model);
  loom_config *c = loom_config_parse(text, CONFIGS "/validate.json");
  assert_non_null(c);
  return c;
}

static const char tiny_data[] = "{\"type\": \"idx\", \"images\": \"data/images.idx\", \"labels\": \"data/labels.idx\"}";
static const char tiny_mlp[] = "{\"type\": \"mlp\", \"sizes\": [4, 3, 2]}";

/* A config the data decides on passes without it. */
static void test_missing_dataset_file_passes(void **state) {
  (void)state;
  const char *data = "{\"type\": \"idx\", \"images\": \"data/nope.idx\", \"labels\": \"data/labels.idx\"}";
  loom_config *c = config_with(data, tiny_mlp);
  assert_int_equal(loom_config_validate(c), 0);
  /* The full build reads it, and says where. */
  loom_experiment *exp = NULL;
  int rc = loom_config_build(c, &exp);
  assert_true(rc < 0);
  assert_null(exp);
  char want[4200];
  snprintf(want, sizeof want, CONFIGS "/validate.json:1:126: datasets.d.images: %s/data/nope.idx: No such file or directory",
           CONFIGS);
  assert_string_equal(loom_last_error(), want);
  loom_config_destroy(c);
  /* Nothing was kept or written: no loader, no model, no logdir. */
  c = config_with(tiny_data, tiny_mlp);
  assert_int_equal(loom_config_validate(c), 0);
  assert_int_equal(loom_config_num_loaders(c), 0);
  assert_null(loom_config_model(c));
  assert_int_equal(access("/nonexistent/loom-validate", F_OK), -1);
  loom_config_destroy(c);
}

/* A hidden width that makes a model of [4, h, h, 2] (h^2 + 8h + 2
 * parameters, >= 10^10) too large for this machine: twice its parameters
 * in floats (with the gradients) above its memory. */
static int64_t too_wide(void) {
  int64_t h = 100000;
  while ((double)h * (double)h * 8.0 <= (double)uv_get_total_memory())
    h *= 10;
  return h;
}

/* 10^10 parameters: refused before anything is allocated (under ASan an
 * allocation of that size would fail or abort), with the count. */
static void test_huge_mlp_refused(void **state) {
  (void)state;
  int64_t h = too_wide();
  char model[256], want[128];
  snprintf(model, sizeof model, "{\"type\": \"mlp\", \"sizes\": [4, %lld, %lld, 2]}", (long long)h, (long long)h);
  loom_config *c = config_with(tiny_data, model);
  assert_int_equal(loom_config_validate(c), LOOM_ENOMEM);
  /* fc1 5h, fc2 h^2 + h, fc3 2h + 2 */
  snprintf(want, sizeof want, "the model has %lld parameters", (long long)(h * h + 8 * h + 2));
  assert_non_null(strstr(loom_last_error(), want));
  assert_non_null(strstr(loom_last_error(), "model: "));
  loom_config_destroy(c);
}

/* A sequential model's size without the samples' shape: the layers whose
 * sizes the config gives count (fc2 here), the first one's inferred
 * in_features does not. */
static void test_huge_sequential_refused(void **state) {
  (void)state;
  int64_t h = too_wide();
  char model[512], want[128];
  snprintf(model, sizeof model,
           "{\"type\": \"sequential\", \"layers\": [{\"type\": \"linear\", \"out_features\": %lld}, {\"type\": "
           "\"linear\", \"in_features\": %lld, \"out_features\": %lld}, {\"type\": \"linear\", \"out_features\": 2}]}",
           (long long)h, (long long)h, (long long)h);
  loom_config *c = config_with(tiny_data, model);
  assert_int_equal(loom_config_validate(c), LOOM_ENOMEM);
  snprintf(want, sizeof want, "model.layers: the model has %lld parameters", (long long)(h + h * h + h + 2));
  assert_non_null(strstr(loom_last_error(), want));
  loom_config_destroy(c);
  /* A small one passes, and then builds. */
  c = config_with(tiny_data, "{\"type\": \"sequential\", \"layers\": [{\"type\": \"linear\", \"out_features\": 3}, "
                             "{\"type\": \"relu\"}, {\"type\": \"linear\", \"in_features\": 3, \"out_features\": 2}]}");
  assert_int_equal(loom_config_validate(c), 0);
  loom_experiment *exp = NULL;
  int rc = loom_config_build(c, &exp);
  if (rc < 0)
    print_error("%s\n", loom_last_error());
  assert_int_equal(rc, 0);
  assert_int_equal(loom_model_num_params(loom_config_model(c)), 4 * 3 + 3 + 3 * 2 + 2);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

/* The case's error, from inside its directory, by validate or by build
 * (NULL: accepted). */
static char *error_of(const char *dir, bool validate_only) {
  char cwd[4096];
  assert_non_null(getcwd(cwd, sizeof cwd));
  assert_int_equal(chdir(dir), 0);
  loom_config *c = loom_config_load("config.json");
  int rc = c ? 0 : loom_last_error_code();
  char *sets = test_read_file("set");
  for (char *line = sets ? strtok(sets, "\n") : NULL; line && rc == 0; line = strtok(NULL, "\n"))
    rc = loom_config_set(c, line);
  loom_experiment *exp = NULL;
  if (rc == 0)
    rc = validate_only ? loom_config_validate(c) : loom_config_build(c, &exp);
  char *msg = rc < 0 ? strdup(loom_last_error()) : NULL;
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  free(sets);
  assert_int_equal(chdir(cwd), 0);
  return msg;
}

/* The golden cases only the data decides: validate accepts them. */
static bool needs_data(const char *name) {
  static const char *const cases[] = {"dataset_missing_file", "model_inputs_mismatch"};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (strcmp(name, cases[i]) == 0)
      return true;
  return false;
}

static void test_golden_cases_same_error(void **state) {
  (void)state;
  struct dirent **names;
  int n = scandir(cases_dir, &names, NULL, by_name);
  assert_true(n > 0);
  int cases = 0, wrong = 0;
  for (int i = 0; i < n; i++) {
    char dir[4200], path[4400];
    snprintf(dir, sizeof dir, "%s/%s", cases_dir, names[i]->d_name);
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (names[i]->d_name[0] != '.' && access(path, F_OK) == 0) {
      cases++;
      char *built = error_of(dir, false), *validated = error_of(dir, true);
      bool data = needs_data(names[i]->d_name);
      if (!built || (data ? validated != NULL : !validated || strcmp(built, validated) != 0)) {
        print_error("%s:\n  build:    %s\n  validate: %s%s\n", names[i]->d_name, built ? built : "(accepted)",
                    validated ? validated : "(accepted)", data ? " (should accept: the data decides)" : "");
        wrong++;
      }
      free(built);
      free(validated);
    }
    free(names[i]);
  }
  free(names);
  assert_int_equal(wrong, 0);
  assert_true(cases >= 30);
}

int main(int argc, char **argv) {
  if (argc < 2)
    return 2;
  cases_dir = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_missing_dataset_file_passes),
      cmocka_unit_test(test_huge_mlp_refused),
      cmocka_unit_test(test_huge_sequential_refused),
      cmocka_unit_test(test_golden_cases_same_error),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
