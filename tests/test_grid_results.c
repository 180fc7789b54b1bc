/* `loom grid results`: a grid's results read from hand-written
 * results*.jsonl files, grouped, aggregated and sorted against hand-computed
 * values; its CSV read back; its TensorBoard summary decoded by Google's
 * protobuf runtime. Usage: test_grid_results LOOM */
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tfevents.h"

static const char *loom_bin;
static char dir[64];

#define ROW(id, lr, layout, rep, status, final)                                                                     \
  "{\"id\": \"" id "\", \"options\": {\"stages.train.optimizer.lr\": " lr ", \"model.layout\": \"" layout          \
  "\"}, \"rep\": " rep ", \"seed\": 1" rep ", \"status\": \"" status                                                \
  "\", \"main_metric\": {\"name\": \"valid/accuracy\", \"direction\": \"max\"}, \"final\": {" final "}}\n"

static void write_text(const char *name, const char *text) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Three groups (A: lr 0.001 cna; B: lr 0.003 cna; C: lr 0.001 nac). B's
 * rep3 was interrupted in results.jsonl and is done in shard 0 (the last row
 * wins); C's rep2 is still being written (no newline: left out). */
static int fixture(void **state) {
  (void)state;
  snprintf(dir, sizeof dir, "/tmp/loom-grid-XXXXXX");
  assert_non_null(mkdtemp(dir));
  write_text("results.jsonl",
             ROW("A/rep1", "0.001", "cna", "1", "done", "\"valid/accuracy\": 0.7, \"valid/loss\": 1.0")
             ROW("A/rep2", "0.001", "cna", "2", "done", "\"valid/accuracy\": 0.8, \"valid/loss\": 0.8")
             ROW("B/rep1", "0.003", "cna", "1", "done", "\"valid/accuracy\": 0.95, \"valid/loss\": 0.3")
             ROW("B/rep2", "0.003", "cna", "2", "failed", "")
             ROW("B/rep3", "0.003", "cna", "3", "interrupted", "\"valid/accuracy\": 0.1")
             ROW("A/rep3", "0.001", "cna", "3", "done", "\"valid/accuracy\": 0.9, \"valid/loss\": 0.6")
             "{\"id\": \"C/rep2\", \"options\": {\"stages.train.optimizer.lr\": 0.001, \"model.la");
  write_text("results-shard-0-of-2.jsonl",
             ROW("B/rep3", "0.003", "cna", "3", "done", "\"valid/accuracy\": 0.85, \"valid/loss\": 0.5"));
  write_text("results-shard-1-of-2.jsonl",
             ROW("C/rep1", "0.001", "nac", "1", "done", "\"valid/accuracy\": 0.6, \"valid/loss\": 1.2"));
  return 0;
}

static int cleanup(void **state) {
  (void)state;
  test_rm_rf(dir);
  return 0;
}

static loom_grid_table *table_of(const loom_grid_table_options *o) {
  loom_grid_results *r;
  assert_int_equal(loom_grid_results_load(dir, &r), 0);
  assert_int_equal(loom_grid_results_count(r), 7); /* C/rep2 not yet */
  loom_grid_table *t;
  assert_int_equal(loom_grid_results_table(r, o, &t), 0);
  loom_grid_results_destroy(r);
  return t;
}

static size_t metric_index(const loom_grid_table *t, const char *name) {
  for (size_t m = 0; m < loom_grid_table_num_metrics(t); m++)
    if (strcmp(loom_grid_table_metric(t, m), name) == 0)
      return m;
  fail_msg("no metric %s", name);
  return 0;
}

static void assert_group(const loom_grid_table *t, size_t g, const char *lr, const char *layout, int64_t n,
                         int64_t failed, int64_t other, double acc_mean, double acc_std) {
  if (lr)
    assert_string_equal(loom_grid_table_value(t, g, 0), lr);
  if (layout)
    assert_string_equal(loom_grid_table_value(t, g, lr ? 1 : 0), layout);
  int64_t d, f, o;
  loom_grid_table_counts(t, g, &d, &f, &o);
  assert_int_equal(d, n);
  assert_int_equal(f, failed);
  assert_int_equal(o, other);
  loom_grid_stat s = loom_grid_table_stat(t, g, metric_index(t, "valid/accuracy"));
  assert_int_equal(s.n, n);
  if (isnan(acc_mean))
    assert_true(isnan(s.mean));
  else
    assert_true(fabs(s.mean - acc_mean) < 1e-12);
  if (isnan(acc_std))
    assert_true(isnan(s.std));
  else
    assert_true(fabs(s.std - acc_std) < 1e-12);
}

