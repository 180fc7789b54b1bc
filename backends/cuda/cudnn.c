/* The CUDA backend's planned ops (loom/backend.h): convolution and
 * BatchNorm on cuDNN 9, pooling as kernels of kernels.cu. Built into the
 * module only when CMake found cuDNN's headers (LOOM_HAVE_CUDNN); backend.c
 * wires the slots, which stay empty (LOOM_ENOTSUP) otherwise. cuDNN itself
 * is loaded by the first convolution or BatchNorm (cudnn_api.h).
 *
 * - A plan serves one layer for any batch size: the tensor descriptors
 *   (and a convolution's algorithms) are set for the n of a call and kept
 *   until another n comes (a loader's last short batch, an evaluation's).
 * - A convolution's algorithms are cuDNN's search's (cudnnFind*Ex: timed
 *   on the call's buffers), made on a plan's first call for an n and kept
 *   for the process by shape (conv_cache.h), so that same-shape layers
 *   search once. The search is not capturable into a CUDA graph: capture
 *   after warm-up steps that met every shape (a call under capture, or
 *   whose search fails, takes the heuristics' choice instead).
 * - Workspaces and scratch come from the device's caching allocator for
 *   one call and go back after it: stream order makes that safe.
 * - Numerics: no TF32 unless loom_cuda_options.tf32 or autocast (a
 *   convolution's math type is CUDNN_FMA_MATH otherwise: cuDNN's default
 *   uses TF32 on Ampere and later), and deterministic algorithms only, so that a run repeats
 *   bit for bit.
 * - Pooling is not cuDNN's: cudnnPoolingBackward needs the forward's x and
 *   y, which pool_backward does not get (the plan keeps the max's
 *   positions instead), and finds a max by comparing x with y, which a NaN
 *   never equals. The kernels compute what backends/cpu/pool.c does, bit
 *   for bit.
 * - BatchNorm's backward after an evaluation forward (fixed statistics) has
 *   no cuDNN call: it is a kernel (loom_cuda_bn_eval_backward). */

/* cuDNN 9 marks all of its descriptor API deprecated in favour of the
 * graph API (cudnn_graph.h), which has no call for these layers: each
 * would be an operation graph built from backend descriptors, many times
 * this code for the same kernels. The calls are supported throughout
 * cuDNN 9 (PyTorch makes them too), so their warnings (given when
 * CUDNN_WARN_DEPRECATED is defined) are silenced, for this file only. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#include <cudnn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "backends/cuda/context.h"
#include "backends/cuda/conv_cache.h"
#include "backends/cuda/cudnn_api.h"
#include "backends/cuda/kernels.h"

typedef enum { PLAN_CONV = 1, PLAN_POOL, PLAN_BATCHNORM } plan_kind;
struct loom_plan {
  plan_kind kind;
};

/* The most workspace a convolution algorithm chosen for speed may take;
 * past it the next is tried, down to one that needs none or little. The
 * search is given this much (from the caching allocator, for the search). */
#define CONV_WORKSPACE_MAX ((size_t)256 << 20)
/* The shapes (with batch size) whose searched algorithms the process
 * keeps; past it the oldest are searched again when met again. */
#define CONV_CACHE_ENTRIES 1024

static const float one = 1.0f, zero = 0.0f;

/* The error for a failed cuDNN call, with cuDNN's own account of it. */
static int dnn_error(cudnnStatus_t st, int device, const char *what) {
  char detail[256] = "";
  cudnnGetLastErrorString(detail, sizeof detail);
  int code = LOOM_EIO;
  if (st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
      st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
    code = LOOM_ENOMEM;
  else if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED)
    code = LOOM_ENOTSUP;
  else if (CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_BAD_PARAM)
    code = LOOM_EINVAL;
  return libloom->error_set(code, "CUDA backend (device %d): %s failed: %s%s%s", device, what,
                            cudnnGetErrorString(st), detail[0] ? ": " : "", detail);
}

/* 0, or the error of a failed call. */
static int dnn_ok(const cuda_ctx *c, cudnnStatus_t st, const char *what) {
  return st == CUDNN_STATUS_SUCCESS ? 0 : dnn_error(st, c->device, what);
}

/* The context's cuDNN handle, made on first use: a program that runs no
 * convolution or BatchNorm never loads cuDNN (cudnn_api.h). */
static int dnn_handle(cuda_ctx *c) {
  if (c->dnn)
    return 0;
  int loaded = loom_cudnn_load();
  if (loaded < 0)
    return loaded;
  cudnnHandle_t h;
  cudnnStatus_t st = cudnnCreate(&h);
  if (st != CUDNN_STATUS_SUCCESS)
    return libloom->error_set(st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ? LOOM_ENOMEM : LOOM_ENOTSUP,
                              "CUDA backend (device %d): cudnnCreate failed: %s: convolution and BatchNorm need "
                              "cuDNN 9's libraries (libcudnn*.so.9, all of one version) where the loader finds them",
                              c->device, cudnnGetErrorString(st));
  int rc = dnn_ok(c, cudnnSetStream(h, c->stream), "cudnnSetStream");
  if (rc < 0) {
    cudnnDestroy(h);
    return rc;
  }
  c->dnn = h;
  return 0;
}

