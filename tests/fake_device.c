/* The fake device of fake_device.h: an arena cut first-fit into 64-byte
 * aligned blocks, tagged addresses, and every op checked then run by the
 * CPU backend. Test code: a misuse aborts with a message (and a stack under
 * ASan), which is what a test of the device path wants. */
#include "fake_device.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom/backend_cpu.h>
#include <loom/error.h>

#if defined(__SANITIZE_ADDRESS__)
#define FAKE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FAKE_ASAN 1
#endif
#endif
#ifdef FAKE_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

#define TAG ((uintptr_t)1 << 62)
#define PLAN_MAGIC 0xFA4EB1A7u
#define MAX_BLOCK_LAYERS 32

typedef struct block {
  size_t off, len;
  bool used;
  const void *pending; /* the upload slot whose copy into it no upload_wait has ordered yet */
  bool scratch;        /* an op's own memory (op_scratch), not the core's */
} block;

/* Pinned host memory handed out (host_alloc), for the uploads' checks. */
typedef struct pinned {
  unsigned char *p;
  size_t bytes;
} pinned;

struct fake_device {
  unsigned char *arena;
  size_t size;
  block *blocks; /* sorted by offset, covering the arena */
  size_t count, cap;
  pthread_mutex_t lock;
  fake_device_counts counts;
  pinned *pinned;
  size_t num_pinned, cap_pinned;
  int64_t fail_upload; /* the upload_start (counted in counts.uploads, from 1) that fails; 0: none */
  loom_backend_ops ops;  /* its own table, for graph_launch */
  bool capturing;        /* between graph_begin and graph_end: ops are checked, not run */
  int64_t op_calls;      /* ops run (not captured), for fail_op */
  int64_t fail_op;       /* the op (counted in op_calls) that fails; 0: none */
  int64_t captured_calls, refuse_op; /* ops seen under capture; the one that refuses it (0: none) */
  int held_rc;           /* what a held op returns */
  void **capture_scratch; /* taken by ops under the capture under way: the graph's to keep */
  size_t num_capture_scratch, cap_capture_scratch;
};

/* A plan of this device: the CPU's plan and what it was made for (the
 * extents the ops check). */
typedef struct fake_plan {
  uint32_t magic;
  loom_layer_kind kind; /* LOOM_LAYER_OTHER: a block */
  int count;            /* layers: 1, or the block's */
  loom_layer_desc layers[MAX_BLOCK_LAYERS];
  loom_plan *cpu;
} fake_plan;

static _Noreturn void die(const char *op, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "fake device: %s: ", op);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
#ifdef FAKE_ASAN
  __sanitizer_print_stack_trace();
#endif
  abort();
}

static void *tagged(void *p) { return (void *)((uintptr_t)p | TAG); }

/* The block holding arena offset `off` (the last whose start is <= off). */
static block *find(fake_device *d, size_t off) {
  size_t lo = 0, hi = d->count;
  while (hi - lo > 1) {
    size_t mid = (lo + hi) / 2;
    if (d->blocks[mid].off <= off)
      lo = mid;
    else
      hi = mid;
  }
  return &d->blocks[lo];
}

/* The real address of device pointer p for an op that touches `bytes`
 * from it (0: only its start is checked; a NULL stays NULL). Memory an
 * upload has copied into is the batch's only after upload_wait: touched
 * before (by anything but that upload, `upload`), it is a race on a real
 * device. */
static void *real_for(fake_device *d, const char *op, const char *what, const void *p, size_t bytes,
                      const void *upload) {
  if (!p)
    return NULL;
  uintptr_t u = (uintptr_t)p;
  if (!(u & TAG))
    die(op, "%s is host memory (%p), not this device's: loom handed a host pointer to a device op", what, p);
  u &= ~TAG;
  uintptr_t base = (uintptr_t)d->arena;
  if (u < base || u > base + d->size)
    die(op, "%s (%p) is tagged but outside the device's memory", what, p);
  size_t off = u - base;
  pthread_mutex_lock(&d->lock);
  const block *b = off < d->size ? find(d, off) : NULL;
  bool ok = b && b->used && off + bytes <= b->off + b->len;
  if (!ok && bytes == 0 && off > 0) { /* one past a live block's end, where nothing is read */
    const block *e = find(d, off - 1);
    ok = e->used && e->off + e->len == off;
  }
  size_t boff = b ? b->off : 0, blen = b ? b->len : 0;
  bool bused = b && b->used;
  const void *pending = ok && b ? b->pending : NULL;
  pthread_mutex_unlock(&d->lock);
  if (!ok)
    die(op, "%s: %zu bytes at device offset %zu are not inside one live allocation (block at %zu of %zu bytes, %s)",
        what, bytes, off, boff, blen, bused ? "live" : "free");
  if (pending && pending != upload)
    die(op, "%s (device offset %zu) is being uploaded into by upload slot %p and no upload_wait has ordered the "
            "copy before this op: the op would race the copy stream",
        what, off, pending);
  return (void *)u;
}

static void *real(fake_device *d, const char *op, const char *what, const void *p, size_t bytes) {
  return real_for(d, op, what, p, bytes, NULL);
}

/* A host pointer: must not be this device's. */
static void host(const char *op, const char *what, const void *p) {
  if ((uintptr_t)p & TAG)
    die(op, "%s is device memory (%p) where host memory belongs", what, p);
}

static void count_op(fake_device *d, bool host_result) {
  pthread_mutex_lock(&d->lock);
  d->counts.ops++;
  d->counts.host_results += host_result;
  pthread_mutex_unlock(&d->lock);
}

/* Whether an op, its operands checked, must not run: while capturing (a
 * graph records, nothing runs, as under CUDA's stream capture; held_rc 0)
 * or when the test asked it to fail (held_rc the error). */
static bool held(fake_device *d, const char *op) {
  pthread_mutex_lock(&d->lock);
  bool capturing = d->capturing, fail = !capturing && d->fail_op && ++d->op_calls == d->fail_op;
  bool refuse = capturing && d->refuse_op && ++d->captured_calls == d->refuse_op;
  pthread_mutex_unlock(&d->lock);
  d->held_rc = fail     ? loom_error_set(LOOM_EIO, "fake device: %s failed, as the test asked", op)
               : refuse ? loom_error_set(LOOM_ENOTSUP, "fake device: %s cannot be captured, as the test asked", op)
                        : 0;
  return capturing || fail;
}

