/* test_backend_ops' shared part: a row's backend for a test, inputs in
 * and out of its memory, and the comparison against the references. */
#include "backend_ops.h"

size_t backends(void **state, loom_backend **out, ...) {
  const row *r = *state;
  if (!r->backend) {
    print_message("skipped: no CUDA device (%s)\n", r->missing);
    skip();
  }
  va_list ops;
  va_start(ops, out);
  for (int op; (op = va_arg(ops, int)) != LOOM_OP_COUNT;)
    if (!loom_backend_supports(r->backend, (loom_op)op)) {
      va_end(ops);
      print_message("skipped: backend \"%s\" has no %s op\n", r->name, loom_op_name((loom_op)op));
      skip();
    }
  va_end(ops);
  out[0] = r->backend;
  return 1;
}

void fill(float *x, int64_t n, uint32_t seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
    if (i % 7 == 3)
      x[i] = 0.0f;
  }
}

float *upload(loom_backend *b, const float *host, int64_t n) {
  float *d = loom_backend_alloc(b, (size_t)n * sizeof *d);
  assert_non_null(d);
  assert_int_equal(loom_backend_from_host(b, d, host, (size_t)n * sizeof *d), 0);
  return d;
}

void download(loom_backend *b, float *host, const float *d, int64_t n) {
  assert_int_equal(loom_backend_to_host(b, host, d, (size_t)n * sizeof *host), 0);
}

void close_all(const char *what, const float *got, const double *want, const double *scale, int64_t n, double tol) {
  for (int64_t i = 0; i < n; i++) {
    double bound = tol * (fabs(want[i]) + (scale ? scale[i] : 1.0));
    if (!(fabs((double)got[i] - want[i]) <= bound) && !(isnan(got[i]) && isnan(want[i])))
      fail_msg("%s: element %lld is %.9g, want %.9g (bound %.3g)", what, (long long)i, (double)got[i], want[i],
               bound);
  }
}
