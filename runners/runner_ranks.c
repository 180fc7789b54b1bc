/* What each rank's loader under way had consumed, so that a checkpoint
 * taken inside a loader resumes there bit-exactly on as many ranks: each
 * rank's position in its own shard (batches and samples) and its metric
 * sums so far, which differ by rank until the loader's end reduces them.
 * Only the master writes the snapshot, so the others' positions must reach
 * it first, through collectives, at a point where every rank is: the
 * runner gathers them when an interrupt stops every rank, and
 * loom_runner_gather_ranks lets a callback that runs on every rank (the
 * checkpoint callback's every_n_batches) do it before the master saves. A
 * snapshot inside a loader without them resumes at that loader's start. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runners/runner_impl.h"

void loom_rank_positions_clear(loom_rank_positions *p) {
  for (int i = 0; i < p->count; i++) {
    loom_metrics_destroy(p->ranks[i].sums);
    loom_metrics_destroy(p->ranks[i].weights);
  }
  free(p->ranks);
  memset(p, 0, sizeof *p);
}

static void stamp_now(const loom_runner *r, int64_t stamp[8]) {
  loom_cursor c = loom_runner_cursor_now(r);
  const int64_t s[8] = {c.stage, c.epoch, c.phase, c.loader, c.batches, c.global_epoch, r->event, r->global_batch_step};
  memcpy(stamp, s, sizeof s);
}

static int position_alloc(loom_rank_position *p) {
  *p = (loom_rank_position){.sums = loom_metrics_create(), .weights = loom_metrics_create()};
  return p->sums && p->weights ? 0 : loom_error_oom("a rank's loader position");
}

/* This rank's position as of the cursor (at on_batch_start the batch under
 * way is not done). */
static int own_position(const loom_runner *r, loom_rank_position *p) {
  int rc = position_alloc(p);
  if (rc == 0)
    rc = loom_runner_sums_at_cursor(r, p->sums, p->weights);
  p->batches = loom_runner_cursor_now(r).batches;
  p->samples = r->loader_sample_step - (r->event == LOOM_EVENT_BATCH_START ? r->batch_size : 0);
  return rc;
}

/* A position as doubles: batches, samples, m, m sums, m weights, then the
 * names ("a\nb") one byte per double. Exact: a gather adds only zeros. */
static int encode(const loom_rank_position *p, double **out, size_t *len) {
  size_t m = loom_metrics_count(p->sums), names = 0;
  for (size_t i = 0; i < m; i++)
    names += strlen(loom_metrics_name(p->sums, i)) + 1;
  *len = 3 + 2 * m + names;
  double *d = *out = calloc(*len, sizeof *d);
  if (!d)
    return loom_error_oom("a rank's loader position");
  d[0] = (double)p->batches, d[1] = (double)p->samples, d[2] = (double)m;
  size_t at = 3 + 2 * m;
  for (size_t i = 0; i < m; i++) {
    const char *name = loom_metrics_name(p->sums, i);
    d[3 + i] = loom_metrics_value(p->sums, i);
    loom_metrics_get(p->weights, name, &d[3 + m + i]);
    for (const char *c = name; *c; c++)
      d[at++] = (unsigned char)*c;
    d[at++] = '\n';
  }
  return 0;
}

static int decode(const double *d, size_t len, loom_rank_position *p) {
  int rc = position_alloc(p);
  size_t m = len >= 3 ? (size_t)d[2] : 0;
  if (rc == 0 && (len < 3 + 2 * m || d[0] < 0 || d[1] < 0))
    return loom_error_set(LOOM_EFORMAT, "a rank sent a malformed loader position (%zu values)", len);
  p->batches = (int64_t)d[0], p->samples = (int64_t)d[1];
  char name[256];
  size_t at = 3 + 2 * m;
  for (size_t i = 0; rc == 0 && i < m; i++) {
    size_t n = 0;
    while (at < len && d[at] != '\n' && n + 1 < sizeof name)
      name[n++] = (char)d[at++];
    name[n] = '\0';
    at++;
    rc = loom_metrics_set(p->sums, name, d[3 + i]);
    if (rc == 0)
      rc = loom_metrics_set(p->weights, name, d[3 + m + i]);
  }
  return rc;
}