static void test_default_table(void **state) {
  (void)state;
  loom_grid_table *t = table_of(NULL);
  assert_int_equal(loom_grid_table_num_keys(t), 2);
  assert_string_equal(loom_grid_table_key(t, 0), "stages.train.optimizer.lr");
  assert_string_equal(loom_grid_table_key(t, 1), "model.layout");
  bool minimize = true;
  assert_string_equal(loom_grid_table_sort_metric(t, &minimize), "valid/accuracy");
  assert_false(minimize);
  assert_string_equal(loom_grid_table_metric(t, 0), "valid/accuracy");
  assert_int_equal(loom_grid_table_num_metrics(t), 2);
  assert_int_equal(loom_grid_table_num_groups(t), 3);
  /* B: 0.95 and 0.85 (the shard's row, not the interrupted 0.1): mean 0.9,
   * std sqrt(((0.05)^2 + (0.05)^2) / 1); its failed rep counted apart. */
  assert_group(t, 0, "0.003", "cna", 2, 1, 0, 0.9, sqrt(0.005));
  /* A: 0.7, 0.8, 0.9: mean 0.8, std sqrt((0.01 + 0 + 0.01) / 2) = 0.1. */
  assert_group(t, 1, "0.001", "cna", 3, 0, 0, 0.8, 0.1);
  loom_grid_stat loss = loom_grid_table_stat(t, 1, metric_index(t, "valid/loss"));
  assert_true(fabs(loss.mean - 0.8) < 1e-12 && fabs(loss.std - 0.2) < 1e-12);
  /* C: one repetition, no std. */
  assert_group(t, 2, "0.001", "nac", 1, 0, 0, 0.6, NAN);
  loom_grid_table_destroy(t);
}

static void test_group_by_filter_metric(void **state) {
  (void)state;
  /* By layout: cna holds A's three and B's two done (0.7 0.8 0.9 0.95 0.85:
   * mean 0.84, squared deviations summing to 0.037, std sqrt(0.037 / 4)). */
  const char *by_layout[] = {"layout"};
  loom_grid_table_options o = {.group_by = by_layout, .num_group_by = 1};
  loom_grid_table *t = table_of(&o);
  assert_int_equal(loom_grid_table_num_keys(t), 1);
  assert_string_equal(loom_grid_table_key(t, 0), "model.layout");
  assert_int_equal(loom_grid_table_num_groups(t), 2);
  assert_group(t, 0, NULL, "cna", 5, 1, 0, 0.84, sqrt(0.037 / 4));
  assert_group(t, 1, NULL, "nac", 1, 0, 0, 0.6, NAN);
  loom_grid_table_destroy(t);

  /* Filters: the option by the end of its key path, and a final metric. */
  const char *filters[] = {"lr=0.001", "valid/accuracy>0.65", "layout!=\"nac\""};
  o = (loom_grid_table_options){.filters = filters, .num_filters = 3};
  t = table_of(&o);
  assert_int_equal(loom_grid_table_num_groups(t), 1);
  assert_group(t, 0, "0.001", "cna", 3, 0, 0, 0.8, 0.1);
  loom_grid_table_destroy(t);
  const char *failed_only[] = {"status=failed"};
  o = (loom_grid_table_options){.filters = failed_only, .num_filters = 1};
  t = table_of(&o);
  assert_int_equal(loom_grid_table_num_groups(t), 1);
  assert_group(t, 0, "0.003", "cna", 0, 1, 0, NAN, NAN);
  loom_grid_table_destroy(t);

  /* Another metric: min unless said (the rows' main metric is another). */
  o = (loom_grid_table_options){.metric = "valid/loss"};
  t = table_of(&o);
  bool minimize = false;
  assert_string_equal(loom_grid_table_sort_metric(t, &minimize), "valid/loss");
  assert_true(minimize);
  assert_string_equal(loom_grid_table_metric(t, 0), "valid/loss");
  const char *order[] = {"cna", "cna", "nac"}, *lrs[] = {"0.003", "0.001", "0.001"};
  for (int g = 0; g < 3; g++) /* losses 0.4, 0.8, 1.2 */
    assert_group(t, (size_t)g, lrs[g], order[g], g == 0 ? 2 : g == 1 ? 3 : 1, g == 0, 0,
                 g == 0 ? 0.9 : g == 1 ? 0.8 : 0.6, g == 0 ? sqrt(0.005) : g == 1 ? 0.1 : NAN);
  loom_grid_table_destroy(t);
  o.metric = "valid/loss:max";
  t = table_of(&o);
  assert_string_equal(loom_grid_table_value(t, 0, 1), "nac");
  assert_string_equal(loom_grid_table_value(t, 2, 0), "0.003");
  loom_grid_table_destroy(t);
}

