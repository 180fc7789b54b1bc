/* Readers from memory and runs that write nothing (issue 18, "make fuzzing
 * cheap"): each memory reader must give what its file reader gives for the
 * same bytes (IDX plain, gzip'd and in two gzip members; CSV; HDF5 images;
 * checkpoints), name what it was given in its errors, and a no_write run
 * must train exactly as a run that writes, create nothing, and load its
 * best weights from memory at a stage boundary. */
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "helpers.h"

/* The whole file: its bytes and their count. */
static uint8_t *read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(*n ? *n : 1);
  assert_int_equal(fread(b, 1, *n, f), *n);
  fclose(f);
  return b;
}

static void write_bytes(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(b, 1, n, f), n);
  fclose(f);
}

/* `n` bytes as one gzip member, appended to out (at *at). */
static void gzip_into(const uint8_t *in, size_t n, uint8_t *out, size_t *at, size_t cap) {
  z_stream z = {0};
  assert_int_equal(deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  z.next_in = (Bytef *)in, z.avail_in = (uInt)n;
  z.next_out = out + *at, z.avail_out = (uInt)(cap - *at);
  assert_int_equal(deflate(&z, Z_FINISH), Z_STREAM_END);
  *at = cap - z.avail_out;
  deflateEnd(&z);
}

/* Every sample and target of two datasets agree, bit for bit. */
static void assert_same_dataset(loom_dataset *a, loom_dataset *b) {
  assert_non_null(a);
  assert_non_null(b);
  int64_t n = loom_dataset_length(a), size = 1, tsize = 1;
  assert_int_equal(loom_dataset_length(b), n);
  assert_int_equal(loom_dataset_sample_ndim(a), loom_dataset_sample_ndim(b));
  for (int d = 0; d < loom_dataset_sample_ndim(a); d++) {
    assert_int_equal(loom_dataset_sample_shape(a)[d], loom_dataset_sample_shape(b)[d]);
    size *= loom_dataset_sample_shape(a)[d];
  }
  for (int d = 0; d < loom_dataset_target_ndim(a); d++)
    tsize *= loom_dataset_target_shape(a)[d];
  int64_t *idx = malloc((size_t)n * sizeof *idx);
  for (int64_t i = 0; i < n; i++)
    idx[i] = i;
  float *xa = malloc((size_t)(n * size) * sizeof(float)), *xb = malloc((size_t)(n * size) * sizeof(float));
  float *ya = calloc((size_t)(n * tsize) + 1, sizeof(float)), *yb = calloc((size_t)(n * tsize) + 1, sizeof(float));
  assert_int_equal(loom_dataset_fetch(a, idx, n, xa, ya), 0);
  assert_int_equal(loom_dataset_fetch(b, idx, n, xb, yb), 0);
  assert_memory_equal(xa, xb, (size_t)(n * size) * sizeof(float));
  assert_memory_equal(ya, yb, (size_t)(n * tsize) * sizeof(float));
  free(idx), free(xa), free(xb), free(ya), free(yb);
}

static void test_idx_from_memory(void **state) {
  (void)state;
  const char *images = CONFIGS "/data/images.idx", *labels = CONFIGS "/data/labels.idx";
  size_t ni, nl;
  uint8_t *bi = read_bytes(images, &ni), *bl = read_bytes(labels, &nl);
  loom_dataset *file = loom_idx_dataset_open(images, labels);
  loom_dataset *plain = loom_idx_dataset_from_memory(bi, ni, bl, nl);
  assert_same_dataset(file, plain);
  loom_dataset_release(plain);

  /* gzip'd: the images in two members (header, then data), as gzread reads them. */
  size_t cap = 2 * ni + 4096, gi = 0, gl = 0;
  uint8_t *zi = malloc(cap), *zl = malloc(cap);
  gzip_into(bi, 16, zi, &gi, cap);
  gzip_into(bi + 16, ni - 16, zi, &gi, cap);
  gzip_into(bl, nl, zl, &gl, cap);
  loom_dataset *gz = loom_idx_dataset_from_memory(zi, gi, zl, gl);
  assert_same_dataset(file, gz);
  loom_dataset_release(gz);

  /* A truncated gzip stream and a short plain file: refused, naming which. */
  assert_null(loom_idx_dataset_from_memory(zi, gi - 9, zl, gl));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "IDX images (memory)"));
  assert_null(loom_idx_dataset_from_memory(bi, ni, bl, nl - 1));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "IDX labels (memory): truncated"));
  assert_null(loom_idx_dataset_from_memory(NULL, 0, bl, nl));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  loom_dataset_release(file);
  free(bi), free(bl), free(zi), free(zl);
}

