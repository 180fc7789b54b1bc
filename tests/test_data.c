/* IDX reading (real files and broken ones), samplers and the loader. */
#include <math.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <hdf5.h>
#include <zlib.h>

#include "helpers.h"

#define FMNIST "/usr/share/datasets/fashion-mnist"


static void path_in_tmp(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", test_dir, name); }

/* Writes bytes to a gzip'd (gz = 1) or plain file. */
static void write_file(const char *path, const void *bytes, size_t n, int gz) {
  if (gz) {
    gzFile f = gzopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(gzwrite(f, bytes, (unsigned)n), (int)n);
    gzclose(f);
  } else {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
  }
}

/* An IDX header for `count` images of rows x cols (ndim 3) or labels (1). */
static size_t idx_header(uint8_t *h, int ndim, uint32_t count, uint32_t rows, uint32_t cols) {
  uint32_t dims[3] = {count, rows, cols};
  h[0] = h[1] = 0;
  h[2] = 0x08;
  h[3] = (uint8_t)ndim;
  for (int i = 0; i < ndim; i++) {
    h[4 + 4 * i] = (uint8_t)(dims[i] >> 24);
    h[5 + 4 * i] = (uint8_t)(dims[i] >> 16);
    h[6 + 4 * i] = (uint8_t)(dims[i] >> 8);
    h[7 + 4 * i] = (uint8_t)dims[i];
  }
  return 4 + 4 * (size_t)ndim;
}

static bool have_fmnist(void) {
  FILE *f = fopen(FMNIST "/train-labels-idx1-ubyte.gz", "rb");
  if (f)
    fclose(f);
  return f != NULL;
}

static void test_real_fashion_mnist(void **state) {
  (void)state;
  if (!have_fmnist())
    skip(); /* dataset-fashion-mnist not installed */
  loom_dataset *train = loom_fashion_mnist_open(FMNIST, true);
  assert_non_null(train);
  assert_int_equal(loom_dataset_length(train), 60000);
  assert_int_equal(loom_dataset_sample_ndim(train), 2);
  assert_int_equal(loom_dataset_sample_shape(train)[0], 28);
  assert_int_equal(loom_dataset_sample_shape(train)[1], 28);
  assert_int_equal(loom_dataset_target_ndim(train), 0);
  /* Facts read independently with Python's gzip module: the first ten
   * training labels, and the first image's pixel sum and maximum. */
  const float labels[10] = {9, 0, 0, 3, 0, 2, 7, 2, 5, 5};
  int64_t idx[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  float *x = malloc(10 * 784 * sizeof *x), y[10];
  assert_int_equal(loom_dataset_fetch(train, idx, 10, x, y), 0);
  assert_memory_equal(y, labels, sizeof labels);
  double sum = 0, max = 0;
  for (int i = 0; i < 784; i++) {
    sum += x[i];
    max = fmax(max, x[i]);
  }
  assert_true(fabs(sum * 255.0 - 76247.0) < 0.05);
  assert_true(max == 1.0);
  free(x);
  loom_dataset *test = loom_fashion_mnist_open(FMNIST, false);
  assert_non_null(test);
  assert_int_equal(loom_dataset_length(test), 10000);
  loom_dataset_release(test);
  loom_dataset_release(train);
}

static void test_missing_dataset_names_package(void **state) {
  (void)state;
  assert_null(loom_fashion_mnist_open("/nonexistent/dir", true));
  assert_int_equal(loom_last_error_code(), LOOM_ENOENT);
  assert_non_null(strstr(loom_last_error(), "apt-get install dataset-fashion-mnist"));
  assert_non_null(strstr(loom_last_error(), "/nonexistent/dir/train-images-idx3-ubyte.gz"));
}

/* Two 2x3 images and their labels, plain and gzip'd, read back. */
static void test_small_idx_roundtrip(void **state) {
  (void)state;
  for (int gz = 0; gz < 2; gz++) {
    uint8_t img[16 + 12], lab[8 + 2];
    size_t h = idx_header(img, 3, 2, 2, 3);
    for (int i = 0; i < 12; i++)
      img[h + i] = (uint8_t)(i * 20);
    size_t hl = idx_header(lab, 1, 2, 0, 0);
    lab[hl] = 4, lab[hl + 1] = 7;
    char ip[512], lp[512];
    path_in_tmp(ip, sizeof ip, gz ? "i.gz" : "i.idx");
    path_in_tmp(lp, sizeof lp, gz ? "l.gz" : "l.idx");
    write_file(ip, img, sizeof img, gz);
    write_file(lp, lab, sizeof lab, gz);
    loom_dataset *ds = loom_idx_dataset_open(ip, lp);
    assert_non_null(ds);
    assert_int_equal(loom_dataset_length(ds), 2);
    int64_t idx[2] = {1, 0};
    float x[12], y[2];
    assert_int_equal(loom_dataset_fetch(ds, idx, 2, x, y), 0);
    assert_true(y[0] == 7 && y[1] == 4);
    assert_true(fabsf(x[0] - 120.0f / 255.0f) < 1e-7f); /* sample 1 starts at byte 6 */
    assert_true(fabsf(x[6] - 0.0f) < 1e-7f);
    int64_t bad = 2;
    assert_int_equal(loom_dataset_fetch(ds, &bad, 1, x, y), LOOM_EINVAL);
    loom_dataset_release(ds);
  }
}

static void write_labels(const char *path, uint32_t n) {
  uint8_t *lab = calloc(8 + n, 1);
  idx_header(lab, 1, n, 0, 0);
  write_file(path, lab, 8 + n, 1);
  free(lab);
}

/* Writes <stem>-images.gz from `images` and <stem>-labels.gz with n labels;
 * their paths go to ip and lp (512 bytes each). */
static void write_pair(const char *stem, const void *images, size_t size, uint32_t n, char *ip, char *lp) {
  char name[64];
  snprintf(name, sizeof name, "%s-images.gz", stem);
  path_in_tmp(ip, 512, name);
  snprintf(name, sizeof name, "%s-labels.gz", stem);
  path_in_tmp(lp, 512, name);
  write_file(ip, images, size, 1);
  write_labels(lp, n);
}

static void test_truncated_file(void **state) {
  (void)state;
  /* The header promises 10 images of 28x28; 100 bytes follow. */
  uint8_t buf[16 + 100] = {0};
  idx_header(buf, 3, 10, 28, 28);
  char ip[512], lp[512];
  write_pair("trunc", buf, sizeof buf, 10, ip, lp);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "truncated"));
  assert_non_null(strstr(loom_last_error(), "trunc-images.gz"));
  assert_non_null(strstr(loom_last_error(), "7840 bytes"));
}