/* The CPU's op `op` on the checked operands, unless held. */
#define CPU_OP(ctx, cpu_backend, op, ...)                                                                              \
  (held(ctx, #op) ? ((fake_device *)(ctx))->held_rc : loom_backend_##op(cpu_backend, __VA_ARGS__))

#define F(n) ((size_t)(n) * sizeof(float))
/* Elements spanned by `rows` rows of `cols` with leading dimension ld. */
static size_t span(int64_t rows, int64_t cols, int64_t ld) { return rows > 0 && cols > 0 ? F((rows - 1) * ld + cols) : 0; }

/* --- memory --- */

static int reserve(fake_device *d) {
  if (d->count < d->cap)
    return 0;
  size_t cap = d->cap ? 2 * d->cap : 64;
  block *b = realloc(d->blocks, cap * sizeof *b);
  if (!b)
    die("alloc", "out of host memory for the block table");
  d->blocks = b, d->cap = cap;
  return 0;
}

/* A block of the arena, first fit; counted as live (the core's) or as an
 * op's own scratch. */
static void *take(fake_device *d, size_t bytes, bool scratch) {
  size_t len = ((bytes ? bytes : 1) + 63) & ~(size_t)63;
  pthread_mutex_lock(&d->lock);
  size_t i = 0;
  while (i < d->count && (d->blocks[i].used || d->blocks[i].len < len))
    i++;
  if (i == d->count)
    die("alloc", "%zu bytes do not fit in the %zu-byte arena (make it larger in the test)", bytes, d->size);
  if (d->blocks[i].len > len) { /* split: the rest stays free */
    reserve(d);
    memmove(&d->blocks[i + 2], &d->blocks[i + 1], (d->count - i - 1) * sizeof *d->blocks);
    d->blocks[i + 1] = (block){d->blocks[i].off + len, d->blocks[i].len - len, false, NULL, false};
    d->blocks[i].len = len;
    d->count++;
  }
  d->blocks[i].used = true;
  d->blocks[i].scratch = scratch;
  *(scratch ? &d->counts.scratch : &d->counts.live) += 1;
  void *p = tagged(d->arena + d->blocks[i].off);
  pthread_mutex_unlock(&d->lock);
  return p;
}

static void *fake_alloc(void *ctx, size_t bytes) { return take(ctx, bytes, false); }

static void fake_free(void *ctx, void *p) {
  fake_device *d = ctx;
  if (!p)
    return;
  unsigned char *r = real(d, "free", "the pointer", p, 0);
  pthread_mutex_lock(&d->lock);
  size_t i = (size_t)(find(d, (size_t)(r - d->arena)) - d->blocks);
  if (d->blocks[i].off != (size_t)(r - d->arena) || !d->blocks[i].used) {
    pthread_mutex_unlock(&d->lock);
    die("free", "%p is not the start of a live allocation (double free?)", p);
  }
  d->blocks[i].used = false;
  *(d->blocks[i].scratch ? &d->counts.scratch : &d->counts.live) -= 1;
  if (i + 1 < d->count && !d->blocks[i + 1].used) { /* merge with the next */
    d->blocks[i].len += d->blocks[i + 1].len;
    memmove(&d->blocks[i + 1], &d->blocks[i + 2], (d->count - i - 2) * sizeof *d->blocks);
    d->count--;
  }
  if (i > 0 && !d->blocks[i - 1].used) { /* and with the previous */
    d->blocks[i - 1].len += d->blocks[i].len;
    memmove(&d->blocks[i], &d->blocks[i + 1], (d->count - i - 1) * sizeof *d->blocks);
    d->count--;
  }
  pthread_mutex_unlock(&d->lock);
}

/* An op's own device memory, as a CUDA op's workspace or copies: from the
 * arena, given back after the op (op_scratch_done), or under a capture
 * kept by the graph until it goes (its launches would write there), which
 * moves where the core's later allocations land, as on a GPU. */
static void *op_scratch(fake_device *d, size_t bytes) {
  void *p = take(d, bytes, true);
  if (!d->capturing)
    return p;
  if (d->num_capture_scratch == d->cap_capture_scratch) {
    d->cap_capture_scratch = d->cap_capture_scratch ? 2 * d->cap_capture_scratch : 16;
    d->capture_scratch = realloc(d->capture_scratch, d->cap_capture_scratch * sizeof *d->capture_scratch);
    if (!d->capture_scratch)
      die("op scratch", "out of host memory");
  }
  d->capture_scratch[d->num_capture_scratch++] = p;
  return p;
}

static void op_scratch_done(fake_device *d, void *p) {
  if (!d->capturing)
    fake_free(d, p);
}

static int fake_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  host("to_host", "the destination", dst);
  const void *s = real(d, "to_host", "the source", src, bytes);
  pthread_mutex_lock(&d->lock);
  d->counts.to_host++;
  pthread_mutex_unlock(&d->lock);
  memcpy(dst, s, bytes);
  return 0;
}

static int fake_from_host(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  host("from_host", "the source", src);
  void *t = real(d, "from_host", "the destination", dst, bytes);
  pthread_mutex_lock(&d->lock);
  d->counts.from_host++;
  pthread_mutex_unlock(&d->lock);
  memcpy(t, src, bytes);
  return 0;
}

static int fake_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  void *t = real(d, "copy", "the destination", dst, bytes);
  const void *f = real(d, "copy", "the source", src, bytes);
  if (held(d, "copy"))
    return d->held_rc;
  memmove(t, f, bytes);
  return 0;
}

static int fake_zero(void *ctx, void *p, size_t bytes) {
  void *t = real(ctx, "zero", "the buffer", p, bytes);
  if (held(ctx, "zero"))
    return ((fake_device *)ctx)->held_rc;
  memset(t, 0, bytes);
  return 0;
}

/* --- asynchronous uploads: copied at once, their order of calls checked --- */

#define UPLOAD_MAGIC 0x0F1E2D3Cu

typedef enum { UP_RELEASED, UP_COPIED, UP_WAITED } up_state;

/* An upload slot: its state in the cycle of loom/backend.h, and the host
 * memory its last upload read (with a hash, checked unchanged at the
 * release). */
struct loom_upload {
  uint32_t magic;
  up_state state;
  bool host_busy; /* from upload_start to upload_release */
  loom_upload_copy *copies;
  int count, cap;
  uint64_t hash;
};

static void *fake_host_alloc(void *ctx, size_t bytes) {
  fake_device *d = ctx;
  unsigned char *p = aligned_alloc(64, ((bytes ? bytes : 1) + 63) & ~(size_t)63);
  if (!p || ((uintptr_t)p & TAG))
    die("host_alloc", "no host memory for %zu bytes", bytes);
  pthread_mutex_lock(&d->lock);
  if (d->num_pinned == d->cap_pinned) {
    size_t cap = d->cap_pinned ? 2 * d->cap_pinned : 16;
    pinned *n = realloc(d->pinned, cap * sizeof *n);
    if (!n)
      die("host_alloc", "out of host memory for the pinned table");
    d->pinned = n, d->cap_pinned = cap;
  }
  d->pinned[d->num_pinned++] = (pinned){p, bytes};
  d->counts.pinned++;
  pthread_mutex_unlock(&d->lock);
  return p;
}

