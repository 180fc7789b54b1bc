#include "runners/callback_internal.h"

#include <stdbool.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/names.h"
#include "loom/runner.h"

struct loom_callback {
  loom_callback_ops ops;
  void *data;
  char *name;
  int order;
  loom_node node;
  loom_scope scope;
  bool filtered;
  loom_event_filter filter;
  loom_names loaders; /* the filter's, copied */
  char *writes;       /* loom_callback_set_writes' */
};

static const char *const event_names[LOOM_EVENT_COUNT] = {
    "on_experiment_start", "on_stage_start", "on_epoch_start", "on_loader_start",
    "on_batch_start",      "on_batch_end",   "on_loader_end",  "on_epoch_end",
    "on_stage_end",        "on_experiment_end", "on_exception",
};

const char *loom_event_name(loom_event event) {
  return (event >= 0 && event < LOOM_EVENT_COUNT) ? event_names[event] : "unknown event";
}

loom_callback *loom_callback_create(const loom_callback_ops *ops, void *data, int order) {
  if (!ops || !ops->type) {
    if (ops && ops->destroy)
      ops->destroy(data);
    loom_error_set(LOOM_EINVAL, "loom_callback_create: ops and ops->type are required");
    return NULL;
  }
  loom_callback *cb = calloc(1, sizeof *cb);
  char *name = strdup(ops->type);
  if (!cb || !name) {
    free(cb);
    free(name);
    if (ops->destroy)
      ops->destroy(data);
    loom_error_oom("a callback");
    return NULL;
  }
  cb->ops = *ops;
  cb->data = data;
  cb->name = name;
  cb->order = order;
  return cb;
}

void loom_callback_destroy(loom_callback *cb) {
  if (!cb)
    return;
  if (cb->ops.destroy)
    cb->ops.destroy(cb->data);
  loom_names_free(&cb->loaders);
  free(cb->name);
  free(cb->writes);
  free(cb);
}

int loom_callback_set_writes(loom_callback *cb, const char *path) {
  char *copy = path ? strdup(path) : NULL;
  if (path && !copy)
    return loom_error_oom("a callback's file name");
  free(cb->writes);
  cb->writes = copy;
  return 0;
}

const char *loom_callback_writes(const loom_callback *cb) { return cb->writes; }

int loom_callback_set_filter(loom_callback *cb, const loom_event_filter *f) {
  if (!f || f->every_batches < 0 || f->every_epochs < 0 || f->once_batch < 0 || f->once_epoch < 0)
    return loom_error_set(LOOM_EINVAL, "callback \"%s\": event filter counts must be >= 0", cb->name);
  loom_names loaders;
  int rc = loom_names_copy(&loaders, f->loaders, f->num_loaders, "an event filter's loaders");
  if (rc < 0)
    return rc;
  loom_names_free(&cb->loaders);
  cb->loaders = loaders;
  cb->filter = *f;
  cb->filter.loaders = NULL, cb->filter.num_loaders = 0; /* the copy is cb->loaders */
  cb->filtered = f->every_batches || f->every_epochs || f->once_batch || f->once_epoch || loaders.count;
  return 0;
}

/* Whether a filtered callback hears this event now. */
static bool passes(const loom_callback *cb, loom_event e, const loom_runner *r) {
  const loom_event_filter *f = &cb->filter;
  bool batch = e == LOOM_EVENT_BATCH_START || e == LOOM_EVENT_BATCH_END;
  bool loader = batch || e == LOOM_EVENT_LOADER_START || e == LOOM_EVENT_LOADER_END;
  bool epoch = e == LOOM_EVENT_EPOCH_START || e == LOOM_EVENT_EPOCH_END;
  if (loader && cb->loaders.count && !loom_names_has(&cb->loaders, loom_runner_loader_name(r)))
    return false;
  if (batch && f->every_batches && loom_runner_loader_batch_step(r) % f->every_batches != 0)
    return false;
  if (batch && f->once_batch &&
      !(loom_runner_is_train_loader(r) && loom_runner_global_batch_step(r) == f->once_batch))
    return false;
  if (epoch && f->every_epochs && loom_runner_global_epoch(r) % f->every_epochs != 0)
    return false;
  if (epoch && f->once_epoch && loom_runner_global_epoch(r) != f->once_epoch)
    return false;
  return true;
}

