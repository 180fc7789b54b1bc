/* metrics.jsonl, metrics.csv and model_summary.json in the logdir: a row per loader per epoch,
 * then one per epoch ("loader": null) with the epoch metrics no loader row
 * carried (lr, momentum, a callback's) and the loaders' summed time_s.
 * The CSV's columns are the loader rows' metric names, then the epoch rows',
 * then the row marks "resumed" and "stopped" once a row has one, each in
 * first-seen order; when a new one appears the file is rewritten from the
 * rows kept in memory. */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

#define JSON_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(17))

typedef struct metrics_logger {
  FILE *jsonl, *csv;
  char jsonl_path[4096], csv_path[4096];
  json_t *rows;    /* every row so far, for a CSV rewrite */
  json_t *columns; /* loader rows' metric names, in first-seen order */
  json_t *epoch_columns; /* epoch rows' */
  json_t *mark_columns;  /* the row marks rows had: "resumed", "stopped" */
  /* Since the last epoch row: the "{loader}/{metric}" names the loader rows
   * carried (the epoch row leaves them out), their time and resumption. */
  json_t *logged;
  double epoch_time;
  bool epoch_resumed;
  long closed_at;  /* metrics.jsonl's length when on_experiment_end closed it */
} metrics_logger;

static int open_file(FILE **f, char *path, size_t size, const char *logdir, const char *name, const char *mode) {
  int rc = loom_path_join(path, size, logdir, name);
  if (rc < 0)
    return rc;
  *f = fopen(path, mode);
  if (!*f)
    return loom_error_set(LOOM_EIO, "metrics logger: cannot write %s: %s", path, strerror(errno));
  return 0;
}

static void start_epoch(metrics_logger *m) {
  json_object_clear(m->logged);
  m->epoch_time = 0;
  m->epoch_resumed = false;
}

static void clear_rows(metrics_logger *m) {
  json_array_clear(m->rows);
  json_array_clear(m->columns);
  json_array_clear(m->epoch_columns);
  json_array_clear(m->mark_columns);
  start_epoch(m);
}

static int logger_experiment_start(loom_callback *cb, loom_runner *r) {
  metrics_logger *m = loom_callback_data(cb);
  const char *logdir = loom_runner_logdir(r);
  /* A resumed run appends; its saved state trims what came after. */
  const char *mode = loom_runner_is_resumed(r) ? "a" : "w";
  m->closed_at = 0;
  clear_rows(m);
  if (loom_runner_resumed_finished(r) || !loom_runner_writes_files(r))
    return 0; /* nothing will run (the files stay as they are), or no files */
  int rc = loom_runner_lock_logdir(r);
  if (rc == 0)
    rc = loom_mkdir_p(logdir);
  if (rc == 0)
    rc = open_file(&m->jsonl, m->jsonl_path, sizeof m->jsonl_path, logdir, "metrics.jsonl", mode);
  if (rc == 0)
    rc = open_file(&m->csv, m->csv_path, sizeof m->csv_path, logdir, "metrics.csv", mode);
  return rc;
}

static json_t *shape_json(int ndim, const int64_t *shape) {
  json_t *a = json_array();
  for (int d = 0; d < ndim; d++)
    json_array_append_new(a, json_integer(shape[d]));
  return a;
}

/* The stage's model summary (loom_model_print_summary's, as JSON). */
static json_t *summary_json(const loom_model *model) {
  json_t *layers = json_array();
  int64_t shape[LOOM_MAX_DIMS], macs = 0;
  size_t trainable = 0, frozen = 0;
  bool complete = true;
  for (size_t i = 0; i < loom_model_num_layers(model); i++) {
    size_t offset, count;
    loom_model_layer_params(model, i, &offset, &count);
    const char *name = loom_model_layer_name(model, i);
    bool is_frozen = loom_model_is_frozen(model, name);
    *(is_frozen ? &frozen : &trainable) += count;
    int64_t layer_macs = loom_model_layer_macs(model, i);
    complete = complete && layer_macs >= 0;
    macs += layer_macs > 0 ? layer_macs : 0;
    int ndim = loom_model_layer_output_shape(model, i, shape);
    json_array_append_new(layers, json_pack("{s:s, s:s, s:o, s:I, s:o, s:b}", "name", name, "type",
                                            loom_layer_type(loom_model_layer(model, i)), "output_shape",
                                            shape_json(ndim, shape), "params", (json_int_t)count, "macs",
                                            layer_macs < 0 ? json_null() : json_integer(layer_macs), "trainable",
                                            !is_frozen && count > 0));
  }
  int ndim = loom_model_input_shape(model, shape);
  return json_pack("{s:o, s:o, s:I, s:I, s:I, s:I, s:b}", "input_shape", shape_json(ndim, shape), "layers", layers,
                   "trainable_params", (json_int_t)trainable, "frozen_params", (json_int_t)frozen, "total_params",
                   (json_int_t)(trainable + frozen), "macs", (json_int_t)macs, "macs_complete", complete);
}

