/* Shared by the tests: CMocka's includes, tiny datasets, temp dirs. */
#ifndef LOOM_TEST_HELPERS_H
#define LOOM_TEST_HELPERS_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <loom.h>

/* A loader over n samples of `features` floats (deterministic values) with
 * labels i % classes, its batches made by `workers` threads. */
static inline loom_loader *test_loader_workers(int64_t n, int64_t features, int classes, int64_t batch, bool shuffle,
                                               int workers) {
  float *x = malloc((size_t)(n * features) * sizeof *x);
  float *y = malloc((size_t)n * sizeof *y);
  for (int64_t i = 0; i < n; i++) {
    y[i] = (float)(i % classes);
    for (int64_t j = 0; j < features; j++)
      x[i * features + j] = (float)((i * 31 + j * 17) % 23) / 23.0f - 0.5f + 0.3f * (float)(i % classes == j % classes);
  }
  loom_dataset *ds = loom_memory_dataset_create(x, y, n, 1, &features, 0, NULL);
  free(x);
  free(y);
  loom_loader_options o = {.batch_size = batch, .shuffle = shuffle, .workers = workers};
  return loom_loader_create(ds, &o);
}

/* The same, made in the caller's thread. */
static inline loom_loader *test_loader(int64_t n, int64_t features, int classes, int64_t batch, bool shuffle) {
  return test_loader_workers(n, features, classes, batch, shuffle, 0);
}

/* Deterministic values in [-1, 1) from `seed` (a linear congruential
 * generator's top bits). */
static inline void test_fill(float *x, int64_t n, uint32_t seed) {
  for (int64_t i = 0; i < n; i++) {
    seed = seed * 1664525u + 1013904223u;
    x[i] = (float)(seed >> 8) / (float)(1u << 23) - 1.0f;
  }
}

/* A host tensor of those values. */
static inline loom_tensor *test_host_tensor(int ndim, const int64_t *shape, uint32_t seed) {
  loom_tensor *t = loom_tensor_create(ndim, shape);
  test_fill(loom_tensor_data(t), loom_tensor_numel(t), seed);
  return t;
}

/* A fresh directory under /tmp; the caller frees the string. */
static inline char *test_tmpdir(void) {
  char *dir = strdup("/tmp/loom-test-XXXXXX");
  assert_non_null(mkdtemp(dir));
  return dir;
}

/* The whole file as a NUL-terminated string (NULL if unreadable). */
static inline char *test_read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, f);
  s[got] = '\0';
  fclose(f);
  return s;
}

static inline void test_rm_rf(const char *dir) {
  char cmd[4200];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
}

/* A group fixture: a fresh temporary directory in test_dir for the group. */
static char *test_dir;

static inline int test_dir_setup(void **state) {
  (void)state;
  test_dir = test_tmpdir();
  return 0;
}

static inline int test_dir_teardown(void **state) {
  (void)state;
  test_rm_rf(test_dir);
  free(test_dir);
  return 0;
}

/* metrics.jsonl without its timings: the part two runs must agree on. */
static inline char *jsonl_without_time(const char *logdir) {
  char path[1024];
  snprintf(path, sizeof path, "%s/metrics.jsonl", logdir);
  char *text = test_read_file(path);
  assert_non_null(text);
  size_t cap = strlen(text) + 1, len = 0;
  char *out = calloc(cap, 1);
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    assert_non_null(row);
    assert_true(json_is_real(json_object_get(row, "time_s")));
    json_object_del(row, "time_s");
    json_object_del(row, "resumed"); /* says how time_s was measured */
    char *s = json_dumps(row, JSON_COMPACT | JSON_REAL_PRECISION(17));
    len += (size_t)snprintf(out + len, cap - len, "%s\n", s);
    free(s);
    json_decref(row);
  }
  free(text);
  return out;
}

/* FNV-1a over a model's parameter bytes: equal on every rank that holds the
 * same weights. */
static inline uint64_t test_params_hash(loom_model *m) {
  size_t n = loom_model_num_params(m);
  float *host = malloc(n * sizeof *host); /* wherever the model is */
  assert_int_equal(loom_model_params_to_host(m, host), 0);
  const unsigned char *p = (const unsigned char *)host;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n * sizeof(float); i++)
    h = (h ^ p[i]) * 1099511628211ull;
  free(host);
  return h;
}

/* An MPI test's world, read through a communicator that also initialises
 * MPI (loom finalises it at exit); false with the error printed. */
static inline bool test_mpi_world(const char *program, int *rank, int *size) {
  loom_comm *c = loom_comm_mpi_create(NULL);
  if (!c) {
    fprintf(stderr, "%s: %s\n", program, loom_last_error());
    return false;
  }
  *rank = loom_comm_rank(c);
  *size = loom_comm_size(c);
  loom_comm_destroy(c);
  return true;
}

#endif
