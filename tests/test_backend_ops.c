/* Every op of every backend against double-precision references, forward
 * and backward, over several shapes (ggml's test-backend-ops is the
 * pattern). Each op's test runs once per backend row (the rows below: the
 * CPU, the fake device, and CUDA's device 0 when loom has the CUDA backend);
 * an op joins by adding a case to its family's tests/backend_ops_*.c
 * (declared in tests/backend_ops.h) and to ROW_TESTS below. Inputs go
 * through the backend's own memory and copy calls, so a device backend is
 * checked as it runs. A row whose backend cannot be made here (no CUDA
 * device) or lacks one of the test's ops prints why and is skipped: CMocka
 * lists it as skipped, never passed. Also: the support listing, the error
 * for a missing op, and the checks of loom_backend_create.
 *
 * usage: test_backend_ops [cpu|cuda|fake]: the rows of that backend (with
 * the backend-free tests under cpu), or all; `cuda` exits 77 (CTest's
 * skip) when it had no CUDA device. */
#include "backend_ops.h"

#include <loom/backend_cuda.h>

#include "fake_device.h"

/* The fake device (tests/fake_device.h: tagged device pointers, every
 * operand's extent checked, the CPU's ops behind them) holds the device
 * path's memory handling to the same references on any machine. */
static row cpu = {.name = "cpu"}, cuda = {.name = "cuda"}, fake = {.name = "fake"};

static void open_rows(void) {
  cpu.backend = loom_backend_cpu();
  fake.backend = fake_device_create((size_t)256 << 20, NULL);
  if (loom_backend_cuda_create(0, NULL, &cuda.backend) < 0)
    snprintf(cuda.missing, sizeof cuda.missing, "%s", loom_last_error());
}

/* Each op's test for one row. */
#define ROW_TESTS(r)                                                                                     \
  {#r ": test_gemm", test_gemm, NULL, NULL, &r}, {#r ": test_gemm_checked", test_gemm_checked, NULL, NULL, &r}, \
      {#r ": test_rows", test_rows, NULL, NULL, &r}, {#r ": test_activations", test_activations, NULL, NULL, &r}, \
      {#r ": test_criteria", test_criteria, NULL, NULL, &r}, {#r ": test_topk_hits", test_topk_hits, NULL, NULL, &r}, \
      {#r ": test_dropout", test_dropout, NULL, NULL, &r}, {#r ": test_add", test_add, NULL, NULL, &r},         \
      {#r ": test_autocast", test_autocast, NULL, NULL, &r},                                                   \
      {#r ": test_conv", test_conv, NULL, NULL, &r}, {#r ": test_pool", test_pool, NULL, NULL, &r},             \
      {#r ": test_conv_shapes_again", test_conv_shapes_again, NULL, NULL, &r},                                 \
      {#r ": test_batchnorm", test_batchnorm, NULL, NULL, &r}, {#r ": test_block", test_block, NULL, NULL, &r}, \
      {#r ": test_optimizer_updates", test_optimizer_updates, NULL, NULL, &r},                                 \
      {#r ": test_gradient_ops", test_gradient_ops, NULL, NULL, &r},                                           \
      {#r ": test_gate", test_gate, NULL, NULL, &r},                                                           \
      {#r ": test_update_ranges", test_update_ranges, NULL, NULL, &r},                                         \
      {#r ": test_upload", test_upload, NULL, NULL, &r},                                                       \
      {#r ": test_support_listing", test_support_listing, NULL, NULL, &r}

int main(int argc, char **argv) {
  const char *only = argc > 1 ? argv[1] : NULL;
  if (only && strcmp(only, "cpu") != 0 && strcmp(only, "cuda") != 0 && strcmp(only, "fake") != 0) {
    fprintf(stderr, "usage: %s [cpu|cuda|fake]\n", argv[0]);
    return 2;
  }
  open_rows();
  const struct CMUnitTest cpu_tests[] = {
      ROW_TESTS(cpu),
      cmocka_unit_test(test_gemm_checked_fallback),
      cmocka_unit_test(test_missing_op_is_reported),
      cmocka_unit_test(test_tensor_on_backend),
  };
  const struct CMUnitTest cuda_tests[] = {ROW_TESTS(cuda)};
  const struct CMUnitTest fake_tests[] = {ROW_TESTS(fake), cmocka_unit_test(test_fake_device_catches_misuse)};
  int failed = 0;
  if (!only || strcmp(only, "cpu") == 0)
    failed += cmocka_run_group_tests_name("cpu", cpu_tests, NULL, NULL);
  if (!only || strcmp(only, "cuda") == 0)
    failed += cmocka_run_group_tests_name("cuda", cuda_tests, NULL, NULL);
  if (!only || strcmp(only, "fake") == 0)
    failed += cmocka_run_group_tests_name("fake", fake_tests, NULL, NULL);
  const bool no_device = !cuda.backend;
  loom_backend_destroy(cuda.backend);
  loom_backend_destroy(fake.backend);
  return failed ? failed : only && strcmp(only, "cuda") == 0 && no_device ? 77 : 0;
}
