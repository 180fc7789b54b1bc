/* The CUDA backend without a GPU: creating it says what is missing (or,
 * with a usable GPU, works), and its caching allocator's bookkeeping runs
 * on the host with malloc behind it, in every build. */
#include "helpers.h"

#include <loom/backend_cuda.h>

#include "backends/cuda/caching_alloc.h"

/* --- creation --- */

static void test_create_says_what_is_missing(void **state) {
  (void)state;
  loom_backend *b = (loom_backend *)&b;
  int rc = loom_backend_cuda_create(0, NULL, &b);
  int count = -1;
  assert_int_equal(loom_cuda_device_count(&count), 0);
  if (!loom_cuda_available()) {
    assert_int_equal(rc, LOOM_ENOTSUP);
    assert_null(b);
    assert_non_null(strstr(loom_last_error(), "built without CUDA"));
    assert_int_equal(count, 0);
    return;
  }
  if (rc == 0) { /* a usable GPU */
    print_message("CUDA device 0 works (%d device(s))\n", count);
    assert_string_equal(loom_backend_name(b), "cuda");
    assert_int_equal(loom_backend_device(b), LOOM_DEVICE_CUDA);
    float *d = loom_backend_alloc(b, 100 * sizeof *d), host[100], back[100];
    assert_non_null(d);
    for (int i = 0; i < 100; i++)
      host[i] = (float)i - 49.5f;
    assert_int_equal(loom_backend_from_host(b, d, host, sizeof host), 0);
    assert_int_equal(loom_backend_to_host(b, back, d, sizeof back), 0);
    assert_memory_equal(host, back, sizeof host);
    loom_backend_free(b, d);
    loom_backend_destroy(b);
    assert_true(count >= 1);
    char want[64];
    snprintf(want, sizeof want, "this machine has %d CUDA device", count);
    assert_int_equal(loom_backend_cuda_create(count, NULL, &b), LOOM_EINVAL);
    assert_null(b);
    assert_non_null(strstr(loom_last_error(), want));
  } else {
    print_message("no CUDA backend here: %s\n", loom_last_error());
    assert_int_equal(rc, LOOM_ENOTSUP);
    assert_null(b);
    const char *m = loom_last_error();
    assert_true(strstr(m, "no usable CUDA driver") || strstr(m, "no CUDA device") || strstr(m, "compute capability"));
  }
  assert_int_equal(loom_backend_cuda_create(-1, NULL, &b), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "0 or more"));
  loom_cuda_memory_stats st;
  assert_int_equal(loom_cuda_memory_stats_get(0, &st), 0);
  assert_int_equal(loom_cuda_memory_stats_get(-1, &st), LOOM_EINVAL);
}

/* --- the caching allocator on malloc --- */

typedef struct fake {
  size_t limit;    /* raw bytes it may hold at once */
  size_t held;     /* raw bytes held */
  int allocs, frees, syncs;
} fake;

/* Each raw block starts with its size, 512 bytes before what is handed out. */
static void *fake_alloc(void *ctx, size_t bytes) {
  fake *f = ctx;
  if (f->held + bytes > f->limit) {
    loom_error_set(LOOM_ENOMEM, "fake device: out of memory");
    return NULL;
  }
  char *p = aligned_alloc(512, 512 + bytes);
  assert_non_null(p);
  memcpy(p, &bytes, sizeof bytes);
  f->held += bytes, f->allocs++;
  return p + 512;
}

static void fake_free(void *ctx, void *ptr) {
  fake *f = ctx;
  char *p = (char *)ptr - 512;
  size_t bytes;
  memcpy(&bytes, p, sizeof bytes);
  f->held -= bytes, f->frees++;
  free(p);
}

static void fake_sync(void *ctx) { ((fake *)ctx)->syncs++; }

static loom_caching_alloc *fake_allocator(fake *f, size_t limit) {
  *f = (fake){.limit = limit};
  const loom_caching_alloc_hooks hooks = {fake_alloc, fake_free, fake_sync, f};
  loom_caching_alloc *a = loom_caching_alloc_create(&hooks);
  assert_non_null(a);
  return a;
}

#define MiB ((size_t)1 << 20)
static const int S1 = 1, S2 = 2; /* two streams: only their addresses matter */

static loom_cuda_memory_stats stats_of(loom_caching_alloc *a) {
  loom_cuda_memory_stats s;
  loom_caching_alloc_stats(a, &s);
  return s;
}

