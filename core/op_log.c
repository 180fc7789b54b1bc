/* The op log and the step graphs made from it (loom/backend.h, "Step
 * graphs"): a log is recorded by the wrappers (core/backend.c), run at its
 * end op by op the first time it is seen, captured into the backend's graph
 * the second time, and replayed by that graph from then on. */
#include "core/op_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/array.h"
#include "core/backend_internal.h"
#include "core/error_internal.h"

/* The graphs (and the logs seen once) a backend keeps, least recently used
 * evicted: a few shapes of step (a last partial batch, another stage's
 * model) alternate without making graphs again. */
#define LOG_CACHE_SIZE 4

struct loom_op_log {
  loom_logged *ops;
  int count;
  size_t cap;
};

typedef struct log_entry {
  loom_op_log key; /* the log as first seen */
  loom_graph *graph;
  bool no_capture; /* the backend could not capture it: it runs op by op */
  uint64_t used;
} log_entry;

typedef struct block_plan {
  loom_plan *plan;
  int layers;
} block_plan;

struct loom_log_cache {
  log_entry entries[LOG_CACHE_SIZE];
  int count;
  uint64_t clock;
  loom_graph_counts counts;
  block_plan *blocks;
  int num_blocks;
  size_t cap_blocks;
};

/* What waits for the log's end: memory and plans freed while it was open. */
typedef struct deferred_free {
  void *p;
  bool plan;
} deferred_free;

/* The log open on this thread. */
typedef struct open_log {
  loom_backend *b;
  loom_comm *comm; /* several ranks agree how the log runs (loom_backend_log_begin_over) */
  loom_op_log log;
  bool off; /* flushed: the rest of the step runs op by op */
  int rc;   /* a flush's error that no caller could take (a free's): the log's end gives it */
  char message[LOOM_ERROR_MAX];
  deferred_free *frees;
  int num_frees;
  size_t cap_frees;
} open_log;

static _Thread_local open_log *open_on_thread;

static open_log *open_for(const loom_backend *b) {
  return open_on_thread && open_on_thread->b == b ? open_on_thread : NULL;
}

static const char *const logged_names[LOOM_LOGGED_COUNT] = {
#define NAME(op) #op,
    LOOM_LOG_OPS(NAME)
#undef NAME
};

/* --- one op: run, compare, own its arrays --- */

#define ARG(t, n) , a->n
#define ARG_REF(t, n) , &a->n
#define ARG_ARRAY(t, n, count) , a->n
static int run_one(const loom_backend_ops *o, void *ctx, const loom_logged *r) {
  switch (r->id) {
#define RUN(op)                                                                                                        \
  case LOOM_LOGGED_##op: {                                                                                             \
    const loom_args_##op *a = &r->u.op;                                                                                \
    return o->op(ctx LOOM_LOG_ARGS_##op(ARG, ARG_REF, ARG_ARRAY));                                                     \
  }
    LOOM_LOG_SLOT_OPS(RUN)
#undef RUN
  case LOOM_LOGGED_comm: return loom_comm_request_run(r->u.comm.request, r->u.comm.buf, r->u.comm.wait);
  case LOOM_LOGGED_COUNT: break;
  }
  return loom_error_set(LOOM_EINVAL, "op log: unknown op %d", (int)r->id);
}

