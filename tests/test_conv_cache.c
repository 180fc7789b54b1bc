/* The CUDA module's cache of searched convolution algorithms
 * (backends/cuda/conv_cache.h), on the host: keys, replacement, the
 * oldest entry out when full, and several threads at once. */
#include "helpers.h"

#include <uv.h>

#include "backends/cuda/conv_cache.h"

/* A ResNet's 3x3 convolution of 64 channels on 56x56, batch 32. */
static loom_conv_key resnet_key(void) {
  return (loom_conv_key){.device = 0, .n = 32, .cin = 64, .h = 56, .w = 56, .cout = 64, .kh = 3, .kw = 3,
                         .sh = 1, .sw = 1, .ph = 1, .pw = 1, .dh = 1, .dw = 1, .algorithm = 0, .tensor_ops = 0};
}

static loom_conv_algos algos_of(int i) {
  return (loom_conv_algos){.fwd = i, .bwd_data = i + 1, .bwd_filter = i + 2, .fwd_bytes = (size_t)i * 1000,
                           .data_bytes = (size_t)i * 2000, .filter_bytes = (size_t)i * 3000};
}

static void assert_algos(const loom_conv_algos *got, int i) {
  const loom_conv_algos want = algos_of(i);
  assert_int_equal(got->fwd, want.fwd);
  assert_int_equal(got->bwd_data, want.bwd_data);
  assert_int_equal(got->bwd_filter, want.bwd_filter);
  assert_int_equal(got->fwd_bytes, want.fwd_bytes);
  assert_int_equal(got->data_bytes, want.data_bytes);
  assert_int_equal(got->filter_bytes, want.filter_bytes);
}

static void test_find_and_replace(void **state) {
  (void)state;
  assert_null(loom_conv_cache_create(0));
  loom_conv_cache *c = loom_conv_cache_create(8);
  assert_non_null(c);
  const loom_conv_key k = resnet_key();
  loom_conv_algos got = algos_of(99);
  assert_false(loom_conv_cache_find(c, &k, &got));
  assert_algos(&got, 99); /* untouched on a miss */
  const loom_conv_algos five = algos_of(5), seven = algos_of(7);
  loom_conv_cache_put(c, &k, &five);
  assert_true(loom_conv_cache_find(c, &k, &got));
  assert_algos(&got, 5);
  /* The same shape again (another plan, another layer): the same entry. */
  const loom_conv_key same = resnet_key();
  assert_true(loom_conv_cache_find(c, &same, &got));
  assert_algos(&got, 5);
  loom_conv_cache_put(c, &same, &seven);
  assert_int_equal(loom_conv_cache_count(c), 1);
  assert_true(loom_conv_cache_find(c, &k, &got));
  assert_algos(&got, 7);
  loom_conv_cache_destroy(c);
  loom_conv_cache_destroy(NULL);
}

/* Each field of the key is part of the shape: one changed is a miss. */
static void test_every_field_counts(void **state) {
  (void)state;
  const size_t fields = sizeof(loom_conv_key) / sizeof(int64_t);
  assert_int_equal(fields, 16);
  loom_conv_cache *c = loom_conv_cache_create(fields + 1);
  const loom_conv_key k = resnet_key();
  const loom_conv_algos a1 = algos_of(1);
  loom_conv_cache_put(c, &k, &a1);
  for (size_t f = 0; f < fields; f++) {
    loom_conv_key other = k;
    ((int64_t *)&other)[f] += 1;
    loom_conv_algos got;
    assert_false(loom_conv_cache_find(c, &other, &got));
    const loom_conv_algos a = algos_of(10 + (int)f);
    loom_conv_cache_put(c, &other, &a);
  }
  assert_int_equal(loom_conv_cache_count(c), fields + 1);
  loom_conv_algos got;
  assert_true(loom_conv_cache_find(c, &k, &got));
  assert_algos(&got, 1);
  for (size_t f = 0; f < fields; f++) {
    loom_conv_key other = k;
    ((int64_t *)&other)[f] += 1;
    assert_true(loom_conv_cache_find(c, &other, &got));
    assert_algos(&got, 10 + (int)f);
  }
  loom_conv_cache_destroy(c);
}