static void test_corrupt_gzip(void **state) {
  (void)state;
  /* A valid gzip'd IDX file whose compressed body is then damaged. */
  enum { N = 64 };
  uint8_t buf[16 + N * 784];
  size_t h = idx_header(buf, 3, N, 28, 28);
  for (size_t i = h; i < sizeof buf; i++)
    buf[i] = (uint8_t)((i * 2654435761u) >> 13);
  char ip[512], lp[512];
  write_pair("corrupt", buf, sizeof buf, N, ip, lp);
  FILE *f = fopen(ip, "r+b");
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  for (long off = 40; off < size - 16; off += 97) {
    fseek(f, off, SEEK_SET);
    fputc(0xA5, f);
  }
  fclose(f);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "corrupt-images.gz"));
  assert_non_null(strstr(loom_last_error(), "corrupt gzip stream"));
}

/* Headers that claim too much (found by fuzzing): dimensions whose product
 * overflows int64 are refused before they are multiplied (UBSan caught the
 * old multiplication), and a 16-byte file that claims 8 GiB of images is
 * reported truncated without allocating what it claims: the child reads it
 * under a 1 GiB address-space limit (not under ASan, which reserves far
 * more address space than that for itself). */
static void test_header_claims(void **state) {
  (void)state;
  uint8_t buf[16] = {0};
  idx_header(buf, 3, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  char ip[512], lp[512];
  write_pair("huge", buf, sizeof buf, 1, ip, lp);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "implausible IDX dimensions"));

  idx_header(buf, 3, 1u << 23, 32, 32); /* 8 GiB */
  write_pair("claims", buf, sizeof buf, 1u << 23, ip, lp);
#if defined(__SANITIZE_ADDRESS__)
  print_message("skipped the address-space limit under AddressSanitizer\n");
