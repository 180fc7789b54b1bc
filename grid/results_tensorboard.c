/* The grid's HParams summary for TensorBoard (loom/grid_results.h), with
 * the tensorboard logger's encoder (callbacks/hparams.h). */
#define _XOPEN_SOURCE 700 /* nftw */
#include <errno.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "callbacks/hparams.h"
#include "core/error_internal.h"
#include "grid/results_internal.h"

/* Files loom wrote in DIR/hparams before: events.out.tfevents.*.loom. */
static int remove_old(const char *path, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb;
  const char *name = path + ftw->base;
  size_t n = strlen(name);
  if (type == FTW_F && strncmp(name, "events.out.tfevents.", 20) == 0 && n > 5 && strcmp(name + n - 5, ".loom") == 0 &&
      unlink(path) < 0)
    return loom_error_set(LOOM_EIO, "grid results: cannot remove the old %s: %s", path, strerror(errno));
  return 0;
}

/* An id is a relative path below DIR/hparams: no "..", no leading '/'. */
static bool safe_id(const char *id) {
  if (!id[0] || id[0] == '/')
    return false;
  for (const char *p = id; *p; p += strcspn(p, "/"), p += *p == '/') {
    size_t n = strcspn(p, "/");
    if ((n == 2 && strncmp(p, "..", 2) == 0) || (n == 1 && p[0] == '.') || n == 0)
      return false;
  }
  return true;
}

/* The row's options as hparams, and its group's name ("k=v,k=v" in the
 * grid's key order): its repetitions share it. */
static int row_hparams(const json_t *row, const json_t *keys, loom_hparams *h, char *group, size_t size) {
  json_t *options = json_object_get(row, "options");
  size_t i, used = 0;
  json_t *key;
  group[0] = '\0';
  json_array_foreach(keys, i, key) {
    const char *k = json_string_value(key);
    json_t *v = json_object_get(options, k);
    if (!v)
      continue;
    int rc = loom_hparams_add_json(h, k, v);
    if (rc < 0)
      return rc;
    char *text = loom_grid_value_text(v, false);
    int w = snprintf(group + used, size - used, "%s%s=%s", used ? "," : "", k, text ? text : "?");
    free(text);
    if (w > 0 && (size_t)w < size - used)
      used += (size_t)w;
  }
  return 0;
}

static int write_session(const json_t *row, const loom_hparams *h, const char *group, const char *dir) {
  const char *id = json_string_value(json_object_get(row, "id"));
  if (!safe_id(id))
    return loom_error_set(LOOM_EFORMAT, "grid results: the experiment id \"%s\" is not a relative path without "
                                        "\".\" or \"..\" parts: cannot name its TensorBoard run",
                          id);
  char path[4096];
  if (snprintf(path, sizeof path, "%s/hparams/%s", dir, id) >= (int)sizeof path)
    return loom_error_set(LOOM_EINVAL, "grid results: the path %s/hparams/%s is too long", dir, id);
  loom_tfevents t = {0};
  int rc = loom_tfevents_create(&t, path);
  double now = loom_hparams_now();
  if (rc == 0)
    rc = loom_hparams_write_session_start(&t, h, group, now);
  const char *k;
  json_t *v;
  json_object_foreach(json_object_get(row, "final"), k, v) {
    if (rc == 0 && json_is_number(v))
      rc = loom_tfevents_write_scalar(&t, k, json_number_value(v), 0);
  }
  const char *status = json_string_value(json_object_get(row, "status"));
  bool done = status && strcmp(status, "done") == 0, failed = status && strcmp(status, "failed") == 0;
  if (rc == 0 && (done || failed))
    rc = loom_hparams_write_session_end(&t, done ? LOOM_HPARAMS_STATUS_SUCCESS : LOOM_HPARAMS_STATUS_FAILURE, now);
  int closed = loom_tfevents_close(&t);
  return rc < 0 ? rc : closed;
}

/* Every final metric name of the rows, in the order first seen. */
static json_t *metric_names(const json_t *rows) {
  json_t *finals = json_object(), *names = json_array();
  size_t i;
  json_t *row;
  json_array_foreach(rows, i, row) {
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(row, "final"), k, v) {
      if (!json_object_get(finals, k)) {
        json_object_set_new(finals, k, json_true());
        json_array_append_new(names, json_string(k));
      }
    }
  }
  json_decref(finals);
  return names;
}

int loom_grid_results_write_tensorboard(const loom_grid_results *r, const char *dir) {
  char top[4096];
  if (snprintf(top, sizeof top, "%s/hparams", dir) >= (int)sizeof top)
    return loom_error_set(LOOM_EINVAL, "grid results: the path %s/hparams is too long", dir);
  /* nftw returns -1 for its own failures, remove_old's code for ours. */
  int rc = nftw(top, remove_old, 16, FTW_PHYS);
  if (rc == -1 && errno == ENOENT)
    rc = 0;
  else if (rc == -1)
    rc = loom_error_set(LOOM_EIO, "grid results: cannot read %s: %s", top, strerror(errno));
  if (rc < 0)
    return rc;
  size_t n = json_array_size(r->rows);
  json_t *keys = loom_grid_option_keys(r->rows), *metrics = metric_names(r->rows);
  loom_hparams *sessions = calloc(n + 1, sizeof *sessions);
  const char **tags = calloc(json_array_size(metrics) + 1, sizeof *tags);
  if (!keys || !metrics || !sessions || !tags)
    rc = loom_error_oom("the grid's HParams");
  char group[4096];
  for (size_t i = 0; rc == 0 && i < n; i++) {
    json_t *row = json_array_get(r->rows, i);
    rc = row_hparams(row, keys, &sessions[i], group, sizeof group);
    if (rc == 0)
      rc = write_session(row, &sessions[i], group, dir);
  }
  for (size_t m = 0; tags && m < json_array_size(metrics); m++)
    tags[m] = json_string_value(json_array_get(metrics, m));
  loom_tfevents t = {0};
  if (rc == 0)
    rc = loom_tfevents_create(&t, top);
  if (rc == 0)
    rc = loom_hparams_write_experiment(&t, sessions, n, tags, json_array_size(metrics), loom_hparams_now());
  int closed = loom_tfevents_close(&t);
  if (rc == 0)
    rc = closed;
  for (size_t i = 0; sessions && i < n; i++)
    loom_hparams_clear(&sessions[i]);
  free(sessions);
  free(tags);
  json_decref(keys);
  json_decref(metrics);
  return rc;
}
