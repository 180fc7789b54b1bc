/* loom/callback.h - callbacks and the events they receive.
 *
 * A callback implements any subset of the events; the runner dispatches each
 * event through an array of the callbacks that implement it, built once per
 * stage and sorted by order, lower first. Equal orders run the experiment's
 * callbacks (loom_experiment_add_callback) first, then those carried from
 * earlier stages (experiment scope), then the stage's own; registration
 * order within each group. loom_experiment_callback_table and
 * loom_runner_callback_table return the resolved table as loom_callback_info
 * rows. A handler returns 0, or a negative LOOM_E* code (after
 * loom_error_set) to fail the run: the runner then fires on_exception. */
#ifndef LOOM_CALLBACK_H
#define LOOM_CALLBACK_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_callback loom_callback;
typedef struct loom_runner loom_runner;

typedef enum loom_event {
  LOOM_EVENT_EXPERIMENT_START,
  LOOM_EVENT_STAGE_START,
  LOOM_EVENT_EPOCH_START,
  LOOM_EVENT_LOADER_START,
  LOOM_EVENT_BATCH_START,
  LOOM_EVENT_BATCH_END,
  LOOM_EVENT_LOADER_END,
  LOOM_EVENT_EPOCH_END,
  LOOM_EVENT_STAGE_END,
  LOOM_EVENT_EXPERIMENT_END,
  LOOM_EVENT_EXCEPTION,
  LOOM_EVENT_COUNT
} loom_event;

/* "on_batch_end" etc. */
LOOM_API const char *loom_event_name(loom_event event);

/* Catalyst's bands; lower runs first. */
enum {
  LOOM_ORDER_INTERNAL = 0,
  LOOM_ORDER_METRIC = 20,
  LOOM_ORDER_METRIC_AGGREGATION = 40,
  LOOM_ORDER_OPTIMIZER = 60,
  LOOM_ORDER_VALIDATION = 80,
  LOOM_ORDER_SCHEDULER = 100,
  LOOM_ORDER_LOGGING = 120,
  LOOM_ORDER_EXTERNAL = 200,
};

/* Which ranks run the callback. */
typedef enum loom_node { LOOM_NODE_ALL, LOOM_NODE_MASTER, LOOM_NODE_WORKERS } loom_node;
/* Stage: only in the stage it was added to. Experiment: carried into every
 * later stage too. */
typedef enum loom_scope { LOOM_SCOPE_STAGE, LOOM_SCOPE_EXPERIMENT } loom_scope;

typedef int (*loom_callback_fn)(loom_callback *cb, loom_runner *runner);

/* Where a callback in a table comes from; at equal order the groups run in
 * this order. */
typedef enum loom_callback_source {
  LOOM_SOURCE_EXPERIMENT, /* loom_experiment_add_callback */
  LOOM_SOURCE_CARRIED,    /* experiment scope, added to an earlier stage */
  LOOM_SOURCE_STAGE,      /* added to this stage (in the experiment events' table: to any stage) */
} loom_callback_source;

/* One row of a resolved callback table, as the runner dispatches it. */
typedef struct loom_callback_info {
  loom_callback *callback; /* owned by the experiment */
  const char *name;        /* the callback's own strings: valid until it is renamed or destroyed */
  const char *type;
  int order;
  loom_node node;
  loom_scope scope;
  loom_callback_source source;
  int stage;       /* index of the stage it was added to; -1: the experiment's own */
  unsigned events; /* bit (1u << e) set for each loom_event e it implements */
} loom_callback_info;