/* model_summary.json: {"stages": {name: summary}}, this stage's replacing
 * what a run before a resume wrote for it and the stages after it. */
static int logger_stage_start(loom_callback *cb, loom_runner *r) {
  (void)cb;
  const loom_model *model = loom_runner_model(r);
  if (loom_runner_resumed_finished(r) || !loom_runner_writes_files(r) || !model || !loom_model_is_built(model))
    return 0;
  char path[4200];
  int rc = loom_path_join(path, sizeof path, loom_runner_logdir(r), "model_summary.json");
  if (rc < 0)
    return rc;
  json_t *file = json_load_file(path, 0, NULL), *stages = json_object_get(file, "stages");
  if (!json_is_object(stages)) {
    json_decref(file);
    file = json_pack("{s:{}}", "stages");
    stages = json_object_get(file, "stages");
  }
  const loom_experiment *exp = loom_runner_experiment(r);
  for (size_t i = (size_t)loom_runner_stage_index(r); i < loom_experiment_num_stages(exp); i++)
    json_object_del(stages, loom_stage_name(loom_experiment_stage(exp, i)));
  json_t *summary = summary_json(model);
  if (!summary || json_object_set_new(stages, loom_runner_stage_name(r), summary) < 0)
    rc = loom_error_oom("the model summary");
  else if (json_dump_file(file, path, JSON_INDENT(2)) < 0)
    rc = loom_error_set(LOOM_EIO, "metrics logger: cannot write %s: %s", path, strerror(errno));
  json_decref(file);
  return rc;
}

/* JSON has no NaN or infinity: those are written as null. */
static json_t *number(double v) { return isfinite(v) ? json_real(v) : json_null(); }

/* The CSV writers say whether every write went through (a full disk
 * shows here, or at the flush). A string cell is quoted as RFC 4180 asks
 * when it holds a comma, a quote or a line break (a stop reason, a metric,
 * loader or stage name may). */
static bool csv_string(FILE *f, const char *text) {
  if (!strpbrk(text, ",\"\r\n"))
    return fputs(text, f) != EOF;
  bool ok = fputc('"', f) != EOF;
  for (const char *p = text; *p; p++) {
    if (*p == '"')
      ok = fputc('"', f) != EOF && ok;
    ok = fputc(*p, f) != EOF && ok;
  }
  return fputc('"', f) != EOF && ok;
}

static bool csv_cell(FILE *f, json_t *v) {
  if (fputc(',', f) == EOF)
    return false;
  if (json_is_real(v))
    return fprintf(f, "%.17g", json_real_value(v)) >= 0;
  if (json_is_integer(v))
    return fprintf(f, "%lld", (long long)json_integer_value(v)) >= 0;
  if (json_is_string(v))
    return csv_string(f, json_string_value(v));
  if (json_is_true(v))
    return fputs("true", f) != EOF;
  return true;
}

/* The row marks a row may carry, as CSV columns after the metrics. */
static const char *const marks[] = {"resumed", "stopped"};

static bool csv_row(const metrics_logger *m, json_t *row) {
  bool ok = csv_string(m->csv, json_string_value(json_object_get(row, "stage")));
  ok = csv_cell(m->csv, json_object_get(row, "epoch")) && ok;
  ok = csv_cell(m->csv, json_object_get(row, "global_epoch")) && ok;
  ok = csv_cell(m->csv, json_object_get(row, "loader")) && ok;
  ok = csv_cell(m->csv, json_object_get(row, "time_s")) && ok;
  json_t *metrics = json_object_get(row, "metrics");
  size_t i;
  json_t *name;
  json_array_foreach(m->columns, i, name) ok = csv_cell(m->csv, json_object_get(metrics, json_string_value(name))) && ok;
  json_array_foreach(m->epoch_columns, i, name) ok =
      csv_cell(m->csv, json_object_get(metrics, json_string_value(name))) && ok;
  json_array_foreach(m->mark_columns, i, name) ok = csv_cell(m->csv, json_object_get(row, json_string_value(name))) && ok;
  return fputc('\n', m->csv) != EOF && ok;
}