static void test_csv_from_memory(void **state) {
  (void)state;
  const char text[] = "a,b,label\n1.5,2,0\n3,-4,1\n\n5,6e1,2";
  loom_dataset *ds = loom_csv_dataset_from_memory(text, sizeof text - 1, "mem.csv", -1, true);
  assert_non_null(ds);
  assert_int_equal(loom_dataset_length(ds), 3);
  assert_int_equal(loom_dataset_sample_shape(ds)[0], 2);
  int64_t idx[3] = {0, 1, 2};
  float x[6], y[3];
  assert_int_equal(loom_dataset_fetch(ds, idx, 3, x, y), 0);
  const float want_x[6] = {1.5f, 2, 3, -4, 5, 60}, want_y[3] = {0, 1, 2};
  assert_memory_equal(x, want_x, sizeof x);
  assert_memory_equal(y, want_y, sizeof y);
  loom_dataset_release(ds);

  /* The same bytes from a file give the same dataset. */
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/mem.csv", dir);
  write_bytes(path, text, sizeof text - 1);
  loom_dataset *file = loom_csv_dataset_open(path, -1, true);
  ds = loom_csv_dataset_from_memory(text, sizeof text - 1, "mem.csv", -1, true);
  assert_same_dataset(file, ds);
  loom_dataset_release(file), loom_dataset_release(ds);

  /* Errors name what the caller called it; no bytes, no rows. */
  assert_null(loom_csv_dataset_from_memory("1,2\n3,x\n", 8, "bad.csv", 0, false));
  assert_string_equal(loom_last_error(), "bad.csv:2:3: \"x\" is not a number");
  assert_null(loom_csv_dataset_from_memory(NULL, 0, NULL, 0, false));
  assert_string_equal(loom_last_error(), "CSV (memory): no rows of numbers");
  test_rm_rf(dir);
  free(dir);
}

static void test_hdf5_from_memory(void **state) {
  (void)state;
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/d.h5", dir);
  assert_int_equal(loom_idx_to_hdf5(CONFIGS "/data/images.idx", CONFIGS "/data/labels.idx", path), 0);
  size_t n;
  uint8_t *bytes = read_bytes(path, &n);
  const char *files[2] = {path, "second.h5"};
  const void *images[2] = {bytes, bytes};
  size_t sizes[2] = {n, n};
  loom_hdf5_options o = {.files = files, .num_files = 1, .inputs = "images", .targets = "labels", .scale = 1.0 / 255};
  loom_dataset *file = loom_hdf5_dataset_open(&o);
  o.images = images, o.image_sizes = sizes;
  unlink(path); /* from memory: the file is not needed */
  loom_dataset *mem = loom_hdf5_dataset_open(&o);
  assert_same_dataset(file, mem);
  loom_dataset_release(mem);
  o.num_files = 2; /* the same image twice: twice the samples */
  mem = loom_hdf5_dataset_open(&o);
  assert_non_null(mem);
  assert_int_equal(loom_dataset_length(mem), 2 * loom_dataset_length(file));
  loom_dataset_release(mem);
  /* A damaged image is refused by name, with no file involved. */
  sizes[1] = 100;
  mem = loom_hdf5_dataset_open(&o);
  assert_null(mem);
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "second.h5 is not a readable HDF5 file image"));
  loom_dataset_release(file);
  free(bytes);
  test_rm_rf(dir);
  free(dir);
}

static void test_checkpoint_memory_round_trip(void **state) {
  (void)state;
  loom_checkpoint *c = loom_checkpoint_create();
  loom_state *s = loom_checkpoint_group(c, "model");
  const float params[3] = {1.5f, -2, 3};
  assert_int_equal(loom_state_set_f32_array(s, "params", params, 3), 0);
  assert_int_equal(loom_state_set_str(s, "note", "in memory"), 0);
  void *bytes;
  size_t n;
  assert_int_equal(loom_checkpoint_write_memory(c, &bytes, &n), 0);
  /* The loom header: magic, then the file's length at 24. */
  assert_memory_equal(bytes, "loom-ckpt-block", 16);
  const uint8_t *b = bytes;
  assert_int_equal((size_t)b[24] | (size_t)b[25] << 8 | (size_t)b[26] << 16, n);

  /* Read back from memory and, written to a file, by loom_checkpoint_read. */
  char *dir = test_tmpdir(), path[512];
  snprintf(path, sizeof path, "%s/c.h5", dir);
  write_bytes(path, bytes, n);
  loom_checkpoint *from_mem = loom_checkpoint_read_memory(bytes, n, "mem"), *from_file = loom_checkpoint_read(path);
  loom_checkpoint *both[2] = {from_mem, from_file};
  for (int i = 0; i < 2; i++) {
    assert_non_null(both[i]);
    const loom_state *m = loom_checkpoint_find(both[i], "model");
    float got[3];
    const char *note;
    assert_int_equal(loom_state_get_f32_array(m, "params", got, 3), 0);
    assert_memory_equal(got, params, sizeof got);
    assert_int_equal(loom_state_get_str(m, "note", &note), 0);
    assert_string_equal(note, "in memory");
    loom_checkpoint_destroy(both[i]);
  }
  /* One flipped bit past the header: the checksum refuses it, by name. */
  ((uint8_t *)bytes)[n - 7] ^= 4;
  assert_null(loom_checkpoint_read_memory(bytes, n, "mem.h5"));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "mem.h5 fails its checksum"));
  free(bytes);
  loom_checkpoint_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* tiny.json, with a second stage that loads the first's best weights when
 * `stages` is 2 (the first's logger and checkpoint callback, made
 * experiment-wide, serve both: two would write the same files). */