static void test_refusals(void **state) {
  (void)state;
  loom_grid_results *r;
  assert_int_equal(loom_grid_results_load(dir, &r), 0);
  loom_grid_table *t = NULL;
  const char *bad[] = {"lr~3", "nope=1", "lr<abc", "=3"};
  for (size_t i = 0; i < 4; i++) {
    loom_grid_table_options o = {.filters = &bad[i], .num_filters = 1};
    assert_int_equal(loom_grid_results_table(r, &o, &t), LOOM_EINVAL);
    assert_null(t);
  }
  assert_non_null(strstr(loom_last_error(), "KEY=VALUE"));
  loom_grid_table_options o = {.metric = "valid/f1"};
  assert_int_equal(loom_grid_results_table(r, &o, &t), LOOM_EINVAL);
  loom_grid_results_destroy(r);

  /* A key two options end with; a damaged complete line; no results. */
  char sub[128];
  snprintf(sub, sizeof sub, "%s/ambiguous", dir);
  assert_int_equal(mkdir(sub, 0700), 0);
  char path[256];
  snprintf(path, sizeof path, "%s/results.jsonl", sub);
  FILE *f = fopen(path, "w");
  fputs("{\"id\": \"x\", \"options\": {\"a.lr\": 1, \"b.lr\": 2}, \"status\": \"done\", \"final\": {}}\n", f);
  fclose(f);
  assert_int_equal(loom_grid_results_load(sub, &r), 0);
  const char *by_lr[] = {"lr"};
  o = (loom_grid_table_options){.group_by = by_lr, .num_group_by = 1};
  assert_int_equal(loom_grid_results_table(r, &o, &t), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "several options"));
  loom_grid_results_destroy(r);
  f = fopen(path, "a");
  fputs("{not json\n", f);
  fclose(f);
  assert_int_equal(loom_grid_results_load(sub, &r), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "results.jsonl:2"));
  unlink(path);
  assert_int_equal(loom_grid_results_load(sub, &r), LOOM_ENOENT);
  assert_null(r);
  rmdir(sub);
}

/* Runs loom with `args`; returns its stdout (the caller frees it). */
static char *run_loom(const char *args, int *status) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' grid results '%s' %s 2>&1", loom_bin, dir, args);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t cap = 1 << 16;
  char *out = calloc(cap, 1);
  size_t n = fread(out, 1, cap - 1, p);
  out[n] = '\0';
  *status = pclose(p);
  return out;
}

/* The terminal column after `token` in the line starting at `line`. */
static int end_column(const char *line, const char *token) {
  const char *at = strstr(line, token);
  assert_non_null(at);
  int col = 0;
  for (const char *p = line; p < at + strlen(token); p++)
    col += ((unsigned char)*p & 0xC0) != 0x80;
  return col;
}

static void test_cli_csv_and_text(void **state) {
  (void)state;
  int status;
  char *csv = run_loom("--csv", &status);
  assert_int_equal(status, 0);
  /* Read back: the header, then the groups best first, values exact. */
  char *lines[8];
  int n = 0;
  for (char *l = strtok(csv, "\n"); l && n < 8; l = strtok(NULL, "\n"))
    lines[n++] = l;
  assert_int_equal(n, 4);
  assert_string_equal(lines[0], "stages.train.optimizer.lr,model.layout,n,failed,other,valid/accuracy_mean,"
                                "valid/accuracy_std,valid/loss_mean,valid/loss_std");
  double mean, std;
  char lr[16], layout[16];
  int done, failed, other;
  assert_int_equal(sscanf(lines[1], "%15[^,],%15[^,],%d,%d,%d,%lf,%lf", lr, layout, &done, &failed, &other, &mean, &std),
                   7);
  assert_string_equal(lr, "0.003");
  assert_string_equal(layout, "cna");
  assert_true(done == 2 && failed == 1 && other == 0);
  assert_true(mean == 0.5 * (0.95 + 0.85)); /* to the last bit: the shortest round-trip text */
  assert_true(fabs(std - sqrt(0.005)) < 1e-15);
  assert_non_null(strstr(lines[3], "0.001,nac,1,0,0,0.6,,1.2,")); /* one repetition: no std */
  free(csv);

  char *text = run_loom("--filter lr=0.001", &status);
  assert_int_equal(status, 0);
  /* The header, then A's row, columns aligned. */
  char *head = strstr(text, "lr ");
  assert_non_null(head);
  char *a = strstr(head, "\n") + 1;
  assert_int_equal(strncmp(a, "0.001", 5), 0);
  assert_non_null(strstr(a, "0.8 ± 0.1"));
  /* Right-aligned: the header and the value end at the same column. */
  assert_int_equal(end_column(head, "valid/accuracy (max)"), end_column(a, "0.8 ± 0.1"));
  free(text);

  char *err = run_loom("--filter 'lr<x'", &status);
  assert_int_equal(WEXITSTATUS(status), 2);
  assert_non_null(strstr(err, "compares numbers"));
  free(err);
}

