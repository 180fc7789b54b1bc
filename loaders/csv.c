/* A numeric CSV file as a dataset: one row a sample, one column its target
 * (or none: unlabelled). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/data.h"

/* Splits a row at commas into up to max numbers; returns how many, or a
 * negative error naming the line and column of a cell that is no number. */
static int parse_row(const char *path, int line, char *row, double *out, int max) {
  int n = 0;
  char *p = row;
  for (;;) {
    while (*p == ' ' || *p == '\t')
      p++;
    char *end;
    errno = 0;
    double v = strtod(p, &end);
    char *q = end;
    while (*q == ' ' || *q == '\t' || *q == '\r')
      q++;
    if (end == p || (*q != ',' && *q != '\0' && *q != '\n') || errno == ERANGE) {
      size_t len = strcspn(p, ",\r\n");
      return loom_error_set(LOOM_EFORMAT, "%s:%d:%d: \"%.*s\" is not a number", path, line, (int)(p - row) + 1,
                            (int)(len < 40 ? len : 40), p);
    }
    if (n == max)
      return loom_error_set(LOOM_EFORMAT, "%s:%d: more than %d columns", path, line, max);
    out[n++] = v;
    if (*q != ',')
      return n;
    p = q + 1;
  }
}

/* The dataset of the rows of `f` (which it closes); `path` names it in messages. */
static loom_dataset *read_csv(FILE *f, const char *path, int target_column, bool header) {
  enum { MAX_COLUMNS = 4096 };
  double *row = malloc(MAX_COLUMNS * sizeof *row);
  float *x = NULL, *y = NULL;
  int64_t n = 0, cap = 0;
  int columns = -1, features = 0, line = 0, rc = row ? 0 : loom_error_oom("a CSV row");
  char *text = NULL;
  size_t text_cap = 0;
  while (rc == 0 && getline(&text, &text_cap, f) > 0) {
    line++;
    if ((line == 1 && header) || text[strspn(text, " \t\r\n")] == '\0')
      continue;
    int k = parse_row(path, line, text, row, MAX_COLUMNS);
    if (k < 0) {
      rc = k;
      break;
    }
    if (columns < 0) {
      columns = k;
      int t = target_column == LOOM_CSV_NO_TARGET ? -1 : target_column < 0 ? columns + target_column : target_column;
      if (target_column != LOOM_CSV_NO_TARGET && (columns < 2 || t < 0 || t >= columns)) {
        rc = loom_error_set(LOOM_EINVAL, "%s:%d: %d columns; target column %d does not leave features", path, line,
                            columns, target_column);
        break;
      }
      target_column = t;
      features = columns - (t >= 0);
    } else if (k != columns) {
      rc = loom_error_set(LOOM_EFORMAT, "%s:%d: %d columns where the first row had %d", path, line, k, columns);
      break;
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 1024;
      float *gx = realloc(x, (size_t)(cap * features) * sizeof *gx), *gy = gx ? realloc(y, (size_t)cap * sizeof *gy) : NULL;
      if (gx)
        x = gx;
      if (!gx || !gy) {
        rc = loom_error_oom("CSV rows");
        break;
      }
      y = gy;
    }
    for (int c = 0, j = 0; c < columns; c++) {
      if (c == target_column)
        y[n] = (float)row[c];
      else
        x[n * features + j++] = (float)row[c];
    }
    n++;
  }
  fclose(f);
  free(text);
  free(row);
  if (rc == 0 && n == 0)
    rc = loom_error_set(LOOM_EFORMAT, "%s: no rows of numbers", path);
  loom_dataset *ds = NULL;
  if (rc == 0) {
    int64_t shape = features;
    ds = loom_memory_dataset_create(x, target_column >= 0 ? y : NULL, n, 1, &shape, 0, NULL);
  }
  free(x);
  free(y);
  return ds;
}

loom_dataset *loom_csv_dataset_open(const char *path, int target_column, bool header) {
  if (loom_refuse_directory(path, "CSV") < 0)
    return NULL;
  FILE *f = fopen(path, "r");
  if (!f) {
    loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  return read_csv(f, path, target_column, header);
}

loom_dataset *loom_csv_dataset_from_memory(const void *bytes, size_t size, const char *name, int target_column,
                                           bool header) {
  name = name ? name : "CSV (memory)";
  /* fmemopen takes no empty buffer: an empty file has no rows either way. */
  static const char empty[1] = "";
  FILE *f = fmemopen((void *)(size ? bytes : empty), size ? size : 1, "r");
  if (!f) {
    loom_error_set(errno == ENOMEM ? LOOM_ENOMEM : LOOM_EIO, "%s: cannot read it: %s", name, strerror(errno));
    return NULL;
  }
  return read_csv(f, name, target_column, header);
}
