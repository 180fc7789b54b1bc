/* The writers' escaping: a one-epoch run whose stage, loaders and metrics
 * have whatever names the bytes say (quotes, control bytes, commas, line
 * breaks, slashes, long names, invalid UTF-8), logged by the metrics logger
 * (metrics.jsonl, metrics.csv) and TensorBoard (every batch too). A name
 * that is not UTF-8 must be refused with a clean LOOM_EINVAL; otherwise the
 * run succeeds and every file parses back with the exact names: each JSON
 * line with jansson, the CSV with a strict RFC 4180 parser (every row as
 * wide as the header), each TFRecord with both masked CRC-32Cs checked and
 * its Event decoded down to the scalar's tag. The logdir is a scratch
 * directory (under /dev/shm), emptied after each input.
 * Input: u8 metric count (mod 5), then strings (u8 length, bytes): the
 * stage's name, the train and valid loaders' suffixes ("train" + ..., and
 * "valid" + ...: a loader's prefix says what it does), and the metrics. */
#include <dirent.h>
#include <jansson.h>

#include "fuzz.h"
#include "loom/callbacks.h"
#include "loom/criterion.h"
#include "loom/optimizer.h"
#include "loom/runner.h"

#define MAX_NAMES 4

static char *metric_names[MAX_NAMES];
static int num_metrics;
static char run_dir[600];

static bool utf8(const char *s) {
  json_t *j = json_string(s); /* jansson's own check: what a JSON writer takes */
  json_decref(j);
  return j != NULL;
}

/* Sets every fuzzed metric on each batch (value: its index). */
static int namer_batch_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  for (int i = 0; i < num_metrics; i++) {
    int rc = loom_metrics_set(loom_runner_batch_metrics(r), metric_names[i], i);
    if (rc < 0)
      return rc;
  }
  return 0;
}

static const loom_callback_ops namer = {.type = "namer", .on_batch_end = namer_batch_end};

static loom_experiment *build(const char *stage_name, const char *train, const char *valid, int *rc) {
  loom_experiment *exp = loom_experiment_create("names");
  loom_experiment_set_seed(exp, 1);
  *rc = loom_experiment_set_logdir(exp, run_dir);
  loom_stage *s = loom_experiment_add_stage(exp, stage_name, 1);
  if (!s) {
    *rc = loom_last_error_code();
    return exp;
  }
  int64_t features = 2, sizes[2] = {2, 2};
  const float x[8] = {0, 1, 1, 0, 1, 1, 0, 0}, y[4] = {0, 1, 1, 0};
  loom_sgd_options sgd = {.lr = 0.1};
  const char *names[2] = {train, valid};
  if (*rc == 0)
    *rc = loom_stage_set_model(s, loom_mlp_create(sizes, 2, 1));
  if (*rc == 0)
    *rc = loom_stage_set_criterion(s, loom_cross_entropy_create());
  if (*rc == 0)
    *rc = loom_stage_set_optimizer(s, loom_sgd_create(&sgd));
  for (int i = 0; i < 2 && *rc == 0; i++) {
    loom_loader_options o = {.batch_size = 2};
    loom_dataset *ds = loom_memory_dataset_create(x, y, 4, 1, &features, 0, NULL);
    *rc = loom_stage_add_loader(s, names[i], loom_loader_create(ds, &o));
  }
  if (*rc == 0)
    *rc = loom_stage_add_callback(s, loom_callback_create(&namer, NULL, LOOM_ORDER_METRIC));
  if (*rc == 0)
    *rc = loom_stage_add_callback(s, loom_metrics_logger_create());
  if (*rc == 0)
    *rc = loom_stage_add_callback(s, loom_tensorboard_logger_create(1));
  return exp;
}

/* --- metrics.jsonl --- */

static void check_jsonl(const char *stage, const char *const *loaders) {
  char path[700];
  snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
  FILE *f = fopen(path, "r");
  if (!f)
    abort();
  char *line = NULL;
  size_t cap = 0;
  int loader_rows = 0;
  while (getline(&line, &cap, f) > 0) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    if (!json_is_object(row)) {
      fprintf(stderr, "fuzz_names: metrics.jsonl: not JSON (%s): %s", err.text, line);
      abort();
    }
    if (strcmp(json_string_value(json_object_get(row, "stage")), stage) != 0)
      abort();
    json_t *loader = json_object_get(row, "loader"), *metrics = json_object_get(row, "metrics");
    if (json_is_string(loader)) {
      if (strcmp(json_string_value(loader), loaders[loader_rows++ % 2]) != 0)
        abort();
      for (int i = 0; i < num_metrics; i++)
        if (!json_is_number(json_object_get(metrics, metric_names[i]))) {
          fprintf(stderr, "fuzz_names: metrics.jsonl: metric %d missing from %s", i, line);
          abort();
        }
    }
    json_decref(row);
  }
  free(line);
  fclose(f);
  if (loader_rows != 2)
    abort();
}