void loom_cudnn_release(cuda_ctx *c) {
  if (c->dnn)
    cudnnDestroy(c->dnn);
  c->dnn = NULL;
}

/* The device and the handle, for a plan's first call. */
static int dnn_enter(cuda_ctx *c) {
  int rc = enter(c);
  return rc < 0 ? rc : dnn_handle(c);
}

static bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

/* A 4-d float tensor, sizes checked against cuDNN's ints. */
static int set_tensor(const cuda_ctx *c, cudnnTensorDescriptor_t t, int64_t n, int64_t ch, int64_t h, int64_t w) {
  if (!fits_int(n) || !fits_int(ch * h * w) || !fits_int(n * ch * h * w))
    return libloom->error_set(LOOM_EINVAL,
                              "CUDA backend: a tensor of %lld x %lld x %lld x %lld floats is past cuDNN's int sizes: "
                              "use smaller batches",
                              (long long)n, (long long)ch, (long long)h, (long long)w);
  return dnn_ok(c, cudnnSetTensor4dDescriptor(t, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, (int)n, (int)ch, (int)h, (int)w),
                "cudnnSetTensor4dDescriptor");
}

/* `bytes` of scratch for the call (none for 0); NULL only with the error. */
static int scratch_get(cuda_ctx *c, size_t bytes, void **out) {
  *out = NULL;
  if (bytes && !(*out = libloom->alloc_get(c->alloc, bytes, c->stream)))
    return libloom->last_error_code();
  return 0;
}

/* --- convolution --- */

typedef struct dnn_conv {
  struct loom_plan base;
  loom_conv_desc d;
  cudnnTensorDescriptor_t x, y, bias;
  cudnnFilterDescriptor_t w;
  cudnnConvolutionDescriptor_t conv;
  int64_t n; /* the batch size of x, y and the algorithms; 0: none yet */
  cudnnConvolutionFwdAlgo_t fwd;
  cudnnConvolutionBwdDataAlgo_t bwd_data;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter;
  size_t fwd_bytes, data_bytes, filter_bytes; /* their workspaces */
  /* Tensor Core math: TF32 asked for, or the plan made under autocast,
   * whose operands come rounded to bf16 or fp16 (models/conv2d.c), values
   * TF32 holds exactly; the layer makes its plan again when autocast
   * changes. */
  bool tensor_ops;
} dnn_conv;

typedef enum { FORWARD, BACKWARD_DATA, BACKWARD_FILTER } direction;
static const char *const direction_name[] = {"forward", "backward-data", "backward-filter"};

/* cudnnGet*WorkspaceSize of `algo` in `dir`: not supported where the
 * algorithm cannot run these shapes with this math type. */
static cudnnStatus_t workspace_of(const cuda_ctx *c, const dnn_conv *p, direction dir, int algo, size_t *bytes) {
  switch (dir) {
  case FORWARD:
    return cudnnGetConvolutionForwardWorkspaceSize(c->dnn, p->x, p->w, p->conv, p->y, (cudnnConvolutionFwdAlgo_t)algo,
                                                   bytes);
  case BACKWARD_DATA:
    return cudnnGetConvolutionBackwardDataWorkspaceSize(c->dnn, p->w, p->y, p->conv, p->x,
                                                        (cudnnConvolutionBwdDataAlgo_t)algo, bytes);
  default:
    return cudnnGetConvolutionBackwardFilterWorkspaceSize(c->dnn, p->x, p->y, p->conv, p->w,
                                                          (cudnnConvolutionBwdFilterAlgo_t)algo, bytes);
  }
}

/* Keeps a heuristic's or a search's result when it runs, is
 * deterministic, and uses no Tensor Core math unless TF32 was asked for. */
#define KEEP_RANKED(perf, got)                                                                                        \
  for (int i = 0; i < (got) && *count < max; i++)                                                                      \
    if ((perf)[i].status == CUDNN_STATUS_SUCCESS && (perf)[i].determinism == CUDNN_DETERMINISTIC &&                   \
        (p->tensor_ops || (perf)[i].mathType == CUDNN_FMA_MATH || (perf)[i].mathType == CUDNN_DEFAULT_MATH))                \
    algos[(*count)++] = (int)(perf)[i].algo

/* Room for every algorithm of a direction in each math type (a ranking
 * lists an algorithm once per math type it runs in). */
#define RANKED_MAX (2 * CUDNN_CONVOLUTION_FWD_ALGO_COUNT)
_Static_assert((int)CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT <= (int)CUDNN_CONVOLUTION_FWD_ALGO_COUNT &&
                   (int)CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT <= (int)CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
               "RANKED_MAX holds every direction's algorithms");