int loom_runner_gather_ranks(loom_runner *r) {
  loom_rank_positions_clear(&r->gathered);
  int size = loom_comm_size(r->comm), me = loom_comm_rank(r->comm);
  if (size == 1 || !r->in_stage)
    return 0; /* a world of one's snapshot takes its own; outside a stage there is no loader */
  loom_rank_position mine;
  double *encoded = NULL, *lens = calloc((size_t)size, sizeof *lens), *all = NULL;
  size_t len = 0, total = 0, offset = 0;
  int rc = own_position(r, &mine);
  if (rc == 0)
    rc = encode(&mine, &encoded, &len);
  loom_metrics_destroy(mine.sums);
  loom_metrics_destroy(mine.weights);
  if (rc == 0 && !lens)
    rc = loom_error_oom("the ranks' loader positions");
  if (rc == 0) {
    lens[me] = (double)len;
    rc = loom_comm_allreduce_sum_f64(r->comm, lens, (size_t)size);
  }
  for (int i = 0; rc == 0 && i < size; i++)
    offset += i < me ? (size_t)lens[i] : 0, total += (size_t)lens[i];
  if (rc == 0 && !(all = calloc(total, sizeof *all)))
    rc = loom_error_oom("the ranks' loader positions");
  if (rc == 0) {
    memcpy(all + offset, encoded, len * sizeof *all);
    rc = loom_comm_allreduce_sum_f64(r->comm, all, total);
  }
  if (rc == 0 && me == 0) {
    loom_rank_positions *g = &r->gathered;
    if (!(g->ranks = calloc((size_t)size, sizeof *g->ranks)))
      rc = loom_error_oom("the ranks' loader positions");
    for (size_t i = 0, at = 0; rc == 0 && i < (size_t)size; at += (size_t)lens[i], i++, g->count++)
      rc = decode(all + at, (size_t)lens[i], &g->ranks[i]);
    stamp_now(r, g->stamp);
  }
  free(encoded);
  free(lens);
  free(all);
  if (rc < 0) {
    loom_rank_positions_clear(&r->gathered);
    return loom_error_wrap(rc, "gathering every rank's loader position for a checkpoint");
  }
  return 0;
}

static int save_position(loom_checkpoint *c, int rank, const loom_rank_position *p) {
  char name[64];
  snprintf(name, sizeof name, "ranks/%d", rank);
  loom_state *g = loom_checkpoint_group(c, name);
  const int64_t position[2] = {p->batches, p->samples};
  int rc = g ? loom_state_set_i64_array(g, "position", position, 2) : LOOM_ENOMEM;
  if (rc == 0)
    rc = loom_save_metrics(g, "loader_sums", p->sums);
  if (rc == 0)
    rc = loom_save_metrics(g, "loader_weights", p->weights);
  return rc;
}

int loom_runner_save_ranks(loom_runner *r, loom_checkpoint *c) {
  int size = loom_comm_size(r->comm);
  loom_state *run = loom_checkpoint_group(c, "runner");
  int rc = run ? loom_state_set_i64(run, "world_size", size) : LOOM_ENOMEM;
  if (rc < 0 || !r->in_stage)
    return rc;
  if (size == 1) {
    loom_rank_position mine;
    rc = own_position(r, &mine);
    if (rc == 0)
      rc = save_position(c, 0, &mine);
    loom_metrics_destroy(mine.sums);
    loom_metrics_destroy(mine.weights);
    return rc;
  }
  int64_t stamp[8];
  stamp_now(r, stamp);
  if (r->gathered.count != size || memcmp(stamp, r->gathered.stamp, sizeof stamp) != 0)
    return 0; /* not gathered here: a resume inside this loader starts it again */
  for (int i = 0; rc == 0 && i < size; i++)
    rc = save_position(c, i, &r->gathered.ranks[i]);
  return rc;
}

static const loom_state *own_group(const loom_runner *r, const loom_checkpoint *c) {
  char name[64];
  snprintf(name, sizeof name, "ranks/%d", loom_comm_rank(r->comm));
  return loom_checkpoint_find(c, name);
}

bool loom_runner_can_resume_in_loader(const loom_runner *r, const loom_checkpoint *c) {
  int size = loom_comm_size(r->comm);
  if (r->resume_world != size)
    return false;
  return size == 1 || own_group(r, c) != NULL; /* a world of one's runner group is its position */
}

int loom_runner_restore_rank(loom_runner *r, const loom_checkpoint *c) {
  const loom_state *g = own_group(r, c);
  if (!g)
    return 0;
  int64_t position[2];
  int rc = loom_state_get_i64_array(g, "position", position, 2);
  if (rc == 0 && (position[0] < 0 || position[0] > r->cursor.batches || position[1] < 0))
    rc = loom_error_set(LOOM_EFORMAT, "rank %d's loader position (%lld batches, %lld samples) lies outside the "
                                      "checkpoint's %lld batches",
                        loom_comm_rank(r->comm), (long long)position[0], (long long)position[1],
                        (long long)r->cursor.batches);
  if (rc == 0)
    rc = loom_load_metrics(g, "loader_sums", r->loader_sums);
  if (rc == 0)
    rc = loom_load_metrics(g, "loader_weights", r->loader_weights);
  if (rc < 0)
    return rc;
  /* The loop goes on from the master's count (every rank steps as many
   * times); this rank's own shard from its own. */
  r->loader_batch_step = position[0];
  r->loader_sample_step = position[1];
  return 0;
}
