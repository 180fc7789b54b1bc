/* The checkpoint callback: last, best-K and exception checkpoints with a
 * manifest; loading best or last weights at stage boundaries. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/checkpoint_dir.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "callbacks/monitor.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

#define MAX_TOP_K 64

typedef struct ranked {
  double value;
  int64_t global_epoch;
} ranked;

typedef struct checkpointer {
  loom_checkpoint_options o;
  char *loader, *metric, *load_start, *load_end;
  char dir[4096];
  ranked ranking[MAX_TOP_K + 1];
  int ranked_count;
  /* What the ranking ranks: "{loader}/{metric}" and its direction. Values
   * of another metric are never compared with these. */
  char ranked_key[512];
  bool ranked_minimize;
} checkpointer;

static void ranked_file(char *out, size_t size, int64_t global_epoch) {
  snprintf(out, size, "epoch_%04lld.h5", (long long)global_epoch);
}

static int path_of(const checkpointer *c, const char *name, char *out, size_t size) {
  return loom_path_join(out, size, c->dir, name);
}

/* The manifest's entry for `name` (created empty). */
/* The manifest is built in memory with jansson, whose calls fail when
 * out of memory: `ok` gathers that, and a manifest missing a CRC is never
 * written (it would make the new checkpoint look damaged). */
static void set_key(json_t *object, const char *key, json_t *value, bool *ok) {
  *ok = json_object_set_new(object, key, value) == 0 && *ok;
}

static json_t *entry_of(json_t *manifest, const char *name, bool *ok) {
  json_t *files = json_object_get(manifest, "files"), *e = json_object_get(files, name);
  if (!e) {
    e = json_object();
    if (json_object_set_new(files, name, e) < 0)
      e = NULL, *ok = false; /* (freed by jansson) */
  }
  return e;
}

/* [first] followed by the CRCs in `rest` (which may be NULL); NULL when
 * out of memory. */
static json_t *crc_list(json_int_t first, const json_t *rest) {
  json_t *list = json_array();
  bool ok = json_array_append_new(list, json_integer(first)) == 0;
  size_t i;
  json_t *v;
  json_array_foreach(rest, i, v) if (json_integer_value(v) != first) ok = ok && json_array_append(list, v) == 0;
  if (!ok) {
    json_decref(list);
    return NULL;
  }
  return list;
}

static void describe(json_t *entry, loom_runner *r, json_int_t crc, bool *ok) {
  const char *loader = loom_runner_loader_name(r);
  set_key(entry, "crc32", crc_list(crc, NULL), ok);
  set_key(entry, "stage", json_string(loom_runner_stage_name(r)), ok);
  set_key(entry, "epoch", json_integer(loom_runner_epoch(r)), ok);
  set_key(entry, "global_epoch", json_integer(loom_runner_global_epoch(r)), ok);
  set_key(entry, "loader", json_string(loader ? loader : ""), ok);
  set_key(entry, "batch", json_integer(loader ? loom_runner_loader_batch_step(r) : 0), ok);
  set_key(entry, "optimizer_step", json_integer(loom_runner_optimizer_step_count(r)), ok);
}

/* Puts `snap` at <dir>/<name> so that a crash at any moment leaves files the
 * manifest accepts: the new file is complete on disk, then the manifest
 * accepts old and new, then names move (with `rotate`, the old last.h5
 * becomes last.prev.h5 first), and only then the manifest forgets the old.
 * The caller saves the manifest once more at the end. */