static void fake_host_free(void *ctx, void *p) {
  fake_device *d = ctx;
  if (!p)
    return;
  pthread_mutex_lock(&d->lock);
  size_t i = 0;
  while (i < d->num_pinned && d->pinned[i].p != p)
    i++;
  if (i == d->num_pinned) {
    pthread_mutex_unlock(&d->lock);
    die("host_free", "%p is not pinned memory of this device (double free?)", p);
  }
  d->pinned[i] = d->pinned[--d->num_pinned];
  d->counts.pinned--;
  pthread_mutex_unlock(&d->lock);
  free(p);
}

/* Whether [p, p + bytes) lies in one pinned block. */
static bool is_pinned(fake_device *d, const void *p, size_t bytes) {
  const unsigned char *c = p;
  bool ok = false;
  pthread_mutex_lock(&d->lock);
  for (size_t i = 0; !ok && i < d->num_pinned; i++)
    ok = c >= d->pinned[i].p && c + bytes <= d->pinned[i].p + d->pinned[i].bytes;
  pthread_mutex_unlock(&d->lock);
  return ok;
}

static uint64_t hash_host(const loom_upload *u) {
  uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
  for (int i = 0; i < u->count; i++)
    for (size_t k = 0; k < u->copies[i].bytes; k++)
      h = (h ^ ((const unsigned char *)u->copies[i].host)[k]) * 0x100000001b3u;
  return h;
}

static loom_upload *own_upload(const char *op, loom_upload *u) {
  if (!u || u->magic != UPLOAD_MAGIC)
    die(op, "an upload slot this device did not make (%p)", (void *)u);
  return u;
}

/* The blocks an upload copied into are ordered for the compute stream. */
static void clear_pending(fake_device *d, const loom_upload *u) {
  pthread_mutex_lock(&d->lock);
  for (size_t i = 0; i < d->count; i++)
    if (d->blocks[i].pending == u)
      d->blocks[i].pending = NULL;
  pthread_mutex_unlock(&d->lock);
}

static int fake_upload_create(void *ctx, loom_upload **out) {
  fake_device *d = ctx;
  loom_upload *u = calloc(1, sizeof *u);
  if (!u)
    die("upload_create", "out of host memory");
  u->magic = UPLOAD_MAGIC;
  pthread_mutex_lock(&d->lock);
  d->counts.upload_slots++;
  pthread_mutex_unlock(&d->lock);
  *out = u;
  return 0;
}

static void fake_upload_destroy(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  if (!u)
    return;
  own_upload("upload_destroy", u);
  clear_pending(d, u); /* a real device waits for the copies here */
  pthread_mutex_lock(&d->lock);
  d->counts.upload_slots--;
  pthread_mutex_unlock(&d->lock);
  u->magic = 0;
  free(u->copies);
  free(u);
}

static int fake_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count) {
  fake_device *d = ctx;
  own_upload("upload_start", u);
  pthread_mutex_lock(&d->lock);
  bool fail = d->fail_upload && d->counts.uploads + 1 == d->fail_upload;
  pthread_mutex_unlock(&d->lock);
  if (fail)
    return loom_error_set(LOOM_EIO, "fake device: upload %lld failed, as the test asked", (long long)d->fail_upload);
  if (u->state == UP_WAITED)
    die("upload_start", "upload slot %p is uploaded into while the compute stream may still read its last batch: "
                        "upload_release it first",
        (void *)u);
  if (u->host_busy)
    die("upload_start", "upload slot %p starts again before upload_release: its host memory may have been refilled "
                        "while the last copy read it",
        (void *)u);
  if (count > u->cap) {
    loom_upload_copy *c = realloc(u->copies, (size_t)count * sizeof *c);
    if (!c)
      die("upload_start", "out of host memory");
    u->copies = c, u->cap = count;
  }
  for (int i = 0; i < count; i++) {
    host("upload_start", "a copy's source", copies[i].host);
    if (copies[i].bytes && !is_pinned(d, copies[i].host, copies[i].bytes))
      die("upload_start", "copy %d's %zu bytes at %p are not pinned memory from host_alloc: the copy could not "
                          "overlap",
          i, copies[i].bytes, copies[i].host);
    void *dst = real_for(d, "upload_start", "a copy's destination", copies[i].dst, copies[i].bytes, u);
    memcpy(dst, copies[i].host, copies[i].bytes);
    u->copies[i] = copies[i];
  }
  u->count = count;
  u->hash = hash_host(u);
  pthread_mutex_lock(&d->lock);
  for (int i = 0; i < count; i++)
    if (copies[i].bytes)
      find(d, (size_t)((uintptr_t)copies[i].dst - TAG - (uintptr_t)d->arena))->pending = u;
  d->counts.uploads++;
  pthread_mutex_unlock(&d->lock);
  u->state = UP_COPIED;
  u->host_busy = true;
  return 0;
}

static int fake_upload_wait(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  own_upload("upload_wait", u);
  if (u->state != UP_COPIED)
    die("upload_wait", "upload slot %p has no upload started since its last %s", (void *)u,
        u->state == UP_WAITED ? "upload_wait" : "upload_release");
  clear_pending(d, u);
  pthread_mutex_lock(&d->lock);
  d->counts.upload_waits++;
  pthread_mutex_unlock(&d->lock);
  u->state = UP_WAITED;
  return 0;
}

static int fake_upload_release(void *ctx, loom_upload *u) {
  fake_device *d = ctx;
  own_upload("upload_release", u);
  if (u->host_busy && hash_host(u) != u->hash)
    die("upload_release", "the host memory upload slot %p copied from changed before upload_release", (void *)u);
  clear_pending(d, u); /* a batch prefetched and never used */
  u->state = UP_RELEASED;
  u->host_busy = false;
  return 0;
}

static void fake_destroy(void *ctx) {
  fake_device *d = ctx;
  pthread_mutex_destroy(&d->lock);
  free(d->capture_scratch);
  free(d->pinned);
  free(d->arena);
  free(d->blocks);
  free(d);
}

/* --- ops --- */

static loom_backend *cpu(fake_device *d, bool host_result) {
  count_op(d, host_result);
  return loom_backend_cpu();
}

/* An optimizer's update op: counted as such too. */
static loom_backend *cpu_update(fake_device *d) {
  pthread_mutex_lock(&d->lock);
  d->counts.updates++;
  pthread_mutex_unlock(&d->lock);
  return cpu(d, false);
}