static bool same_bits(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

/* The parts of the optimizers' steps that must match: what a graph fixes.
 * The updates' own ops take every scalar as an argument; update_ranges's
 * rates, decays, the rule's scalars and the step count travel in its table,
 * which the backend rewrites before each launch, so only the rule, its
 * branches and the gate must match there. */
static bool sgd_eq(const loom_sgd_step *a, const loom_sgd_step *b) {
  return a->lr == b->lr && a->weight_decay == b->weight_decay && a->momentum == b->momentum &&
         a->dampening == b->dampening && a->nesterov == b->nesterov && a->first == b->first && a->gate == b->gate;
}
static bool adam_eq(const loom_adam_step *a, const loom_adam_step *b) {
  return a->lr == b->lr && a->weight_decay == b->weight_decay && a->beta1 == b->beta1 && a->beta2 == b->beta2 &&
         a->eps == b->eps && a->step == b->step && a->decoupled == b->decoupled && a->gate == b->gate;
}
static bool rmsprop_eq(const loom_rmsprop_step *a, const loom_rmsprop_step *b) {
  return a->lr == b->lr && a->weight_decay == b->weight_decay && a->alpha == b->alpha && a->eps == b->eps &&
         a->momentum == b->momentum && a->centered == b->centered && a->gate == b->gate;
}
static bool table_eq(const loom_update_step *a, const loom_update_step *b) {
  if (a->rule != b->rule)
    return false;
  switch (a->rule) {
  case LOOM_RULE_SGD: return a->u.sgd.nesterov == b->u.sgd.nesterov && a->u.sgd.gate == b->u.sgd.gate;
  case LOOM_RULE_ADAM: return a->u.adam.decoupled == b->u.adam.decoupled && a->u.adam.gate == b->u.adam.gate;
  case LOOM_RULE_RMSPROP:
    return a->u.rmsprop.centered == b->u.rmsprop.centered && a->u.rmsprop.gate == b->u.rmsprop.gate;
  }
  return false;
}
static bool ranges_eq(const loom_update_range *a, const loom_update_range *b, int n) {
  for (int i = 0; i < n; i++)
    if (a[i].off != b[i].off || a[i].len != b[i].len)
      return false;
  return true;
}
static bool io_eq(const loom_block_io *a, const loom_block_io *b, int n) {
  return n == 0 || same_bits(a, b, (size_t)n * sizeof *a); /* pointers only: no padding */
}

#define EQ(t, n) &&same_bits(&a->n, &c->n, sizeof a->n)
#define EQ_REF(t, n)                                                                                                   \
  &&_Generic(&a->n, const loom_sgd_step *: sgd_eq, const loom_adam_step *: adam_eq, const loom_rmsprop_step *: rmsprop_eq,             \
             const loom_update_step *: table_eq)(&a->n, &c->n)
#define EQ_ARRAY(t, n, count)                                                                                          \
  &&a->n##_count == c->n##_count &&_Generic(a->n, const loom_update_range *: ranges_eq, const loom_block_io *: io_eq)( \
      a->n, c->n, a->n##_count)
static bool logged_eq(const loom_logged *x, const loom_logged *y) {
  if (x->id != y->id)
    return false;
  switch (x->id) {
#define SAME(op)                                                                                                       \
  case LOOM_LOGGED_##op: {                                                                                             \
    const loom_args_##op *a = &x->u.op, *c = &y->u.op;                                                                 \
    return true LOOM_LOG_ARGS_##op(EQ, EQ_REF, EQ_ARRAY);                                                              \
  }
    LOOM_LOG_OPS(SAME)
#undef SAME
  case LOOM_LOGGED_COUNT: break;
  }
  return false;
}