static int csv_failed(const metrics_logger *m) {
  return loom_error_set(LOOM_EIO, "metrics logger: writing %s failed: %s", m->csv_path, strerror(errno));
}

static int rewrite_csv(metrics_logger *m) {
  FILE *f = freopen(m->csv_path, "w", m->csv);
  if (!f) {
    m->csv = NULL;
    return loom_error_set(LOOM_EIO, "metrics logger: cannot rewrite %s: %s", m->csv_path, strerror(errno));
  }
  m->csv = f;
  bool ok = fputs("stage,epoch,global_epoch,loader,time_s", f) != EOF;
  size_t i;
  json_t *name;
  json_array_foreach(m->columns, i, name) ok = csv_cell(f, name) && ok;
  json_array_foreach(m->epoch_columns, i, name) ok = csv_cell(f, name) && ok;
  json_array_foreach(m->mark_columns, i, name) ok = csv_cell(f, name) && ok;
  ok = fputc('\n', f) != EOF && ok;
  json_t *row;
  json_array_foreach(m->rows, i, row) ok = ok && csv_row(m, row);
  return ok && fflush(f) == 0 ? 0 : csv_failed(m);
}

static bool is_epoch_row(json_t *row) { return json_is_null(json_object_get(row, "loader")); }

/* Appends `name` to `columns` unless there: 1 when it did, 0 when it was
 * there, LOOM_ENOMEM. */
static int add_column(json_t *columns, const char *name) {
  for (size_t j = 0; j < json_array_size(columns); j++)
    if (strcmp(json_string_value(json_array_get(columns, j)), name) == 0)
      return 0;
  return json_array_append_new(columns, json_string(name)) < 0 ? loom_error_oom("a metrics column") : 1;
}

/* Adds the row's metric names and marks its columns lack: 1 when the row
 * brought new columns, 0 if not, LOOM_ENOMEM. */
static int add_new_columns(metrics_logger *m, json_t *row) {
  json_t *columns = is_epoch_row(row) ? m->epoch_columns : m->columns;
  int added = 0;
  const char *name;
  json_t *v;
  json_object_foreach(json_object_get(row, "metrics"), name, v) {
    int rc = add_column(columns, name);
    if (rc < 0)
      return rc;
    added = added || rc;
  }
  for (size_t i = 0; i < sizeof marks / sizeof marks[0]; i++) {
    int rc = json_object_get(row, marks[i]) ? add_column(m->mark_columns, marks[i]) : 0;
    if (rc < 0)
      return rc;
    added = added || rc;
  }
  return added;
}

/* Keeps in mind what a loader row carried, or starts the next epoch. */
static void note_row(metrics_logger *m, json_t *row) {
  if (is_epoch_row(row)) {
    start_epoch(m);
    return;
  }
  const char *loader = json_string_value(json_object_get(row, "loader")), *name;
  json_t *v;
  json_object_foreach(json_object_get(row, "metrics"), name, v) {
    /* "{loader}/{metric}" whole, as the epoch metrics name it */
    size_t size = strlen(loader ? loader : "") + strlen(name) + 2;
    char *key = malloc(size);
    if (!key)
      continue; /* the epoch row repeats the metric: no harm */
    snprintf(key, size, "%s/%s", loader ? loader : "", name);
    json_object_set_new(m->logged, key, json_true());
    free(key);
  }
  json_t *t = json_object_get(row, "time_s");
  m->epoch_time += json_is_number(t) ? json_number_value(t) : 0;
  m->epoch_resumed = m->epoch_resumed || json_is_true(json_object_get(row, "resumed"));
}