/* What cuDNN's search runs on (cudnnFind*AlgorithmEx): x and w as the call
 * has them, dy (a forward's y, written by the forward's search first),
 * and outputs it may overwrite: the call's own y or dx, which the call
 * writes after it, else scratch; dw always scratch (the call adds to its
 * dw). And a workspace of CONV_WORKSPACE_MAX, so that no algorithm past
 * the bound is timed. */
typedef struct search_bufs {
  const void *x, *w, *dy;
  void *y, *dx, *dw;
  void *ws;
  void *held[4]; /* from the caching allocator, back after the search */
  int nheld;
} search_bufs;

/* The buffers of a call: a forward's (dy NULL) or a backward's (y NULL;
 * dx NULL where the caller wants none). */
typedef struct conv_io {
  const float *x, *w, *dy;
  float *y, *dx;
} conv_io;

static void search_release(const cuda_ctx *c, search_bufs *s) {
  for (int i = 0; i < s->nheld; i++) /* never under a capture (may_search) */
    libloom->alloc_put(c->alloc, s->held[i]);
  s->nheld = 0;
}

/* `*slot` as it is, or `bytes` of scratch; false when the allocator has none. */
static bool search_scratch(const cuda_ctx *c, search_bufs *s, void **slot, size_t bytes) {
  if (*slot)
    return true;
  if (!(*slot = libloom->alloc_get(c->alloc, bytes, c->stream)))
    return false;
  s->held[s->nheld++] = *slot;
  return true;
}

/* The search's buffers for batch size n; false (nothing held) when memory
 * for them is short: the heuristics choose instead. */
static bool search_prepare(const cuda_ctx *c, const dnn_conv *p, const conv_io *io, int64_t n, search_bufs *s) {
  const loom_conv_desc *d = &p->d;
  *s = (search_bufs){.x = io->x, .w = io->w, .y = io->y, .dx = io->dx};
  const size_t nx = (size_t)(n * d->cin * d->h * d->w), ny = (size_t)(n * d->cout * d->oh * d->ow),
               nw = (size_t)(d->cout * d->cin * d->kh * d->kw);
  if (search_scratch(c, s, &s->ws, CONV_WORKSPACE_MAX) && search_scratch(c, s, &s->y, ny * sizeof(float)) &&
      search_scratch(c, s, &s->dx, nx * sizeof(float)) && search_scratch(c, s, &s->dw, nw * sizeof(float))) {
    s->dy = io->dy ? io->dy : s->y;
    return true;
  }
  search_release(c, s);
  return false;
}

/* Appends cuDNN's ranking of the algorithms for `dir`, filtered: its
 * search's on `s`'s buffers (fastest measured first), or its heuristics'
 * without them (s NULL). Where the search fails, nothing is appended and
 * no error left: the heuristics then choose. */
static cudnnStatus_t add_ranked(const cuda_ctx *c, const dnn_conv *p, const search_bufs *s, direction dir, int *algos,
                                int *count, int max) {
  int got = 0;
  cudnnStatus_t st;
  if (dir == FORWARD) {
    cudnnConvolutionFwdAlgoPerf_t perf[RANKED_MAX];
    st = s ? cudnnFindConvolutionForwardAlgorithmEx(c->dnn, p->x, s->x, p->w, s->w, p->conv, p->y, s->y, RANKED_MAX,
                                                    &got, perf, s->ws, CONV_WORKSPACE_MAX)
           : cudnnGetConvolutionForwardAlgorithm_v7(c->dnn, p->x, p->w, p->conv, p->y, RANKED_MAX, &got, perf);
    if (st == CUDNN_STATUS_SUCCESS)
      KEEP_RANKED(perf, got);
  } else if (dir == BACKWARD_DATA) {
    cudnnConvolutionBwdDataAlgoPerf_t perf[RANKED_MAX];
    st = s ? cudnnFindConvolutionBackwardDataAlgorithmEx(c->dnn, p->w, s->w, p->y, s->dy, p->conv, p->x, s->dx,
                                                         RANKED_MAX, &got, perf, s->ws, CONV_WORKSPACE_MAX)
           : cudnnGetConvolutionBackwardDataAlgorithm_v7(c->dnn, p->w, p->y, p->conv, p->x, RANKED_MAX, &got, perf);
    if (st == CUDNN_STATUS_SUCCESS)
      KEEP_RANKED(perf, got);
  } else {
    cudnnConvolutionBwdFilterAlgoPerf_t perf[RANKED_MAX];
    st = s ? cudnnFindConvolutionBackwardFilterAlgorithmEx(c->dnn, p->x, s->x, p->y, s->dy, p->conv, p->w, s->dw,
                                                           RANKED_MAX, &got, perf, s->ws, CONV_WORKSPACE_MAX)
           : cudnnGetConvolutionBackwardFilterAlgorithm_v7(c->dnn, p->x, p->y, p->conv, p->w, RANKED_MAX, &got, perf);
    if (st == CUDNN_STATUS_SUCCESS)
      KEEP_RANKED(perf, got);
  }
  if (s && st != CUDNN_STATUS_SUCCESS)
    cudaGetLastError(); /* a failed allocation of the search's own is not sticky: clear it */
  return st;
}