static int install(checkpointer *c, json_t *manifest, loom_runner *r, const loom_checkpoint *snap, const char *name,
                   bool rotate) {
  char path[4096], tmp[4200], prev[4096], link_tmp[4300];
  uint32_t crc;
  int rc = path_of(c, name, path, sizeof path);
  if (rc == 0)
    rc = loom_checkpoint_write_temp(snap, path, tmp, sizeof tmp);
  if (rc < 0)
    return rc;
  if ((rc = loom_file_crc32(tmp, &crc)) < 0) {
    unlink(tmp);
    return rc;
  }
  bool ok = true;
  json_t *entry = entry_of(manifest, name, &ok);
  json_t *old = entry ? json_deep_copy(entry) : NULL; /* what is on disk now */
  ok = ok && old;
  json_t *old_crcs = json_object_get(old, "crc32");
  bool had_old = rotate && access(path, F_OK) == 0;
  if (had_old && ok)
    set_key(entry_of(manifest, "last.prev.h5", &ok), "crc32",
            json_array_size(old_crcs) ? crc_list(json_integer_value(json_array_get(old_crcs, 0)),
                                                 loom_manifest_crcs(manifest, "last.prev.h5"))
                                      : json_array(),
            &ok);
  if (ok)
    set_key(entry_of(manifest, name, &ok), "crc32", crc_list((json_int_t)crc, old_crcs), &ok);
  rc = ok ? loom_manifest_save(c->dir, manifest) : loom_error_oom("the checkpoint manifest");
  if (rc == 0 && had_old) {
    /* last.h5 -> last.prev.h5 by a hard link and a rename. */
    path_of(c, "last.prev.h5", prev, sizeof prev);
    snprintf(link_tmp, sizeof link_tmp, "%s.tmp.%ld", prev, (long)getpid());
    unlink(link_tmp);
    if (link(path, link_tmp) < 0 || rename(link_tmp, prev) < 0) {
      unlink(link_tmp);
      rc = loom_error_set(LOOM_EIO, "cannot keep %s as %s: %s", path, prev, strerror(errno));
    }
  }
  if (rc == 0)
    rc = loom_checkpoint_commit(tmp, path);
  else
    unlink(tmp);
  if (rc == 0) {
    describe(entry_of(manifest, name, &ok), r, (json_int_t)crc, &ok);
    if (had_old && json_array_size(old_crcs)) {
      set_key(old, "crc32", crc_list(json_integer_value(json_array_get(old_crcs, 0)), NULL), &ok);
      ok = json_object_set(json_object_get(manifest, "files"), "last.prev.h5", old) == 0 && ok;
    }
    /* The files are in place and the manifest on disk accepts them; what
     * is missing here would be missing from the next manifest written. */
    if (!ok)
      rc = loom_error_oom("the checkpoint manifest");
  }
  json_decref(old);
  return rc;
}

static int ranking_to_manifest(const checkpointer *c, json_t *manifest) {
  json_t *list = json_array();
  bool ok = list != NULL;
  /* The key is "{loader}/{metric}"; a loader name has no '/'. */
  const char *slash = strchr(c->ranked_key, '/');
  int loader_len = slash ? (int)(slash - c->ranked_key) : 0;
  for (int i = 0; i < c->ranked_count; i++) {
    char file[64], loader[512];
    ranked_file(file, sizeof file, c->ranking[i].global_epoch);
    snprintf(loader, sizeof loader, "%.*s", loader_len, c->ranked_key);
    ok = json_array_append_new(list, json_pack("{s:s, s:f, s:I, s:s, s:s, s:s}", "file", file, "value",
                                          c->ranking[i].value, "global_epoch",
                                          (json_int_t)c->ranking[i].global_epoch, "metric",
                                          slash ? slash + 1 : c->ranked_key, "loader", loader, "direction",
                                          c->ranked_minimize ? "min" : "max")) == 0 && ok;
  }
  if (!ok) {
    json_decref(list);
    return loom_error_oom("the checkpoint ranking");
  }
  return json_object_set_new(manifest, "ranking", list) == 0 ? 0 : loom_error_oom("the checkpoint ranking");
}

/* A ranking of another metric or direction (an earlier stage's) ends:
 * its values mean nothing to this one, which starts empty. Its files stay
 * on disk, out of the ranking. */
static void rank_by(checkpointer *c, const loom_monitored *mon) {
  if (c->ranked_count > 0 && c->ranked_key[0] && strcmp(c->ranked_key, mon->key) == 0 &&
      c->ranked_minimize == mon->minimize)
    return;
  if (c->ranked_key[0]) /* an older file's ranking has no key: it is this one */
    c->ranked_count = 0;
  snprintf(c->ranked_key, sizeof c->ranked_key, "%s", mon->key);
  c->ranked_minimize = mon->minimize;
}

/* Inserts this epoch into the ranking if it makes the top K; returns 1 if
 * it did, with *dropped set to the epoch pushed out (or -1). */
static int rank(checkpointer *c, double value, int64_t epoch, int64_t *dropped) {
  *dropped = -1;
  int pos = c->ranked_count;
  while (pos > 0 && (c->ranked_minimize ? value < c->ranking[pos - 1].value : value > c->ranking[pos - 1].value))
    pos--;
  if (pos >= c->o.save_top_k)
    return 0;
  memmove(&c->ranking[pos + 1], &c->ranking[pos], (size_t)(c->ranked_count - pos) * sizeof c->ranking[0]);
  c->ranking[pos] = (ranked){value, epoch};
  if (++c->ranked_count > c->o.save_top_k)
    *dropped = c->ranking[--c->ranked_count].global_epoch;
  return 1;
}

