/* Checkpoint files: round trip, damage detection, weights-only export. */
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>
#include <zlib.h>

#include "helpers.h"


static void tmp_path(char *out, const char *name) { snprintf(out, 512, "%s/%s", test_dir, name); }

/* The whole file in *bytes (the caller frees it); returns its length. */
static size_t test_read_bytes(const char *path, char **bytes) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  *bytes = malloc((size_t)n + 1);
  assert_int_equal(fread(*bytes, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  return (size_t)n;
}

static void test_write_bytes(const char *path, const char *bytes, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(bytes, 1, n, f), n);
  fclose(f);
}

static loom_checkpoint *sample_checkpoint(size_t big) {
  loom_checkpoint *c = loom_checkpoint_create();
  loom_state *a = loom_checkpoint_group(c, "runner");
  loom_state *b = loom_checkpoint_group(c, "callbacks/early_stopping#2");
  assert_non_null(a);
  assert_non_null(b);
  assert_int_equal(loom_state_set_i64(a, "epoch", -7), 0);
  assert_int_equal(loom_state_set_f64(a, "best", 0.1 + 0.2), 0);
  assert_int_equal(loom_state_set_str(a, "stage", "fine tune"), 0);
  assert_int_equal(loom_state_set_str(a, "empty", ""), 0);
  float *f = malloc(big * sizeof *f);
  for (size_t i = 0; i < big; i++)
    f[i] = (float)i * 0.25f - 3.0f;
  assert_int_equal(loom_state_set_f32_array(b, "weights", f, big), 0);
  const double d[3] = {1e300, -0.0, 5e-324};
  const int64_t k[2] = {INT64_MIN, INT64_MAX};
  assert_int_equal(loom_state_set_f64_array(b, "doubles", d, 3), 0);
  assert_int_equal(loom_state_set_i64_array(b, "ints", k, 2), 0);
  assert_int_equal(loom_state_set_i64_array(b, "none", NULL, 0), 0);
  free(f);
  return c;
}

static void test_roundtrip(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "rt.h5");
  loom_checkpoint *c = sample_checkpoint(1000);
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  loom_checkpoint *r = loom_checkpoint_read(path);
  assert_non_null(r);
  assert_int_equal(loom_checkpoint_num_groups(r), 2);
  const loom_state *a = loom_checkpoint_find(r, "runner"), *b = loom_checkpoint_find(r, "callbacks/early_stopping#2");
  assert_non_null(a);
  assert_non_null(b);
  assert_null(loom_checkpoint_find(r, "callbacks"));
  int64_t i;
  double v;
  const char *s;
  assert_int_equal(loom_state_get_i64(a, "epoch", &i), 0);
  assert_int_equal(i, -7);
  assert_int_equal(loom_state_get_f64(a, "best", &v), 0);
  assert_true(v == 0.1 + 0.2);
  assert_int_equal(loom_state_get_str(a, "stage", &s), 0);
  assert_string_equal(s, "fine tune");
  assert_int_equal(loom_state_get_str(a, "empty", &s), 0);
  assert_string_equal(s, "");
  float f[1000];
  assert_int_equal(loom_state_get_f32_array(b, "weights", f, 1000), 0);
  assert_true(f[999] == 999 * 0.25f - 3.0f);
  double d[3];
  assert_int_equal(loom_state_get_f64_array(b, "doubles", d, 3), 0);
  assert_true(d[0] == 1e300 && signbit(d[1]) && d[2] == 5e-324);
  int64_t k[2];
  assert_int_equal(loom_state_get_i64_array(b, "ints", k, 2), 0);
  assert_true(k[0] == INT64_MIN && k[1] == INT64_MAX);
  assert_int_equal(loom_state_array_length(b, "none"), 0);
  assert_true(loom_state_has(b, "none"));
  /* Wrong type, wrong length and missing keys name the key. */
  assert_int_equal(loom_state_get_f64(a, "epoch", &v), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "\"epoch\" is an integer"));
  assert_int_equal(loom_state_get_f32_array(b, "weights", f, 999), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "has 1000 values, expected 999"));
  assert_int_equal(loom_state_get_i64(a, "nope", &i), LOOM_ENOENT);
  loom_checkpoint_destroy(r);
  /* No temporary file is left behind. */
  char cmd[600];
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A %s | grep tmp)\"", test_dir);
  assert_int_equal(system(cmd), 0);
}