/* The arrays a record points to: copied into the log (own), or freed. */
#define NOTHING(t, n)
#define ARRAY(t, n, count)                                                                                             \
  if (!own) {                                                                                                          \
    free((void *)a->n);                                                                                                \
  } else if (a->n && a->n##_count > 0) {                                                                               \
    void *copy = malloc((size_t)a->n##_count * sizeof *a->n);                                                          \
    if (!copy)                                                                                                         \
      return loom_error_oom("an op log's array");                                                                      \
    a->n = memcpy(copy, a->n, (size_t)a->n##_count * sizeof *a->n);                                                    \
  } else if (a->n) {                                                                                                   \
    return loom_error_set(LOOM_EINVAL, "op log: %s's " #n " of unknown length (a block plan not made by "             \
                                       "loom_backend_plan_block?)",                                                    \
                          logged_names[r->id]);                                                                        \
  }
static int arrays(loom_logged *r, bool own) {
  switch (r->id) {
#define ARRAYS(op)                                                                                                     \
  case LOOM_LOGGED_##op: {                                                                                             \
    loom_args_##op *a = &r->u.op;                                                                                      \
    (void)a, (void)own;                                                                                                \
    LOOM_LOG_ARGS_##op(NOTHING, NOTHING, ARRAY) return 0;                                                              \
  }
    LOOM_LOG_OPS(ARRAYS)
#undef ARRAYS
  case LOOM_LOGGED_COUNT: break;
  }
  return 0;
}

/* --- logs --- */

static void log_clear(loom_op_log *log) {
  for (int i = 0; i < log->count; i++)
    arrays(&log->ops[i], false);
  free(log->ops);
  *log = (loom_op_log){0};
}

/* Two ops a graph serves alike: equal but for dropout's key, which the
 * backend takes from the new log at each launch (loom_op_log_dropout). */
static bool op_eq(const loom_logged *a, const loom_logged *b) {
  if (a->id != LOOM_LOGGED_dropout_forward || b->id != a->id)
    return logged_eq(a, b);
  loom_logged same_key = *b;
  same_key.u.dropout_forward.key = a->u.dropout_forward.key;
  return logged_eq(a, &same_key);
}

static bool log_eq(const loom_op_log *a, const loom_op_log *b) {
  if (a->count != b->count)
    return false;
  for (int i = 0; i < a->count; i++)
    if (!op_eq(&a->ops[i], &b->ops[i]))
      return false;
  return true;
}

static int log_append(loom_op_log *log, const loom_logged *r) {
  int rc = loom_array_reserve((void **)&log->ops, &log->cap, (size_t)log->count + 1, sizeof *log->ops, "an op log");
  if (rc < 0)
    return rc;
  loom_logged *slot = &log->ops[log->count];
  *slot = *r;
  if ((rc = arrays(slot, true)) < 0)
    return rc;
  log->count++;
  return 0;
}

int loom_op_log_run(const loom_op_log *log, const loom_backend_ops *ops, void *ctx) {
  for (int i = 0; i < log->count; i++) {
    int rc = run_one(ops, ctx, &log->ops[i]);
    if (rc < 0)
      return loom_error_wrap(rc, "op %d of %d of the step's log (%s) on backend \"%s\"", i, log->count,
                             logged_names[log->ops[i].id], ops->name ? ops->name : "custom");
  }
  return 0;
}

int loom_op_log_length(const loom_op_log *log) { return log->count; }

const char *loom_op_log_op_name(const loom_op_log *log, int i) {
  return i >= 0 && i < log->count ? logged_names[log->ops[i].id] : "?";
}

bool loom_op_log_update(const loom_op_log *log, int i, const loom_update_step **step, const loom_update_range **ranges,
                        int *nranges) {
  if (i < 0 || i >= log->count || log->ops[i].id != LOOM_LOGGED_update_ranges)
    return false;
  const loom_args_update_ranges *a = &log->ops[i].u.update_ranges;
  *step = &a->step, *ranges = a->ranges, *nranges = a->nranges;
  return true;
}

bool loom_op_log_dropout(const loom_op_log *log, int i, uint64_t *key) {
  if (i < 0 || i >= log->count || log->ops[i].id != LOOM_LOGGED_dropout_forward)
    return false;
  *key = log->ops[i].u.dropout_forward.key;
  return true;
}

/* --- the open log --- */

int loom_op_submit(loom_backend *b, const loom_logged *r) {
  open_log *o = open_for(b);
  if (o && !o->off)
    return log_append(&o->log, r);
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  return run_one(ops, ctx, r);
}

int loom_op_log_flush(loom_backend *b) {
  open_log *o = open_for(b);
  if (!o || o->off)
    return 0;
  o->off = true;
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  int rc = loom_op_log_run(&o->log, ops, ctx);
  log_clear(&o->log);
  return rc;
}

bool loom_op_log_defer_free(loom_backend *b, void *p, bool plan) {
  open_log *o = open_for(b);
  if (!o || !p)
    return false;
  if (loom_array_reserve((void **)&o->frees, &o->cap_frees, (size_t)o->num_frees + 1, sizeof *o->frees,
                         "the op log's frees") < 0) {
    int rc = loom_op_log_flush(b); /* no room to wait: what was logged runs now, and the memory goes */
    if (rc < 0 && o->rc == 0) {
      o->rc = rc;
      snprintf(o->message, sizeof o->message, "%s", loom_last_error());
    }
    return false;
  }
  o->frees[o->num_frees++] = (deferred_free){p, plan};
  return true;
}

int loom_backend_log_begin_over(loom_backend *b, loom_comm *comm) {
  if (open_on_thread)
    return loom_error_set(LOOM_ESTATE, "loom_backend_log_begin: a log is already open on backend \"%s\" in this "
                                       "thread; end it first (loom_backend_log_end)",
                          loom_backend_name(open_on_thread->b));
  open_log *o = calloc(1, sizeof *o);
  if (!o)
    return loom_error_oom("an op log");
  o->b = b;
  o->comm = comm && loom_comm_size(comm) > 1 ? comm : NULL;
  open_on_thread = o;
  return 0;
}

int loom_backend_log_begin(loom_backend *b) { return loom_backend_log_begin_over(b, NULL); }

/* --- graphs --- */

static struct loom_log_cache *cache_of(loom_backend *b) {
  struct loom_log_cache **c = loom_backend_log_cache(b);
  if (!*c)
    *c = calloc(1, sizeof **c);
  return *c;
}

static void entry_free(loom_backend *b, log_entry *e) {
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  if (e->graph)
    ops->graph_destroy(ctx, e->graph);
  log_clear(&e->key);
  *e = (log_entry){0};
}

/* Keeps `log` (taken from the caller) as seen once, in place of the least
 * recently used entry when the cache is full. */
static void remember(loom_backend *b, struct loom_log_cache *c, loom_op_log *log) {
  log_entry *e = &c->entries[0];
  if (c->count < LOG_CACHE_SIZE)
    e = &c->entries[c->count++];
  else
    for (int i = 1; i < LOG_CACHE_SIZE; i++)
      if (c->entries[i].used < e->used)
        e = &c->entries[i];
  entry_free(b, e);
  e->key = *log, e->used = ++c->clock;
  *log = (loom_op_log){0};
}

/* How an ended log runs; over several ranks, the same on all. */
typedef enum fate { RUN, CAPTURE, LAUNCH } fate;

/* The ranks' fates: *f where every rank's is the same, else RUN (op by op
 * is every rank's choice to make alone: a collective run outside a graph
 * matches another rank's also outside one). */
static int agree_fate(loom_comm *comm, fate *f) {
  if (!comm)
    return 0;
  double votes[3] = {0};
  votes[*f] = 1;
  int rc = loom_comm_allreduce_sum_f64(comm, votes, 3);
  if (rc < 0)
    return loom_error_wrap(rc, "agreeing over %d ranks how the step's log runs", loom_comm_size(comm));
  if (votes[*f] != loom_comm_size(comm))
    *f = RUN;
  return 0;
}

/* Whether every rank captured (*ok, this rank's, becomes all's). */
static int agree_captured(loom_comm *comm, bool *ok) {
  if (!comm)
    return 0;
  double failed = !*ok;
  int rc = loom_comm_allreduce_sum_f64(comm, &failed, 1);
  if (rc < 0)
    return loom_error_wrap(rc, "agreeing over %d ranks that the step's graph was captured", loom_comm_size(comm));
  *ok = failed == 0;
  return 0;
}

/* The log run under the backend's capture into e's graph. A backend that
 * cannot capture it (graph_begin, an op or graph_end failing under the
 * capture, where nothing runs), or another rank's that cannot, leaves e
 * running op by op, with a notice: that run shows an op's real error
 * again, as the step's. */
static int capture(loom_backend *b, log_entry *e, const loom_op_log *log, loom_comm *comm) {
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  loom_graph *g = NULL;
  int rc = ops->graph_begin(ctx);
  if (rc == 0) {
    rc = loom_op_log_run(log, ops, ctx);
    int end = ops->graph_end(ctx, log, &g); /* ends the capture, also after a failed op */
    if (rc == 0)
      rc = end;
  }
  bool ok = rc == 0 && g;
  char why[LOOM_ERROR_MAX];
  snprintf(why, sizeof why, "%s", rc < 0 ? loom_last_error() : "no graph made");
  bool all = ok;
  if ((rc = agree_captured(comm, &all)) < 0 || !all) {
    if (g) /* an op refused the capture (nothing ran), or another rank's did */
      ops->graph_destroy(ctx, g);
    if (rc < 0)
      return rc;
    e->no_capture = true;
    loom_notice_once("op_log_capture", "backend \"%s\" could not capture a training step as a graph (%s); such "
                                       "steps run op by op",
                     loom_backend_name(b), ok ? "another rank could not" : why);
    return 0;
  }
  e->graph = g;
  cache_of(b)->counts.captures++;
  return 0;
}

/* The ended log (flushed: its ops already ran): op by op the first time,
 * captured the second, launched from then on. */
static int replay(loom_backend *b, loom_op_log *log, bool flushed, loom_comm *comm) {
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  struct loom_log_cache *c = !flushed && log->count && loom_backend_can_graph(b) ? cache_of(b) : NULL;
  log_entry *e = NULL;
  for (int i = 0; c && !e && i < c->count; i++)
    if (log_eq(&c->entries[i].key, log))
      e = &c->entries[i];
  const fate mine = !e || e->no_capture ? RUN : e->graph ? LAUNCH : CAPTURE;
  fate f = mine;
  int rc = agree_fate(comm, &f);
  if (rc < 0 || flushed)
    return rc;
  if (mine == LAUNCH && f == RUN) { /* another rank has no graph of it: capture again with them */
    ops->graph_destroy(ctx, e->graph);
    e->graph = NULL;
  }
  if (!e) {
    rc = loom_op_log_run(log, ops, ctx);
    if (rc == 0 && c)
      remember(b, c, log);
    return rc;
  }
  e->used = ++c->clock;
  if (f == CAPTURE && (rc = capture(b, e, log, comm)) < 0)
    return rc;
  if (f == RUN || !e->graph)
    return loom_op_log_run(log, ops, ctx);
  if ((rc = ops->graph_launch(ctx, e->graph, log)) < 0)
    return loom_error_wrap(rc, "launching the step's graph (%d ops) on backend \"%s\"", log->count,
                           loom_backend_name(b));
  c->counts.launches++;
  return 0;
}

int loom_backend_log_end(loom_backend *b, bool run) {
  open_log *o = open_for(b);
  if (!o)
    return loom_error_set(LOOM_ESTATE, "loom_backend_log_end: no log is open on backend \"%s\" in this thread",
                          loom_backend_name(b));
  open_on_thread = NULL; /* from here every op runs at once */
  struct loom_log_cache *c = run ? cache_of(b) : NULL;
  if (c)
    c->counts.logs++;
  int rc = run ? replay(b, &o->log, o->off, o->comm) : 0;
  if (o->rc < 0 && run) /* the step's ops failed where nothing could report it */
    rc = loom_error_set(o->rc, "%s", o->message);
  const loom_backend_ops *ops;
  void *ctx = loom_backend_context(b, &ops);
  for (int i = 0; i < o->num_frees; i++)
    if (o->frees[i].plan)
      loom_backend_plan_destroy(b, o->frees[i].p);
    else
      ops->free(ctx, o->frees[i].p);
  log_clear(&o->log);
  free(o->frees);
  free(o);
  return rc;
}

loom_graph_counts loom_backend_graph_counts(const loom_backend *b) {
  struct loom_log_cache *c = *loom_backend_log_cache((loom_backend *)b);
  return c ? c->counts : (loom_graph_counts){0};
}

bool loom_backend_logging(const loom_backend *b) { return open_for(b) && !open_for(b)->off; }

/* The plan op r runs, if any. */
static loom_plan *plan_at(loom_plan *const *field) { return *field; }
static loom_plan *no_plan_at(const void *field) { return (void)field, NULL; }
#define PLAN_FIELD(t, n)                                                                                               \
  {                                                                                                                    \
    loom_plan *p_ = _Generic(&a->n, loom_plan *const *: plan_at, default: no_plan_at)(&a->n);                         \
    if (p_)                                                                                                            \
      return p_;                                                                                                       \
  }
#define NOTHING3(t, n, count)
static loom_plan *plan_of(const loom_logged *r) {
  switch (r->id) {
#define PLAN_OF(op)                                                                                                    \
  case LOOM_LOGGED_##op: {                                                                                             \
    const loom_args_##op *a = &r->u.op;                                                                                \
    (void)a;                                                                                                           \
    LOOM_LOG_ARGS_##op(PLAN_FIELD, NOTHING, NOTHING3) return NULL;                                                     \
  }
    LOOM_LOG_OPS(PLAN_OF)
#undef PLAN_OF
  case LOOM_LOGGED_COUNT: break;
  }
  return NULL;
}