/* best.h5 -> the top file, replaced atomically by a link and a rename; the
 * manifest accepts the old and the new best.h5 while that happens. */
static int link_best(checkpointer *c, const char *top, json_t *manifest) {
  char src[4096], best[4096], tmp[4200];
  path_of(c, top, src, sizeof src);
  path_of(c, "best.h5", best, sizeof best);
  json_t *top_crcs = loom_manifest_crcs(manifest, top);
  json_int_t crc = json_integer_value(json_array_get(top_crcs, 0));
  bool ok = true;
  set_key(entry_of(manifest, "best.h5", &ok), "crc32", crc_list(crc, loom_manifest_crcs(manifest, "best.h5")), &ok);
  int rc = ok ? loom_manifest_save(c->dir, manifest) : loom_error_oom("the checkpoint manifest");
  if (rc < 0)
    return rc;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", best, (long)getpid());
  unlink(tmp);
  if (link(src, tmp) < 0 || rename(tmp, best) < 0) {
    unlink(tmp);
    return loom_error_set(LOOM_EIO, "cannot point %s at %s: %s", best, src, strerror(errno));
  }
  json_t *files = json_object_get(manifest, "files");
  json_object_set_new(files, "best.h5", json_deep_copy(json_object_get(files, top)));
  return 0;
}

/* The manifest on disk, or a fresh one if it is missing or damaged (a
 * damaged manifest loses its ranking, not the run). */
/* A damaged manifest is replaced (its ranking lost, its CRC checks
 * with it); one that could not be read for want of memory is not. */
static json_t *manifest_or_new(const checkpointer *c) {
  json_t *m = loom_manifest_load(c->dir);
  return m || loom_last_error_code() == LOOM_ENOMEM ? m : loom_manifest_new();
}

static int save_epoch(checkpointer *c, loom_runner *r) {
  /* Rank first: the snapshot must carry the ranking that includes this epoch. */
  /* Named by the user, the metric must exist; the stage's own may be
   * missing (a stage without a valid loader): then nothing is ranked. */
  loom_monitored mon;
  int64_t dropped = -1;
  int found = c->o.save_top_k > 0 ? loom_monitor_lookup(r, "checkpoint", c->loader, c->metric, c->o.minimize,
                                                         c->loader || c->metric, &mon)
                                  : 0;
  if (found < 0)
    return found;
  if (found == 1)
    rank_by(c, &mon);
  bool ranked_now = found == 1 && !isnan(mon.value) && rank(c, mon.value, loom_runner_global_epoch(r), &dropped);
  loom_checkpoint *snap;
  int rc = loom_runner_snapshot(r, &snap);
  if (rc < 0)
    return rc;
  if (!loom_runner_writes_files(r)) { /* best and last kept in memory */
    if (ranked_now && c->ranking[0].global_epoch == loom_runner_global_epoch(r))
      rc = loom_runner_keep_checkpoint(r, "best", snap);
    if (rc == 0 && c->o.save_last)
      rc = loom_runner_keep_checkpoint(r, "last", snap);
    loom_checkpoint_destroy(snap);
    return rc;
  }
  json_t *manifest = manifest_or_new(c);
  char file[64], path[4096];
  if (!manifest)
    rc = loom_error_oom("the checkpoint manifest");
  if (rc == 0 && ranked_now) {
    ranked_file(file, sizeof file, loom_runner_global_epoch(r));
    rc = install(c, manifest, r, snap, file, false);
    if (rc == 0 && c->ranking[0].global_epoch == loom_runner_global_epoch(r))
      rc = link_best(c, file, manifest);
  }
  if (rc == 0 && c->o.save_last)
    rc = install(c, manifest, r, snap, "last.h5", true);
  if (rc == 0)
    rc = ranking_to_manifest(c, manifest);
  if (rc == 0)
    rc = loom_manifest_save(c->dir, manifest);
  /* Only now, with the new files and manifest on disk, drop the old one. */
  if (rc == 0 && dropped >= 0) {
    ranked_file(file, sizeof file, dropped);
    json_object_del(json_object_get(manifest, "files"), file);
    if (path_of(c, file, path, sizeof path) == 0)
      unlink(path);
    rc = loom_manifest_save(c->dir, manifest);
  }
  json_decref(manifest);
  loom_checkpoint_destroy(snap);
  return rc;
}