/* The heuristics' ranking for `dir`, filtered; 0 or the error. */
static int add_heuristic(const cuda_ctx *c, const dnn_conv *p, direction dir, int *algos, int *count, int max) {
  return dnn_ok(c, add_ranked(c, p, NULL, dir, algos, count, max), "cudnnGetConvolution*Algorithm_v7");
}

/* The first of `algos` that runs these shapes within CONV_WORKSPACE_MAX
 * (the last one whatever its workspace: the one that always runs). */
static int first_running(const cuda_ctx *c, const dnn_conv *p, direction dir, const int *algos, int count, int *algo,
                         size_t *bytes) {
  cudnnStatus_t st = CUDNN_STATUS_NOT_SUPPORTED;
  for (int i = 0; i < count; i++) {
    st = workspace_of(c, p, dir, algos[i], bytes);
    if (st == CUDNN_STATUS_SUCCESS && (*bytes <= CONV_WORKSPACE_MAX || i == count - 1)) {
      *algo = algos[i];
      return 0;
    }
  }
  char what[160];
  snprintf(what, sizeof what,
           "choosing a deterministic %s algorithm for a %lldx%lld convolution (%lld to %lld channels)",
           direction_name[dir], (long long)p->d.kh, (long long)p->d.kw, (long long)p->d.cin, (long long)p->d.cout);
  return dnn_error(st == CUDNN_STATUS_SUCCESS ? CUDNN_STATUS_NOT_SUPPORTED : st, c->device, what);
}

/* The algorithms for batch size n, ranked by cuDNN's search on `s`'s
 * buffers, or by its heuristics without them (s NULL) or where a search
 * fails (*searched then false). The forward's follows the descriptor:
 * IM2COL an implicit GEMM (a plain dot product per output: the tightest
 * rounding; no search), WINOGRAD cuDNN's Winograd where it runs, AUTO the
 * fastest; each falls back to IMPLICIT_GEMM, which runs any shape without
 * workspace. The backward's are the fastest deterministic ones (the
 * ALGO_0s add with atomics) the search measured, else ALGO_1; the
 * heuristics try ALGO_1 first, then their ranking. */
static int choose_algorithms(const cuda_ctx *c, dnn_conv *p, const search_bufs *s, bool *searched) {
  int algos[RANKED_MAX + 3], count = 0, algo = 0, rc = 0;
  if (p->d.algorithm == LOOM_CONV_IM2COL)
    algos[count++] = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
  else {
    if (p->d.algorithm == LOOM_CONV_WINOGRAD) {
      algos[count++] = CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD;
      algos[count++] = CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    }
    if (!s || add_ranked(c, p, s, FORWARD, algos, &count, RANKED_MAX + 2) != CUDNN_STATUS_SUCCESS) {
      *searched = false;
      rc = add_heuristic(c, p, FORWARD, algos, &count, RANKED_MAX + 2);
    }
  }
  algos[count++] = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  if (rc == 0 && (rc = first_running(c, p, FORWARD, algos, count, &algo, &p->fwd_bytes)) == 0)
    p->fwd = (cudnnConvolutionFwdAlgo_t)algo;

  static const int algo_1[] = {[BACKWARD_DATA] = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
                               [BACKWARD_FILTER] = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1};
  size_t *const bytes[] = {[BACKWARD_DATA] = &p->data_bytes, [BACKWARD_FILTER] = &p->filter_bytes};
  for (direction dir = BACKWARD_DATA; rc == 0 && dir <= BACKWARD_FILTER; dir++) {
    count = 0;
    if (s && add_ranked(c, p, s, dir, algos, &count, RANKED_MAX) == CUDNN_STATUS_SUCCESS)
      algos[count++] = algo_1[dir];
    else {
      *searched = false;
      algos[count++] = algo_1[dir];
      rc = add_heuristic(c, p, dir, algos, &count, RANKED_MAX + 1);
    }
    if (rc == 0 && (rc = first_running(c, p, dir, algos, count, &algo, bytes[dir])) == 0) {
      if (dir == BACKWARD_DATA)
        p->bwd_data = (cudnnConvolutionBwdDataAlgo_t)algo;
      else
        p->bwd_filter = (cudnnConvolutionBwdFilterAlgo_t)algo;
    }
  }
  return rc;
}

/* The process's searched choices, by shape (conv_shape): made on the first
 * search; NULL when out of memory (every plan then searches). */
static loom_conv_cache *conv_cache;
static uv_once_t conv_cache_once = UV_ONCE_INIT;
static void conv_cache_init(void) { conv_cache = loom_conv_cache_create(CONV_CACHE_ENTRIES); }