static loom_experiment *tiny(const char *logdir, int stages, loom_config **config) {
  loom_config *c = loom_config_load(CONFIGS "/tiny.json");
  assert_non_null(c);
  char set[700];
  snprintf(set, sizeof set, "experiment.logdir=%s", logdir);
  const char *sets[] = {set,
                        "stages.tune={\"num_epochs\": 2, \"loaders\": [\"train\", \"valid\"], \"load_weights\": "
                        "\"best\", \"optimizer\": {\"type\": \"adam\", \"lr\": 0.01}}",
                        "stages.train.callbacks[1].scope=experiment", "stages.train.callbacks[2].scope=experiment"};
  for (size_t i = 0; i < (stages == 2 ? 4u : 1u); i++)
    if (loom_config_set(c, sets[i]) < 0)
      fail_msg("%s", loom_last_error());
  loom_experiment *exp = NULL;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  *config = c;
  return exp;
}

/* The parameters the run ended with. */
static float *final_params(loom_runner *r, size_t *n) {
  loom_state *s = loom_state_create();
  assert_int_equal(loom_model_save(loom_runner_model(r), s, false), 0);
  *n = loom_state_array_length(s, "params");
  float *p = malloc(*n * sizeof *p);
  assert_int_equal(loom_state_get_f32_array(s, "params", p, *n), 0);
  loom_state_destroy(s);
  return p;
}

static void test_no_write_run(void **state) {
  (void)state;
  char *dir = test_tmpdir(), written[512], unwritten[512];
  snprintf(written, sizeof written, "%s/written", dir);
  snprintf(unwritten, sizeof unwritten, "%s/never", dir);
  float *want = NULL, *got = NULL;
  size_t n_want = 0, n_got = 0;
  for (int no_write = 0; no_write < 2; no_write++) {
    loom_config *c;
    loom_experiment *exp = tiny(no_write ? unwritten : written, 2, &c);
    loom_runner *r = loom_runner_create();
    loom_run_options o = loom_run_options_defaults();
    o.no_write = no_write;
    loom_runner_set_options(r, &o);
    if (loom_run_experiment(r, exp) < 0)
      fail_msg("%s", loom_last_error());
    assert_int_equal(loom_runner_writes_files(r), !no_write);
    if (no_write) {
      got = final_params(r, &n_got);
      /* The best checkpoint of the run, from memory. */
      char path[256];
      loom_checkpoint *best = loom_runner_open_checkpoint(r, "best", path, sizeof path);
      assert_non_null(best);
      assert_string_equal(path, "the best checkpoint (in memory)");
      loom_checkpoint_destroy(best);
    } else {
      want = final_params(r, &n_want);
    }
    loom_runner_destroy(r);
    loom_experiment_destroy(exp);
    loom_config_destroy(c);
  }
  struct stat st;
  assert_int_equal(stat(written, &st), 0); /* the writing run wrote its logdir ... */
  assert_int_equal(stat(unwritten, &st), -1); /* ... the other nothing */
  assert_int_equal(n_got, n_want);
  assert_memory_equal(got, want, n_got * sizeof *got);
  free(want), free(got);
  test_rm_rf(dir);
  free(dir);
}

/* A resume from a checkpoint's bytes in memory continues exactly as one
 * from its file. */
static void test_resume_from_image(void **state) {
  (void)state;
  char *dir = test_tmpdir(), logdir[512], ck[600];
  snprintf(logdir, sizeof logdir, "%s/run", dir);
  loom_config *c;
  loom_experiment *exp = tiny(logdir, 1, &c);
  loom_runner *r = loom_runner_create();
  assert_int_equal(loom_run_experiment(r, exp), 0);
  size_t n_want = 0, n_got = 0;
  float *want = final_params(r, &n_want);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  /* The checkpoint before the last, resumed in a fresh no_write run. */
  snprintf(ck, sizeof ck, "%s/checkpoints/last.prev.h5", logdir);
  size_t n;
  uint8_t *bytes = read_bytes(ck, &n);
  exp = tiny("never-written", 1, &c);
  r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.no_write = true;
  loom_runner_set_options(r, &o);
  assert_int_equal(loom_runner_set_resume_image(r, bytes, n, "image.h5"), 0);
  free(bytes);
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  assert_true(loom_runner_is_resumed(r));
  assert_string_equal(loom_runner_resume_path(r), "image.h5");
  float *got = final_params(r, &n_got);
  assert_int_equal(n_got, n_want);
  assert_memory_equal(got, want, n_got * sizeof *got);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  assert_int_equal(access("never-written", F_OK), -1);
  free(want), free(got);
  test_rm_rf(dir);
  free(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_idx_from_memory),   cmocka_unit_test(test_csv_from_memory),
      cmocka_unit_test(test_hdf5_from_memory),  cmocka_unit_test(test_checkpoint_memory_round_trip),
      cmocka_unit_test(test_no_write_run),      cmocka_unit_test(test_resume_from_image),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