#else
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct rlimit lim = {1u << 30, 1u << 30};
    setrlimit(RLIMIT_AS, &lim);
    loom_dataset *ds = loom_idx_dataset_open(ip, lp);
    _exit(!ds && loom_last_error_code() == LOOM_EFORMAT && strstr(loom_last_error(), "truncated") ? 0 : 1);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
#endif
}

static void test_wrong_magic(void **state) {
  (void)state;
  uint8_t buf[16 + 4] = {0};
  idx_header(buf, 3, 1, 2, 2);
  buf[3] = 0x02; /* claims two dimensions where images have three */
  char ip[512], lp[512];
  write_pair("magic", buf, sizeof buf, 1, ip, lp);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "magic number 0x00000802"));
  /* A label file passed as images is refused the same way. */
  assert_null(loom_idx_dataset_open(lp, lp));
  assert_non_null(strstr(loom_last_error(), "magic number 0x00000801"));
  /* Not IDX at all. */
  write_file(ip, "hello, world", 12, 0);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
}

static void test_length_mismatch(void **state) {
  (void)state;
  uint8_t buf[16 + 3 * 4] = {0};
  idx_header(buf, 3, 3, 2, 2);
  char ip[512], lp[512];
  write_pair("mm", buf, sizeof buf, 2, ip, lp);
  assert_null(loom_idx_dataset_open(ip, lp));
  assert_non_null(strstr(loom_last_error(), "3 images but"));
}

static bool is_permutation(const int64_t *a, int64_t n) {
  bool *seen = calloc((size_t)n, 1);
  bool ok = true;
  for (int64_t i = 0; i < n && ok; i++) {
    ok = a[i] >= 0 && a[i] < n && !seen[a[i]];
    if (ok)
      seen[a[i]] = true;
  }
  free(seen);
  return ok;
}

static loom_epoch_plan plan_of(uint64_t seed) { return (loom_epoch_plan){seed, 0, 1, true}; }

static void test_samplers(void **state) {
  (void)state;
  enum { N = 1000 };
  static int64_t a[N], b[N], c[N];
  loom_sampler *s = loom_random_sampler_create();
  loom_epoch_plan p123 = plan_of(123), p124 = plan_of(124);
  assert_int_equal(loom_sampler_order(s, N, &p123, a), 0);
  assert_int_equal(loom_sampler_order(s, N, &p123, b), 0);
  assert_int_equal(loom_sampler_order(s, N, &p124, c), 0);
  assert_true(is_permutation(a, N));
  assert_true(is_permutation(c, N));
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, c, sizeof a);
  int fixed = 0; /* a uniform permutation fixes about one point */
  for (int i = 0; i < N; i++)
    fixed += a[i] == i;
  assert_true(fixed < 10);
  loom_sampler_destroy(s);
  s = loom_sequential_sampler_create();
  assert_int_equal(loom_sampler_order(s, N, &p123, a), 0);
  for (int i = 0; i < N; i++)
    assert_int_equal(a[i], i);
  loom_sampler_destroy(s);
}

static void test_loader_partial_batches(void **state) {
  (void)state;
  for (int drop = 0; drop < 2; drop++) {
    /* 10 samples whose single feature is their index. */
    float x[10], y[10];
    for (int i = 0; i < 10; i++)
      x[i] = (float)i, y[i] = (float)(i % 3);
    int64_t one = 1;
    loom_dataset *ds = loom_memory_dataset_create(x, y, 10, 1, &one, 0, NULL);
    loom_loader_options o = {.batch_size = 4, .shuffle = true, .drop_last = drop};
    loom_loader *l = loom_loader_create(ds, &o);
    assert_int_equal(loom_loader_num_batches(l), drop ? 2 : 3);
    loom_epoch_plan plan = plan_of(99);
    assert_int_equal(loom_loader_start_epoch(l, &plan), 0);
    const int64_t *order = loom_loader_order(l);
    loom_tensor *bx, *by;
    int64_t seen = 0, sizes[3] = {0};
    int batches = 0;
    int rc;
    while ((rc = loom_loader_next(l, &bx, &by)) == 1) {
      sizes[batches++] = loom_tensor_dim(bx, 0);
      assert_int_equal(loom_tensor_ndim(bx), 2);
      for (int64_t i = 0; i < loom_tensor_dim(bx, 0); i++, seen++) {
        /* Samples come in the sampler's order, targets alongside. */
        assert_true(loom_tensor_data(bx)[i] == (float)order[seen]);
        assert_true(loom_tensor_data(by)[i] == (float)(order[seen] % 3));
      }
    }
    assert_int_equal(rc, 0);
    assert_int_equal(batches, drop ? 2 : 3);
    assert_int_equal(sizes[0], 4);
    assert_int_equal(sizes[1], 4);
    assert_int_equal(sizes[2], drop ? 0 : 2);
    assert_int_equal(seen, drop ? 8 : 10);
    assert_int_equal(loom_loader_next(l, &bx, &by), 0); /* stays at the end */
    loom_loader_destroy(l);
  }
}

