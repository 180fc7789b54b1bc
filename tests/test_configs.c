/* The golden suite: every tests/configs/invalid/<case>/config.json (with the
 * --set assignments in <case>/set, if any) must fail with exactly the
 * message in <case>/expected_error.
 * Usage: test_configs DIR [--print]   (--print shows the messages instead) */
#include <dirent.h>
#include <unistd.h>

#include "helpers.h"

static const char *cases_dir;
static bool print_only;

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

/* The error the case gives, from inside its directory. */
static char *error_of(const char *dir) {
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
    rc = loom_config_build(c, &exp);
  char *msg = rc < 0 ? strdup(loom_last_error()) : NULL;
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  free(sets);
  assert_int_equal(chdir(cwd), 0);
  return msg;
}

static void test_golden_invalid_configs(void **state) {
  (void)state;
  struct dirent **names;
  int n = scandir(cases_dir, &names, NULL, by_name);
  assert_true(n > 0);
  int cases = 0, wrong = 0;
  for (int i = 0; i < n; i++) {
    char dir[4200], expected_path[4400];
    snprintf(dir, sizeof dir, "%s/%s", cases_dir, names[i]->d_name);
    snprintf(expected_path, sizeof expected_path, "%s/config.json", dir);
    if (names[i]->d_name[0] == '.' || access(expected_path, F_OK) < 0) {
      free(names[i]);
      continue;
    }
    cases++;
    char *got = error_of(dir);
    snprintf(expected_path, sizeof expected_path, "%s/expected_error", dir);
    char *want = test_read_file(expected_path);
    if (want && *want && want[strlen(want) - 1] == '\n')
      want[strlen(want) - 1] = '\0';
    if (print_only) {
      printf("%-30s %s\n", names[i]->d_name, got ? got : "(no error!)");
    } else if (!got || !want || strcmp(got, want) != 0) {
      print_error("%s:\n  expected: %s\n  got:      %s\n", names[i]->d_name, want ? want : "(no expected_error)",
                  got ? got : "(the config was accepted)");
      wrong++;
    }
    free(got);
    free(want);
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
  print_only = argc > 2 && strcmp(argv[2], "--print") == 0;
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_golden_invalid_configs)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
