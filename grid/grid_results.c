/* results.jsonl: one row per ended attempt (docs/grid.md has the schema),
 * each appended whole with one write() and fsynced, so that a grid
 * stopped at any moment leaves only whole rows; the last row of an id wins. */
#define _GNU_SOURCE /* strsignal-free signal names: sigabbrev_np is glibc 2.32 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "grid/grid_internal.h"

#define JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(17))

static json_t *signal_name(int sig) {
  if (!sig)
    return json_null();
  const char *abbrev = sigabbrev_np(sig);
  char name[32];
  if (abbrev)
    snprintf(name, sizeof name, "SIG%s", abbrev);
  else
    snprintf(name, sizeof name, "signal %d", sig);
  return json_string(name);
}

/* Scans metrics.jsonl: "final" = each loader metric's last value
 * ("valid/accuracy"), and the best value of `metric` in its direction. */
static void scan_metrics(const char *expdir, const char *metric, bool maximize, json_t *final, json_t *best) {
  char path[4200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", expdir);
  FILE *f = fopen(path, "r");
  char *line = NULL;
  size_t cap = 0;
  double best_value = NAN;
  while (f && getline(&line, &cap, f) > 0) {
    json_t *row = json_loads(line, 0, NULL);
    const char *loader = json_string_value(json_object_get(row, "loader"));
    const char *name;
    json_t *value;
    json_object_foreach(loader ? json_object_get(row, "metrics") : NULL, name, value) {
      char key[512];
      snprintf(key, sizeof key, "%s/%s", loader, name);
      json_object_set(final, key, value);
      double v = json_number_value(value);
      if (metric && strcmp(key, metric) == 0 && json_is_number(value) &&
          (isnan(best_value) || (maximize ? v > best_value : v < best_value)))
        best_value = v;
    }
    json_decref(row);
  }
  free(line);
  if (f)
    fclose(f);
  if (metric && !isnan(best_value))
    json_object_set_new(best, metric, json_real(best_value));
}

json_t *loom_grid_result_row(const loom_grid *g, size_t exp, const char *expdir, const grid_outcome *o) {
  const grid_experiment *e = &g->experiments[exp];
  const grid_point *pt = &g->points[e->point];
  const char *metric = g->metric ? g->metric : pt->metric;
  bool maximize = g->metric ? g->maximize : pt->maximize;
  json_t *final = json_object(), *best = json_object();
  scan_metrics(expdir, metric, maximize, final, best);
  json_t *main = metric ? json_pack("{s:s, s:s}", "name", metric, "direction", maximize ? "max" : "min") : json_null();
  json_t *row = json_pack("{s:s, s:O, s:i, s:I, s:s, s:o, s:o, s:o, s:i, s:f, s:s, s:o, s:o, s:o}", "id", e->id,
                          "options", pt->options, "rep", e->rep, "seed", (json_int_t)e->seed, "status", o->status,
                          "exit_code", o->exit_code >= 0 ? json_integer(o->exit_code) : json_null(), "signal",
                          signal_name(o->signal), "reason", o->reason ? json_string(o->reason) : json_null(),
                          "attempt", o->attempt, "duration_s", o->duration_s, "logdir", e->id, "main_metric", main,
                          "final", final, "best", best);
  if (row && o->stderr_tail)
    json_object_set_new(row, "stderr_tail", json_string(o->stderr_tail));
  return row;
}

int loom_grid_append_row(int fd, const json_t *row, const char *path) {
  char *text = json_dumps(row, JSON_FLAGS);
  if (!text)
    return loom_error_oom("a results row");
  size_t len = strlen(text);
  text[len] = '\n'; /* json_dumps's NUL becomes the newline: one write() */
  ssize_t n = write(fd, text, len + 1);
  int err = errno;
  free(text);
  if (n != (ssize_t)(len + 1) || fsync(fd) < 0)
    return loom_error_set(LOOM_EIO, "cannot append to %s: %s", path, n < 0 ? strerror(err) : "short write");
  return 0;
}

/* Every row of one file into rows[id] (later rows replace earlier ones);
 * a line cut short by a crash before this format's whole-line writes is skipped. */
static void read_file(const char *path, json_t *rows) {
  FILE *f = fopen(path, "r");
  char *line = NULL;
  size_t cap = 0;
  while (f && getline(&line, &cap, f) > 0) {
    json_t *row = json_loads(line, 0, NULL);
    const char *id = json_string_value(json_object_get(row, "id"));
    if (id)
      json_object_set(rows, id, row);
    json_decref(row);
  }
  free(line);
  if (f)
    fclose(f);
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

static int results_file(const struct dirent *d) {
  size_t n = strlen(d->d_name);
  return strncmp(d->d_name, "results", 7) == 0 && n > 6 && strcmp(d->d_name + n - 6, ".jsonl") == 0;
}

int loom_grid_read_results(const char *dir, json_t **rows) {
  *rows = json_object();
  if (!*rows)
    return loom_error_oom("the grid's results");
  struct dirent **names;
  int n = scandir(dir, &names, results_file, by_name);
  for (int i = 0; i < n; i++) {
    char path[4400];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]->d_name);
    read_file(path, *rows);
    free(names[i]);
  }
  if (n >= 0)
    free(names);
  return 0;
}

char *loom_grid_file_tail(const char *path, long from, int lines) {
  enum { MAX = 4096 };
  FILE *f = fopen(path, "rb");
  if (!f)
    return strdup("");
  fseek(f, 0, SEEK_END);
  long end = ftell(f), start = end - MAX > from ? end - MAX : from;
  char *text = malloc(MAX + 1);
  size_t n = 0;
  if (text && start >= 0 && fseek(f, start, SEEK_SET) == 0)
    n = fread(text, 1, (size_t)(end - start), f);
  fclose(f);
  if (!text)
    return NULL;
  text[n] = '\0';
  /* The last `lines` lines (a final newline does not start one). */
  char *at = text + n;
  if (at > text && at[-1] == '\n')
    at--;
  for (int seen = 0; at > text; at--)
    if (at[-1] == '\n' && ++seen == lines)
      break;
  memmove(text, at, strlen(at) + 1);
  return text;
}