/* A dataset path that is a directory (a user giving the folder the files
 * are in) says so and what to give, for each reader, rather than calling
 * the file damaged (IDX said "corrupt gzip stream"). */
static void test_dataset_path_is_a_directory(void **state) {
  (void)state;
  char want[1024];
  assert_null(loom_idx_dataset_open(test_dir, test_dir));
  snprintf(want, sizeof want, "%s is a directory; give the IDX file in it", test_dir);
  assert_string_equal(loom_last_error(), want);
  assert_null(loom_csv_dataset_open(test_dir, -1, false));
  snprintf(want, sizeof want, "%s is a directory; give the CSV file in it", test_dir);
  assert_string_equal(loom_last_error(), want);
  const char *files[] = {test_dir};
  loom_hdf5_options o = {.files = files, .num_files = 1, .inputs = "x", .targets = "y"};
  assert_null(loom_hdf5_dataset_open(&o));
  snprintf(want, sizeof want, "%s is a directory; give the HDF5 file in it", test_dir);
  assert_non_null(strstr(loom_last_error(), want));
}

/* HDF5 datasets whose shapes would break loom's arithmetic or whose
 * samples were never written (found by fuzzing): a sample of no values was
 * a division by zero; a dataset of 2^21 samples declared in chunks never
 * written was preloaded from fill values for minutes. Both are refused at
 * open; a compressed dataset, written whole, still opens. */
static void write_h5(const char *path, const hsize_t *xdims, int xn, const hsize_t *chunk, bool deflate, bool write_x) {
  hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  hid_t xs = H5Screate_simple(xn, xdims, NULL), ys = H5Screate_simple(1, xdims, NULL);
  hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
  if (chunk)
    H5Pset_chunk(dcpl, xn, chunk);
  if (deflate)
    H5Pset_deflate(dcpl, 6);
  hid_t x = H5Dcreate2(f, "x", H5T_NATIVE_UCHAR, xs, H5P_DEFAULT, dcpl, H5P_DEFAULT);
  hid_t y = H5Dcreate2(f, "y", H5T_NATIVE_UCHAR, ys, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  size_t n = 1;
  for (int i = 0; i < xn; i++)
    n *= xdims[i];
  unsigned char *zeros = calloc(n + xdims[0] + 1, 1);
  if (write_x && n)
    assert_true(H5Dwrite(x, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros) >= 0);
  assert_true(H5Dwrite(y, H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, zeros) >= 0);
  free(zeros);
  H5Dclose(x), H5Dclose(y), H5Pclose(dcpl), H5Sclose(xs), H5Sclose(ys), H5Fclose(f);
}

static void test_hdf5_shapes_and_unwritten_samples(void **state) {
  (void)state;
  char path[512];
  snprintf(path, sizeof path, "%s/shapes.h5", test_dir);
  const char *files[] = {path};
  loom_hdf5_options o = {.files = files, .num_files = 1, .inputs = "x", .targets = "y", .preload = true};
  const hsize_t empty[] = {4, 3, 0}, unwritten[] = {1u << 21, 5}, chunk[] = {64, 5}, small[] = {300, 7},
                small_chunk[] = {64, 7};
  write_h5(path, empty, 3, NULL, false, true);
  assert_null(loom_hdf5_dataset_open(&o));
  assert_non_null(strstr(loom_last_error(), "dataset \"x\" has size 0 in dimension 2"));
  write_h5(path, unwritten, 2, chunk, false, false);
  assert_null(loom_hdf5_dataset_open(&o));
  assert_int_equal(loom_last_error_code(), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "dataset \"x\" was never completely written"));
  write_h5(path, small, 2, small_chunk, true, true); /* 5 chunks, the last partial, compressed */
  loom_dataset *ds = loom_hdf5_dataset_open(&o);
  if (!ds)
    fail_msg("%s", loom_last_error());
  assert_int_equal(loom_dataset_length(ds), 300);
  loom_dataset_release(ds);
}