typedef struct loom_callback_ops {
  const char *type; /* e.g. "accuracy"; the default name */
  loom_callback_fn on_experiment_start;
  loom_callback_fn on_stage_start;
  loom_callback_fn on_epoch_start;
  loom_callback_fn on_loader_start;
  loom_callback_fn on_batch_start;
  loom_callback_fn on_batch_end;
  loom_callback_fn on_loader_end;
  loom_callback_fn on_epoch_end;
  loom_callback_fn on_stage_end;
  loom_callback_fn on_experiment_end;
  loom_callback_fn on_exception;
  /* Optional: saves the callback's state into a checkpoint (its group is
   * "callbacks/<name>", so names must be unique: the experiment suffixes a
   * repeated name with "#2", "#3", ...). */
  int (*save)(loom_callback *cb, loom_runner *runner, loom_state *state);
  /* Optional: restores what save wrote, when a run resumes. */
  int (*load)(loom_callback *cb, loom_runner *runner, const loom_state *state);
  /* Optional: frees `data` when the callback is destroyed. */
  void (*destroy)(void *data);
} loom_callback_ops;

/* Event filters, as Ignite has them. A filtered callback still receives
 * every event that is not a batch, loader or epoch event. */
typedef struct loom_event_filter {
  int64_t every_batches; /* batch events only every N loader batches (0: all) */
  int64_t every_epochs;  /* epoch events only every N epochs (0: all) */
  int64_t once_batch;    /* batch events only at this global train batch (0: off) */
  int64_t once_epoch;    /* epoch events only at this global epoch (0: off) */
  /* Loader and batch events only on these loaders (none: all). The names
   * are copied by loom_callback_set_filter. */
  const char *const *loaders;
  size_t num_loaders;
} loom_event_filter;

/* `ops` is copied; `data` is owned from here on (freed by ops->destroy even
 * when creation fails). Defaults: order as given, node all, scope stage. */
LOOM_API loom_callback *loom_callback_create(const loom_callback_ops *ops, void *data, int order);
LOOM_API void loom_callback_destroy(loom_callback *cb);

LOOM_API void *loom_callback_data(const loom_callback *cb);
LOOM_API const char *loom_callback_type(const loom_callback *cb);
/* The name defaults to the type; used in messages and, later, checkpoints. */
LOOM_API const char *loom_callback_name(const loom_callback *cb);
LOOM_API int loom_callback_set_name(loom_callback *cb, const char *name);
LOOM_API int loom_callback_order(const loom_callback *cb);
LOOM_API void loom_callback_set_order(loom_callback *cb, int order);
LOOM_API loom_node loom_callback_node(const loom_callback *cb);
LOOM_API void loom_callback_set_node(loom_callback *cb, loom_node node);
LOOM_API loom_scope loom_callback_scope(const loom_callback *cb);
LOOM_API void loom_callback_set_scope(loom_callback *cb, loom_scope scope);
LOOM_API loom_callback_fn loom_callback_handler(const loom_callback *cb, loom_event event);
/* What the callback writes in the logdir, that no other callback of the
 * run may write: a file or directory name relative to the logdir
 * ("metrics.jsonl", "checkpoints") or an absolute path; copied. A run
 * whose callbacks (every stage's and the experiment's) name one twice is
 * refused at its start, before any callback runs: two writers of one file
 * interleave or overwrite each other's lines. The built-in writers set
 * theirs (docs/callbacks.md). NULL: none. */
LOOM_API int loom_callback_set_writes(loom_callback *cb, const char *path);
LOOM_API const char *loom_callback_writes(const loom_callback *cb);
/* Restricts when the callback hears batch, loader and epoch events. The
 * filter is copied, `loaders` included (split into names): the caller may
 * free or change the string once the call returns. Setting a filter again
 * replaces the previous one. */
LOOM_API int loom_callback_set_filter(loom_callback *cb, const loom_event_filter *filter);
LOOM_API bool loom_callback_is_stateful(const loom_callback *cb);
LOOM_API int loom_callback_save(loom_callback *cb, loom_runner *runner, loom_state *state);
LOOM_API int loom_callback_load(loom_callback *cb, loom_runner *runner, const loom_state *state);

#ifdef __cplusplus
}
#endif
#endif