static void gemm_extents(fake_device *d, const char *op, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
                         const float **A, int64_t lda, const float **B, int64_t ldb, float **C, int64_t ldc) {
  *A = real(d, op, "A", *A, ta ? span(K, M, lda) : span(M, K, lda));
  *B = real(d, op, "B", *B, tb ? span(N, K, ldb) : span(K, N, ldb));
  *C = real(d, op, "C", *C, span(M, N, ldc));
}

static int fake_gemm(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
  gemm_extents(ctx, "gemm", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  return CPU_OP(ctx, cpu(ctx, false), gemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* The product of operands rounded to p, as the CPU computes it under that
 * autocast: the core's fallback's bits (a CUDA backend stores them as p). */
static int fake_gemm_lowp(void *ctx, loom_precision p, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                          const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                          int64_t ldc) {
  fake_device *d = ctx;
  gemm_extents(d, "gemm_lowp", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  if (p != LOOM_PRECISION_BF16 && p != LOOM_PRECISION_FP16) {
    fprintf(stderr, "fake device: gemm_lowp in precision %d\n", (int)p);
    abort();
  }
  pthread_mutex_lock(&d->lock);
  d->counts.lowp_gemms += !d->capturing;
  pthread_mutex_unlock(&d->lock);
  /* The 16-bit copies of both operands a CUDA backend makes. */
  void *copies = op_scratch(d, (size_t)(M * K + K * N) * 2);
  const loom_precision before = loom_backend_set_autocast(p);
  int rc = CPU_OP(ctx, cpu(ctx, false), gemm, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  loom_backend_set_autocast(before);
  op_scratch_done(d, copies);
  return rc;
}

static int fake_gemm_checked(void *ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                             int64_t ldc, bool *finite) {
  gemm_extents(ctx, "gemm_checked", ta, tb, M, N, K, &A, lda, &B, ldb, &C, ldc);
  host("gemm_checked", "finite", finite);
  return CPU_OP(ctx, cpu(ctx, true), gemm_checked, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, finite);
}

static int fake_fill_rows(void *ctx, float *y, const float *row, int64_t rows, int64_t cols) {
  y = real(ctx, "fill_rows", "y", y, F(rows * cols));
  row = real(ctx, "fill_rows", "row", row, F(cols));
  return CPU_OP(ctx, cpu(ctx, false), fill_rows, y, row, rows, cols);
}

static int fake_sum_rows(void *ctx, float *sum, const float *x, int64_t rows, int64_t cols) {
  sum = real(ctx, "sum_rows", "sum", sum, F(cols));
  x = real(ctx, "sum_rows", "x", x, F(rows * cols));
  return CPU_OP(ctx, cpu(ctx, false), sum_rows, sum, x, rows, cols);
}

static int fake_act_forward(void *ctx, loom_activation act, float param, const float *x, float *y, int64_t n) {
  x = real(ctx, "act_forward", "x", x, F(n));
  y = real(ctx, "act_forward", "y", y, F(n));
  return CPU_OP(ctx, cpu(ctx, false), act_forward, act, param, x, y, n);
}

static int fake_act_backward(void *ctx, loom_activation act, float param, const float *x, const float *y,
                             const float *dy, float *dx, int64_t n) {
  x = real(ctx, "act_backward", "x", x, F(n));
  y = real(ctx, "act_backward", "y", y, F(n));
  dy = real(ctx, "act_backward", "dy", dy, F(n));
  dx = real(ctx, "act_backward", "dx", dx, F(n));
  return CPU_OP(ctx, cpu(ctx, false), act_backward, act, param, x, y, dy, dx, n);
}

static int fake_xent_forward(void *ctx, const float *logits, const float *targets, const float *weights,
                             float smoothing, int64_t n, int64_t c, float *probs, double *sums) {
  logits = real(ctx, "xent_forward", "logits", logits, F(n * c));
  targets = real(ctx, "xent_forward", "targets", targets, F(n));
  weights = real(ctx, "xent_forward", "weights", weights, F(c));
  probs = real(ctx, "xent_forward", "probs", probs, F(n * c));
  sums = real(ctx, "xent_forward", "sums", sums, 2 * sizeof *sums);
  return CPU_OP(ctx, cpu(ctx, false), xent_forward, logits, targets, weights, smoothing, n, c, probs, sums);
}

static int fake_xent_backward(void *ctx, const float *probs, const float *targets, const float *weights,
                              float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  probs = real(ctx, "xent_backward", "probs", probs, F(n * c));
  targets = real(ctx, "xent_backward", "targets", targets, F(n));
  weights = real(ctx, "xent_backward", "weights", weights, F(c));
  dlogits = real(ctx, "xent_backward", "dlogits", dlogits, F(n * c));
  return CPU_OP(ctx, cpu(ctx, false), xent_backward, probs, targets, weights, smoothing, scale, n, c, dlogits);
}

static int fake_loss_forward(void *ctx, loom_pointwise_loss loss, float param, const float *out, const float *target,
                             int64_t n, double *sum) {
  out = real(ctx, "loss_forward", "out", out, F(n));
  target = real(ctx, "loss_forward", "target", target, F(n));
  sum = real(ctx, "loss_forward", "sum", sum, sizeof *sum);
  return CPU_OP(ctx, cpu(ctx, false), loss_forward, loss, param, out, target, n, sum);
}

static int fake_loss_backward(void *ctx, loom_pointwise_loss loss, float param, const float *out,
                              const float *target, float scale, int64_t n, float *dout) {
  out = real(ctx, "loss_backward", "out", out, F(n));
  target = real(ctx, "loss_backward", "target", target, F(n));
  dout = real(ctx, "loss_backward", "dout", dout, F(n));
  return CPU_OP(ctx, cpu(ctx, false), loss_backward, loss, param, out, target, scale, n, dout);
}

static int fake_dropout_forward(void *ctx, uint64_t key, float p, const float *x, float *y, float *mask, int64_t n) {
  x = real(ctx, "dropout_forward", "x", x, F(n));
  y = real(ctx, "dropout_forward", "y", y, F(n));
  mask = real(ctx, "dropout_forward", "mask", mask, F(n));
  return CPU_OP(ctx, cpu(ctx, false), dropout_forward, key, p, x, y, mask, n);
}

static int fake_mul(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  a = real(ctx, "mul", "a", a, F(n));
  b = real(ctx, "mul", "b", b, F(n));
  y = real(ctx, "mul", "y", y, F(n));
  return CPU_OP(ctx, cpu(ctx, false), mul, a, b, y, n);
}

static int fake_add(void *ctx, const float *a, const float *b, float *y, int64_t n) {
  a = real(ctx, "add", "a", a, F(n));
  b = real(ctx, "add", "b", b, F(n));
  y = real(ctx, "add", "y", y, F(n));
  return CPU_OP(ctx, cpu(ctx, false), add, a, b, y, n);
}

static int fake_round(void *ctx, loom_precision p, const float *x, float *y, int64_t n) {
  x = real(ctx, "round", "x", x, F(n));
  y = real(ctx, "round", "y", y, F(n));
  return CPU_OP(ctx, cpu(ctx, false), round, p, x, y, n);
}

/* --- planned ops --- */

static fake_plan *new_plan(fake_device *d, loom_layer_kind kind, int count, const loom_layer_desc *layers) {
  fake_plan *p = calloc(1, sizeof *p);
  if (!p)
    die("plan", "out of host memory");
  pthread_mutex_lock(&d->lock);
  d->counts.plans++;
  pthread_mutex_unlock(&d->lock);
  p->magic = PLAN_MAGIC, p->kind = kind, p->count = count;
  memcpy(p->layers, layers, (size_t)count * sizeof *layers);
  return p;
}

/* The plan behind `plan`, which must be this device's, made for `kind`. */
static fake_plan *own_plan(const char *op, loom_plan *plan, loom_layer_kind kind) {
  fake_plan *p = (fake_plan *)plan;
  if (!p || p->magic != PLAN_MAGIC)
    die(op, "a plan this device did not make (%p): a plan of another backend kept across a move?", (void *)plan);
  if (p->kind != kind)
    die(op, "a plan made for layer kind %d, used for kind %d", (int)p->kind, (int)kind);
  return p;
}

static int wrap_plan(fake_device *d, loom_layer_kind kind, const loom_layer_desc *desc, int rc, loom_plan *cpu_plan,
                     loom_plan **plan) {
  if (rc < 0)
    return rc;
  fake_plan *p = new_plan(d, kind, 1, desc);
  p->cpu = cpu_plan;
  *plan = (loom_plan *)p;
  return 0;
}

static int fake_conv_plan(void *ctx, const loom_conv_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_conv_plan(cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_CONV, &(loom_layer_desc){.kind = LOOM_LAYER_CONV, .conv = *desc}, rc, c, plan);
}

static int fake_pool_plan(void *ctx, const loom_pool_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_pool_plan(cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_POOL, &(loom_layer_desc){.kind = LOOM_LAYER_POOL, .pool = *desc}, rc, c, plan);
}

static int fake_batchnorm_plan(void *ctx, const loom_batchnorm_desc *desc, loom_plan **plan) {
  loom_plan *c = NULL;
  int rc = loom_backend_batchnorm_plan(cpu(ctx, false), desc, &c);
  return wrap_plan(ctx, LOOM_LAYER_BATCHNORM, &(loom_layer_desc){.kind = LOOM_LAYER_BATCHNORM, .batchnorm = *desc}, rc, c,
                   plan);
}

static void fake_plan_destroy(void *ctx, loom_plan *plan) {
  fake_device *d = ctx;
  fake_plan *p = (fake_plan *)plan;
  if (!p)
    return;
  if (p->magic != PLAN_MAGIC)
    die("plan_destroy", "a plan this device did not make (%p)", (void *)plan);
  pthread_mutex_lock(&d->lock);
  d->counts.plans--;
  pthread_mutex_unlock(&d->lock);
  loom_backend_plan_destroy(loom_backend_cpu(), p->cpu);
  p->magic = 0;
  free(p);
}

static int fake_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                             int64_t n) {
  const loom_conv_desc *c = &own_plan("conv_forward", plan, LOOM_LAYER_CONV)->layers[0].conv;
  x = real(ctx, "conv_forward", "x", x, F(n * c->cin * c->h * c->w));
  w = real(ctx, "conv_forward", "w", w, F(c->cout * c->cin * c->kh * c->kw));
  bias = real(ctx, "conv_forward", "bias", bias, F(c->cout));
  y = real(ctx, "conv_forward", "y", y, F(n * c->cout * c->oh * c->ow));
  return CPU_OP(ctx, cpu(ctx, false), conv_forward, ((fake_plan *)plan)->cpu, x, w, bias, y, n);
}

static int fake_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                              float *dbias, float *dx, int64_t n) {
  const loom_conv_desc *c = &own_plan("conv_backward", plan, LOOM_LAYER_CONV)->layers[0].conv;
  x = real(ctx, "conv_backward", "x", x, F(n * c->cin * c->h * c->w));
  w = real(ctx, "conv_backward", "w", w, F(c->cout * c->cin * c->kh * c->kw));
  dy = real(ctx, "conv_backward", "dy", dy, F(n * c->cout * c->oh * c->ow));
  dw = real(ctx, "conv_backward", "dw", dw, F(c->cout * c->cin * c->kh * c->kw));
  dbias = real(ctx, "conv_backward", "dbias", dbias, F(c->cout));
  dx = real(ctx, "conv_backward", "dx", dx, F(n * c->cin * c->h * c->w));
  return CPU_OP(ctx, cpu(ctx, false), conv_backward, ((fake_plan *)plan)->cpu, x, w, dy, dw, dbias, dx, n);
}

static int fake_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n) {
  const loom_pool_desc *p = &own_plan("pool_forward", plan, LOOM_LAYER_POOL)->layers[0].pool;
  x = real(ctx, "pool_forward", "x", x, F(n * p->c * p->h * p->w));
  y = real(ctx, "pool_forward", "y", y, F(n * p->c * p->oh * p->ow));
  return CPU_OP(ctx, cpu(ctx, false), pool_forward, ((fake_plan *)plan)->cpu, x, y, n);
}

static int fake_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  const loom_pool_desc *p = &own_plan("pool_backward", plan, LOOM_LAYER_POOL)->layers[0].pool;
  dy = real(ctx, "pool_backward", "dy", dy, F(n * p->c * p->oh * p->ow));
  dx = real(ctx, "pool_backward", "dx", dx, F(n * p->c * p->h * p->w));
  return CPU_OP(ctx, cpu(ctx, false), pool_backward, ((fake_plan *)plan)->cpu, dy, dx, n);
}

static int fake_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                                  const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  const loom_batchnorm_desc *b = &own_plan("batchnorm_forward", plan, LOOM_LAYER_BATCHNORM)->layers[0].batchnorm;
  const char *op = "batchnorm_forward";
  x = real(ctx, op, "x", x, F(n * b->c * b->spatial));
  gamma = real(ctx, op, "gamma", gamma, F(b->c)), beta = real(ctx, op, "beta", beta, F(b->c));
  running_mean = real(ctx, op, "running_mean", running_mean, F(b->c));
  running_var = real(ctx, op, "running_var", running_var, F(b->c));
  y = real(ctx, op, "y", y, F(n * b->c * b->spatial));
  return CPU_OP(ctx, cpu(ctx, false), batchnorm_forward, ((fake_plan *)plan)->cpu, train, x, gamma, beta,
                                        running_mean, running_var, y, n);
}