/* Writes the row to both files and keeps it (it takes the reference). */
static int write_row(metrics_logger *m, json_t *row) {
  if (!row)
    return loom_error_oom("a metrics row");
  char *line = json_dumps(row, JSON_FLAGS);
  if (!line) {
    json_decref(row);
    return loom_error_oom("a metrics line");
  }
  int rc = 0;
  if (fprintf(m->jsonl, "%s\n", line) < 0 || fflush(m->jsonl) != 0)
    rc = loom_error_set(LOOM_EIO, "metrics logger: writing %s failed: %s", m->jsonl_path, strerror(errno));
  free(line);
  if (json_array_append(m->rows, row) < 0 && rc == 0) /* the rows' own reference */
    rc = loom_error_oom("a kept metrics row");
  note_row(m, row);
  int added = add_new_columns(m, row);
  if (rc == 0 && added < 0)
    rc = added;
  else if (rc == 0 && added)
    rc = rewrite_csv(m);
  else if (rc == 0 && !csv_row(m, row))
    rc = csv_failed(m);
  if (rc == 0 && fflush(m->csv) != 0)
    rc = csv_failed(m);
  json_decref(row);
  return rc;
}

/* 1 when the files are open, 0 in a run that writes none, or an error. */
static int files_open(const metrics_logger *m, const loom_runner *r) {
  if (!loom_runner_writes_files(r))
    return 0;
  if (m->jsonl && m->csv)
    return 1;
  return loom_error_set(LOOM_ESTATE, "metrics logger: files not open (on_experiment_start did not run)");
}

static int logger_loader_end(loom_callback *cb, loom_runner *r) {
  metrics_logger *m = loom_callback_data(cb);
  int rc = files_open(m, r);
  if (rc <= 0)
    return rc;
  const loom_metrics *lm = loom_runner_loader_metrics(r);
  json_t *metrics = json_object();
  for (size_t i = 0; i < loom_metrics_count(lm); i++)
    json_object_set_new(metrics, loom_metrics_name(lm, i), number(loom_metrics_value(lm, i)));
  json_t *row = json_pack("{s:s, s:i, s:i, s:s, s:o, s:o}", "stage", loom_runner_stage_name(r), "epoch",
                          loom_runner_epoch(r), "global_epoch", loom_runner_global_epoch(r), "loader",
                          loom_runner_loader_name(r), "metrics", metrics, "time_s",
                          number(loom_runner_loader_elapsed(r)));
  /* time_s is that of the batches this run did: say when others came first. */
  if (row && loom_runner_loader_resumed_batches(r) > 0)
    json_object_set_new(row, "resumed", json_true());
  return write_row(m, row);
}

/* The epoch row: what the loader rows did not carry. */
static int logger_epoch_end(loom_callback *cb, loom_runner *r) {
  metrics_logger *m = loom_callback_data(cb);
  int rc = files_open(m, r);
  if (rc <= 0)
    return rc;
  const loom_metrics *em = loom_runner_epoch_metrics(r);
  json_t *metrics = json_object();
  for (size_t i = 0; i < loom_metrics_count(em); i++)
    if (!json_object_get(m->logged, loom_metrics_name(em, i)))
      json_object_set_new(metrics, loom_metrics_name(em, i), number(loom_metrics_value(em, i)));
  json_t *row = json_pack("{s:s, s:i, s:i, s:n, s:o, s:f}", "stage", loom_runner_stage_name(r), "epoch",
                          loom_runner_epoch(r), "global_epoch", loom_runner_global_epoch(r), "loader", "metrics",
                          metrics, "time_s", m->epoch_time);
  if (row && m->epoch_resumed)
    json_object_set_new(row, "resumed", json_true());
  if (row && loom_runner_stop_reason(r))
    json_object_set_new(row, "stopped", json_string(loom_runner_stop_reason(r)));
  return write_row(m, row);
}

/* The state: how much of metrics.jsonl the checkpointed run had written. */
static int logger_save(loom_callback *cb, loom_runner *r, loom_state *s) {
  (void)r;
  metrics_logger *m = loom_callback_data(cb);
  long bytes = m->jsonl ? ftell(m->jsonl) : m->closed_at; /* a snapshot at on_experiment_end */
  return loom_state_set_i64(s, "jsonl_bytes", bytes < 0 ? 0 : bytes);
}