/* Flips bytes in the middle of the file, where the float array lies. */
static void damage(const char *path, long offset_from_end) {
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, size - offset_from_end, SEEK_SET);
  unsigned char b[16];
  assert_int_equal(fread(b, 1, 16, f), 16);
  for (int i = 0; i < 16; i++)
    b[i] ^= 0x5a;
  fseek(f, size - offset_from_end, SEEK_SET);
  fwrite(b, 1, 16, f);
  fclose(f);
}

/* After an edit through HDF5: writes the file's length and the CRC-32 of its
 * bytes after the 512-byte user block into the block, as loom does (layout
 * in core/checkpoint.c), so the edit reaches loom's checks behind it. */
static void reseal(const char *path) {
  char *bytes;
  size_t n = test_read_bytes(path, &bytes);
  assert_true(n > 512);
  assert_memory_equal(bytes, "loom-ckpt-block", 16);
  uint32_t crc = (uint32_t)crc32(crc32(0, NULL, 0), (const unsigned char *)bytes + 512, (uInt)(n - 512));
  uint64_t len = n;
  for (int i = 0; i < 4; i++)
    bytes[20 + i] = (char)(crc >> (8 * i));
  for (int i = 0; i < 8; i++)
    bytes[24 + i] = (char)(len >> (8 * i));
  FILE *f = fopen(path, "r+b");
  assert_non_null(f);
  assert_int_equal(fwrite(bytes, 1, 32, f), 32);
  fclose(f);
  free(bytes);
}

/* Replaces attribute `name` of `object` in the file with `count` values of
 * `type` (a fixed or variable string type, or an integer), all from `value`. */
static void replace_attr(const char *path, const char *object, const char *name, hid_t type, hsize_t count,
                         const void *value) {
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  assert_true(f >= 0);
  hid_t o = H5Oopen(f, object, H5P_DEFAULT);
  assert_true(o >= 0);
  assert_true(H5Adelete(o, name) >= 0);
  hid_t space = H5Screate_simple(1, &count, NULL);
  hid_t a = H5Acreate2(o, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  assert_true(a >= 0);
  size_t size = H5Tget_size(type);
  char *buf = malloc(size * count);
  for (hsize_t i = 0; i < count; i++)
    memcpy(buf + i * size, value, size);
  assert_true(H5Awrite(a, type, buf) >= 0);
  free(buf);
  H5Aclose(a), H5Sclose(space), H5Oclose(o), H5Fclose(f);
  reseal(path);
}

/* A file decides the shape of its attributes: one that holds many values
 * where loom reads one (the format, the checksum, a state's number or
 * string) or a variable-length string is refused with LOOM_EFORMAT before
 * any read could overflow loom's single-value buffer (found by fuzzing:
 * a stack overflow before the checksum was even checked). */
/* A dataset that declares more values than the file stores (chunked,
 * never written: 256 MiB of floats declared in a file of kilobytes) is
 * refused as it is read, before anything is allocated for it (it was
 * allocated and filled, and only the checksum then refused the file). */
static void test_declared_size_is_not_trusted(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "declared.h5");
  loom_checkpoint *c = sample_checkpoint(10);
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  hid_t f = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
  hsize_t dims = (hsize_t)1 << 26, chunk = 1024;
  hid_t space = H5Screate_simple(1, &dims, NULL), plist = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(plist, 1, &chunk);
  hid_t d = H5Dcreate2(f, "/runner/huge", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, plist, H5P_DEFAULT);
  assert_true(d >= 0);
  H5Dclose(d), H5Pclose(plist), H5Sclose(space), H5Fclose(f);
  reseal(path);
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "cannot read the state \"runner\""));
}

/* A checkpoint with no state at all writes and reads back (its checksum
 * once passed NULL to memcpy, which UBSan flags). */
static void test_empty_checkpoint(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "empty.h5");
  loom_checkpoint *c = loom_checkpoint_create();
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  c = loom_checkpoint_read(path);
  assert_non_null(c);
  assert_null(loom_checkpoint_find(c, "runner"));
  loom_checkpoint_destroy(c);
}

