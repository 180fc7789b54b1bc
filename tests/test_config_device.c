/* experiment.device in a config: the backend is found by name in the
 * registry, in the string form ("cuda:1") or the object form; bad names
 * and bad keys are errors at the key; loom_config_validate touches no
 * device; and a whole run on a registered backend (the fake device,
 * tests/fake_device.h) gives the CPU run's weights and metrics bit for bit,
 * and resumes on the CPU without --allow-change.
 * Usage: test_config_device CONFIGS_DIR (tests/configs) */
#include "helpers.h"

#include "fake_device.h"

static const char *configs;

/* The registered "fake" backend: each build makes one; the last one's
 * handle is kept for its counts. */
static fake_device *last_dev;
static int fakes_made;

static void *make_fake(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_backend_context *ctx = context;
  int64_t index, arena_mb;
  if (loom_params_int(p, "index", 0, 0, 0, &index) < 0 || loom_params_int(p, "arena_mb", 16, 1, 1024, &arena_mb) < 0)
    return NULL;
  if (ctx->validate_only)
    return loom_backend_cpu();
  fakes_made++;
  return fake_device_create((size_t)arena_mb << 20, &last_dev);
}

/* tiny.json with the given overrides (NULL-terminated) and its logdir. */
static loom_config *tiny(const char *logdir, const char *const *sets) {
  char path[1024], set[1200];
  snprintf(path, sizeof path, "%s/tiny.json", configs);
  loom_config *c = loom_config_load(path);
  assert_non_null(c);
  snprintf(set, sizeof set, "experiment.logdir=%s", logdir);
  assert_int_equal(loom_config_set(c, set), 0);
  for (; sets && *sets; sets++)
    if (loom_config_set(c, *sets) < 0)
      fail_msg("%s: %s", *sets, loom_last_error());
  return c;
}

/* Builds tiny.json with one override; the error code (0 when built). */
static int build_with(const char *set, bool validate_only) {
  char *dir = test_tmpdir();
  const char *sets[] = {set, NULL};
  loom_config *c = tiny(dir, sets);
  loom_experiment *exp = NULL;
  int rc = validate_only ? loom_config_validate(c) : loom_config_build(c, &exp);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
  return rc;
}

static void expect_error(const char *set, int code, const char *message) {
  int rc = build_with(set, false);
  if (rc != code || !strstr(loom_last_error(), message))
    fail_msg("%s: got %d \"%s\", expected %d with \"%s\"", set, rc, loom_last_error(), code, message);
}

static void test_names_and_errors(void **state) {
  (void)state;
  /* "cpu" in either form is the default: no backend, host memory. */
  char *dir = test_tmpdir();
  const char *sets[] = {"experiment.device=cpu:0", NULL};
  loom_config *c = tiny(dir, sets);
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), 0);
  assert_null(loom_experiment_backend(exp));
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);

  expect_error("experiment.device=tpu:0", LOOM_EINVAL, "experiment.device.type: unknown backend \"tpu\"");
  expect_error("experiment.device=fak", LOOM_EINVAL, "(did you mean \"fake\"?)");
  expect_error("experiment.device=cuda:x", LOOM_EINVAL, "NAME or NAME:INDEX), got \"cuda:x\"");
  expect_error("experiment.device=:1", LOOM_EINVAL, "got \":1\"");
  expect_error("experiment.device=cuda:99999999999", LOOM_EINVAL, "got \"cuda:99999999999\"");
  expect_error("experiment.device=cpu:1", LOOM_EINVAL, "experiment.device.index: 1 is out of range (expected an integer in [0, 0])");
  expect_error("experiment.device=7", LOOM_EINVAL, "experiment.device: expected a device such as");
  expect_error("experiment.device={\"type\": \"cuda\", \"tf23\": true}", LOOM_EINVAL,
               "experiment.device.tf23: unknown key (did you mean \"tf32\"?)");
  expect_error("experiment.device={\"type\": \"fake\", \"arena_mb\": 0}", LOOM_EINVAL,
               "experiment.device.arena_mb: 0 is out of range");

  /* A machine without a usable GPU says so at the key; one with a GPU
   * builds the experiment on it. */
  int gpus = 0;
  loom_cuda_device_count(&gpus);
  if (gpus == 0) {
    expect_error("experiment.device=cuda:0", LOOM_ENOTSUP, "experiment.device: ");
    expect_error("experiment.device={\"type\": \"cuda\", \"tf32\": true}", LOOM_ENOTSUP, "experiment.device: ");
  } else {
    assert_int_equal(build_with("experiment.device=cuda:0", false), 0);
    expect_error("experiment.device=cuda:4096", LOOM_EINVAL, "experiment.device: ");
  }
  /* Validation reads the keys and opens no device: a config for a GPU
   * machine validates anywhere, and the fake device is never made. */
  int made = fakes_made;
  assert_int_equal(build_with("experiment.device=cuda:3", true), 0);
  assert_int_equal(build_with("experiment.device={\"type\": \"cuda\", \"index\": 1, \"tf32\": true}", true), 0);
  assert_int_equal(build_with("experiment.device=fake", true), 0);
  assert_int_equal(fakes_made, made);
  assert_int_equal(build_with("experiment.device=cuda:x", true), LOOM_EINVAL);
  assert_int_equal(build_with("experiment.device={\"type\": \"cuda\", \"tf32\": 1}", true), LOOM_EINVAL);
  assert_int_equal(build_with("experiment.device={\"type\": \"cuda\", \"conv_heuristics\": true}", true), 0);
  assert_int_equal(build_with("experiment.device={\"type\": \"cuda\", \"conv_heuristics\": \"yes\"}", true),
                   LOOM_EINVAL);
}