static int fake_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                   const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n) {
  const loom_batchnorm_desc *b = &own_plan("batchnorm_backward", plan, LOOM_LAYER_BATCHNORM)->layers[0].batchnorm;
  const char *op = "batchnorm_backward";
  x = real(ctx, op, "x", x, F(n * b->c * b->spatial));
  gamma = real(ctx, op, "gamma", gamma, F(b->c)), beta = real(ctx, op, "beta", beta, F(b->c));
  dy = real(ctx, op, "dy", dy, F(n * b->c * b->spatial));
  dgamma = real(ctx, op, "dgamma", dgamma, F(b->c)), dbeta = real(ctx, op, "dbeta", dbeta, F(b->c));
  dx = real(ctx, op, "dx", dx, F(n * b->c * b->spatial));
  return CPU_OP(ctx, cpu(ctx, false), batchnorm_backward, ((fake_plan *)plan)->cpu, x, gamma, beta, dy, dgamma, dbeta,
                                         dx, n);
}

/* --- blocks --- */

/* Per-sample sizes of a layer's input and output (an activation's are the
 * layer before's output; 0: unknown, only the start is checked), its
 * parameters' and its buffers'. */
static void layer_sizes(const loom_layer_desc *l, int64_t prev_out, int64_t *in, int64_t *out, int64_t *params,
                        int64_t *buffers) {
  *params = *buffers = 0;
  switch (l->kind) {
  case LOOM_LAYER_CONV:
    *in = l->conv.cin * l->conv.h * l->conv.w, *out = l->conv.cout * l->conv.oh * l->conv.ow;
    *params = l->conv.cout * l->conv.cin * l->conv.kh * l->conv.kw + (l->conv.bias ? l->conv.cout : 0);
    break;
  case LOOM_LAYER_POOL:
    *in = l->pool.c * l->pool.h * l->pool.w, *out = l->pool.c * l->pool.oh * l->pool.ow;
    break;
  case LOOM_LAYER_BATCHNORM:
    *in = *out = l->batchnorm.c * l->batchnorm.spatial;
    *params = *buffers = 2 * l->batchnorm.c;
    break;
  default: *in = *out = prev_out; break;
  }
}