/* The runner reseeds each loader per (seed, global epoch): a new order each
 * epoch, the same order for the same seed, another for another seed. */
typedef struct orders {
  int64_t epoch_order[3][64];
  int epochs;
} orders;

static int grab_order(loom_callback *cb, loom_runner *r) {
  orders *o = loom_callback_data(cb);
  memcpy(o->epoch_order[o->epochs++], loom_loader_order(loom_runner_loader(r)), 64 * sizeof(int64_t));
  return 0;
}

static int no_work(loom_runner *r, void *u) {
  (void)r, (void)u;
  return 0;
}

static void run_orders(uint64_t seed, orders *o) {
  memset(o, 0, sizeof *o);
  static const loom_callback_ops ops = {.type = "grab_order", .on_loader_start = grab_order};
  loom_experiment *exp = loom_experiment_create("orders");
  loom_experiment_set_seed(exp, seed);
  loom_stage *st = loom_experiment_add_stage(exp, "train", 3);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(64, 1, 2, 16, true)), 0);
  assert_int_equal(loom_stage_add_callback(st, loom_callback_create(&ops, o, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_runner_set_handle_batch(r, no_work, NULL);
  assert_int_equal(loom_run_experiment(r, exp), 0);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

static void test_epoch_seeding(void **state) {
  (void)state;
  static orders a, b, c;
  run_orders(7, &a);
  run_orders(7, &b);
  run_orders(8, &c);
  assert_int_equal(a.epochs, 3);
  assert_memory_equal(&a, &b, sizeof a);
  assert_memory_not_equal(a.epoch_order[0], a.epoch_order[1], sizeof a.epoch_order[0]);
  assert_memory_not_equal(a.epoch_order[1], a.epoch_order[2], sizeof a.epoch_order[0]);
  assert_memory_not_equal(a.epoch_order[0], c.epoch_order[0], sizeof a.epoch_order[0]);
  for (int e = 0; e < 3; e++)
    assert_true(is_permutation(a.epoch_order[e], 64));
}

static void test_normalize(void **state) {
  (void)state;
  float x[4] = {0.0f, 0.5f, 1.0f, 0.25f}, y[2] = {0, 1};
  int64_t two = 2;
  loom_dataset *ds = loom_normalize_dataset_create(loom_memory_dataset_create(x, y, 2, 1, &two, 0, NULL), 0.5f, 0.25f);
  assert_non_null(ds);
  int64_t idx[2] = {0, 1};
  float out[4], t[2];
  assert_int_equal(loom_dataset_fetch(ds, idx, 2, out, t), 0);
  const float want[4] = {-2.0f, 0.0f, 2.0f, -1.0f};
  for (int i = 0; i < 4; i++)
    assert_true(fabsf(out[i] - want[i]) < 1e-6f);
  loom_dataset_release(ds);
  assert_null(loom_normalize_dataset_create(NULL, 0.0f, 1.0f));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_real_fashion_mnist),
      cmocka_unit_test(test_missing_dataset_names_package),
      cmocka_unit_test(test_small_idx_roundtrip),
      cmocka_unit_test(test_truncated_file),
      cmocka_unit_test(test_corrupt_gzip),
      cmocka_unit_test(test_wrong_magic),
      cmocka_unit_test(test_header_claims),
      cmocka_unit_test(test_length_mismatch),
      cmocka_unit_test(test_samplers),
      cmocka_unit_test(test_loader_partial_batches),
      cmocka_unit_test(test_epoch_seeding),
      cmocka_unit_test(test_normalize),
      cmocka_unit_test(test_dataset_path_is_a_directory),
      cmocka_unit_test(test_hdf5_shapes_and_unwritten_samples),
  };
  return cmocka_run_group_tests(tests, test_dir_setup, test_dir_teardown);
}
