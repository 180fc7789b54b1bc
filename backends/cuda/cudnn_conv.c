/* The CUDA backend's convolution on cuDNN (cudnn.c): a plan's tensor
 * descriptors and algorithms, cuDNN's search and its cache (conv_cache.h),
 * the forward and the backward. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "backends/cuda/conv_cache.h"
#include "backends/cuda/cudnn_plan.h"

/* The most workspace a convolution algorithm chosen for speed may take;
 * past it the next is tried, down to one that needs none or little. The
 * search is given this much (from the caching allocator, for the search). */
#define CONV_WORKSPACE_MAX ((size_t)256 << 20)
/* The shapes (with batch size) whose searched algorithms the process
 * keeps; past it the oldest are searched again when met again. */
#define CONV_CACHE_ENTRIES 1024

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
  return loom_cudnn_ok(c, add_ranked(c, p, NULL, dir, algos, count, max), "cudnnGetConvolution*Algorithm_v7");
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
  return loom_cudnn_error(st == CUDNN_STATUS_SUCCESS ? CUDNN_STATUS_NOT_SUPPORTED : st, c->device, what);
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
  int rc = loom_cudnn_set_tensor(c, p->x, n, d->cin, d->h, d->w);
  if (rc == 0)
    rc = loom_cudnn_set_tensor(c, p->y, n, d->cout, d->oh, d->ow);
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

void loom_cudnn_conv_free(dnn_conv *p) {
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
  int rc = loom_cudnn_enter(c);
  if (rc < 0)
    return rc;
  dnn_conv *p = calloc(1, sizeof *p);
  if (!p)
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of memory allocating a convolution plan");
  p->base.kind = PLAN_CONV;
  p->d = *d;
  p->tensor_ops = c->tf32 || libloom->autocast() != LOOM_PRECISION_FP32;
  if ((rc = loom_cudnn_ok(c, cudnnCreateTensorDescriptor(&p->x), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnCreateTensorDescriptor(&p->y), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnCreateTensorDescriptor(&p->bias), "cudnnCreateTensorDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnCreateFilterDescriptor(&p->w), "cudnnCreateFilterDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnCreateConvolutionDescriptor(&p->conv), "cudnnCreateConvolutionDescriptor")) < 0 ||
      (rc = loom_cudnn_set_tensor(c, p->bias, 1, d->cout, 1, 1)) < 0 ||
      (rc = loom_cudnn_ok(c,
                          cudnnSetFilter4dDescriptor(p->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, (int)d->cout,
                                                     (int)d->cin, (int)d->kh, (int)d->kw),
                          "cudnnSetFilter4dDescriptor")) < 0 ||
      /* PyTorch's Conv2d is a cross-correlation (no flipped kernel). */
      (rc = loom_cudnn_ok(c,
                          cudnnSetConvolution2dDescriptor(p->conv, (int)d->ph, (int)d->pw, (int)d->sh, (int)d->sw,
                                                          (int)d->dh, (int)d->dw, CUDNN_CROSS_CORRELATION,
                                                          CUDNN_DATA_FLOAT),
                          "cudnnSetConvolution2dDescriptor")) < 0 ||
      (rc = loom_cudnn_ok(c, cudnnSetConvolutionMathType(p->conv, p->tensor_ops ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH),
                          "cudnnSetConvolutionMathType")) < 0) {
    loom_cudnn_conv_free(p);
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
  int rc = loom_cudnn_enter(c);
  if (rc == 0)
    rc = conv_shape(c, p, n, &(conv_io){.x = x, .w = w, .y = y});
  if (rc == 0)
    rc = loom_cudnn_scratch_get(c, p->fwd_bytes, &ws);
  if (rc < 0)
    return rc;
  rc = loom_cudnn_ok(c,
                     cudnnConvolutionForward(c->dnn, &one, p->x, x, p->w, w, p->conv, p->fwd, ws, p->fwd_bytes, &zero,
                                             p->y, y),
                     "cudnnConvolutionForward");
  loom_cuda_put(c, ws);
  if (rc == 0 && bias)
    rc = loom_cudnn_ok(c, cudnnAddTensor(c->dnn, &one, p->bias, bias, &one, p->y, y), "cudnnAddTensor");
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
  int rc = loom_cudnn_enter(c);
  if (rc == 0)
    rc = conv_shape(c, p, n, &(conv_io){.x = x, .w = w, .dy = dy, .dx = dx});
  const size_t filter_bytes = dw ? p->filter_bytes : 0, data_bytes = dx ? p->data_bytes : 0;
  if (rc == 0)
    rc = loom_cudnn_scratch_get(c, filter_bytes > data_bytes ? filter_bytes : data_bytes, &ws);
  if (rc < 0)
    return rc;
  if (dw && dbias)
    rc = loom_cudnn_ok(c, cudnnConvolutionBackwardBias(c->dnn, &one, p->y, dy, &one, p->bias, dbias),
                       "cudnnConvolutionBackwardBias");
  if (rc == 0 && dw)
    rc = loom_cudnn_ok(c,
                       cudnnConvolutionBackwardFilter(c->dnn, &one, p->x, x, p->y, dy, p->conv, p->bwd_filter, ws,
                                                      filter_bytes, &one, p->w, dw),
                       "cudnnConvolutionBackwardFilter");
  if (rc == 0 && dx)
    rc = loom_cudnn_ok(c,
                       cudnnConvolutionBackwardData(c->dnn, &one, p->w, w, p->y, dy, p->conv, p->bwd_data, ws,
                                                    data_bytes, &zero, p->x, dx),
                       "cudnnConvolutionBackwardData");
  loom_cuda_put(c, ws);
  return rc;
}