static void test_attribute_shapes_are_checked(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "shapes.h5");
  const int64_t one = 1, epoch = -7;
  hid_t fixed = H5Tcopy(H5T_C_S1), vlen = H5Tcopy(H5T_C_S1);
  H5Tset_size(fixed, 16);
  H5Tset_size(vlen, H5T_VARIABLE);
  const char text[16] = "fine tune", *vtext = "loom-checkpoint";
  struct {
    const char *object, *name;
    hid_t type;
    hsize_t count;
    const void *value;
  } cases[] = {
      {"/", "loom_format", H5T_NATIVE_INT64, 64, &one},
      {"/", "loom_content_crc32", H5T_NATIVE_INT64, 64, &one},
      {"/runner", "epoch", H5T_NATIVE_INT64, 100, &epoch},
      {"/runner", "stage", fixed, 50, text},
      {"/", "loom_magic", vlen, 1, &vtext},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    loom_checkpoint *c = sample_checkpoint(10);
    assert_int_equal(loom_checkpoint_write(c, path), 0);
    loom_checkpoint_destroy(c);
    replace_attr(path, cases[i].object, cases[i].name, cases[i].type, cases[i].count, cases[i].value);
    assert_null(loom_checkpoint_read(path));
    assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
    assert_non_null(strstr(loom_last_error(), "shapes.h5"));
  }
  H5Tclose(fixed), H5Tclose(vlen);
}

static void test_damage_is_refused(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "damaged.h5");
  loom_checkpoint *c = sample_checkpoint(100000);
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  struct stat st;
  stat(path, &st);
  /* Inside the 400 KB array: HDF5 reads it fine, the CRC does not match. */
  damage(path, (long)st.st_size / 2);
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "fails its checksum"));
  assert_non_null(strstr(loom_last_error(), "file bytes")); /* the user block's, before HDF5 */
  assert_non_null(strstr(loom_last_error(), "damaged.h5"));
  /* The same damage with the file's checksum made to match (a tool that
   * rewrote the file): the content checksum still refuses it. */
  reseal(path);
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "fails its checksum (stored"));
  assert_null(strstr(loom_last_error(), "file bytes"));

  /* Truncated to half. */
  tmp_path(path, "truncated.h5");
  c = sample_checkpoint(100000);
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  assert_int_equal(truncate(path, st.st_size / 2), 0);
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "truncated.h5"));

  /* Not HDF5; missing. */
  tmp_path(path, "text.h5");
  FILE *f = fopen(path, "w");
  fputs("not a checkpoint\n", f);
  fclose(f);
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  tmp_path(path, "missing.h5");
  assert_null(loom_checkpoint_read(path));
  assert_int_equal(loom_last_error_code(), LOOM_ENOENT);
  /* A directory that does not exist cannot take a checkpoint. */
  tmp_path(path, "no/such/dir/x.h5");
  c = sample_checkpoint(10);
  assert_int_equal(loom_checkpoint_write(c, path), LOOM_EIO);
  loom_checkpoint_destroy(c);
}

/* The file's bytes are checked before HDF5 parses them (HDF5 1.10 crashes
 * and over-reads on damaged files): every single flipped byte, in the user
 * block, the superblock, HDF5's object headers or the data, is refused by
 * loom with a one-line message naming the file. Also: a truncated file says
 * so, a newer header version says so, and a checkpoint written before the
 * user block (a plain HDF5 file) still loads, checked by its content
 * checksum alone. */
static void test_file_checksum_before_hdf5(void **state) {
  (void)state;
  char path[512], flipped[512], legacy[512], cmd[1200];
  tmp_path(path, "sealed.h5");
  tmp_path(flipped, "flipped.h5");
  tmp_path(legacy, "legacy.h5");
  loom_checkpoint *c = sample_checkpoint(50);
  assert_int_equal(loom_checkpoint_write(c, path), 0);
  loom_checkpoint_destroy(c);
  char *bytes;
  size_t n = test_read_bytes(path, &bytes);
  assert_memory_equal(bytes, "loom-ckpt-block", 16);
  assert_memory_equal(bytes + 512, "\x89HDF\r\n\x1a\n", 8); /* HDF5's superblock after the block */
  for (size_t at = 0; at < n; at += at < 1024 ? 7 : 61) {
    if (at >= 32 && at < 512)
      continue; /* the block's unused zeros are not checked */
    bytes[at] ^= 0x01;
    test_write_bytes(flipped, bytes, n);
    bytes[at] ^= 0x01;
    loom_checkpoint *r = loom_checkpoint_read(flipped);
    if (r)
      fail_msg("a byte flipped at %zu was not noticed", at);
    assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
    assert_non_null(strstr(loom_last_error(), "flipped.h5"));
    assert_null(strchr(loom_last_error(), '\n'));
  }
  /* Truncated. */
  test_write_bytes(flipped, bytes, n - 100);
  assert_null(loom_checkpoint_read(flipped));
  assert_non_null(strstr(loom_last_error(), "truncated"));
  /* A newer header. */
  bytes[16] = 2;
  test_write_bytes(flipped, bytes, n);
  bytes[16] = 1;
  assert_null(loom_checkpoint_read(flipped));
  assert_non_null(strstr(loom_last_error(), "header version 2; this loom reads version 1: it was written by a newer loom"));
  free(bytes);
  /* Before the user block: the same HDF5 file without its first 512 bytes. */
  snprintf(cmd, sizeof cmd, "tail -c +513 '%s' > '%s'", path, legacy);
  assert_int_equal(system(cmd), 0);
  loom_checkpoint *r = loom_checkpoint_read(legacy);
  assert_non_null(r);
  int64_t epoch;
  assert_int_equal(loom_state_get_i64(loom_checkpoint_find(r, "runner"), "epoch", &epoch), 0);
  assert_int_equal(epoch, -7);
  loom_checkpoint_destroy(r);
}

