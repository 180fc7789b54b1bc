/* Step graphs on CUDA (loom/backend.h, "Step graphs"): the backend's four
 * graph slots. graph_begin starts capturing the backend's stream; the ops
 * the core then runs from its log are recorded, not run; graph_end makes
 * an executable graph of them. What a graph needs outlives the capture:
 *  - the values that change every step (update_ranges's tables: rates,
 *    the step's bias corrections; dropout's keys): under capture each is
 *    copied from a pinned buffer of the graph's own into device memory of
 *    its own (a captured copy reads the pinned memory at every launch),
 *    and graph_launch rewrites the pinned buffers from the new log before
 *    launching, so the graph steps with this step's values;
 *  - memory the module takes and gives back inside an op while capturing
 *    (cuDNN's workspace): the graph keeps it until it is destroyed, since
 *    every launch writes there, and memory back in the allocator could be
 *    anyone's by then.
 * Memory the core allocates for the step is the step's: an equal log is
 * one whose allocations came back at the same addresses. */
#include <stdlib.h>
#include <string.h>

#include "backends/cuda/context.h"

/* A value the graph takes from each launch's log (update_ranges's table,
 * dropout's key): pinned source, device copy. */
typedef struct graph_table {
  graph_value kind;
  void *pinned, *device;
  size_t bytes;
  bool has_state; /* a table: SGD with a momentum buffer (the scalars depend on it) */
} graph_table;

/* What a capture collects, then the graph owns. */
typedef struct cuda_capture {
  graph_table *tables;
  int ntables, table_cap;
  void **owned; /* device memory given back during the capture */
  int nowned, owned_cap;
} cuda_capture;

struct loom_graph {
  cudaGraphExec_t exec;
  cudaEvent_t done; /* after the last launch: its tables were read */
  cuda_capture kept;
};

static bool grow(void **items, int *cap, int need, size_t size) {
  if (need <= *cap)
    return true;
  int cap2 = *cap ? 2 * *cap : 8;
  void *grown = realloc(*items, (size_t)cap2 * size);
  if (!grown)
    return false;
  *items = grown, *cap = cap2;
  return true;
}

/* Frees what a capture collected (or a graph kept): the graph's launches
 * are over (or there were none). */
static void release_kept(cuda_ctx *c, cuda_capture *k) {
  for (int i = 0; i < k->ntables; i++) {
    cudaFreeHost(k->tables[i].pinned);
    libloom->alloc_put(c->alloc, k->tables[i].device);
  }
  for (int i = 0; i < k->nowned; i++)
    libloom->alloc_put(c->alloc, k->owned[i]);
  free(k->tables), free(k->owned);
  *k = (cuda_capture){0};
}

void loom_cuda_put(cuda_ctx *c, void *ptr) {
  cuda_capture *k = c->capture;
  if (!ptr)
    return;
  if (!k) {
    libloom->alloc_put(c->alloc, ptr);
    return;
  }
  if (grow((void **)&k->owned, &k->owned_cap, k->nowned + 1, sizeof *k->owned))
    k->owned[k->nowned++] = ptr;
  /* else it stays taken: a leak until the device's allocator goes, never
   * memory a launch could write while another holds it */
}

int loom_cuda_capture_value(cuda_ctx *c, graph_value kind, const void *host, size_t bytes, bool has_state,
                            void **device) {
  cuda_capture *k = c->capture;
  if (!grow((void **)&k->tables, &k->table_cap, k->ntables + 1, sizeof *k->tables))
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of host memory capturing a step");
  graph_table t = {.kind = kind, .bytes = bytes, .has_state = has_state};
  cudaError_t e = cudaHostAlloc(&t.pinned, bytes, cudaHostAllocDefault);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return loom_cuda_error(e, c->device, "cudaHostAlloc (a captured step's value)");
  }
  if (!(t.device = libloom->alloc_get(c->alloc, bytes, c->stream))) {
    cudaFreeHost(t.pinned);
    return libloom->last_error_code();
  }
  memcpy(t.pinned, host, bytes);
  k->tables[k->ntables++] = t;
  *device = t.device;
  return launched(c, cudaMemcpyAsync(t.device, t.pinned, bytes, cudaMemcpyHostToDevice, c->stream),
                  "cudaMemcpyAsync (a captured step's value)");
}

void loom_cuda_capture_abandon(cuda_ctx *c) {
  if (!c->capture)
    return;
  cudaGraph_t g = NULL;
  if (cudaStreamEndCapture(c->stream, &g) == cudaSuccess && g)
    cudaGraphDestroy(g);
  cudaGetLastError();
  cuda_capture *k = c->capture;
  c->capture = NULL;
  release_kept(c, k);
  free(k);
}