/* Cuts metrics.jsonl back to the checkpoint and rebuilds rows and CSV. */
static int logger_load(loom_callback *cb, loom_runner *r, const loom_state *s) {
  (void)r;
  metrics_logger *m = loom_callback_data(cb);
  int64_t bytes;
  int rc = loom_state_get_i64(s, "jsonl_bytes", &bytes);
  if (rc < 0 || !m->jsonl)
    return rc;
  if (bytes < 0)
    return loom_error_set(LOOM_EFORMAT, "the checkpoint's metrics logger wrote %lld bytes", (long long)bytes);
  if (fflush(m->jsonl) != 0)
    return loom_error_set(LOOM_EIO, "metrics logger: cannot write %s: %s", m->jsonl_path, strerror(errno));
  /* Cut back to the checkpoint, never extended: a logdir whose metrics.jsonl
   * is shorter (a resume elsewhere, a file removed) keeps what it has. */
  struct stat st;
  if (fstat(fileno(m->jsonl), &st) == 0 && bytes > st.st_size)
    bytes = st.st_size;
  if (ftruncate(fileno(m->jsonl), (off_t)bytes) < 0 || fseek(m->jsonl, 0, SEEK_END) < 0)
    return loom_error_set(LOOM_EIO, "metrics logger: cannot trim %s: %s", m->jsonl_path, strerror(errno));
  FILE *in = fopen(m->jsonl_path, "r");
  if (!in)
    return loom_error_set(LOOM_EIO, "metrics logger: cannot read %s back: %s", m->jsonl_path, strerror(errno));
  clear_rows(m);
  char *line = NULL;
  size_t cap = 0;
  for (int no = 1; rc == 0 && getline(&line, &cap, in) > 0; no++) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    if (!json_is_object(json_object_get(row, "metrics"))) {
      json_decref(row);
      rc = loom_error_set(LOOM_EFORMAT, "%s:%d: not a metrics row", m->jsonl_path, no);
      break;
    }
    note_row(m, row);
    int added = add_new_columns(m, row);
    if (added < 0) {
      json_decref(row);
      rc = added;
    } else if (json_array_append_new(m->rows, row) < 0) {
      rc = loom_error_oom("a kept metrics row");
    }
  }
  free(line);
  fclose(in);
  return rc == 0 ? rewrite_csv(m) : rc;
}

/* A failed close may have lost the last buffered bytes: an error. */
static int close_files(metrics_logger *m) {
  int rc = 0;
  if (m->jsonl) {
    m->closed_at = ftell(m->jsonl);
    if (fclose(m->jsonl) != 0)
      rc = loom_error_set(LOOM_EIO, "metrics logger: closing %s failed: %s", m->jsonl_path, strerror(errno));
  }
  if (m->csv && fclose(m->csv) != 0 && rc == 0)
    rc = loom_error_set(LOOM_EIO, "metrics logger: closing %s failed: %s", m->csv_path, strerror(errno));
  m->jsonl = m->csv = NULL;
  return rc;
}

static int logger_experiment_end(loom_callback *cb, loom_runner *r) {
  (void)r;
  return close_files(loom_callback_data(cb));
}

static void logger_destroy(void *data) {
  metrics_logger *m = data;
  close_files(m); /* (closed at on_experiment_end unless the run failed) */
  json_decref(m->rows);
  json_decref(m->columns);
  json_decref(m->epoch_columns);
  json_decref(m->mark_columns);
  json_decref(m->logged);
  free(m);
}

static const loom_callback_ops metrics_logger_ops = {
    .type = "metrics_logger",
    .on_experiment_start = logger_experiment_start,
    .on_stage_start = logger_stage_start,
    .on_loader_end = logger_loader_end,
    .on_epoch_end = logger_epoch_end,
    .on_experiment_end = logger_experiment_end,
    .save = logger_save,
    .load = logger_load,
    .destroy = logger_destroy,
};

loom_callback *loom_metrics_logger_create(void) {
  metrics_logger *m = calloc(1, sizeof *m);
  if (m) {
    m->rows = json_array();
    m->columns = json_array();
    m->epoch_columns = json_array();
    m->mark_columns = json_array();
    m->logged = json_object();
  }
  if (!m || !m->rows || !m->columns || !m->epoch_columns || !m->mark_columns || !m->logged) {
    if (m)
      logger_destroy(m);
    loom_error_oom("the metrics logger");
    return NULL;
  }
  loom_callback *cb = loom_callback_create(&metrics_logger_ops, m, LOOM_ORDER_LOGGING);
  if (cb && loom_callback_set_writes(cb, "metrics.jsonl") < 0) { /* and metrics.csv, model_summary.json */
    loom_callback_destroy(cb);
    return NULL;
  }
  if (cb)
    loom_callback_set_node(cb, LOOM_NODE_MASTER);
  return cb;
}