static loom_conv_key key_n(int64_t n) {
  loom_conv_key k = resnet_key();
  k.n = n;
  return k;
}

static void put_n(loom_conv_cache *c, int64_t n, int i) {
  const loom_conv_key k = key_n(n);
  const loom_conv_algos a = algos_of(i);
  loom_conv_cache_put(c, &k, &a);
}

/* Whether batch size n is cached, with algos_of(i) if `i` >= 0. */
static bool has_n(loom_conv_cache *c, int64_t n, int i) {
  const loom_conv_key k = key_n(n);
  loom_conv_algos got;
  if (!loom_conv_cache_find(c, &k, &got))
    return false;
  if (i >= 0)
    assert_algos(&got, i);
  return true;
}

/* Full, a new key replaces the one inserted first; replacing a key's
 * algorithms does not make it younger. */
static void test_oldest_out(void **state) {
  (void)state;
  loom_conv_cache *c = loom_conv_cache_create(3);
  for (int n = 1; n <= 3; n++)
    put_n(c, n, n);
  put_n(c, 1, 11); /* replaced in place */
  assert_int_equal(loom_conv_cache_count(c), 3);
  assert_true(has_n(c, 1, 11));
  put_n(c, 4, 4); /* 1 out */
  assert_int_equal(loom_conv_cache_count(c), 3);
  assert_false(has_n(c, 1, -1));
  for (int n = 2; n <= 4; n++)
    assert_true(has_n(c, n, n));
  put_n(c, 5, 5); /* 2 out */
  put_n(c, 6, 6); /* 3 out */
  put_n(c, 7, 7); /* 4 out: around the ring */
  for (int n = 1; n <= 4; n++)
    assert_false(has_n(c, n, -1));
  for (int n = 5; n <= 7; n++)
    assert_true(has_n(c, n, n));
  assert_int_equal(loom_conv_cache_count(c), 3);
  loom_conv_cache_destroy(c);
}

/* Several backends at once: each thread inserts its device's shapes and
 * finds them, and the same shape of device 0 from all of them. */
#define THREADS 4
#define SHAPES 200

typedef struct worker {
  loom_conv_cache *cache;
  int device;
  int misses; /* of its own shapes, just inserted: must stay 0 */
} worker;

static void work(void *arg) {
  worker *w = arg;
  for (int i = 0; i < SHAPES; i++) {
    loom_conv_key k = key_n(i + 1);
    k.device = w->device;
    const loom_conv_algos mine = algos_of(w->device * 1000 + i), shared = algos_of(7);
    loom_conv_cache_put(w->cache, &k, &mine);
    loom_conv_algos got;
    if (!loom_conv_cache_find(w->cache, &k, &got) || got.fwd != w->device * 1000 + i)
      w->misses++;
    k.device = 0; /* a shape every thread shares: whichever put it, it is whole */
    loom_conv_cache_put(w->cache, &k, &shared);
  }
}

static void test_threads(void **state) {
  (void)state;
  loom_conv_cache *c = loom_conv_cache_create(THREADS * SHAPES + SHAPES);
  uv_thread_t t[THREADS];
  worker w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i] = (worker){c, i + 1, 0};
    assert_int_equal(uv_thread_create(&t[i], work, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    assert_int_equal(uv_thread_join(&t[i]), 0);
    assert_int_equal(w[i].misses, 0);
  }
  assert_int_equal(loom_conv_cache_count(c), THREADS * SHAPES + SHAPES);
  loom_conv_algos got;
  for (int i = 0; i < SHAPES; i++) {
    loom_conv_key k = key_n(i + 1);
    assert_true(loom_conv_cache_find(c, &k, &got));
    assert_algos(&got, 7);
    for (int d = 1; d <= THREADS; d++) {
      k.device = d;
      assert_true(loom_conv_cache_find(c, &k, &got));
      assert_algos(&got, d * 1000 + i);
    }
  }
  loom_conv_cache_destroy(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_find_and_replace),
      cmocka_unit_test(test_every_field_counts),
      cmocka_unit_test(test_oldest_out),
      cmocka_unit_test(test_threads),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