static json_t *decode_dir(const char *sub) {
  char path[512], files[4][1024];
  snprintf(path, sizeof path, "%s/hparams%s%s", dir, sub[0] ? "/" : "", sub);
  assert_int_equal(tfevents_files(path, files, 4), 1); /* old files replaced, not added to */
  return tfevents_decode(files[0]);
}

static void test_tensorboard(void **state) {
  (void)state;
  if (!tfevents_decoder_available())
    skip();
  loom_grid_results *r;
  assert_int_equal(loom_grid_results_load(dir, &r), 0);
  assert_int_equal(loom_grid_results_write_tensorboard(r, dir), 0);
  assert_int_equal(loom_grid_results_write_tensorboard(r, dir), 0); /* again: replaces */
  loom_grid_results_destroy(r);

  json_t *events = decode_dir("");
  json_t *exp = tfevents_hparams(events, "_hparams_/experiment", "experiment");
  assert_non_null(exp);
  assert_int_equal(json_array_size(json_object_get(exp, "hparam_infos")), 2);
  json_t *lr = tfevents_hparam_info(exp, "stages.train.optimizer.lr");
  assert_string_equal(json_string_value(json_object_get(lr, "type")), "DATA_TYPE_FLOAT64");
  json_t *want = json_pack("[f, f]", 0.001, 0.003);
  assert_true(json_equal(json_object_get(lr, "domain_discrete"), want));
  json_decref(want);
  json_t *layout = tfevents_hparam_info(exp, "model.layout");
  want = json_pack("[s, s]", "cna", "nac");
  assert_true(json_equal(json_object_get(layout, "domain_discrete"), want));
  json_decref(want);
  json_t *metrics = json_object_get(exp, "metric_infos");
  assert_int_equal(json_array_size(metrics), 2);
  assert_string_equal(
      json_string_value(json_object_get(json_object_get(json_array_get(metrics, 0), "name"), "tag")), "valid/accuracy");
  assert_string_equal(json_string_value(json_object_get(json_array_get(metrics, 0), "dataset_type")),
                      "DATASET_VALIDATION");
  json_decref(events);

  /* B/rep3: the shard's row; its options, its group, its final metrics. */
  events = decode_dir("B/rep3");
  json_t *start = tfevents_hparams(events, "_hparams_/session_start_info", "session_start_info");
  want = json_pack("{s:f, s:s}", "stages.train.optimizer.lr", 0.003, "model.layout", "cna");
  assert_true(json_equal(json_object_get(start, "hparams"), want));
  json_decref(want);
  assert_string_equal(json_string_value(json_object_get(start, "group_name")),
                      "stages.train.optimizer.lr=0.003,model.layout=cna");
  int64_t step = -1;
  assert_true(tfevents_last_scalar(events, "valid/accuracy", &step) == (float)0.85);
  assert_int_equal(step, 0);
  assert_true(tfevents_last_scalar(events, "valid/loss", NULL) == (float)0.5);
  json_t *end = tfevents_hparams(events, "_hparams_/session_end_info", "session_end_info");
  assert_string_equal(json_string_value(json_object_get(end, "status")), "STATUS_SUCCESS");
  json_decref(events);
  events = decode_dir("B/rep2");
  end = tfevents_hparams(events, "_hparams_/session_end_info", "session_end_info");
  assert_string_equal(json_string_value(json_object_get(end, "status")), "STATUS_FAILURE");
  assert_true(isnan(tfevents_last_scalar(events, "valid/accuracy", NULL)));
  json_decref(events);
}

int main(int argc, char **argv) {
  assert_true(argc > 1);
  loom_bin = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_default_table),
      cmocka_unit_test(test_group_by_filter_metric),
      cmocka_unit_test(test_refusals),
      cmocka_unit_test(test_cli_csv_and_text),
      cmocka_unit_test(test_tensorboard),
  };
  return cmocka_run_group_tests(tests, fixture, cleanup);
}
