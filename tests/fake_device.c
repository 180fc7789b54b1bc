/* The fake device of fake_device.h: an arena cut first-fit into 64-byte
 * aligned blocks, tagged addresses, and every op checked then run by the
 * CPU backend. Test code: a misuse aborts with a message (and a stack under
 * ASan), which is what a test of the device path wants. */
#include "fake_device.h"

#include "fake_device_impl.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

_Noreturn void fake_die(const char *op, const char *fmt, ...) {
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
block *fake_find(fake_device *d, size_t off) {
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
void *fake_real_for(fake_device *d, const char *op, const char *what, const void *p, size_t bytes,
                    const void *upload) {
  if (!p)
    return NULL;
  uintptr_t u = (uintptr_t)p;
  if (!(u & TAG))
    fake_die(op, "%s is host memory (%p), not this device's: loom handed a host pointer to a device op", what, p);
  u &= ~TAG;
  uintptr_t base = (uintptr_t)d->arena;
  if (u < base || u > base + d->size)
    fake_die(op, "%s (%p) is tagged but outside the device's memory", what, p);
  size_t off = u - base;
  pthread_mutex_lock(&d->lock);
  const block *b = off < d->size ? fake_find(d, off) : NULL;
  bool ok = b && b->used && off + bytes <= b->off + b->len;
  if (!ok && bytes == 0 && off > 0) { /* one past a live block's end, where nothing is read */
    const block *e = fake_find(d, off - 1);
    ok = e->used && e->off + e->len == off;
  }
  size_t boff = b ? b->off : 0, blen = b ? b->len : 0;
  bool bused = b && b->used;
  const void *pending = ok && b ? b->pending : NULL;
  pthread_mutex_unlock(&d->lock);
  if (!ok)
    fake_die(op,
             "%s: %zu bytes at device offset %zu are not inside one live allocation (block at %zu of %zu bytes, %s)",
             what, bytes, off, boff, blen, bused ? "live" : "free");
  if (pending && pending != upload)
    fake_die(op, "%s (device offset %zu) is being uploaded into by upload slot %p and no upload_wait has ordered the "
                 "copy before this op: the op would race the copy stream",
             what, off, pending);
  return (void *)u;
}

void *fake_real(fake_device *d, const char *op, const char *what, const void *p, size_t bytes) {
  return fake_real_for(d, op, what, p, bytes, NULL);
}

/* A host pointer: must not be this device's. */
void fake_host(const char *op, const char *what, const void *p) {
  if ((uintptr_t)p & TAG)
    fake_die(op, "%s is device memory (%p) where host memory belongs", what, p);
}

/* Whether an op, its operands checked, must not run: while capturing (a
 * graph records, nothing runs, as under CUDA's stream capture; held_rc 0)
 * or when the test asked it to fail (held_rc the error). */
bool fake_held(fake_device *d, const char *op) {
  pthread_mutex_lock(&d->lock);
  bool capturing = d->capturing, fail = !capturing && d->fail_op && ++d->op_calls == d->fail_op;
  bool refuse = capturing && d->refuse_op && ++d->captured_calls == d->refuse_op;
  pthread_mutex_unlock(&d->lock);
  d->held_rc = fail     ? loom_error_set(LOOM_EIO, "fake device: %s failed, as the test asked", op)
               : refuse ? loom_error_set(LOOM_ENOTSUP, "fake device: %s cannot be captured, as the test asked", op)
                        : 0;
  return capturing || fail;
}

/* --- memory --- */

static int reserve(fake_device *d) {
  if (d->count < d->cap)
    return 0;
  size_t cap = d->cap ? 2 * d->cap : 64;
  block *b = realloc(d->blocks, cap * sizeof *b);
  if (!b)
    fake_die("alloc", "out of host memory for the block table");
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
    fake_die("alloc", "%zu bytes do not fit in the %zu-byte arena (make it larger in the test)", bytes, d->size);
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

void *fake_alloc(void *ctx, size_t bytes) { return take(ctx, bytes, false); }

void fake_free(void *ctx, void *p) {
  fake_device *d = ctx;
  if (!p)
    return;
  unsigned char *r = fake_real(d, "free", "the pointer", p, 0);
  pthread_mutex_lock(&d->lock);
  size_t i = (size_t)(fake_find(d, (size_t)(r - d->arena)) - d->blocks);
  if (d->blocks[i].off != (size_t)(r - d->arena) || !d->blocks[i].used) {
    pthread_mutex_unlock(&d->lock);
    fake_die("free", "%p is not the start of a live allocation (double free?)", p);
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
 * arena, given back after the op (fake_op_scratch_done), or under a capture
 * kept by the graph until it goes (its launches would write there), which
 * moves where the core's later allocations land, as on a GPU. */
void *fake_op_scratch(fake_device *d, size_t bytes) {
  void *p = take(d, bytes, true);
  if (!d->capturing)
    return p;
  if (d->num_capture_scratch == d->cap_capture_scratch) {
    d->cap_capture_scratch = d->cap_capture_scratch ? 2 * d->cap_capture_scratch : 16;
    d->capture_scratch = realloc(d->capture_scratch, d->cap_capture_scratch * sizeof *d->capture_scratch);
    if (!d->capture_scratch)
      fake_die("op scratch", "out of host memory");
  }
  d->capture_scratch[d->num_capture_scratch++] = p;
  return p;
}

void fake_op_scratch_done(fake_device *d, void *p) {
  if (!d->capturing)
    fake_free(d, p);
}

int fake_to_host(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  fake_host("to_host", "the destination", dst);
  const void *s = fake_real(d, "to_host", "the source", src, bytes);
  pthread_mutex_lock(&d->lock);
  d->counts.to_host++;
  pthread_mutex_unlock(&d->lock);
  memcpy(dst, s, bytes);
  return 0;
}

int fake_from_host(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  fake_host("from_host", "the source", src);
  void *t = fake_real(d, "from_host", "the destination", dst, bytes);
  pthread_mutex_lock(&d->lock);
  d->counts.from_host++;
  pthread_mutex_unlock(&d->lock);
  memcpy(t, src, bytes);
  return 0;
}

int fake_copy(void *ctx, void *dst, const void *src, size_t bytes) {
  fake_device *d = ctx;
  void *t = fake_real(d, "copy", "the destination", dst, bytes);
  const void *f = fake_real(d, "copy", "the source", src, bytes);
  if (fake_held(d, "copy"))
    return d->held_rc;
  memmove(t, f, bytes);
  return 0;
}

int fake_zero(void *ctx, void *p, size_t bytes) {
  void *t = fake_real(ctx, "zero", "the buffer", p, bytes);
  if (fake_held(ctx, "zero"))
    return ((fake_device *)ctx)->held_rc;
  memset(t, 0, bytes);
  return 0;
}

void fake_destroy(void *ctx) {
  fake_device *d = ctx;
  pthread_mutex_destroy(&d->lock);
  free(d->capture_scratch);
  free(d->pinned);
  free(d->arena);
  free(d->blocks);
  free(d);
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
    fake_die("create", "no host memory for a %zu-byte arena", arena_bytes);
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
    fake_die("create", "loom_backend_create failed");
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
  return fake_real(d, op, "the buffer", p, bytes);
}