/* io with real addresses, each checked for its layer's extents; *in_of[k]
 * is layer k's input size per sample. */
static void real_io(fake_device *d, const char *op, const fake_plan *p, const loom_block_io *io, int64_t n,
                    bool backward, loom_block_io *out, int64_t *in_of) {
  int64_t prev = 0;
  for (int k = 0; k < p->count; k++) {
    int64_t in, o, np, nb;
    layer_sizes(&p->layers[k], prev, &in, &o, &np, &nb);
    in_of[k] = in, prev = o;
    out[k] = (loom_block_io){
        .params = real(d, op, "io.params", io[k].params, F(np)),
        .grads = real(d, op, "io.grads", io[k].grads, backward ? F(np) : 0), /* forward: not touched */
        .buffers = real(d, op, "io.buffers", io[k].buffers, F(nb)),
        .y = real(d, op, "io.y", io[k].y, F(n * o)),
        .dy = real(d, op, "io.dy", io[k].dy, backward ? F(n * o) : 0),
    };
  }
}

static int fake_plan_block(void *ctx, const loom_layer_desc *layers, int count, loom_block *block) {
  int rc = loom_backend_plan_block(cpu(ctx, false), layers, count, block);
  if (rc < 0 || block->count < 2)
    return rc;
  if (block->count > MAX_BLOCK_LAYERS)
    die("plan_block", "a block of %d layers", block->count);
  fake_plan *p = new_plan(ctx, LOOM_LAYER_OTHER, block->count, layers);
  p->cpu = block->plan;
  block->plan = (loom_plan *)p;
  return 0;
}

static int fake_block_forward(void *ctx, loom_plan *plan, bool train, const float *x, const loom_block_io *io,
                              int64_t n) {
  const fake_plan *p = own_plan("block_forward", plan, LOOM_LAYER_OTHER);
  loom_block_io rio[MAX_BLOCK_LAYERS];
  int64_t in_of[MAX_BLOCK_LAYERS];
  real_io(ctx, "block_forward", p, io, n, false, rio, in_of);
  x = real(ctx, "block_forward", "x", x, F(n * in_of[0]));
  return CPU_OP(ctx, cpu(ctx, false), block_forward, p->cpu, train, x, rio, n);
}

static int fake_block_backward(void *ctx, loom_plan *plan, int first, const float *x, const loom_block_io *io,
                               float *dx, int64_t n) {
  const fake_plan *p = own_plan("block_backward", plan, LOOM_LAYER_OTHER);
  loom_block_io rio[MAX_BLOCK_LAYERS];
  int64_t in_of[MAX_BLOCK_LAYERS];
  real_io(ctx, "block_backward", p, io, n, true, rio, in_of);
  /* x is the block's input (layer first > 0 reads the kept y before it) */
  x = real(ctx, "block_backward", "x", x, F(n * in_of[0]));
  dx = real(ctx, "block_backward", "dx", dx, F(n * in_of[0]));
  return CPU_OP(ctx, cpu(ctx, false), block_backward, p->cpu, first, x, rio, dx, n);
}

/* --- optimizers and gradients --- */