int loom_cuda_graph_begin(void *ctx) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  if (rc < 0)
    return rc;
  if (!(c->capture = calloc(1, sizeof *c->capture)))
    return libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of host memory capturing a step");
  /* Relaxed: an op may still take memory (a cache miss's cudaMalloc). */
  rc = launched(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
  if (rc < 0) {
    free(c->capture);
    c->capture = NULL;
  }
  return rc;
}

int loom_cuda_graph_end(void *ctx, const loom_op_log *captured, loom_graph **out) {
  cuda_ctx *c = ctx;
  (void)captured;
  *out = NULL;
  cuda_capture *k = c->capture;
  c->capture = NULL;
  if (!k)
    return libloom->error_set(LOOM_ESTATE, "CUDA backend: graph_end without a capture under way");
  cudaGraph_t g = NULL;
  int rc = enter(c);
  cudaError_t e = cudaStreamEndCapture(c->stream, &g); /* ends it whatever happened in it */
  if (rc == 0)
    rc = launched(c, e, "cudaStreamEndCapture");
  loom_graph *graph = rc == 0 ? calloc(1, sizeof *graph) : NULL;
  if (rc == 0 && !graph)
    rc = libloom->error_set(LOOM_ENOMEM, "CUDA backend: out of host memory for a step's graph");
  if (rc == 0)
    rc = launched(c, cudaGraphInstantiate(&graph->exec, g, 0), "cudaGraphInstantiate");
  if (rc == 0 && (rc = launched(c, cudaEventCreateWithFlags(&graph->done, cudaEventDisableTiming),
                                "cudaEventCreate")) < 0)
    cudaGraphExecDestroy(graph->exec);
  if (g)
    cudaGraphDestroy(g);
  if (rc < 0) { /* nothing of the capture ran: its memory is free again */
    cudaGetLastError();
    release_kept(c, k);
    free(k);
    free(graph);
    return rc;
  }
  graph->kept = *k;
  free(k);
  *out = graph;
  return 0;
}

int loom_cuda_graph_launch(void *ctx, loom_graph *graph, const loom_op_log *now) {
  cuda_ctx *c = ctx;
  int rc = enter(c);
  /* The last launch has read the tables (a deferred step waited for it
   * anyway: this costs nothing then). */
  if (rc == 0)
    rc = launched(c, cudaEventSynchronize(graph->done), "cudaEventSynchronize");
  /* The values in the order they were captured: the log's order. */
  int t = 0;
  for (int i = 0; rc == 0 && i < libloom->op_log_length(now); i++) {
    const loom_update_step *s;
    const loom_update_range *ranges;
    int n;
    uint64_t key;
    const bool table = libloom->op_log_update(now, i, &s, &ranges, &n);
    if (!table && !libloom->op_log_dropout(now, i, &key))
      continue;
    graph_table *gt = t < graph->kept.ntables ? &graph->kept.tables[t] : NULL;
    if (!gt || gt->kind != (table ? GRAPH_TABLE : GRAPH_KEY) ||
        (table ? loom_cuda_ranges_table(s, ranges, n, gt->has_state, NULL) : sizeof key) != gt->bytes)
      return libloom->error_set(LOOM_ESTATE, "CUDA backend: a step's graph does not match its log (value %d, op "
                                             "%d): the core's log comparison is wrong",
                                t, i);
    if (table)
      loom_cuda_ranges_table(s, ranges, n, gt->has_state, gt->pinned);
    else
      memcpy(gt->pinned, &key, sizeof key);
    t++;
  }
  if (rc == 0 && t != graph->kept.ntables)
    rc = libloom->error_set(LOOM_ESTATE, "CUDA backend: a step's graph has %d values from its log, the log %d",
                            graph->kept.ntables, t);
  if (rc == 0)
    rc = launched(c, cudaGraphLaunch(graph->exec, c->stream), "cudaGraphLaunch");
  if (rc == 0)
    rc = launched(c, cudaEventRecord(graph->done, c->stream), "cudaEventRecord");
  return rc;
}

void loom_cuda_graph_destroy(void *ctx, loom_graph *graph) {
  cuda_ctx *c = ctx;
  if (!graph)
    return;
  if (enter(c) == 0)
    cudaEventSynchronize(graph->done);
  cudaGraphExecDestroy(graph->exec);
  cudaEventDestroy(graph->done);
  release_kept(c, &graph->kept);
  free(graph);
}