bool loom_callback_is_stateful(const loom_callback *cb) { return cb->ops.save && cb->ops.load; }

int loom_callback_save(loom_callback *cb, loom_runner *runner, loom_state *state) {
  int rc = cb->ops.save ? cb->ops.save(cb, runner, state) : 0;
  return rc < 0 ? loom_error_wrap(rc, "saving the state of callback \"%s\"", cb->name) : 0;
}

int loom_callback_load(loom_callback *cb, loom_runner *runner, const loom_state *state) {
  int rc = cb->ops.load ? cb->ops.load(cb, runner, state) : 0;
  return rc < 0 ? loom_error_wrap(rc, "restoring the state of callback \"%s\"", cb->name) : 0;
}

void *loom_callback_data(const loom_callback *cb) { return cb->data; }
const char *loom_callback_type(const loom_callback *cb) { return cb->ops.type; }
const char *loom_callback_name(const loom_callback *cb) { return cb->name; }

int loom_callback_set_name(loom_callback *cb, const char *name) {
  char *copy = strdup(name);
  if (!copy)
    return loom_error_oom("a callback name");
  free(cb->name);
  cb->name = copy;
  return 0;
}

int loom_callback_order(const loom_callback *cb) { return cb->order; }
void loom_callback_set_order(loom_callback *cb, int order) { cb->order = order; }
loom_node loom_callback_node(const loom_callback *cb) { return cb->node; }
void loom_callback_set_node(loom_callback *cb, loom_node node) { cb->node = node; }
loom_scope loom_callback_scope(const loom_callback *cb) { return cb->scope; }
void loom_callback_set_scope(loom_callback *cb, loom_scope scope) { cb->scope = scope; }

loom_callback_fn loom_callback_handler(const loom_callback *cb, loom_event event) {
  const loom_callback_ops *o = &cb->ops;
  switch (event) {
  case LOOM_EVENT_EXPERIMENT_START: return o->on_experiment_start;
  case LOOM_EVENT_STAGE_START: return o->on_stage_start;
  case LOOM_EVENT_EPOCH_START: return o->on_epoch_start;
  case LOOM_EVENT_LOADER_START: return o->on_loader_start;
  case LOOM_EVENT_BATCH_START: return o->on_batch_start;
  case LOOM_EVENT_BATCH_END: return o->on_batch_end;
  case LOOM_EVENT_LOADER_END: return o->on_loader_end;
  case LOOM_EVENT_EPOCH_END: return o->on_epoch_end;
  case LOOM_EVENT_STAGE_END: return o->on_stage_end;
  case LOOM_EVENT_EXPERIMENT_END: return o->on_experiment_end;
  case LOOM_EVENT_EXCEPTION: return o->on_exception;
  default: return NULL;
  }
}

/* --- the table --- */

static bool runs_on(const loom_callback *cb, int rank) {
  switch (cb->node) {
  case LOOM_NODE_MASTER: return rank == 0;
  case LOOM_NODE_WORKERS: return rank != 0;
  default: return true;
  }
}

/* The row's description of its callback, as the table is built. */
static void describe(loom_callback_info *row) {
  const loom_callback *cb = row->callback;
  row->name = cb->name;
  row->type = cb->ops.type;
  row->order = cb->order;
  row->node = cb->node;
  row->scope = cb->scope;
  row->events = 0;
  for (int e = 0; e < LOOM_EVENT_COUNT; e++)
    if (loom_callback_handler(cb, (loom_event)e))
      row->events |= 1u << e;
}

bool loom_callback_table_has(const loom_callback_table *t, const loom_callback *cb) {
  for (size_t i = 0; i < t->count; i++)
    if (t->info[i].callback == cb)
      return true;
  return false;
}