static loom_conv_key conv_key(const cuda_ctx *c, const dnn_conv *p, int64_t n) {
  const loom_conv_desc *d = &p->d;
  return (loom_conv_key){.device = c->device, .n = n, .cin = d->cin, .h = d->h, .w = d->w, .cout = d->cout,
                         .kh = d->kh, .kw = d->kw, .sh = d->sh, .sw = d->sw, .ph = d->ph, .pw = d->pw, .dh = d->dh,
                         .dw = d->dw, .algorithm = d->algorithm, .tensor_ops = p->tensor_ops};
}

/* Whether a search may run now: not when the backend was asked for the
 * heuristics (loom_cuda_options.conv_heuristics), nor while `stream` is
 * being captured into a CUDA graph (the search synchronizes and times:
 * not capturable). */
static bool may_search(const cuda_ctx *c) {
  if (c->conv_heuristics)
    return false;
  enum cudaStreamCaptureStatus capture;
  if (cudaStreamIsCapturing(c->stream, &capture) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return capture == cudaStreamCaptureStatusNone;
}

/* x, y and the algorithms for batch size n (kept while n stays): the
 * cache's for this shape, else searched on the call's buffers `io` (and
 * cached), else the heuristics' (not cached: a later plan searches). */
static int conv_shape(const cuda_ctx *c, dnn_conv *p, int64_t n, const conv_io *io) {
  if (n == p->n)
    return 0;
  p->n = 0; /* until all of it is set */
  const loom_conv_desc *d = &p->d;
  int rc = set_tensor(c, p->x, n, d->cin, d->h, d->w);
  if (rc == 0)
    rc = set_tensor(c, p->y, n, d->cout, d->oh, d->ow);
  if (rc < 0)
    return rc;
  uv_once(&conv_cache_once, conv_cache_init);
  const loom_conv_key key = conv_key(c, p, n);
  loom_conv_algos a;
  if (conv_cache && loom_conv_cache_find(conv_cache, &key, &a)) {
    p->fwd = (cudnnConvolutionFwdAlgo_t)a.fwd;
    p->bwd_data = (cudnnConvolutionBwdDataAlgo_t)a.bwd_data;
    p->bwd_filter = (cudnnConvolutionBwdFilterAlgo_t)a.bwd_filter;
    p->fwd_bytes = a.fwd_bytes, p->data_bytes = a.data_bytes, p->filter_bytes = a.filter_bytes;
    p->n = n;
    return 0;
  }
  search_bufs s;
  bool searched = may_search(c) && search_prepare(c, p, io, n, &s);
  const bool search = searched;
  rc = choose_algorithms(c, p, search ? &s : NULL, &searched);
  if (search)
    search_release(c, &s);
  if (rc < 0)
    return rc;
  if (searched && conv_cache) {
    a = (loom_conv_algos){.fwd = p->fwd, .bwd_data = p->bwd_data, .bwd_filter = p->bwd_filter,
                          .fwd_bytes = p->fwd_bytes, .data_bytes = p->data_bytes, .filter_bytes = p->filter_bytes};
    loom_conv_cache_put(conv_cache, &key, &a);
  }
  p->n = n;
  return 0;
}

static void conv_free(dnn_conv *p) {
  if (p->x)
    cudnnDestroyTensorDescriptor(p->x);
  if (p->y)
    cudnnDestroyTensorDescriptor(p->y);
  if (p->bias)
    cudnnDestroyTensorDescriptor(p->bias);
  if (p->w)
    cudnnDestroyFilterDescriptor(p->w);
  if (p->conv)
    cudnnDestroyConvolutionDescriptor(p->conv);
  free(p);
}

static bool conv_desc_ok(const loom_conv_desc *d) {
  const int64_t sizes[] = {d->cin, d->h, d->w, d->cout, d->oh, d->ow, d->kh, d->kw, d->sh, d->sw, d->dh, d->dw};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (sizes[i] < 1 || sizes[i] > INT_MAX)
      return false;
  return d->ph >= 0 && d->pw >= 0 && d->ph <= INT_MAX && d->pw <= INT_MAX &&
         d->oh == (d->h + 2 * d->ph - d->dh * (d->kh - 1) - 1) / d->sh + 1 &&
         d->ow == (d->w + 2 * d->pw - d->dw * (d->kw - 1) - 1) / d->sw + 1;
}

int loom_cudnn_conv_plan(void *ctx, const loom_conv_desc *d, loom_plan **plan) {
  cuda_ctx *c = ctx;
  *plan = NULL;
  if (!conv_desc_ok(d))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: conv_plan: sizes, kernel, stride and dilation >= 1, "
                                           "padding >= 0, and oh, ow the output's size for them");
  if (d->algorithm == LOOM_CONV_WINOGRAD &&
      !(d->kh == 3 && d->kw == 3 && d->sh == 1 && d->sw == 1 && d->dh == 1 && d->dw == 1))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: conv_plan: the Winograd algorithm needs a 3x3 kernel of "
                                           "stride 1 and dilation 1; use im2col or auto");
  int rc = dnn_enter(c);
  if (rc < 0)
    return rc;
  dnn_conv *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a convolution plan");
  p->base.kind = PLAN_CONV;
  p->d = *d;
  p->tensor_ops = c->tf32 || libloom->autocast() != LOOM_PRECISION_FP32;
  if ((rc = dnn_ok(c, cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnCreateTensorDescriptor(&p->y), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnCreateTensorDescriptor(&p->bias), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnCreateFilterDescriptor(&p->w), "cudnnCreateFilterDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnCreateConvolutionDescriptor(&p->conv), "cudnnCreateConvolutionDescriptor")) < 0 ||
      (rc = set_tensor(c, p->bias, 1, d->cout, 1, 1)) < 0 ||
      (rc = dnn_ok(c,
                   cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)d->cout, (int)d->cin,
                                              (int)d->kh, (int)d->kw),
                   "cudnnSetFilter4dDescriptor")) < 0 ||
      /* PyTorch's Conv2d is a cross-correlation (no flipped kernel). */
      (rc = dnn_ok(c,
                   cudnnSetConvolution2dDescriptor(p->conv, (int)d->ph, (int)d->pw, (int)d->sh, (int)d->sw,
                                                   (int)d->dh, (int)d->dw, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                   "cudnnSetConvolution2dDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnSetConvolutionMathType(p->conv, p->tensor_ops ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
                   "cudnnSetConvolutionMathType")) < 0) {
    conv_free(p);
    return rc;
  }
  *plan = &p->base;
  return 0;
}

