/* test_backend_ops: asynchronous uploads, the support listing, a missing
 * op's error, loom_backend_create's checks, tensors on a backend, and the
 * fake device's catches. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend_ops.h"

#include "fake_device.h"

/* --- asynchronous uploads --- */

/* Two batches through one upload slot, from pinned memory into two device
 * buffers, each read back after the compute stream waited for its copy:
 * the values copied, the second over the first once the slot was released. */
void test_upload(void **state) {
  loom_backend *b[MAX_BACKENDS];
  backends(state, b, LOOM_OP_COUNT);
  if (!loom_backend_can_upload_async(b[0])) {
    print_message("skipped: backend \"%s\" has no asynchronous uploads\n", loom_backend_name(b[0]));
    skip();
  }
  enum { NX = 1000, NY = 7 };
  float *hx = loom_backend_host_alloc(b[0], NX * sizeof(float)), *hy = loom_backend_host_alloc(b[0], NY * sizeof(float));
  float *dx = loom_backend_alloc(b[0], NX * sizeof(float)), *dy = loom_backend_alloc(b[0], NY * sizeof(float));
  assert_true(hx && hy && dx && dy);
  loom_upload *up;
  assert_int_equal(loom_backend_upload_create(b[0], &up), 0);
  float back[NX];
  for (int round = 0; round < 2; round++) {
    fill(hx, NX, 11u + (uint32_t)round), fill(hy, NY, 23u + (uint32_t)round);
    const loom_upload_copy copies[] = {{dx, hx, NX * sizeof(float)}, {dy, hy, NY * sizeof(float)}, {dy, hy, 0}};
    assert_int_equal(loom_backend_upload_start(b[0], up, copies, 3), 0);
    assert_int_equal(loom_backend_upload_wait(b[0], up), 0);
    assert_int_equal(loom_backend_scale(b[0], dy, 2.0f, NY), 0); /* an op after the wait reads the batch */
    assert_int_equal(loom_backend_to_host(b[0], back, dx, NX * sizeof(float)), 0);
    assert_memory_equal(back, hx, NX * sizeof(float));
    assert_int_equal(loom_backend_to_host(b[0], back, dy, NY * sizeof(float)), 0);
    for (int i = 0; i < NY; i++)
      assert_true(back[i] == 2.0f * hy[i]);
    assert_int_equal(loom_backend_upload_release(b[0], up), 0);
  }
  loom_backend_upload_destroy(b[0], up);
  loom_backend_free(b[0], dx), loom_backend_free(b[0], dy);
  loom_backend_host_free(b[0], hx), loom_backend_host_free(b[0], hy);
}

/* --- support, errors, creation --- */

void test_support_listing(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  for (size_t i = 0, n = backends(state, b, LOOM_OP_COUNT); i < n; i++) {
    print_message("%s:", loom_backend_name(b[i]));
    for (int op = 0; op < LOOM_OP_COUNT; op++)
      print_message(" %s=%s", loom_op_name((loom_op)op), loom_backend_supports(b[i], (loom_op)op) ? "yes" : "no");
    print_message("\n");
  }
  /* The CPU backend has every op: the reference the others are held to. */
  for (int op = 0; op < LOOM_OP_COUNT; op++)
    assert_true(loom_backend_supports(loom_backend_cpu(), (loom_op)op));
  assert_string_equal(loom_op_name(LOOM_OP_COUNT), "?");
}

static void *host_alloc(void *ctx, size_t bytes) { return ctx ? NULL : malloc(bytes); }
static void host_free(void *ctx, void *p) { (void)ctx, free(p); }
static int host_copy(void *ctx, void *dst, const void *src, size_t bytes) { return (void)ctx, memcpy(dst, src, bytes), 0; }
static int host_zero(void *ctx, void *p, size_t bytes) { return (void)ctx, memset(p, 0, bytes), 0; }
static int destroyed;
static void count_destroy(void *ctx) { (void)ctx, destroyed++; }

