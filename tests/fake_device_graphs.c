/* The fake device's step graphs (fake_device.h): a capture runs nothing,
 * a launch runs the new log. */
#include "fake_device_impl.h"

#include <stdlib.h>

#define GRAPH_MAGIC 0x06A9F0E5u

struct loom_graph {
  uint32_t magic;
  int length;     /* the captured log's ops */
  void **scratch; /* the ops' own memory taken under its capture */
  size_t num_scratch;
};

int fake_graph_begin(void *ctx) {
  fake_device *d = ctx;
  if (d->capturing)
    fake_die("graph_begin", "a capture is already under way");
  d->capturing = true;
  return 0;
}

int fake_graph_end(void *ctx, const loom_op_log *captured, loom_graph **graph) {
  fake_device *d = ctx;
  if (!d->capturing)
    fake_die("graph_end", "no capture is under way");
  d->capturing = false;
  loom_graph *g = calloc(1, sizeof *g);
  if (!g)
    fake_die("graph_end", "out of host memory");
  g->magic = GRAPH_MAGIC, g->length = loom_op_log_length(captured);
  g->scratch = d->capture_scratch, g->num_scratch = d->num_capture_scratch;
  d->capture_scratch = NULL, d->num_capture_scratch = d->cap_capture_scratch = 0;
  pthread_mutex_lock(&d->lock);
  d->counts.captures++, d->counts.graphs++;
  pthread_mutex_unlock(&d->lock);
  *graph = g;
  return 0;
}

int fake_graph_launch(void *ctx, loom_graph *g, const loom_op_log *now) {
  fake_device *d = ctx;
  if (!g || g->magic != GRAPH_MAGIC)
    fake_die("graph_launch", "a graph this device did not make (%p)", (void *)g);
  if (d->capturing)
    fake_die("graph_launch", "a launch during a capture");
  if (loom_op_log_length(now) != g->length)
    fake_die("graph_launch", "a log of %d ops launches a graph captured from %d", loom_op_log_length(now), g->length);
  pthread_mutex_lock(&d->lock);
  d->counts.launches++;
  pthread_mutex_unlock(&d->lock);
  return loom_op_log_run(now, &d->ops, ctx);
}

void fake_graph_destroy(void *ctx, loom_graph *g) {
  fake_device *d = ctx;
  if (!g || g->magic != GRAPH_MAGIC)
    fake_die("graph_destroy", "a graph this device did not make (%p)", (void *)g);
  g->magic = 0;
  for (size_t i = 0; i < g->num_scratch; i++)
    fake_free(d, g->scratch[i]);
  free(g->scratch);
  free(g);
  pthread_mutex_lock(&d->lock);
  d->counts.graphs--;
  pthread_mutex_unlock(&d->lock);
}