int loom_cudnn_conv_forward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *bias, float *y,
                            int64_t n) {
  cuda_ctx *c = ctx;
  dnn_conv *p = (dnn_conv *)plan;
  if (n == 0)
    return 0;
  void *ws;
  int rc = dnn_enter(c);
  if (rc == 0)
    rc = conv_shape(c, p, n, &(conv_io){.x = x, .w = w, .y = y});
  if (rc == 0)
    rc = scratch_get(c, p->fwd_bytes, &ws);
  if (rc < 0)
    return rc;
  rc = dnn_ok(c,
              cudnnConvolutionForward(c->dnn, &one, p->x, x, p->w, w, p->conv, p->fwd, ws, p->fwd_bytes, &zero, p->y,
                                      y),
              "cudnnConvolutionForward");
  loom_cuda_put(c, ws);
  if (rc == 0 && bias)
    rc = dnn_ok(c, cudnnAddTensor(c->dnn, &one, p->bias, bias, &one, p->y, y), "cudnnAddTensor");
  return rc;
}

/* dw and dbias accumulate (beta 1), dx is overwritten (beta 0); the bias's
 * gradient is taken with the weights' (both or neither). */
int loom_cudnn_conv_backward(void *ctx, loom_plan *plan, const float *x, const float *w, const float *dy, float *dw,
                             float *dbias, float *dx, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_conv *p = (dnn_conv *)plan;
  if (n == 0 || (!dw && !dx))
    return 0;
  void *ws;
  int rc = dnn_enter(c);
  if (rc == 0)
    rc = conv_shape(c, p, n, &(conv_io){.x = x, .w = w, .dy = dy, .dx = dx});
  const size_t filter_bytes = dw ? p->filter_bytes : 0, data_bytes = dx ? p->data_bytes : 0;
  if (rc == 0)
    rc = scratch_get(c, filter_bytes > data_bytes ? filter_bytes : data_bytes, &ws);
  if (rc < 0)
    return rc;
  if (dw && dbias)
    rc = dnn_ok(c, cudnnConvolutionBackwardBias(c->dnn, &one, p->y, dy, &one, p->bias, dbias),
                "cudnnConvolutionBackwardBias");
  if (rc == 0 && dw)
    rc = dnn_ok(c,
                cudnnConvolutionBackwardFilter(c->dnn, &one, p->x, x, p->y, dy, p->conv, p->bwd_filter, ws,
                                               filter_bytes, &one, p->w, dw),
                "cudnnConvolutionBackwardFilter");
  if (rc == 0 && dx)
    rc = dnn_ok(c,
                cudnnConvolutionBackwardData(c->dnn, &one, p->w, w, p->y, dy, p->conv, p->bwd_data, ws, data_bytes,
                                             &zero, p->x, dx),
                "cudnnConvolutionBackwardData");
  loom_cuda_put(c, ws);
  return rc;
}

/* --- pooling (kernels.cu) --- */

/* A step graph captured with the plan keeps writing its argmax, so one
 * outgrown stays the plan's (retired) until the plan goes, when the
 * core has dropped the graphs that name the plan. */
#define POOL_RETIRED 8

typedef struct dnn_pool {
  struct loom_plan base;
  loom_pool_desc d;
  int32_t *argmax; /* device: the max's positions of the last forward */
  int64_t cap;     /* its elements */
  void *retired[POOL_RETIRED]; /* outgrown argmax blocks (each at least twice the last) */
  int nretired;
} dnn_pool;