static int save_last_now(checkpointer *c, loom_runner *r, const char *name) {
  loom_checkpoint *snap;
  int rc = loom_runner_snapshot(r, &snap);
  if (rc < 0)
    return rc;
  if (!loom_runner_writes_files(r)) {
    rc = loom_runner_keep_checkpoint(r, "last", snap);
    loom_checkpoint_destroy(snap);
    return rc;
  }
  json_t *manifest = manifest_or_new(c);
  rc = manifest ? install(c, manifest, r, snap, name, strcmp(name, "last.h5") == 0)
                : loom_error_oom("the checkpoint manifest");
  if (rc == 0)
    rc = ranking_to_manifest(c, manifest);
  if (rc == 0)
    rc = loom_manifest_save(c->dir, manifest);
  json_decref(manifest);
  loom_checkpoint_destroy(snap);
  return rc;
}

static int ckpt_experiment_start(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  c->ranked_count = 0;
  c->ranked_key[0] = '\0';
  c->dir[0] = '\0';
  if (!loom_runner_writes_files(r))
    return 0;
  int rc = loom_checkpoint_dir(loom_runner_logdir(r), c->dir, sizeof c->dir);
  if (rc == 0)
    rc = loom_runner_lock_logdir(r);
  if (rc == 0 && loom_runner_is_master(r))
    rc = loom_mkdir_p(c->dir);
  if (rc == 0 && loom_runner_is_master(r)) /* under the logdir's lock: what others left is litter */
    rc = loom_checkpoint_dir_sweep(c->dir);
  return rc;
}

static int load_weights(checkpointer *c, loom_runner *r, const char *which) {
  if (!which || !loom_runner_model(r))
    return 0;
  char path[4096];
  loom_checkpoint *ck = loom_runner_open_checkpoint(r, which, path, sizeof path);
  if (!ck)
    return loom_last_error_code() == LOOM_ENOENT ? 0 : loom_last_error_code(); /* nothing saved yet */
  const loom_state *s = loom_checkpoint_find(ck, "model");
  int rc = s ? loom_model_load(loom_runner_model(r), s, false)
             : loom_error_set(LOOM_EFORMAT, "%s holds no model weights", path);
  loom_checkpoint_destroy(ck);
  (void)c;
  return rc < 0 ? loom_error_wrap(rc, "loading the %s weights", which) : 0;
}

static int ckpt_stage_start(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  return load_weights(c, r, c->load_start);
}

static int ckpt_stage_end(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  return load_weights(c, r, c->load_end);
}

static int ckpt_batch_end(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  if (!c->o.save_last || c->o.every_n_batches <= 0 || !loom_runner_is_train_loader(r) ||
      loom_runner_global_batch_step(r) % c->o.every_n_batches != 0)
    return 0;
  /* Every rank is here at this batch (unless the callback was made the
   * master's alone): the master's file records where each was. */
  int rc = loom_callback_node(cb) == LOOM_NODE_ALL ? loom_runner_gather_ranks(r) : 0;
  return rc == 0 && loom_runner_is_master(r) ? save_last_now(c, r, "last.h5") : rc;
}

static int ckpt_epoch_end(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  return loom_runner_is_master(r) ? save_epoch(c, r) : 0;
}

static int ckpt_exception(loom_callback *cb, loom_runner *r) {
  checkpointer *c = loom_callback_data(cb);
  if (!c->o.save_on_exception || !loom_runner_is_master(r) || !c->dir[0])
    return 0;
  /* An interrupt stops at a batch boundary: a state worth resuming. */
  bool resumable = loom_runner_error(r) == LOOM_EINTERRUPTED;
  loom_checkpoint *probe;
  if (loom_runner_snapshot(r, &probe) < 0)
    return 0; /* outside a stage: nothing to save */
  loom_checkpoint_destroy(probe);
  const char *name = resumable && c->o.save_last ? "last.h5" : "exception.h5";
  int rc = save_last_now(c, r, name);
  if (rc == 0)
    loom_runner_add_error_note(r, "%s saved: %s/%s", resumable ? "checkpoint" : "its state", c->dir, name);
  return rc;
}

static int ckpt_save(loom_callback *cb, loom_runner *r, loom_state *s) {
  (void)r;
  const checkpointer *c = loom_callback_data(cb);
  double values[MAX_TOP_K + 1];
  int64_t epochs[MAX_TOP_K + 1];
  for (int i = 0; i < c->ranked_count; i++)
    values[i] = c->ranking[i].value, epochs[i] = c->ranking[i].global_epoch;
  int rc = loom_state_set_f64_array(s, "ranking_values", values, (size_t)c->ranked_count);
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "ranking_epochs", epochs, (size_t)c->ranked_count);
  if (rc == 0)
    rc = loom_state_set_str(s, "ranking_key", c->ranked_key);
  if (rc == 0)
    rc = loom_state_set_i64(s, "ranking_minimize", c->ranked_minimize);
  return rc;
}

