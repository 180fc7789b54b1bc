/* Line and column of every key and value of a JSON text, by path. jansson
 * parses and validates; this pass only records where things are. */
#include <ctype.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/array.h"
#include "config/config_internal.h"
#include "core/error_internal.h"

typedef struct scanner {
  const char *p;
  int line, col;
  loom_pos_index *idx;
  int rc;
} scanner;

static void advance(scanner *s) {
  if (*s->p == '\n')
    s->line++, s->col = 1;
  else
    s->col++;
  s->p++;
}

static void skip_ws(scanner *s) {
  while (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r')
    advance(s);
}

static int add(scanner *s, const char *path, int line, int col, int key_line, int key_col) {
  loom_pos_index *idx = s->idx;
  if (loom_array_reserve((void **)&idx->items, &idx->cap, idx->n + 1, sizeof *idx->items, "the config index") < 0)
    return LOOM_ENOMEM;
  char *copy = strdup(path);
  if (!copy)
    return loom_error_oom("the config index");
  idx->items[idx->n++] = (loom_pos){copy, line, col, key_line, key_col};
  return 0;
}

/* Reads a string token into out (escapes kept as written but for \" and \\). */
static void scan_string(scanner *s, char *out, size_t size) {
  size_t n = 0;
  advance(s); /* the opening quote */
  while (*s->p && *s->p != '"') {
    if (*s->p == '\\') {
      advance(s);
      if (n + 1 < size && (*s->p == '"' || *s->p == '\\' || *s->p == '/'))
        out[n++] = *s->p;
      else if (n + 2 < size)
        out[n++] = '\\', out[n++] = *s->p;
    } else if (n + 1 < size) {
      out[n++] = *s->p;
    }
    advance(s);
  }
  if (*s->p)
    advance(s);
  out[n] = '\0';
}

static void scan_value(scanner *s, const char *path, int key_line, int key_col);

static void scan_object(scanner *s, const char *path) {
  advance(s);
  for (skip_ws(s); *s->p && *s->p != '}' && s->rc == 0;) {
    char key[256], child[1024];
    int kl = s->line, kc = s->col;
    scan_string(s, key, sizeof key);
    skip_ws(s);
    advance(s); /* ':' */
    loom_path_child(child, sizeof child, path, key);
    scan_value(s, child, kl, kc);
    skip_ws(s);
    if (*s->p == ',') {
      advance(s);
      skip_ws(s);
    }
  }
  if (*s->p)
    advance(s);
}

static void scan_array(scanner *s, const char *path) {
  advance(s);
  size_t i = 0;
  for (skip_ws(s); *s->p && *s->p != ']' && s->rc == 0; i++) {
    char child[1024];
    loom_path_index(child, sizeof child, path, i);
    scan_value(s, child, 0, 0);
    skip_ws(s);
    if (*s->p == ',') {
      advance(s);
      skip_ws(s);
    }
  }
  if (*s->p)
    advance(s);
}

static void scan_value(scanner *s, const char *path, int key_line, int key_col) {
  skip_ws(s);
  if (s->rc == 0)
    s->rc = add(s, path, s->line, s->col, key_line, key_col);
  if (*s->p == '{') {
    scan_object(s, path);
  } else if (*s->p == '[') {
    scan_array(s, path);
  } else if (*s->p == '"') {
    char ignored[8];
    scan_string(s, ignored, sizeof ignored);
  } else {
    while (*s->p && !strchr(",]} \t\r\n", *s->p))
      advance(s);
  }
}

int loom_pos_index_build(loom_pos_index *idx, const char *text) {
  memset(idx, 0, sizeof *idx);
  scanner s = {text, 1, 1, idx, 0};
  scan_value(&s, "", 0, 0);
  return s.rc;
}

const loom_pos *loom_pos_find(const loom_pos_index *idx, const char *path) {
  for (size_t i = 0; i < idx->n; i++)
    if (strcmp(idx->items[i].path, path) == 0)
      return &idx->items[i];
  return NULL;
}

void loom_pos_index_free(loom_pos_index *idx) {
  for (size_t i = 0; i < idx->n; i++)
    free(idx->items[i].path);
  free(idx->items);
  memset(idx, 0, sizeof *idx);
}

void loom_path_child(char *out, size_t size, const char *path, const char *key) {
  snprintf(out, size, "%s%s%s", path, *path ? "." : "", key);
}

void loom_path_index(char *out, size_t size, const char *path, size_t i) {
  snprintf(out, size, "%s[%zu]", path, i);
}

static size_t distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b);
  if (la > 63 || lb > 63)
    return 99;
  size_t row[64];
  for (size_t j = 0; j <= lb; j++)
    row[j] = j;
  for (size_t i = 1; i <= la; i++) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= lb; j++) {
      size_t up = row[j];
      size_t sub = diag + (a[i - 1] != b[j - 1]);
      size_t best = up + 1 < row[j - 1] + 1 ? up + 1 : row[j - 1] + 1;
      row[j] = sub < best ? sub : best;
      diag = up;
    }
  }
  return row[lb];
}

/* A value that differs from a candidate by a slip of the keyboard, not by
 * its meaning: the same first letter ("gpu" is no typo of "cpu") and the
 * same digits in the same order ("fc9" is no typo of "fc1"). */
static bool could_mean(const char *word, const char *candidate) {
  if (tolower((unsigned char)word[0]) != tolower((unsigned char)candidate[0]))
    return false;
  for (const char *a = word, *b = candidate;; a++, b++) {
    while (*a && !isdigit((unsigned char)*a))
      a++;
    while (*b && !isdigit((unsigned char)*b))
      b++;
    if (*a != *b)
      return false;
    if (!*a)
      return true;
  }
}

static const char *nearest(const char *word, const char *const *candidates, size_t n, bool value) {
  const char *best = NULL;
  size_t best_d = (size_t)-1, limit = strlen(word) / 3 + 1;
  for (size_t i = 0; i < n; i++) {
    size_t d = distance(word, candidates[i]);
    if (d < best_d && d <= (limit < 3 ? limit : 3) && (!value || could_mean(word, candidates[i])))
      best = candidates[i], best_d = d;
  }
  return best;
}

const char *loom_did_you_mean(const char *word, const char *const *candidates, size_t n) {
  return nearest(word, candidates, n, false);
}

const char *loom_did_you_mean_value(const char *word, const char *const *candidates, size_t n) {
  return nearest(word, candidates, n, true);
}
