/* test_backend_ops (tests/test_backend_ops.c, its rows and main): what the
 * op families' tests (tests/backend_ops_*.c) share, and their tests. Each
 * op's test takes its row (a row *) as CMocka's state. */
#ifndef LOOM_TEST_BACKEND_OPS_H
#define LOOM_TEST_BACKEND_OPS_H

#include "helpers.h"

#include <math.h>

#include <loom/backend.h>
#include <loom/backend_cpu.h>

#define MAX_BACKENDS 1

/* A backend row: its backend, or why there is none here. */
typedef struct row {
  const char *name;
  loom_backend *backend;
  char missing[512];
} row;

/* The test's row's backend in out[0] (1), if it has every op up to
 * LOOM_OP_COUNT; else the test is skipped, saying why. */
size_t backends(void **state, loom_backend **out, ...);
#define BACKENDS(b, ...) backends(state, b, __VA_ARGS__, LOOM_OP_COUNT)

/* Deterministic values in [-1, 1), with exact zeros and both signs. */
void fill(float *x, int64_t n, uint32_t seed);

/* Host array -> backend memory, and back. */
float *upload(loom_backend *b, const float *host, int64_t n);
void download(loom_backend *b, float *host, const float *d, int64_t n);

/* |got - want| <= tol (|want| + scale): float rounding relative to the
 * size of the terms that were summed. */
void close_all(const char *what, const float *got, const double *want, const double *scale, int64_t n, double tol);

/* backend_ops_gemm.c */
void test_gemm(void **state);
void test_gemm_checked(void **state);
void test_gemm_checked_fallback(void **state);
void test_autocast(void **state);
/* backend_ops_elementwise.c */
void test_rows(void **state);
void test_activations(void **state);
void test_dropout(void **state);
void test_add(void **state);
/* backend_ops_losses.c */
void test_criteria(void **state);
void test_topk_hits(void **state);
/* backend_ops_conv.c */
void test_conv(void **state);
void test_conv_shapes_again(void **state);
void test_pool(void **state);
/* backend_ops_blocks.c */
void test_batchnorm(void **state);
void test_block(void **state);
/* backend_ops_updates.c */
void test_optimizer_updates(void **state);
void test_update_ranges(void **state);
void test_gradient_ops(void **state);
void test_gate(void **state);
/* backend_ops_memory.c */
void test_upload(void **state);
void test_support_listing(void **state);
void test_missing_op_is_reported(void **state);
void test_tensor_on_backend(void **state);
void test_fake_device_catches_misuse(void **state);

#endif