static int ckpt_load(loom_callback *cb, loom_runner *r, const loom_state *s) {
  (void)r;
  checkpointer *c = loom_callback_data(cb);
  size_t n = loom_state_array_length(s, "ranking_values");
  if (n > MAX_TOP_K)
    return loom_error_set(LOOM_EFORMAT, "saved ranking of %zu entries exceeds %d", n, MAX_TOP_K);
  double values[MAX_TOP_K];
  int64_t epochs[MAX_TOP_K];
  int rc = loom_state_get_f64_array(s, "ranking_values", values, n);
  if (rc == 0)
    rc = loom_state_get_i64_array(s, "ranking_epochs", epochs, n);
  const char *key = ""; /* not in older files */
  int64_t minimize = 0;
  if (rc == 0 && loom_state_has(s, "ranking_key"))
    rc = loom_state_get_str(s, "ranking_key", &key);
  if (rc == 0 && loom_state_has(s, "ranking_minimize"))
    rc = loom_state_get_i64(s, "ranking_minimize", &minimize);
  if (rc < 0)
    return rc;
  snprintf(c->ranked_key, sizeof c->ranked_key, "%s", key);
  c->ranked_minimize = minimize != 0;
  for (size_t i = 0; i < n; i++)
    c->ranking[i] = (ranked){values[i], epochs[i]};
  c->ranked_count = (int)n;
  return 0;
}

static void ckpt_destroy(void *data) {
  checkpointer *c = data;
  free(c->loader);
  free(c->metric);
  free(c->load_start);
  free(c->load_end);
  free(c);
}

static const loom_callback_ops checkpoint_ops = {
    .type = "checkpoint",
    .on_experiment_start = ckpt_experiment_start,
    .on_stage_start = ckpt_stage_start,
    .on_batch_end = ckpt_batch_end,
    .on_epoch_end = ckpt_epoch_end,
    .on_stage_end = ckpt_stage_end,
    .on_exception = ckpt_exception,
    .save = ckpt_save,
    .load = ckpt_load,
    .destroy = ckpt_destroy,
};

loom_checkpoint_options loom_checkpoint_defaults(void) {
  return (loom_checkpoint_options){.minimize = -1, .save_top_k = 1, .save_last = true, .save_on_exception = true};
}

static bool valid_which(const char *w) { return !w || strcmp(w, "best") == 0 || strcmp(w, "last") == 0; }

static char *dup_or_null(const char *s, bool *ok) {
  if (!s)
    return NULL;
  char *d = strdup(s);
  *ok = *ok && d;
  return d;
}

loom_callback *loom_checkpoint_callback_create(const loom_checkpoint_options *o) {
  loom_checkpoint_options d = loom_checkpoint_defaults();
  if (!o)
    o = &d;
  if (o->save_top_k < 0 || o->save_top_k > MAX_TOP_K || o->every_n_batches < 0 || !valid_which(o->load_on_stage_start) ||
      !valid_which(o->load_on_stage_end)) {
    loom_error_set(LOOM_EINVAL, "checkpoint: save_top_k must be 0..%d, every_n_batches >= 0, and "
                                "load_on_stage_start/end \"best\", \"last\" or unset",
                   MAX_TOP_K);
    return NULL;
  }
  checkpointer *c = calloc(1, sizeof *c);
  if (!c) {
    loom_error_oom("the checkpoint callback");
    return NULL;
  }
  bool ok = true;
  c->o = *o;
  c->loader = dup_or_null(o->loader, &ok);
  c->metric = dup_or_null(o->metric, &ok);
  c->load_start = dup_or_null(o->load_on_stage_start, &ok);
  c->load_end = dup_or_null(o->load_on_stage_end, &ok);
  if (!ok) {
    ckpt_destroy(c);
    loom_error_oom("the checkpoint callback");
    return NULL;
  }
  loom_callback *cb = loom_callback_create(&checkpoint_ops, c, LOOM_ORDER_EXTERNAL + 50);
  if (cb && loom_callback_set_writes(cb, "checkpoints") < 0) {
    loom_callback_destroy(cb);
    return NULL;
  }
  return cb;
}