static void test_weights_export(void **state) {
  (void)state;
  const int64_t sizes[] = {6, 5, 3}, other[] = {6, 4, 3};
  loom_model *a = loom_mlp_create(sizes, 3, 1), *b = loom_mlp_create(sizes, 3, 2), *c = loom_mlp_create(other, 3, 3);
  char path[512];
  tmp_path(path, "weights.h5");
  assert_int_equal(loom_model_save_weights(a, path), 0);
  assert_memory_not_equal(loom_model_params(a), loom_model_params(b), loom_model_num_params(a) * sizeof(float));
  assert_int_equal(loom_model_load_weights(b, path), 0);
  assert_memory_equal(loom_model_params(a), loom_model_params(b), loom_model_num_params(a) * sizeof(float));
  /* Another architecture is refused with what differs. */
  assert_int_equal(loom_model_load_weights(c, path), LOOM_EFORMAT);
  /* ... naming the first layer whose size differs: fc1 is 6x5+5 saved, 6x4+4 here. */
  assert_non_null(strstr(loom_last_error(), "weights.h5"));
  assert_non_null(strstr(loom_last_error(), "layer \"fc1\" has 35 parameters in the checkpoint and 28 in this "
                                            "model: the checkpoint is from a different model;"));
  /* A weights file is readable as a checkpoint with one group, "model". */
  loom_checkpoint *ck = loom_checkpoint_read(path);
  assert_non_null(ck);
  assert_int_equal(loom_checkpoint_num_groups(ck), 1);
  assert_string_equal(loom_checkpoint_group_name(ck, 0), "model");
  const char *layers;
  assert_int_equal(loom_state_get_str(loom_checkpoint_find(ck, "model"), "layers", &layers), 0);
  assert_string_equal(layers, "fc1\nrelu1\nfc2");
  loom_checkpoint_destroy(ck);
  loom_model_destroy(a);
  loom_model_destroy(b);
  loom_model_destroy(c);
}

/* A checkpoint of another format version says which it has, which this
 * loom reads and what to do (a newer loom's file is not "damaged"). */
static void test_other_format_version(void **state) {
  (void)state;
  char path[512];
  tmp_path(path, "format.h5");
  const struct {
    int64_t format;
    const char *says;
  } cases[] = {
      {2, "format.h5 has checkpoint format 2; this loom reads format 1: it was written by a newer loom; use that loom "
          "(or newer) to read it"},
      {0, "format.h5 has checkpoint format 0; this loom reads format 1: it was written by an older loom; use that "
          "loom to read it, or start a new logdir"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    loom_checkpoint *c = sample_checkpoint(10);
    assert_int_equal(loom_checkpoint_write(c, path), 0);
    loom_checkpoint_destroy(c);
    replace_attr(path, "/", "loom_format", H5T_NATIVE_INT64, 1, &cases[i].format);
    assert_null(loom_checkpoint_read(path));
    assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
    assert_non_null(strstr(loom_last_error(), cases[i].says));
    assert_null(strchr(loom_last_error(), '\n'));
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_roundtrip),
      cmocka_unit_test(test_file_checksum_before_hdf5),
      cmocka_unit_test(test_damage_is_refused), cmocka_unit_test(test_attribute_shapes_are_checked),
      cmocka_unit_test(test_empty_checkpoint), cmocka_unit_test(test_declared_size_is_not_trusted),
      cmocka_unit_test(test_weights_export), cmocka_unit_test(test_other_format_version),
  };
  return cmocka_run_group_tests(tests, test_dir_setup, test_dir_teardown);
}