int loom_callback_table_build(loom_callback_table *t, const loom_callback_info *candidates, size_t n, int rank) {
  memset(t, 0, sizeof *t);
  if (n == 0)
    return 0;
  t->all = malloc(n * sizeof *t->all);
  t->info = malloc(n * sizeof *t->info);
  if (!t->all || !t->info) {
    loom_callback_table_free(t);
    return loom_error_oom("the callback table");
  }
  /* Insertion after every row of lower or equal order: a stable sort, so
   * equal orders keep the candidates' group and registration order. */
  for (size_t i = 0; i < n; i++) {
    loom_callback_info row = candidates[i];
    if (loom_callback_table_has(t, row.callback) || !runs_on(row.callback, rank))
      continue;
    describe(&row);
    size_t k = t->count++;
    for (; k > 0 && t->info[k - 1].order > row.order; k--)
      t->info[k] = t->info[k - 1];
    t->info[k] = row;
  }
  for (size_t i = 0; i < t->count; i++)
    t->all[i] = t->info[i].callback;
  for (int e = 0; e < LOOM_EVENT_COUNT; e++) {
    size_t k = 0;
    for (size_t i = 0; i < t->count; i++)
      k += (t->info[i].events >> e) & 1u;
    if (k == 0)
      continue;
    t->by_event[e] = malloc(k * sizeof *t->by_event[e]);
    if (!t->by_event[e]) {
      loom_callback_table_free(t);
      return loom_error_oom("the callback table");
    }
    for (size_t i = 0; i < t->count; i++)
      if ((t->info[i].events >> e) & 1u)
        t->by_event[e][t->event_count[e]++] = t->all[i];
  }
  return 0;
}

int loom_callback_table_rows(const loom_callback_table *t, loom_callback_info **rows, size_t *count) {
  *rows = malloc((t->count ? t->count : 1) * sizeof **rows);
  *count = 0;
  if (!*rows)
    return loom_error_oom("a copy of the callback table");
  if (t->count)
    memcpy(*rows, t->info, t->count * sizeof **rows);
  *count = t->count;
  return 0;
}

void loom_callback_table_free(loom_callback_table *t) {
  free(t->all);
  free(t->info);
  for (int e = 0; e < LOOM_EVENT_COUNT; e++)
    free(t->by_event[e]);
  memset(t, 0, sizeof *t);
}

bool loom_callback_hears(const loom_callback *cb, loom_event event, const loom_runner *runner) {
  return loom_callback_handler(cb, event) && (!cb->filtered || passes(cb, event, runner));
}

static int call_one(loom_callback *cb, loom_event event, loom_runner *runner) {
  if (cb->filtered && !passes(cb, event, runner))
    return 0;
  unsigned serial = loom_error_serial();
  int rc = loom_callback_handler(cb, event)(cb, runner);
  if (rc >= 0)
    return 0;
  if (loom_error_serial() == serial)
    loom_error_set(rc, "%s", loom_strerror(rc));
  return loom_error_wrap(rc, "callback \"%s\" failed in %s", cb->name, loom_event_name(event));
}

int loom_callback_table_dispatch(const loom_callback_table *t, loom_event event, loom_runner *runner,
                                 int keep_going) {
  int first = 0;
  char first_message[LOOM_ERROR_MAX];
  for (size_t i = 0; i < t->event_count[event]; i++) {
    int rc = call_one(t->by_event[event][i], event, runner);
    if (rc < 0) {
      if (!keep_going)
        return rc;
      if (!first) {
        first = rc;
        snprintf(first_message, sizeof first_message, "%s", loom_last_error());
      }
    }
  }
  /* Later failures must not hide the first one's message. */
  if (first)
    loom_error_set(first, "%s", first_message);
  return first;
}

static const char *node_name(loom_node node) {
  return node == LOOM_NODE_MASTER ? "master" : node == LOOM_NODE_WORKERS ? "workers" : "all";
}

void loom_callback_table_print(const loom_callback_table *t, FILE *out) {
  for (size_t i = 0; i < t->count; i++) {
    const loom_callback_info *row = &t->info[i];
    fprintf(out, "  %4d  %-24s %-18s node=%-7s scope=%-10s", row->order, row->name, row->type, node_name(row->node),
            row->scope == LOOM_SCOPE_EXPERIMENT ? "experiment" : "stage");
    const char *sep = " events=";
    for (int e = 0; e < LOOM_EVENT_COUNT; e++) {
      if ((row->events >> e) & 1u) {
        fprintf(out, "%s%s", sep, loom_event_name((loom_event)e) + 3); /* without "on_" */
        sep = ",";
      }
    }
    fputc('\n', out);
  }
}