static bool names_plan(const loom_logged *r, const void *plan) { return plan_of(r) == plan; }
static bool names_request(const loom_logged *r, const void *request) {
  return r->id == LOOM_LOGGED_comm && r->u.comm.request == request;
}

/* Drops the logs (and their graphs) of which an op names x. */
static void forget(loom_backend *b, bool (*names_x)(const loom_logged *, const void *), const void *x) {
  struct loom_log_cache *c = *loom_backend_log_cache(b);
  for (int i = 0; c && i < c->count;) {
    bool names = false;
    for (int k = 0; !names && k < c->entries[i].key.count; k++)
      names = names_x(&c->entries[i].key.ops[k], x);
    if (!names) {
      i++;
      continue;
    }
    entry_free(b, &c->entries[i]); /* after its graph's launches: then the plan's memory may go */
    c->entries[i] = c->entries[--c->count];
    c->entries[c->count] = (log_entry){0};
  }
}

void loom_op_log_forget_plan(loom_backend *b, loom_plan *plan) { forget(b, names_plan, plan); }

void loom_op_log_forget_request(loom_backend *b, const loom_comm_request *request) {
  forget(b, names_request, request);
}

/* --- block plans --- */

int loom_op_log_note_block(loom_backend *b, loom_plan *plan, int layers) {
  struct loom_log_cache *c = cache_of(b);
  if (!c)
    return loom_error_oom("a block plan's entry");
  int rc = loom_array_reserve((void **)&c->blocks, &c->cap_blocks, (size_t)c->num_blocks + 1, sizeof *c->blocks,
                              "a block plan's entry");
  if (rc < 0)
    return rc;
  c->blocks[c->num_blocks++] = (block_plan){plan, layers};
  return 0;
}

void loom_op_log_forget_block(loom_backend *b, loom_plan *plan) {
  struct loom_log_cache *c = *loom_backend_log_cache(b);
  for (int i = 0; c && i < c->num_blocks; i++)
    if (c->blocks[i].plan == plan) {
      c->blocks[i] = c->blocks[--c->num_blocks];
      return;
    }
}

int loom_op_log_block_layers(loom_backend *b, loom_plan *plan) {
  struct loom_log_cache *c = *loom_backend_log_cache(b);
  for (int i = 0; c && i < c->num_blocks; i++)
    if (c->blocks[i].plan == plan)
      return c->blocks[i].layers;
  return 0;
}

void loom_op_log_backend_free(loom_backend *b) {
  struct loom_log_cache **c = loom_backend_log_cache(b);
  if (open_for(b)) /* destroyed with its log open: nothing of it runs */
    loom_backend_log_end(b, false);
  if (!*c)
    return;
  for (int i = 0; i < (*c)->count; i++)
    entry_free(b, &(*c)->entries[i]);
  free((*c)->blocks);
  free(*c);
  *c = NULL;
}