/* "cuda" without an index is the GPU of the rank's place on its node. */
static void test_local_rank(void **state) {
  (void)state;
  const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID", "PMIX_LOCAL_RANK"};
  for (size_t i = 0; i < 4; i++)
    unsetenv(vars[i]);
  assert_int_equal(loom_comm_local_rank(), 0);
  for (size_t i = 0; i < 4; i++) {
    setenv(vars[i], "3", 1);
    assert_int_equal(loom_comm_local_rank(), 3);
    setenv(vars[i], "3x", 1); /* not a number: not a launcher's */
    assert_int_equal(loom_comm_local_rank(), 0);
    unsetenv(vars[i]);
  }
  setenv("SLURM_LOCALID", "2", 1);
  setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1); /* mpirun's, inside an allocation */
  assert_int_equal(loom_comm_local_rank(), 1);
  /* No index is written into the resolved config: each rank has its own. */
  char *dir = test_tmpdir();
  const char *sets[] = {"experiment.device={\"type\": \"cuda\"}", NULL};
  loom_config *c = tiny(dir, sets);
  assert_int_equal(loom_config_validate(c), 0);
  char path[1100];
  snprintf(path, sizeof path, "%s/resolved.json", dir);
  assert_int_equal(loom_config_write(c, path), 0);
  json_error_t err;
  json_t *resolved = json_load_file(path, 0, &err);
  assert_non_null(resolved);
  json_t *device = json_object_get(json_object_get(resolved, "experiment"), "device");
  assert_int_equal(json_object_size(device), 1);
  assert_string_equal(json_string_value(json_object_get(device, "type")), "cuda");
  json_decref(resolved);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
  unsetenv("SLURM_LOCALID"), unsetenv("OMPI_COMM_WORLD_LOCAL_RANK");
}

/* loom_device_open, a C program's --device: the same names and errors. */
static void test_device_open(void **state) {
  (void)state;
  loom_backend *b = (loom_backend *)1;
  assert_int_equal(loom_device_open("cpu", &b), 0);
  assert_null(b);
  int made = fakes_made;
  assert_int_equal(loom_device_open("fake:0", &b), 0);
  assert_non_null(b);
  assert_string_equal(loom_backend_name(b), "fake");
  assert_int_equal(fakes_made, made + 1);
  loom_backend_destroy(b);
  assert_int_equal(loom_device_open("tpu", &b), LOOM_EINVAL);
  assert_null(b);
  assert_non_null(strstr(loom_last_error(), "unknown backend \"tpu\" (known: "));
  assert_int_equal(loom_device_open("cuda:x", &b), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "got \"cuda:x\""));
  assert_int_equal(loom_device_open("quote\"d", &b), LOOM_EINVAL); /* escaped, not JSON */
  int gpus = 0;
  loom_cuda_device_count(&gpus);
  if (gpus == 0) {
    assert_int_equal(loom_device_open("cuda", &b), LOOM_ENOTSUP);
    assert_null(b);
  }
}

typedef struct outcome {
  float *params;
  size_t n;
  char *jsonl;
} outcome;

/* Builds and runs tiny.json in `dir` (resuming from last if asked). */
static void run(const char *dir, const char *device, bool resume, outcome *out) {
  char set[200];
  snprintf(set, sizeof set, "experiment.device=%s", device);
  const char *sets[] = {set, NULL};
  loom_config *c = tiny(dir, sets);
  loom_experiment *exp;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, "last"), 0);
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_model *m = loom_runner_model(r);
  out->n = loom_model_num_params(m);
  out->params = malloc(out->n * sizeof(float));
  assert_int_equal(loom_model_params_to_host(m, out->params), 0);
  out->jsonl = jsonl_without_time(dir);
  /* The experiment first (loom/runner.h allows it): the fake device goes
   * with it, and the runner keeps nothing of the device's memory. */
  loom_experiment_destroy(exp);
  loom_runner_destroy(r);
  loom_config_destroy(c);
}

static void test_run_on_a_registered_backend(void **state) {
  (void)state;
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want, got, resumed;
  run(cpu_dir, "cpu", false, &want);
  int made = fakes_made;
  run(dev_dir, "fake:0", false, &got);
  assert_int_equal(fakes_made, made + 1);
  assert_string_equal(want.jsonl, got.jsonl);
  assert_int_equal(want.n, got.n);
  assert_memory_equal(want.params, got.params, want.n * sizeof(float));
  /* The device run's checkpoint resumes on the CPU (the device may change
   * by default): a finished run, so the same weights. */
  run(dev_dir, "cpu", true, &resumed);
  assert_memory_equal(want.params, resumed.params, want.n * sizeof(float));
  outcome *all[] = {&want, &got, &resumed};
  for (int i = 0; i < 3; i++)
    free(all[i]->params), free(all[i]->jsonl);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: test_config_device CONFIGS_DIR\n");
    return 2;
  }
  configs = argv[1];
  if (loom_register(LOOM_KIND_BACKEND, "fake", make_fake, NULL) < 0) {
    fprintf(stderr, "%s\n", loom_last_error());
    return 1;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_names_and_errors),
      cmocka_unit_test(test_local_rank),
      cmocka_unit_test(test_device_open),
      cmocka_unit_test(test_run_on_a_registered_backend),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