int loom_cudnn_pool_plan(void *ctx, const loom_pool_desc *d, loom_plan **plan) {
  (void)ctx;
  *plan = NULL;
  const bool global = d->mode == LOOM_POOL_GLOBAL_AVG;
  if (d->mode > LOOM_POOL_GLOBAL_AVG || d->c < 1 || d->h < 1 || d->w < 1 || d->h * d->w > INT32_MAX ||
      (!global &&
       (d->k < 1 || d->s < 1 || d->p < 0 || d->p > d->k / 2 || d->oh != (d->h + 2 * d->p - d->k) / d->s + 1 ||
        d->ow != (d->w + 2 * d->p - d->k) / d->s + 1 || d->oh < 1 || d->ow < 1)))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: pool_plan: a known mode, sizes >= 1 (a plane of at most "
                                           "2^31 - 1 values), kernel and stride >= 1, 0 <= padding <= kernel/2, and "
                                           "oh, ow the output's size for them");
  dnn_pool *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a pooling plan");
  p->base.kind = PLAN_POOL;
  p->d = *d;
  if (global)
    p->d.oh = p->d.ow = 1;
  *plan = &p->base;
  return 0;
}

int loom_cudnn_pool_forward(void *ctx, loom_plan *plan, const float *x, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_pool *p = (dnn_pool *)plan;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  const int64_t need = p->d.mode == LOOM_POOL_MAX ? n * p->d.c * p->d.oh * p->d.ow : 0;
  if (need > p->cap) {
    /* At least double, so that few blocks retire; one that does not fit
     * the list goes back to the allocator (reused in stream order). */
    const int64_t cap = need > 2 * p->cap ? need : 2 * p->cap;
    int32_t *grown = libloom->alloc_get(c->alloc, (size_t)cap * sizeof *grown, c->stream);
    if (!grown)
      return libloom->last_error_code();
    if (p->argmax && p->nretired < POOL_RETIRED)
      p->retired[p->nretired++] = p->argmax;
    else
      loom_cuda_put(c, p->argmax);
    p->argmax = grown, p->cap = cap;
  }
  return launched(c, loom_cuda_pool_forward(c->stream, p->d, x, y, p->argmax, n), "pool_forward");
}

int loom_cudnn_pool_backward(void *ctx, loom_plan *plan, const float *dy, float *dx, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_pool *p = (dnn_pool *)plan;
  if (p->d.mode == LOOM_POOL_MAX && n * p->d.c * p->d.oh * p->d.ow > p->cap)
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: pool_backward of %lld samples without a forward of them "
                                           "before (the max's positions are the forward's)",
                              (long long)n);
  int rc = enter(c);
  if (rc < 0)
    return rc;
  return launched(c, loom_cuda_pool_backward(c->stream, p->d, dy, p->argmax, dx, n), "pool_backward");
}

/* --- BatchNorm --- */

typedef struct dnn_bn {
  struct loom_plan base;
  loom_batchnorm_desc d;
  cudnnTensorDescriptor_t x;     /* [n][c][spatial][1] */
  cudnnTensorDescriptor_t stats; /* [1][c][1][1]: gamma, beta, the statistics */
  int64_t n;                     /* x's batch size; 0: none yet */
  float *mean, *invstd;          /* device [c] each: the last forward's statistics */
  bool last_train;
} dnn_bn;

static void bn_free(cuda_ctx *c, dnn_bn *p) {
  if (p->x)
    cudnnDestroyTensorDescriptor(p->x);
  if (p->stats)
    cudnnDestroyTensorDescriptor(p->stats);
  loom_cuda_put(c, p->mean);
  free(p);
}