static int fake_sgd_update(void *ctx, const loom_sgd_step *s, float *p, const float *g, float *buf, int64_t n) {
  p = real(ctx, "sgd_update", "p", p, F(n)), g = real(ctx, "sgd_update", "g", g, F(n));
  buf = real(ctx, "sgd_update", "buf", buf, F(n));
  host("sgd_update", "the step", s);
  loom_sgd_step step = *s;
  step.gate = real(ctx, "sgd_update", "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), sgd_update, &step, p, g, buf, n);
}

static int fake_adam_update(void *ctx, const loom_adam_step *s, float *p, const float *g, float *m, float *v,
                            int64_t n) {
  p = real(ctx, "adam_update", "p", p, F(n)), g = real(ctx, "adam_update", "g", g, F(n));
  m = real(ctx, "adam_update", "m", m, F(n)), v = real(ctx, "adam_update", "v", v, F(n));
  host("adam_update", "the step", s);
  loom_adam_step step = *s;
  step.gate = real(ctx, "adam_update", "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), adam_update, &step, p, g, m, v, n);
}

static int fake_rmsprop_update(void *ctx, const loom_rmsprop_step *s, float *p, const float *g, float *sq, float *buf,
                               float *avg, int64_t n) {
  const char *op = "rmsprop_update";
  p = real(ctx, op, "p", p, F(n)), g = real(ctx, op, "g", g, F(n)), sq = real(ctx, op, "sq", sq, F(n));
  buf = real(ctx, op, "buf", buf, F(n)), avg = real(ctx, op, "avg", avg, F(n));
  host(op, "the step", s);
  loom_rmsprop_step step = *s;
  step.gate = real(ctx, op, "the gate", s->gate, sizeof *s->gate);
  return CPU_OP(ctx, cpu_update(ctx), rmsprop_update, &step, p, g, sq, buf, avg, n);
}

static int fake_update_ranges(void *ctx, const loom_update_step *s, const loom_update_range *ranges, int nranges,
                              float *p, const float *g, float *state, int64_t total) {
  const char *op = "update_ranges";
  const int arrays = s->rule == LOOM_RULE_SGD ? 1 : s->rule == LOOM_RULE_ADAM ? 2 : 3;
  p = real(ctx, op, "p", p, F(total)), g = real(ctx, op, "g", g, F(total));
  state = real(ctx, op, "state", state, F(arrays * total));
  host(op, "the step", s), host(op, "the ranges", ranges);
  loom_update_step step = *s;
  if (s->rule == LOOM_RULE_SGD)
    step.u.sgd.gate = real(ctx, op, "the gate", s->u.sgd.gate, sizeof(int));
  else if (s->rule == LOOM_RULE_ADAM)
    step.u.adam.gate = real(ctx, op, "the gate", s->u.adam.gate, sizeof(int));
  else
    step.u.rmsprop.gate = real(ctx, op, "the gate", s->u.rmsprop.gate, sizeof(int));
  return CPU_OP(ctx, cpu_update(ctx), update_ranges, &step, ranges, nranges, p, g, state, total);
}

static int fake_sum_squares(void *ctx, const float *x, int64_t n, double *sum) {
  x = real(ctx, "sum_squares", "x", x, F(n));
  host("sum_squares", "sum", sum);
  return CPU_OP(ctx, cpu(ctx, true), sum_squares, x, n, sum);
}

static int fake_scale(void *ctx, float *x, float a, int64_t n) {
  return CPU_OP(ctx, cpu(ctx, false), scale, real(ctx, "scale", "x", x, F(n)), a, n);
}

static int fake_clamp(void *ctx, float *x, float limit, int64_t n) {
  return CPU_OP(ctx, cpu(ctx, false), clamp, real(ctx, "clamp", "x", x, F(n)), limit, n);
}

static int fake_flag_nonfinite(void *ctx, const float *x, int64_t n, const double *d, int64_t nd, int *flag) {
  x = real(ctx, "flag_nonfinite", "x", x, F(n));
  d = real(ctx, "flag_nonfinite", "d", d, (size_t)nd * sizeof *d);
  flag = real(ctx, "flag_nonfinite", "flag", flag, sizeof *flag);
  return CPU_OP(ctx, cpu(ctx, false), flag_nonfinite, x, n, d, nd, flag);
}

static int fake_set_if(void *ctx, const int *flag, float *x, float value) {
  flag = real(ctx, "set_if", "flag", flag, sizeof *flag);
  x = real(ctx, "set_if", "x", x, F(1));
  return CPU_OP(ctx, cpu(ctx, false), set_if, flag, x, value);
}

static int fake_all_finite(void *ctx, const float *x, int64_t n, bool *finite) {
  x = real(ctx, "all_finite", "x", x, F(n));
  host("all_finite", "finite", finite);
  return CPU_OP(ctx, cpu(ctx, true), all_finite, x, n, finite);
}

static int fake_topk_hits(void *ctx, const float *scores, const float *targets, int64_t n, int64_t c, const int *ks,
                          int nk, int64_t *hits, int64_t *bad) {
  scores = real(ctx, "topk_hits", "scores", scores, F(n * c));
  targets = real(ctx, "topk_hits", "targets", targets, F(n));
  hits = real(ctx, "topk_hits", "hits", hits, (size_t)nk * sizeof *hits);
  bad = real(ctx, "topk_hits", "bad", bad, sizeof *bad);
  host("topk_hits", "ks", ks);
  return CPU_OP(ctx, cpu(ctx, false), topk_hits, scores, targets, n, c, ks, nk, hits, bad);
}

/* --- step graphs: a capture runs nothing, a launch runs the new log --- */

#define GRAPH_MAGIC 0x06A9F0E5u

struct loom_graph {
  uint32_t magic;
  int length;     /* the captured log's ops */
  void **scratch; /* the ops' own memory taken under its capture */
  size_t num_scratch;
};

static int fake_graph_begin(void *ctx) {
  fake_device *d = ctx;
  if (d->capturing)
    die("graph_begin", "a capture is already under way");
  d->capturing = true;
  return 0;
}

static int fake_graph_end(void *ctx, const loom_op_log *captured, loom_graph **graph) {
  fake_device *d = ctx;
  if (!d->capturing)
    die("graph_end", "no capture is under way");
  d->capturing = false;
  loom_graph *g = calloc(1, sizeof *g);
  if (!g)
    die("graph_end", "out of host memory");
  g->magic = GRAPH_MAGIC, g->length = loom_op_log_length(captured);
  g->scratch = d->capture_scratch, g->num_scratch = d->num_capture_scratch;
  d->capture_scratch = NULL, d->num_capture_scratch = d->cap_capture_scratch = 0;
  pthread_mutex_lock(&d->lock);
  d->counts.captures++, d->counts.graphs++;
  pthread_mutex_unlock(&d->lock);
  *graph = g;
  return 0;
}

static int fake_graph_launch(void *ctx, loom_graph *g, const loom_op_log *now) {
  fake_device *d = ctx;
  if (!g || g->magic != GRAPH_MAGIC)
    die("graph_launch", "a graph this device did not make (%p)", (void *)g);
  if (d->capturing)
    die("graph_launch", "a launch during a capture");
  if (loom_op_log_length(now) != g->length)
    die("graph_launch", "a log of %d ops launches a graph captured from %d", loom_op_log_length(now), g->length);
  pthread_mutex_lock(&d->lock);
  d->counts.launches++;
  pthread_mutex_unlock(&d->lock);
  return loom_op_log_run(now, &d->ops, ctx);
}

static void fake_graph_destroy(void *ctx, loom_graph *g) {
  fake_device *d = ctx;
  if (!g || g->magic != GRAPH_MAGIC)
    die("graph_destroy", "a graph this device did not make (%p)", (void *)g);
  g->magic = 0;
  for (size_t i = 0; i < g->num_scratch; i++)
    fake_free(d, g->scratch[i]);
  free(g->scratch);
  free(g);
  pthread_mutex_lock(&d->lock);
  d->counts.graphs--;
  pthread_mutex_unlock(&d->lock);
}

static const loom_backend_ops fake_ops = {
    .name = "fake",
    .device = LOOM_DEVICE_CUDA,
    .alloc = fake_alloc,
    .free = fake_free,
    .to_host = fake_to_host,
    .from_host = fake_from_host,
    .copy = fake_copy,
    .zero = fake_zero,
    .host_alloc = fake_host_alloc,
    .host_free = fake_host_free,
    .upload_create = fake_upload_create,
    .upload_destroy = fake_upload_destroy,
    .upload_start = fake_upload_start,
    .upload_wait = fake_upload_wait,
    .upload_release = fake_upload_release,
    .gemm = fake_gemm,
    .fill_rows = fake_fill_rows,
    .sum_rows = fake_sum_rows,
    .act_forward = fake_act_forward,
    .act_backward = fake_act_backward,
    .xent_forward = fake_xent_forward,
    .xent_backward = fake_xent_backward,
    .loss_forward = fake_loss_forward,
    .loss_backward = fake_loss_backward,
    .dropout_forward = fake_dropout_forward,
    .mul = fake_mul,
    .add = fake_add,
    .round = fake_round,
    .gemm_lowp = fake_gemm_lowp,
    .conv_plan = fake_conv_plan,
    .conv_forward = fake_conv_forward,
    .conv_backward = fake_conv_backward,
    .pool_plan = fake_pool_plan,
    .pool_forward = fake_pool_forward,
    .pool_backward = fake_pool_backward,
    .batchnorm_plan = fake_batchnorm_plan,
    .batchnorm_forward = fake_batchnorm_forward,
    .batchnorm_backward = fake_batchnorm_backward,
    .plan_destroy = fake_plan_destroy,
    .plan_block = fake_plan_block,
    .block_forward = fake_block_forward,
    .block_backward = fake_block_backward,
    .sgd_update = fake_sgd_update,
    .adam_update = fake_adam_update,
    .rmsprop_update = fake_rmsprop_update,
    .update_ranges = fake_update_ranges,
    .sum_squares = fake_sum_squares,
    .scale = fake_scale,
    .clamp = fake_clamp,
    .all_finite = fake_all_finite,
    .flag_nonfinite = fake_flag_nonfinite,
    .set_if = fake_set_if,
    .gemm_checked = fake_gemm_checked,
    .topk_hits = fake_topk_hits,
    .destroy = fake_destroy,
    .graph_begin = fake_graph_begin,
    .graph_end = fake_graph_end,
    .graph_launch = fake_graph_launch,
    .graph_destroy = fake_graph_destroy,
};

loom_backend *fake_device_create(size_t arena_bytes, fake_device **dev) {
  return fake_device_create_without(arena_bytes, 0, dev);
}

loom_backend *fake_device_create_ex(size_t arena_bytes, bool topk_hits, fake_device **dev) {
  return fake_device_create_without(arena_bytes, topk_hits ? 0 : FAKE_NO_TOPK_HITS, dev);
}

loom_backend *fake_device_create_without(size_t arena_bytes, unsigned missing, fake_device **dev) {
  fake_device *d = calloc(1, sizeof *d);
  if (d)
    d->arena = aligned_alloc(64, (arena_bytes + 63) & ~(size_t)63);
  if (!d || !d->arena || (uintptr_t)d->arena & TAG)
    die("create", "no host memory for a %zu-byte arena", arena_bytes);
  d->size = (arena_bytes + 63) & ~(size_t)63;
  pthread_mutex_init(&d->lock, NULL);
  reserve(d);
  d->blocks[d->count++] = (block){0, d->size, false, NULL, false};
  loom_backend_ops ops = fake_ops;
  if (missing & FAKE_NO_TOPK_HITS)
    ops.topk_hits = NULL;
  if (missing & FAKE_NO_UPLOAD)
    ops.host_alloc = NULL, ops.host_free = NULL, ops.upload_create = NULL, ops.upload_destroy = NULL,
    ops.upload_start = NULL, ops.upload_wait = NULL, ops.upload_release = NULL;
  if (missing & FAKE_NO_LOWP)
    ops.gemm_lowp = NULL;
  if (missing & FAKE_NO_GRAPHS)
    ops.graph_begin = NULL, ops.graph_end = NULL, ops.graph_launch = NULL, ops.graph_destroy = NULL;
  d->ops = ops;
  loom_backend *b = loom_backend_create(&ops, d);
  if (!b)
    die("create", "loom_backend_create failed");
  if (dev)
    *dev = d;
  return b;
}

fake_device_counts fake_device_counts_of(fake_device *d) {
  pthread_mutex_lock(&d->lock);
  fake_device_counts c = d->counts;
  pthread_mutex_unlock(&d->lock);
  return c;
}

void fake_device_reset_counts(fake_device *d) {
  pthread_mutex_lock(&d->lock);
  d->counts = (fake_device_counts){.live = d->counts.live, .plans = d->counts.plans, .pinned = d->counts.pinned,
                                   .upload_slots = d->counts.upload_slots, .graphs = d->counts.graphs,
                                   .scratch = d->counts.scratch};
  pthread_mutex_unlock(&d->lock);
}

void fake_device_fail_op(fake_device *d, int64_t nth) {
  pthread_mutex_lock(&d->lock);
  d->fail_op = nth ? d->op_calls + nth : 0;
  pthread_mutex_unlock(&d->lock);
}

void fake_device_refuse_capture(fake_device *d, int64_t nth) {
  pthread_mutex_lock(&d->lock);
  d->refuse_op = nth ? d->captured_calls + nth : 0;
  pthread_mutex_unlock(&d->lock);
}

void fake_device_fail_upload(fake_device *d, int64_t nth) {
  pthread_mutex_lock(&d->lock);
  d->fail_upload = nth ? d->counts.uploads + nth : 0;
  pthread_mutex_unlock(&d->lock);
}

bool fake_device_owns(fake_device *d, const void *p) {
  uintptr_t u = (uintptr_t)p;
  return (u & TAG) && (u & ~TAG) >= (uintptr_t)d->arena && (u & ~TAG) < (uintptr_t)d->arena + d->size;
}

bool fake_device_capturing(fake_device *d) {
  pthread_mutex_lock(&d->lock);
  bool capturing = d->capturing;
  pthread_mutex_unlock(&d->lock);
  return capturing;
}

void *fake_device_memory(fake_device *d, const char *op, const void *p, size_t bytes) {
  return real(d, op, "the buffer", p, bytes);
}