/* --- metrics.csv: RFC 4180, strictly --- */

typedef struct csv_row {
  char *cells[64];
  int n;
} csv_row;

static void csv_free(csv_row *r) {
  for (int i = 0; i < r->n; i++)
    free(r->cells[i]);
  r->n = 0;
}

/* One record from *p (advanced past its line break); false at the end.
 * A quoted cell must close and be followed by a comma or the line's end;
 * a bare quote inside an unquoted cell is an error. */
static bool csv_next(const char **p, csv_row *row) {
  row->n = 0;
  if (!**p)
    return false;
  for (;;) {
    size_t cap = 64, n = 0;
    char *cell = malloc(cap);
    const char *s = *p;
    if (*s == '"') {
      for (s++;; s++) {
        if (!*s)
          abort(); /* an unclosed quote */
        if (*s == '"' && s[1] != '"')
          break;
        if (*s == '"')
          s++;
        if (n + 2 > cap)
          cell = realloc(cell, cap *= 2);
        cell[n++] = *s;
      }
      s++;
      if (*s != ',' && *s != '\n')
        abort(); /* text after a closing quote */
    } else {
      for (; *s && *s != ',' && *s != '\n'; s++) {
        if (*s == '"' || *s == '\r')
          abort(); /* a quote or CR left unquoted */
        if (n + 2 > cap)
          cell = realloc(cell, cap *= 2);
        cell[n++] = *s;
      }
      if (!*s)
        abort(); /* every record ends with a line break */
    }
    cell[n] = '\0';
    if (row->n == 64)
      abort();
    row->cells[row->n++] = cell;
    *p = s + 1;
    if (*s == '\n')
      return true;
  }
}

static void check_csv(const char *stage, const char *const *loaders) {
  char path[700];
  snprintf(path, sizeof path, "%s/metrics.csv", run_dir);
  FILE *f = fopen(path, "rb");
  if (!f)
    abort();
  char *text = NULL;
  size_t cap = 0;
  ssize_t len = getdelim(&text, &cap, '\0', f); /* the whole file (it has no NUL) */
  fclose(f);
  if (len <= 0)
    abort();
  const char *p = text;
  csv_row header, row;
  if (!csv_next(&p, &header) || header.n < 5 || strcmp(header.cells[0], "stage") != 0)
    abort();
  for (int i = 0; i < num_metrics; i++) {
    bool found = false;
    for (int k = 5; k < header.n && !found; k++)
      found = strcmp(header.cells[k], metric_names[i]) == 0;
    if (!found) {
      fprintf(stderr, "fuzz_names: metrics.csv: metric %d not a column of the header\n", i);
      abort();
    }
  }
  int rows = 0;
  while (csv_next(&p, &row)) {
    if (row.n != header.n || strcmp(row.cells[0], stage) != 0) {
      fprintf(stderr, "fuzz_names: metrics.csv: row %d has %d cells, the header %d\n", rows, row.n, header.n);
      abort();
    }
    if (rows < 2 && strcmp(row.cells[3], loaders[rows]) != 0)
      abort();
    rows++;
    csv_free(&row);
  }
  if (rows != 3) /* two loader rows and the epoch's */
    abort();
  csv_free(&header);
  free(text);
}

/* --- the TensorBoard events file --- */

static uint32_t crc32c(const uint8_t *p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = c & 1 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
  }
  c ^= 0xFFFFFFFFu;
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

static uint64_t le(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++)
    v |= (uint64_t)p[i] << (8 * i);
  return v;
}

static uint64_t varint(const uint8_t **p, const uint8_t *end) {
  uint64_t v = 0;
  for (int shift = 0; *p < end && shift < 64; shift += 7) {
    uint8_t b = *(*p)++;
    v |= (uint64_t)(b & 0x7F) << shift;
    if (!(b & 0x80))
      return v;
  }
  abort(); /* a varint runs off the message */
}

/* Calls found(field, bytes, n) for each length-delimited field of a message,
 * skipping the others; any malformation aborts. */
static void fields(const uint8_t *p, const uint8_t *end, void (*found)(int, const uint8_t *, size_t, void *), void *u) {
  while (p < end) {
    uint64_t key = varint(&p, end);
    int wire = (int)(key & 7), field = (int)(key >> 3);
    if (wire == 0) {
      varint(&p, end);
    } else if (wire == 1 || wire == 5) {
      if ((size_t)(end - p) < (wire == 1 ? 8u : 4u))
        abort();
      p += wire == 1 ? 8 : 4;
    } else if (wire == 2) {
      uint64_t n = varint(&p, end);
      if (n > (uint64_t)(end - p))
        abort();
      found(field, p, (size_t)n, u);
      p += n;
    } else {
      abort();
    }
  }
}

typedef struct tags {
  char **list;
  size_t n;
} tags;