/* A backend with memory and no ops: every op says it is missing. */
void test_missing_op_is_reported(void **state) {
  (void)state;
  loom_backend_ops ops = {.name = "bare", .alloc = host_alloc, .free = host_free, .to_host = host_copy,
                          .from_host = host_copy, .copy = host_copy, .zero = host_zero, .destroy = count_destroy};
  loom_backend *b = loom_backend_create(&ops, NULL);
  assert_non_null(b);
  for (int op = 0; op < LOOM_OP_COUNT; op++)
    assert_false(loom_backend_supports(b, (loom_op)op));
  float x[4] = {0}, y[4];
  assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4), LOOM_ENOTSUP);
  assert_string_equal(loom_last_error(), "backend \"bare\" has no act_forward op; run this model on a backend that "
                                         "has it (the CPU backend has every op)");
  assert_int_equal(loom_backend_gemm(b, false, false, 1, 1, 1, 1, x, 1, x, 1, 0, y, 1), LOOM_ENOTSUP);
  assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_COUNT, 0, x, y, 4), LOOM_EINVAL);
  loom_plan *plan;
  const loom_conv_desc conv = {1, 3, 3, 1, 1, 1, 3, 3, 1, 1, 0, 0, 1, 1, true, LOOM_CONV_AUTO};
  assert_int_equal(loom_backend_conv_plan(b, &conv, &plan), LOOM_ENOTSUP);
  assert_null(plan);
  assert_string_equal(loom_last_error(), "backend \"bare\" has no conv_forward op; run this model on a backend "
                                         "that has it (the CPU backend has every op)");
  /* Without the block op nothing fuses: the layers run one by one. */
  const loom_layer_desc layers[2] = {{.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {1, 1, 1e-5f, 0.1f}},
                                     {.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}}};
  loom_block block = {.count = 9};
  assert_int_equal(loom_backend_plan_block(b, layers, 2, &block), 0);
  assert_int_equal(block.count, 0);
  assert_null(block.plan);
  /* Nor asynchronous uploads: each call says so. */
  assert_false(loom_backend_can_upload_async(b));
  assert_null(loom_backend_host_alloc(b, 64));
  assert_string_equal(loom_last_error(), "loom_backend_host_alloc: backend \"bare\" has no asynchronous uploads "
                                         "(pinned host memory and a copy stream); copy with loom_backend_from_host");
  loom_upload *up = (loom_upload *)&block;
  assert_int_equal(loom_backend_upload_create(b, &up), LOOM_ENOTSUP);
  assert_null(up);
  loom_backend_destroy(b);
  assert_int_equal(destroyed, 1);

  /* Some of the upload slots without the others: refused. */
  ops.host_alloc = host_alloc;
  assert_null(loom_backend_create(&ops, NULL));
  assert_non_null(strstr(loom_last_error(), "backend \"bare\" fills 1 of the 7 asynchronous upload slots"));
  assert_int_equal(destroyed, 2);
  ops.host_alloc = NULL;

  /* A backend without its memory slots is refused, and its context freed. */
  ops.copy = NULL;
  assert_null(loom_backend_create(&ops, NULL));
  assert_non_null(strstr(loom_last_error(), "backend \"bare\" must implement alloc, free, to_host, from_host, copy "
                                            "and zero"));
  assert_int_equal(destroyed, 3);
}

/* Tensors on a backend: created zeroed there, copied across, read on the host. */
void test_tensor_on_backend(void **state) {
  (void)state;
  loom_backend_ops ops = {.name = "device", .device = LOOM_DEVICE_CUDA, .alloc = host_alloc, .free = host_free,
                          .to_host = host_copy, .from_host = host_copy, .copy = host_copy, .zero = host_zero};
  loom_backend *dev = loom_backend_create(&ops, NULL);
  const int64_t shape[2] = {2, 3};
  loom_tensor *h = loom_tensor_create(2, shape), *d = loom_tensor_create_on(dev, 2, shape);
  assert_ptr_equal(loom_tensor_backend(d), dev);
  assert_null(loom_tensor_backend(h));
  const float *hd = loom_tensor_host_data(d);
  for (int i = 0; i < 6; i++)
    assert_true(hd[i] == 0.0f);
  for (int i = 0; i < 6; i++)
    loom_tensor_data(h)[i] = (float)i + 0.5f;
  assert_int_equal(loom_tensor_copy(d, h), 0); /* host -> device */
  hd = loom_tensor_host_data(d);
  assert_ptr_not_equal(hd, loom_tensor_data(d)); /* a host copy, not the device memory */
  for (int i = 0; i < 6; i++)
    assert_true(hd[i] == (float)i + 0.5f);
  loom_tensor *back = loom_tensor_create(1, shape);
  assert_int_equal(loom_tensor_copy(back, d), 0); /* device -> host, reshaped */
  assert_int_equal(loom_tensor_ndim(back), 2);
  assert_true(loom_tensor_data(back)[5] == 5.5f);
  assert_int_equal(loom_tensor_zero(d), 0);
  assert_true(loom_tensor_host_data(d)[5] == 0.0f);
  /* A host tensor's host data is its data. */
  assert_ptr_equal(loom_tensor_host_data(h), loom_tensor_data(h));
  loom_tensor_destroy(h), loom_tensor_destroy(d), loom_tensor_destroy(back);
  loom_backend_destroy(dev);
}

/* What the fake device is for: a host dereference of its memory faults
 * (ASan reports it), and host memory, or freed device memory, given to one
 * of its ops stops the program with a message naming the op and operand.
 * Each case runs in a child; *err gets its stderr. */
