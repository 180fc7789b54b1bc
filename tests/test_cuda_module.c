/* The CUDA module's loading (backends/cuda/loader.c), in a program linked to
 * the shared libloom: no CUDA library is in the process until a CUDA call
 * needs one; then the module next to libloom loads (creating a backend
 * reaches the module's own checks: no driver here), or, when it is not
 * where it is looked for, the error names the places tried.
 *
 * usage: test_cuda_module found        the module next to libloom
 *        test_cuda_module missing PATH LOOM_CUDA_MODULE=PATH, no file there
 *        test_cuda_module alone DIR    libloom alone in DIR (LD_LIBRARY_PATH)
 *        test_cuda_module foreign PATH LOOM_CUDA_MODULE=PATH, not a module */
#include "helpers.h"

#include <loom/backend_cuda.h>

static const char *mode = "found", *where = "";

/* Whether the process has mapped a file whose name contains `name` (read
 * line by line: /proc files have no size to read up to). */
static bool mapped(const char *name) {
  FILE *f = fopen("/proc/self/maps", "r");
  assert_non_null(f);
  char line[4096];
  bool found = false, any = false;
  while (!found && fgets(line, sizeof line, f))
    found = strstr(line, name) != NULL, any = true;
  fclose(f);
  assert_true(any);
  return found;
}

/* The CUDA libraries stay out of a program until it asks for CUDA: the
 * calls that need no module (availability, the allocators' statistics
 * before any backend) load none. */
static void test_nothing_loaded_before(void **state) {
  (void)state;
  assert_false(mapped("libcudart"));
  assert_false(mapped("libcublas"));
  assert_false(mapped("libloom_cuda"));
  (void)loom_cuda_available();
  loom_cuda_memory_stats st;
  st.allocs = 7;
  assert_int_equal(loom_cuda_memory_stats_get(0, &st), 0);
  assert_int_equal(st.allocs, 0);
  assert_int_equal(loom_cuda_release_cached(0), 0);
  assert_int_equal(loom_cuda_memory_stats_get(64, &st), LOOM_EINVAL);
  assert_false(mapped("libcudart"));
  assert_false(mapped("libloom_cuda"));
}

/* Next to libloom: the module loads, and the answer is its own (a backend,
 * or what the machine lacks). */
static void test_found(void **state) {
  (void)state;
  loom_backend *b = (loom_backend *)&b;
  const int rc = loom_backend_cuda_create(0, NULL, &b);
  if (!loom_cuda_available()) {
    assert_int_equal(rc, LOOM_ENOTSUP);
    assert_non_null(strstr(loom_last_error(), "built without CUDA support"));
    assert_non_null(strstr(loom_last_error(), "-DLOOM_WITH_CUDA=ON"));
    assert_false(mapped("libcudart"));
    return;
  }
  assert_true(mapped("libloom_cuda"));
  assert_true(mapped("libcudart"));
  if (rc == 0) {
    loom_backend_destroy(b);
    return;
  }
  print_message("%s\n", loom_last_error());
  assert_int_equal(rc, LOOM_ENOTSUP);
  assert_null(b);
  const char *m = loom_last_error();
  assert_true(strstr(m, "no usable CUDA driver") || strstr(m, "no CUDA device") || strstr(m, "compute capability"));
  /* a second backend asks the same loaded module */
  assert_int_equal(loom_backend_cuda_create(0, NULL, &b), LOOM_ENOTSUP);
  assert_string_equal(loom_last_error(), m);
  /* the allocators' calls, now the module's: no backend, so no allocator */
  loom_cuda_memory_stats st;
  st.reserved = 7;
  assert_int_equal(loom_cuda_memory_stats_get(3, &st), 0);
  assert_int_equal(st.reserved, 0);
  assert_int_equal(loom_cuda_release_cached(3), 0);
  assert_int_equal(loom_cuda_release_cached(-1), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "device -1 is not 0 to 63"));
}

/* No module where it is looked for: LOOM_ENOENT naming each place tried
 * and the loader's reason, the same on every call; no device counted. */
static void test_missing(void **state) {
  (void)state;
  if (!loom_cuda_available())
    skip();
  loom_backend *b = (loom_backend *)&b;
  assert_int_equal(loom_backend_cuda_create(0, NULL, &b), LOOM_ENOENT);
  assert_null(b);
  char first[1024];
  snprintf(first, sizeof first, "%s", loom_last_error());
  print_message("%s\n", first);
  char want[4200];
  if (strcmp(mode, "missing") == 0) {
    snprintf(want, sizeof want, "LOOM_CUDA_MODULE names did not load: %s (", where);
    assert_non_null(strstr(first, want));
    assert_null(strstr(first, " libloom_cuda.so (")); /* the variable's path alone */
  } else {
    snprintf(want, sizeof want, "tried: %s/libloom_cuda.so (", where);
    assert_non_null(strstr(first, want));
    assert_non_null(strstr(first, "; libloom_cuda.so (")); /* then the search path */
  }
  assert_non_null(strstr(first, "No such file or directory"));
  assert_non_null(strstr(first, "set LOOM_CUDA_MODULE to its path"));
  int count = -1;
  assert_int_equal(loom_cuda_device_count(&count), 0);
  assert_int_equal(count, 0);
  assert_int_equal(loom_backend_cuda_create(1, NULL, &b), LOOM_ENOENT);
  assert_string_equal(loom_last_error(), first);
  assert_false(mapped("libcudart"));
}

/* A library without the entry point is refused as such. */
static void test_foreign(void **state) {
  (void)state;
  if (!loom_cuda_available())
    skip();
  loom_backend *b = NULL;
  assert_int_equal(loom_backend_cuda_create(0, NULL, &b), LOOM_ENOTSUP);
  print_message("%s\n", loom_last_error());
  assert_non_null(strstr(loom_last_error(), where));
  assert_non_null(strstr(loom_last_error(), "not a loom CUDA module"));
  assert_non_null(strstr(loom_last_error(), "loom_cuda_module_v1"));
}

int main(int argc, char **argv) {
  if (argc > 1)
    mode = argv[1];
  if (argc > 2)
    where = argv[2];
  const struct CMUnitTest found[] = {cmocka_unit_test(test_nothing_loaded_before), cmocka_unit_test(test_found)};
  const struct CMUnitTest missing[] = {cmocka_unit_test(test_nothing_loaded_before), cmocka_unit_test(test_missing)};
  const struct CMUnitTest foreign[] = {cmocka_unit_test(test_nothing_loaded_before), cmocka_unit_test(test_foreign)};
  if (strcmp(mode, "found") == 0)
    return cmocka_run_group_tests(found, NULL, NULL);
  if (strcmp(mode, "missing") == 0 || strcmp(mode, "alone") == 0)
    return cmocka_run_group_tests(missing, NULL, NULL);
  if (strcmp(mode, "foreign") == 0)
    return cmocka_run_group_tests(foreign, NULL, NULL);
  fprintf(stderr, "usage: %s found | missing PATH | alone DIR | foreign PATH\n", argv[0]);
  return 2;
}
