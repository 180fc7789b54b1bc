/* The results table as aligned text and as CSV (loom/grid_results.h). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "grid/results_internal.h"

/* A value for people: a string without its quotes, "-" for null. */
static const char *plain(const char *json, char *buf, size_t size) {
  size_t n = strlen(json);
  if (strcmp(json, "null") == 0)
    return "-";
  if (n >= 2 && json[0] == '"') {
    json_t *s = json_loads(json, JSON_DECODE_ANY, NULL);
    snprintf(buf, size, "%s", s ? json_string_value(s) : json);
    json_decref(s);
    return buf;
  }
  return json;
}

/* Columns on a terminal: UTF-8 continuation bytes take none. */
static int width(const char *s) {
  int w = 0;
  for (; *s; s++)
    w += ((unsigned char)*s & 0xC0) != 0x80;
  return w;
}

/* The shortest end of keys[k]'s path, at a '.', that no other key ends with. */
static const char *label(const loom_grid_table *t, size_t k) {
  const char *key = t->keys[k];
  for (const char *p = key + strlen(key); p > key; p--) {
    if (p[-1] != '.')
      continue;
    bool unique = true;
    for (size_t o = 0; o < t->num_keys && unique; o++) {
      size_t n = strlen(t->keys[o]), m = strlen(p);
      unique = o == k || !(n >= m && strcmp(t->keys[o] + n - m, p) == 0 && (n == m || t->keys[o][n - m - 1] == '.'));
    }
    if (unique)
      return p;
  }
  return key;
}

static void format_stat(loom_grid_stat s, char *buf, size_t size) {
  if (s.n == 0)
    snprintf(buf, size, "-");
  else if (s.n == 1)
    snprintf(buf, size, "%.4g", s.mean);
  else
    snprintf(buf, size, "%.4g ± %.2g", s.mean, s.std);
}

static bool any_other(const loom_grid_table *t) {
  for (size_t g = 0; g < t->num_groups; g++)
    if (t->groups[g].other)
      return true;
  return false;
}

/* Cell (row r: -1 the header, column c) of the text table into buf. */
static const char *cell(const loom_grid_table *t, long r, size_t c, bool other, char *buf, size_t size) {
  size_t counts = other ? 3 : 2;
  if (c < t->num_keys)
    return r < 0 ? label(t, c) : plain(t->groups[r].values[c], buf, size);
  c -= t->num_keys;
  if (c < counts) {
    static const char *const names[] = {"n", "failed", "other"};
    if (r < 0)
      return names[c];
    const grid_group *g = &t->groups[r];
    snprintf(buf, size, "%lld", (long long)(c == 0 ? g->done : c == 1 ? g->failed : g->other));
    return buf;
  }
  c -= counts;
  if (r < 0) {
    if (c == 0 && t->sort)
      snprintf(buf, size, "%s (%s)", t->metrics[0], t->minimize ? "min" : "max");
    else
      snprintf(buf, size, "%s", t->metrics[c]);
    return buf;
  }
  format_stat(t->groups[r].stats[c], buf, size);
  return buf;
}

int loom_grid_table_print(const loom_grid_table *t, FILE *out) {
  bool other = any_other(t);
  size_t cols = t->num_keys + (other ? 3 : 2) + t->num_metrics;
  int *w = calloc(cols, sizeof *w);
  if (!w)
    return loom_error_oom("the table's widths");
  char buf[512];
  for (long r = -1; r < (long)t->num_groups; r++)
    for (size_t c = 0; c < cols; c++) {
      int x = width(cell(t, r, c, other, buf, sizeof buf));
      w[c] = x > w[c] ? x : w[c];
    }
  for (long r = -1; r < (long)t->num_groups; r++) {
    for (size_t c = 0; c < cols; c++) {
      const char *s = cell(t, r, c, other, buf, sizeof buf);
      int pad = w[c] - width(s);
      /* Keys to the left, numbers to the right. */
      if (c < t->num_keys)
        fprintf(out, "%s%s%*s", c ? "  " : "", s, c + 1 < cols ? pad : 0, "");
      else
        fprintf(out, "  %*s%s", pad, "", s);
    }
    fputc('\n', out);
  }
  free(w);
  return ferror(out) ? loom_error_set(LOOM_EIO, "grid results: writing the table failed: %s", strerror(errno)) : 0;
}

/* One CSV field, quoted when it must be. */
static void csv_field(FILE *out, const char *s, bool first) {
  if (!first)
    fputc(',', out);
  if (!strpbrk(s, ",\"\r\n")) {
    fputs(s, out);
    return;
  }
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '"')
      fputc('"', out);
    fputc(*s, out);
  }
  fputc('"', out);
}

static void csv_number(FILE *out, double x) {
  char buf[32] = "";
  if (!isnan(x))
    loom_grid_format_number(x, buf, sizeof buf);
  fprintf(out, ",%s", buf);
}

int loom_grid_table_write_csv(const loom_grid_table *t, FILE *out) {
  char buf[512];
  for (size_t k = 0; k < t->num_keys; k++)
    csv_field(out, t->keys[k], k == 0);
  csv_field(out, "n", t->num_keys == 0);
  fputs(",failed,other", out);
  for (size_t m = 0; m < t->num_metrics; m++) {
    snprintf(buf, sizeof buf, "%s_mean", t->metrics[m]);
    csv_field(out, buf, false);
    snprintf(buf, sizeof buf, "%s_std", t->metrics[m]);
    csv_field(out, buf, false);
  }
  fputc('\n', out);
  for (size_t g = 0; g < t->num_groups; g++) {
    const grid_group *grp = &t->groups[g];
    for (size_t k = 0; k < t->num_keys; k++) {
      const char *v = plain(grp->values[k], buf, sizeof buf);
      csv_field(out, strcmp(grp->values[k], "null") == 0 ? "" : v, k == 0);
    }
    fprintf(out, "%s%lld,%lld,%lld", t->num_keys ? "," : "", (long long)grp->done, (long long)grp->failed,
            (long long)grp->other);
    for (size_t m = 0; m < t->num_metrics; m++) {
      csv_number(out, grp->stats[m].mean);
      csv_number(out, grp->stats[m].std);
    }
    fputc('\n', out);
  }
  return ferror(out) ? loom_error_set(LOOM_EIO, "grid results: writing the CSV failed: %s", strerror(errno)) : 0;
}
