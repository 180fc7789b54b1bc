/* The CUDA backend's asynchronous uploads (loom/backend.h, the upload
 * slots): pinned host memory, the copy stream, a slot's events. */
#include <stdlib.h>

#include "backends/cuda/context.h"

/* An upload slot (loom/backend.h): `copied` is recorded on the copy stream
 * after its copies, `released` on the compute stream after the last op
 * that read its memory. */
struct loom_upload {
  cudaEvent_t copied, released;
};

void *loom_cuda_host_alloc(void *ctx, size_t bytes) {
  cuda_ctx *c = ctx;
  void *p = NULL;
  if (enter(c) < 0)
    return NULL;
  /* Portable: pinned for every device's context, as the loader's buffers
   * outlive no backend but may serve another device's after a move. */
  cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable);
  if (e != cudaSuccess) {
    cudaGetLastError(); /* not sticky */
    loom_cuda_error(e, c->device, "cudaHostAlloc (pinned batch memory)");
    return NULL;
  }
  return p;
}

void loom_cuda_host_free(void *ctx, void *ptr) {
  (void)ctx;
  cudaFreeHost(ptr);
}

void loom_cuda_upload_destroy(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  if (!u)
    return;
  if (enter(c) == 0) {
    if (u->copied) {
      cudaEventSynchronize(u->copied);
      cudaEventDestroy(u->copied);
    }
    if (u->released) {
      cudaEventSynchronize(u->released);
      cudaEventDestroy(u->released);
    }
  }
  free(u);
}

int loom_cuda_upload_create(void *ctx, loom_upload **out) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  loom_upload *u = calloc(1, sizeof *u);
  if (!u)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory for an upload slot");
  cudaError_t e = cudaEventCreateWithFlags(&u->copied, cudaEventDisableTiming);
  if (e == cudaSuccess)
    e = cudaEventCreateWithFlags(&u->released, cudaEventDisableTiming);
  if (e != cudaSuccess) {
    rc = loom_cuda_error(e, c->device, "cudaEventCreate (an upload slot)");
    loom_cuda_upload_destroy(c, u);
    return rc;
  }
  *out = u;
  return 0;
}

/* On the copy stream, after the compute stream's last release of the slot
 * (an event never recorded is complete): the copies, then `copied`. */
int loom_cuda_upload_start(void *ctx, loom_upload *u, const loom_upload_copy *copies, int count) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaStreamWaitEvent(c->copy_stream, u->released, 0), "cudaStreamWaitEvent (copy stream)");
  for (int i = 0; rc == 0 && i < count; i++)
    if (copies[i].bytes)
      rc = launched(c, cudaMemcpyAsync(copies[i].dst, copies[i].host, copies[i].bytes, cudaMemcpyHostToDevice,
                                       c->copy_stream),
                    "cudaMemcpyAsync (upload on the copy stream)");
  return rc < 0 ? rc : launched(c, cudaEventRecord(u->copied, c->copy_stream), "cudaEventRecord (upload copied)");
}

int loom_cuda_upload_wait(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  return rc < 0 ? rc : launched(c, cudaStreamWaitEvent(c->stream, u->copied, 0), "cudaStreamWaitEvent (upload)");
}

/* The compute stream's ops so far are the last readers; the host waits for
 * the copies (done already once the compute that waited for them was). */
int loom_cuda_upload_release(void *ctx, loom_upload *u) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc == 0)
    rc = launched(c, cudaEventRecord(u->released, c->stream), "cudaEventRecord (upload released)");
  return rc < 0 ? rc : launched(c, cudaEventSynchronize(u->copied), "cudaEventSynchronize (upload copied)");
}