static void test_alloc_reuse_and_rounding(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, 1 << 30);
  char *p = loom_caching_alloc_get(a, 1000, &S1);
  assert_non_null(p);
  loom_cuda_memory_stats s = stats_of(a);
  assert_int_equal(s.in_use, 1024); /* rounded up to 512 bytes */
  assert_int_equal(s.reserved, 2 * MiB); /* one small segment */
  assert_int_equal(s.device_allocs, 1);
  loom_caching_alloc_put(a, p);
  assert_int_equal(stats_of(a).in_use, 0);
  assert_ptr_equal(loom_caching_alloc_get(a, 700, &S1), p); /* the same block again, no new segment */
  s = stats_of(a);
  assert_int_equal(s.device_allocs, 1);
  assert_int_equal(s.allocs, 2);
  /* 0 and 1 byte take 512; 513 takes 1024; cut from the same segment, in order */
  char *z = loom_caching_alloc_get(a, 0, &S1), *one = loom_caching_alloc_get(a, 1, &S1),
       *odd = loom_caching_alloc_get(a, 513, &S1);
  assert_ptr_equal(z, p + 1024);
  assert_ptr_equal(one, p + 1024 + 512);
  assert_ptr_equal(odd, p + 1024 + 1024);
  assert_int_equal(stats_of(a).in_use, 1024 + 512 + 512 + 1024);
  assert_int_equal(stats_of(a).device_allocs, 1);
  loom_caching_alloc_put(a, NULL); /* nothing */
  loom_caching_alloc_put(a, p + 8); /* not a block: ignored */
  assert_int_equal(stats_of(a).in_use, 1024 + 512 + 512 + 1024);
  loom_caching_alloc_destroy(a); /* blocks in use too */
  assert_int_equal(f.held, 0);
  assert_int_equal(f.frees, 1);
}

/* Freed neighbours merge back: a block as large as both fits where the first was. */
static void test_alloc_split_and_merge(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, 1 << 30);
  char *x = loom_caching_alloc_get(a, 1000, &S1), *y = loom_caching_alloc_get(a, 1000, &S1);
  assert_ptr_equal(y, x + 1024);
  loom_caching_alloc_put(a, x);
  /* 1 MiB: x's 1024 bytes alone are too small, so the rest of the segment */
  char *big = loom_caching_alloc_get(a, MiB, &S1);
  assert_ptr_equal(big, x + 2048);
  loom_caching_alloc_put(a, big);
  loom_caching_alloc_put(a, y);
  /* now one free block of 2 MiB: the first byte again */
  assert_ptr_equal(loom_caching_alloc_get(a, MiB, &S1), x);
  assert_int_equal(stats_of(a).device_allocs, 1);
  /* large pool: 5 MiB from a 20 MiB segment, its rest serves another 5 MiB;
   * 12 MiB gets a segment of its own, rounded to 2 MiB */
  char *l1 = loom_caching_alloc_get(a, 5 * MiB, &S1), *l2 = loom_caching_alloc_get(a, 5 * MiB, &S1);
  assert_ptr_equal(l2, l1 + 5 * MiB);
  assert_int_equal(stats_of(a).reserved, 2 * MiB + 20 * MiB);
  char *l3 = loom_caching_alloc_get(a, 12 * MiB + 1, &S1);
  assert_non_null(l3);
  assert_int_equal(stats_of(a).reserved, 2 * MiB + 20 * MiB + 14 * MiB);
  assert_int_equal(stats_of(a).device_allocs, 3);
  /* a large block keeps a small rest (<= 1 MiB) unsplit */
  loom_caching_alloc_put(a, l3);
  char *l4 = loom_caching_alloc_get(a, 13 * MiB + 512, &S1);
  assert_ptr_equal(l4, l3);
  assert_int_equal(stats_of(a).in_use, MiB + 10 * MiB + 14 * MiB);
  loom_caching_alloc_destroy(a);
  assert_int_equal(f.held, 0);
}

/* A block freed on one stream serves only that stream, until it is forgotten. */
static void test_alloc_streams(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, 1 << 30);
  char *p = loom_caching_alloc_get(a, 4096, &S1);
  loom_caching_alloc_put(a, p);
  char *q = loom_caching_alloc_get(a, 4096, &S2);
  assert_ptr_not_equal(q, p);
  assert_int_equal(stats_of(a).device_allocs, 2);
  loom_caching_alloc_put(a, q);
  loom_caching_alloc_forget_stream(a, &S1);
  /* S2 now has both segments: four blocks of 1 MiB, three from the cache */
  for (int i = 0; i < 3; i++)
    assert_non_null(loom_caching_alloc_get(a, MiB, &S2));
  assert_int_equal(stats_of(a).device_allocs, 2);
  loom_caching_alloc_destroy(a);
  assert_int_equal(f.held, 0);
}

