/* Notices: loom records what it sees wrong in its environment (here, OpenBLAS
 * on generic kernels, forced by the test's OPENBLAS_CORETYPE) once, and the
 * console logger shows each once. Run by CTest twice: with
 * OPENBLAS_CORETYPE=Prescott (expects the notice) and =Haswell (expects none). */
#include "helpers.h"

#include <cblas.h>
#include <strings.h>

static bool cpu_has_avx2(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

/* Runs one epoch of a tiny MLP with a console logger writing to `out`. */
static void run_once(FILE *out) {
  loom_experiment *exp = loom_experiment_create("notices");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  int64_t sizes[] = {4, 3};
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 2, 1)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  loom_sgd_options sgd = {.lr = 0.1};
  assert_int_equal(loom_stage_set_optimizer(st, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(8, 4, 3, 4, false)), 0);
  char *dir = test_tmpdir();
  assert_int_equal(loom_experiment_set_logdir(exp, dir), 0);
  loom_console_logger_options o = {.out = out};
  assert_int_equal(loom_experiment_add_callback(exp, loom_console_logger_create(&o)), 0);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  test_rm_rf(dir);
  free(dir);
}

static int count(const char *text, const char *what) {
  int n = 0;
  for (const char *p = text; (p = strstr(p, what)); p += strlen(what))
    n++;
  return n;
}

static void test_generic_kernels_are_noticed_once(void **state) {
  (void)state;
  const char *forced = getenv("OPENBLAS_CORETYPE");
  if (!cpu_has_avx2() || !forced) {
    print_message("skipped: needs an AVX2 CPU and OPENBLAS_CORETYPE set by CTest\n");
    skip();
  }
  bool generic = strcasecmp(forced, "Prescott") == 0;
  assert_string_equal(openblas_get_corename(), generic ? "Prescott" : "Haswell");
  char *text = NULL;
  size_t len = 0;
  FILE *out = open_memstream(&text, &len);
  assert_non_null(out);
  run_once(out);
  run_once(out);
  fclose(out);
  if (generic) {
    assert_int_equal(loom_notice_count(), 1);
    assert_non_null(strstr(loom_notice(0), "OpenBLAS runs its generic Prescott kernels"));
    assert_non_null(strstr(loom_notice(0), "OPENBLAS_CORETYPE="));
    /* Each logger shows each notice once: two loggers, two lines. */
    assert_int_equal(count(text, "warning: OpenBLAS runs its generic Prescott kernels"), 2);
  } else {
    assert_int_equal(loom_notice_count(), 0);
    assert_int_equal(count(text, "warning:"), 0);
  }
  assert_null(loom_notice(loom_notice_count()));
  free(text);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_generic_kernels_are_noticed_once)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