static void value_field(int field, const uint8_t *p, size_t n, void *u) {
  if (field != 1) /* Value.tag */
    return;
  tags *t = u;
  t->list = realloc(t->list, (t->n + 1) * sizeof *t->list);
  t->list[t->n] = malloc(n + 1);
  memcpy(t->list[t->n], p, n);
  t->list[t->n++][n] = '\0';
  if (memchr(p, 0, n))
    abort(); /* a tag with a NUL inside */
}

static void summary_field(int field, const uint8_t *p, size_t n, void *u) {
  if (field == 1) /* Summary.value */
    fields(p, p + n, value_field, u);
}

static void event_field(int field, const uint8_t *p, size_t n, void *u) {
  if (field == 5) /* Event.summary */
    fields(p, p + n, summary_field, u);
}

static bool has_tag(const tags *t, const char *a, const char *b, const char *c) {
  size_t la = strlen(a), lb = strlen(b);
  for (size_t i = 0; i < t->n; i++)
    if (strncmp(t->list[i], a, la) == 0 && strncmp(t->list[i] + la, b, lb) == 0 && strcmp(t->list[i] + la + lb, c) == 0)
      return true;
  return false;
}

static void check_events(const char *const *loaders) {
  DIR *d = opendir(run_dir);
  char path[1200] = "";
  for (struct dirent *e; d && (e = readdir(d));)
    if (strncmp(e->d_name, "events.out.tfevents.", 20) == 0)
      snprintf(path, sizeof path, "%s/%s", run_dir, e->d_name);
  if (d)
    closedir(d);
  FILE *f = path[0] ? fopen(path, "rb") : NULL;
  if (!f)
    abort();
  tags t = {0};
  uint8_t head[12];
  size_t got;
  while ((got = fread(head, 1, 12, f)) == 12) {
    uint64_t n = le(head, 8);
    if (le(head + 8, 4) != crc32c(head, 8) || n > (1 << 20))
      abort(); /* the length's CRC */
    uint8_t *data = malloc(n + 4);
    if (fread(data, 1, n + 4, f) != n + 4 || le(data + n, 4) != crc32c(data, n))
      abort(); /* the data's CRC */
    fields(data, data + n, event_field, &t);
    free(data);
  }
  fclose(f);
  if (got != 0)
    abort(); /* a torn record */
  for (int i = 0; i < num_metrics; i++) /* the loaders' scalars: "{loader}/{metric}" */
    for (int k = 0; k < 2; k++)
      if (!has_tag(&t, loaders[k], "/", metric_names[i]))
        abort();
  for (int i = 0; i < num_metrics; i++) { /* the batch scalars: "batch/{train loader}/{metric}" */
    char *prefix = malloc(strlen(loaders[0]) + 8);
    sprintf(prefix, "batch/%s/", loaders[0]);
    if (!has_tag(&t, prefix, metric_names[i], ""))
      abort();
    free(prefix);
  }
  for (size_t i = 0; i < t.n; i++)
    free(t.list[i]);
  free(t.list);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 2048)
    return 0;
  fuzz_bytes b = {data, size};
  snprintf(run_dir, sizeof run_dir, "%s/run", fuzz_scratch());
  num_metrics = fuzz_u8(&b) % (MAX_NAMES + 1);
  char *stage = fuzz_str(&b, 255), *train_suffix = fuzz_str(&b, 255), *valid_suffix = fuzz_str(&b, 255);
  for (int i = 0; i < num_metrics; i++)
    metric_names[i] = fuzz_str(&b, 255);
  char *loaders[2] = {malloc(strlen(train_suffix) + 6), malloc(strlen(valid_suffix) + 6)};
  sprintf(loaders[0], "train%s", train_suffix);
  sprintf(loaders[1], "valid%s", valid_suffix);
  bool all_utf8 = stage[0] && utf8(stage) && utf8(loaders[0]) && utf8(loaders[1]);
  for (int i = 0; i < num_metrics; i++)
    all_utf8 = all_utf8 && utf8(metric_names[i]);

  int rc;
  loom_experiment *exp = build(stage, loaders[0], loaders[1], &rc);
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  if (rc == 0)
    rc = loom_run_experiment(r, exp);
  fuzz_expect_clean_error(rc);
  if (all_utf8 != (rc == 0)) {
    fprintf(stderr, "fuzz_names: names %s UTF-8 but the run %s: %s\n", all_utf8 ? "all" : "not all",
            rc == 0 ? "succeeded" : "failed", loom_last_error());
    abort();
  }
  if (rc < 0 && rc != LOOM_EINVAL)
    abort();
  if (rc == 0) {
    check_jsonl(stage, (const char *const *)loaders);
    check_csv(stage, (const char *const *)loaders);
    check_events((const char *const *)loaders);
  }
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  fuzz_remove_tree(run_dir);
  for (int i = 0; i < num_metrics; i++)
    free(metric_names[i]);
  free(stage), free(train_suffix), free(valid_suffix), free(loaders[0]), free(loaders[1]);
  return 0;
}