static int in_child(void (*body)(loom_backend *), loom_backend *b, char *err, size_t size) {
  int fd[2];
  assert_int_equal(pipe(fd), 0);
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    signal(SIGSEGV, SIG_DFL), signal(SIGBUS, SIG_DFL); /* cmocka's handler would carry on in the child */
    dup2(fd[1], 2);
    close(fd[0]);
    body(b);
    _exit(0);
  }
  close(fd[1]);
  size_t got = 0;
  ssize_t r;
  while (got + 1 < size && (r = read(fd[0], err + got, size - 1 - got)) > 0)
    got += (size_t)r;
  err[got] = '\0';
  close(fd[0]);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static void read_on_host(loom_backend *b) {
  float *p = loom_backend_alloc(b, 64);
  volatile float v = p[3];
  (void)v;
}
static void copy_on_host(loom_backend *b) {
  float *p = loom_backend_alloc(b, 64), host[4];
  memcpy(host, p, sizeof host);
  fprintf(stderr, "copied %g\n", (double)host[0]); /* not reached */
}
static void host_operand(loom_backend *b) {
  float x[4] = {0}, *y = loom_backend_alloc(b, sizeof x);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4);
}
static void freed_operand(loom_backend *b) {
  float *x = loom_backend_alloc(b, 64), *y = loom_backend_alloc(b, 64);
  loom_backend_free(b, x);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 4);
}
static void overrun(loom_backend *b) {
  float *x = loom_backend_alloc(b, 64), *y = loom_backend_alloc(b, 64);
  loom_backend_act_forward(b, LOOM_ACT_RELU, 0, x, y, 17);
}

/* Misuses of an upload slot, each what a copy stream would race on. */
typedef struct upload_case {
  loom_upload *up;
  float *host, *dev;
  loom_upload_copy copy;
} upload_case;
static upload_case upload_begin(loom_backend *b) {
  upload_case c = {.host = loom_backend_host_alloc(b, 64), .dev = loom_backend_alloc(b, 64)};
  loom_backend_upload_create(b, &c.up);
  c.copy = (loom_upload_copy){c.dev, c.host, 64};
  memset(c.host, 0, 64);
  return c;
}
static void upload_read_before_wait(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_scale(b, c.dev, 2.0f, 16);
}
static void upload_into_unreleased(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_wait(b, c.up);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_again_before_release(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_host_refilled(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_upload_wait(b, c.up);
  c.host[3] = 1.0f;
  loom_backend_upload_release(b, c.up);
}
static void upload_from_pageable(loom_backend *b) {
  upload_case c = upload_begin(b);
  float pageable[16] = {0};
  c.copy.host = pageable;
  loom_backend_upload_start(b, c.up, &c.copy, 1);
}
static void upload_free_before_wait(loom_backend *b) {
  upload_case c = upload_begin(b);
  loom_backend_upload_start(b, c.up, &c.copy, 1);
  loom_backend_free(b, c.dev);
}

void test_fake_device_catches_misuse(void **state) {
  (void)state;
  fake_device *dev;
  loom_backend *b = fake_device_create(1 << 20, &dev);
  char err[8192];
  void (*const faults[])(loom_backend *) = {read_on_host, copy_on_host};
  for (size_t i = 0; i < 2; i++) {
    int st = in_child(faults[i], b, err, sizeof err);
    /* SIGSEGV (a non-canonical address is a general protection fault) */
    if (!(WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGBUS)) && !strstr(err, "SEGV"))
      fail_msg("case %zu: a host dereference of device memory did not fault (status %d): %s", i, st, err);
  }
  static const char *const said[] = {
      "act_forward: x is host memory", "act_forward: x: 16 bytes at device offset", "act_forward: x: 68 bytes",
      "scale: x (device offset 0) is being uploaded into by upload slot",
      "is uploaded into while the compute stream may still read its last batch",
      "starts again before upload_release",
      "upload_release: the host memory upload slot",
      "upload_start: copy 0's 64 bytes at",
      "free: the pointer (device offset 0) is being uploaded into"};
  void (*const misuses[])(loom_backend *) = {host_operand,           freed_operand,          overrun,
                                             upload_read_before_wait, upload_into_unreleased, upload_again_before_release,
                                             upload_host_refilled,    upload_from_pageable,   upload_free_before_wait};
  for (size_t i = 0; i < sizeof misuses / sizeof *misuses; i++) {
    int st = in_child(misuses[i], b, err, sizeof err);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    if (!strstr(err, said[i]))
      fail_msg("case %zu: want \"%s\" in: %s", i, said[i], err);
  }
  /* In this process: allocations are counted, and transfers. */
  float h[4] = {1, 2, 3, 4}, back[4];
  float *p = loom_backend_alloc(b, sizeof h);
  assert_true(fake_device_owns(dev, p) && !fake_device_owns(dev, h));
  assert_int_equal(loom_backend_from_host(b, p, h, sizeof h), 0);
  assert_int_equal(loom_backend_to_host(b, back, p, sizeof back), 0);
  assert_memory_equal(back, h, sizeof h);
  fake_device_counts c = fake_device_counts_of(dev);
  assert_int_equal(c.live, 1);
  assert_int_equal(c.to_host, 1);
  assert_int_equal(c.from_host, 1);
  loom_backend_free(b, p);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  loom_backend_destroy(b);
}