int loom_cudnn_batchnorm_plan(void *ctx, const loom_batchnorm_desc *d, loom_plan **plan) {
  cuda_ctx *c = ctx;
  *plan = NULL;
  if (d->c < 1 || d->spatial < 1 || !fits_int(d->c) || !fits_int(d->spatial) || !(d->momentum >= 0) ||
      !(d->momentum <= 1))
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: batchnorm_plan: channels and spatial size >= 1, momentum "
                                           "in [0, 1]");
  if (!(d->eps > 0) || d->eps < CUDNN_BN_MIN_EPSILON)
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: batchnorm_plan: eps is %g; cuDNN needs eps > 0 and >= %g "
                                           "(CUDNN_BN_MIN_EPSILON)",
                              (double)d->eps, (double)CUDNN_BN_MIN_EPSILON);
  int rc = dnn_enter(c);
  if (rc < 0)
    return rc;
  dnn_bn *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a BatchNorm plan");
  p->base.kind = PLAN_BATCHNORM;
  p->d = *d;
  if ((rc = dnn_ok(c, cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = dnn_ok(c, cudnnCreateTensorDescriptor(&p->stats), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = set_tensor(c, p->stats, 1, d->c, 1, 1)) < 0 ||
      (rc = scratch_get(c, 2 * (size_t)d->c * sizeof(float), (void **)&p->mean)) < 0) {
    bn_free(c, p);
    return rc;
  }
  p->invstd = p->mean + d->c;
  *plan = &p->base;
  return 0;
}

static int bn_shape(const cuda_ctx *c, dnn_bn *p, int64_t n) {
  if (n == p->n)
    return 0;
  p->n = 0;
  int rc = set_tensor(c, p->x, n, p->d.c, p->d.spatial, 1);
  if (rc == 0)
    p->n = n;
  return rc;
}

/* Training: cuDNN's statistics, its running variance the unbiased one
 * with `momentum` as exponentialAverageFactor (PyTorch's update).
 * Evaluation: the running statistics, kept for the backward as mean and
 * invstd (the CPU's floats). */
int loom_cudnn_batchnorm_forward(void *ctx, loom_plan *plan, bool train, const float *x, const float *gamma,
                                 const float *beta, float *running_mean, float *running_var, float *y, int64_t n) {
  cuda_ctx *c = ctx;
  dnn_bn *p = (dnn_bn *)plan;
  if (n == 0)
    return 0;
  if (train && n * p->d.spatial < 2) /* the unbiased variance of one value divides by zero */
    return libloom->error_set(LOOM_EINVAL, "CUDA backend: BatchNorm in training needs more than one value per "
                                           "channel (a batch of %lld x %lld): use larger batches",
                              (long long)n, (long long)p->d.spatial);
  int rc = dnn_enter(c);
  if (rc == 0)
    rc = bn_shape(c, p, n);
  if (rc < 0)
    return rc;
  p->last_train = train;
  if (train)
    return dnn_ok(c,
                  cudnnBatchNormalizationForwardTraining(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, p->x, x, p->x, y,
                                                         p->stats, gamma, beta, (double)p->d.momentum, running_mean,
                                                         running_var, (double)p->d.eps, p->mean, p->invstd),
                  "cudnnBatchNormalizationForwardTraining");
  rc = dnn_ok(c,
              cudnnBatchNormalizationForwardInference(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, p->x, x, p->x, y,
                                                      p->stats, gamma, beta, running_mean, running_var,
                                                      (double)p->d.eps),
              "cudnnBatchNormalizationForwardInference");
  if (rc == 0)
    rc = launched(c,
                  loom_cuda_bn_eval_stats(c->stream, running_mean, running_var, p->d.eps, p->d.c, p->mean, p->invstd),
                  "batchnorm_forward (the running statistics kept)");
  return rc;
}

/* After a training forward, cuDNN's backward through the batch statistics,
 * with scratch for what the caller does not want (cuDNN writes dx, dgamma
 * and dbeta always); after an evaluation forward, the kernel. */
int loom_cudnn_batchnorm_backward(void *ctx, loom_plan *plan, const float *x, const float *gamma, const float *beta,
                                  const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n) {
  (void)beta; /* the output's gradient does not depend on it */
  cuda_ctx *c = ctx;
  dnn_bn *p = (dnn_bn *)plan;
  const int64_t C = p->d.c, nx = n * C * p->d.spatial;
  if (n == 0 || (!dgamma && !dx))
    return 0;
  int rc = dnn_enter(c);
  if (rc == 0)
    rc = bn_shape(c, p, n);
  if (rc < 0)
    return rc;
  if (!p->last_train)
    return launched(c,
                    loom_cuda_bn_eval_backward(c->stream, x, gamma, p->mean, p->invstd, dy, dgamma, dbeta, dx, n, C,
                                               p->d.spatial),
                    "batchnorm_backward (evaluation)");
  float *scratch;
  rc = scratch_get(c, ((dx ? 0 : (size_t)nx) + (dgamma ? 0 : 2 * (size_t)C)) * sizeof(float), (void **)&scratch);
  if (rc < 0)
    return rc;
  float *ddx = dx ? dx : scratch, *dg = dgamma ? dgamma : scratch + (dx ? 0 : nx), *db = dgamma ? dbeta : dg + C;
  const float param_beta = dgamma ? 1.0f : 0.0f; /* accumulate into the caller's, overwrite the scratch */
  rc = dnn_ok(c,
              cudnnBatchNormalizationBackward(c->dnn, CUDNN_BATCHNORM_SPATIAL, &one, &zero, &one, &param_beta, p->x, x,
                                              p->x, dy, p->x, ddx, p->stats, gamma, dg, db, (double)p->d.eps, p->mean,
                                              p->invstd),
              "cudnnBatchNormalizationBackward");
  loom_cuda_put(c, scratch);
  return rc;
}

void loom_cudnn_plan_destroy(void *ctx, loom_plan *plan) {
  cuda_ctx *c = ctx;
  if (!plan)
    return;
  switch (plan->kind) {
  case PLAN_CONV: conv_free((dnn_conv *)plan); break;
  case PLAN_POOL: {
    dnn_pool *p = (dnn_pool *)plan;
    loom_cuda_put(c, p->argmax);
    for (int i = 0; i < p->nretired; i++)
      loom_cuda_put(c, p->retired[i]);
    free(plan);
    break;
  }
  case PLAN_BATCHNORM: bn_free(c, (dnn_bn *)plan); break;
  }
}