static void test_alloc_peak_and_release(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, 1 << 30);
  void *p[3] = {loom_caching_alloc_get(a, 3000, &S1), loom_caching_alloc_get(a, 2 * MiB, &S1),
                loom_caching_alloc_get(a, 100, &S2)};
  /* p[2] is cut from p[0]'s segment: its rest was never used, so any stream may */
  assert_ptr_equal(p[2], (char *)p[0] + 3072);
  loom_cuda_memory_stats s = stats_of(a);
  assert_int_equal(s.in_use, 3072 + 2 * MiB + 512);
  assert_int_equal(s.reserved, 2 * MiB + 20 * MiB);
  loom_caching_alloc_put(a, p[0]);
  loom_caching_alloc_put(a, p[1]);
  s = stats_of(a);
  assert_int_equal(s.in_use, 512);
  assert_int_equal(s.peak_in_use, 3072 + 2 * MiB + 512);
  /* release: the segments with nothing in use go back, p[2]'s stays */
  loom_caching_alloc_release(a);
  s = stats_of(a);
  assert_int_equal(f.syncs, 1);
  assert_int_equal(s.device_frees, 1);
  assert_int_equal(s.reserved, 2 * MiB);
  assert_int_equal(f.held, 2 * MiB);
  assert_int_equal(s.peak_reserved, 22 * MiB);
  loom_caching_alloc_put(a, p[2]);
  loom_caching_alloc_release(a);
  assert_int_equal(stats_of(a).reserved, 0);
  assert_int_equal(f.held, 0);
  assert_int_equal(f.frees, 2);
  /* after a release the cache fills again from the device */
  assert_non_null(loom_caching_alloc_get(a, 10, &S1));
  assert_int_equal(stats_of(a).device_allocs, 3);
  loom_caching_alloc_destroy(a);
  assert_int_equal(f.held, 0);
}

/* Out of device memory: the cache goes back and the request is retried;
 * when even that fails, the error says how much was asked and held. */
static void test_alloc_out_of_memory(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, 21 * MiB);
  void *small = loom_caching_alloc_get(a, 100, &S1);
  loom_caching_alloc_put(a, small); /* 2 MiB cached */
  void *large = loom_caching_alloc_get(a, 5 * MiB, &S1); /* 20 MiB more: only after the release */
  assert_non_null(large);
  assert_int_equal(f.syncs, 1);
  assert_int_equal(stats_of(a).device_frees, 1);
  assert_int_equal(stats_of(a).reserved, 20 * MiB);
  assert_null(loom_caching_alloc_get(a, 30 * MiB, &S1));
  assert_int_equal(loom_last_error_code(), LOOM_ENOMEM);
  assert_non_null(strstr(loom_last_error(), "31457280 bytes asked for with 5242880 in use and 20971520 reserved"));
  assert_non_null(strstr(loom_last_error(), "fake device: out of memory"));
  loom_caching_alloc_put(a, large);
  loom_caching_alloc_destroy(a);
  assert_int_equal(f.held, 0);
}

/* Many blocks in any order: none overlaps another, and all come back. */
static void test_alloc_many(void **state) {
  (void)state;
  fake f;
  loom_caching_alloc *a = fake_allocator(&f, (size_t)1 << 32);
  enum { N = 3000 };
  static char *p[N];
  static size_t size[N];
  uint32_t seed = 7;
  size_t total = 0, large = 0;
  for (int i = 0; i < N; i++) {
    seed = seed * 1664525u + 1013904223u;
    size[i] = (seed >> 8) % (i % 50 == 0 ? 3 * MiB : 20000) + 1;
    p[i] = loom_caching_alloc_get(a, size[i], i % 3 ? &S1 : &S2);
    assert_non_null(p[i]);
    memset(p[i], i & 0xff, size[i]); /* ASan: inside the fake's block */
    total += (size[i] + 511) / 512 * 512;
    large += size[i] > MiB;
  }
  /* in use: the rounded sizes, and a large block's rest of up to 1 MiB kept with it */
  const size_t in_use = stats_of(a).in_use;
  assert_true(in_use >= total && in_use <= total + large * MiB);
  for (int i = 0; i < N; i++) /* each still holds its own bytes */
    for (size_t k = 0; k < size[i]; k += 97)
      assert_int_equal((unsigned char)p[i][k], i & 0xff);
  for (int i = 0; i < N; i += 2) /* every other one back, then again */
    loom_caching_alloc_put(a, p[i]);
  for (int i = 0; i < N; i += 2) {
    assert_non_null(p[i] = loom_caching_alloc_get(a, size[i], i % 3 ? &S1 : &S2));
    memset(p[i], i & 0xff, size[i]);
  }
  for (int i = 0; i < N; i++)
    for (size_t k = 0; k < size[i]; k += 97)
      assert_int_equal((unsigned char)p[i][k], i & 0xff);
  for (int i = 0; i < N; i++)
    loom_caching_alloc_put(a, p[i]);
  assert_int_equal(stats_of(a).in_use, 0);
  loom_caching_alloc_release(a);
  assert_int_equal(stats_of(a).reserved, 0);
  assert_int_equal(f.held, 0);
  loom_caching_alloc_destroy(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_create_says_what_is_missing),
      cmocka_unit_test(test_alloc_reuse_and_rounding),
      cmocka_unit_test(test_alloc_split_and_merge),
      cmocka_unit_test(test_alloc_streams),
      cmocka_unit_test(test_alloc_peak_and_release),
      cmocka_unit_test(test_alloc_out_of_memory),
      cmocka_unit_test(test_alloc_many),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
