/* Config files: parsing, the position index, --set overrides, writing. */
#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/array.h"
#include "config/config_internal.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/runner_view.h"

/* A config is a page of settings, not data: anything larger is a mistake (a
 * dataset given as the config), refused before it is read or parsed. */
static int too_large(const char *name, unsigned long long size) {
  return loom_error_set(LOOM_EINVAL, "%s: %llu bytes; a config is at most %d MiB (LOOM_CONFIG_MAX_BYTES): keep data "
                                     "out of it and give datasets by path",
                        name, size, LOOM_CONFIG_MAX_BYTES >> 20);
}

static loom_config *from_text(const char *text, const char *name) {
  size_t len = strnlen(text, (size_t)LOOM_CONFIG_MAX_BYTES + 1);
  if (len > LOOM_CONFIG_MAX_BYTES) {
    too_large(name, len + strlen(text + len));
    return NULL;
  }
  json_error_t err;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);
  if (!root) {
    if (json_error_code(&err) == json_error_out_of_memory || !err.text[0]) /* jansson could not start */
      loom_error_oom("the parsed config");
    else if (json_error_code(&err) == json_error_stack_overflow)
      loom_error_set(LOOM_EINVAL, "%s:%d:%d: nested deeper than %d levels; a config nests a few levels: flatten it",
                     name, err.line, err.column, JSON_PARSER_MAX_DEPTH);
    else
      loom_error_set(LOOM_EINVAL, "%s:%d:%d: %s", name, err.line, err.column, err.text);
    return NULL;
  }
  if (!json_is_object(root)) {
    json_decref(root);
    loom_error_set(LOOM_EINVAL, "%s:1:1: a config is a JSON object ({...})", name);
    return NULL;
  }
  loom_config *c = calloc(1, sizeof *c);
  char *dir = strdup(name);
  if (c)
    c->name = strdup(name);
  if (!c || !c->name || !dir || loom_pos_index_build(&c->index, text) < 0) {
    free(dir);
    json_decref(root);
    loom_config_destroy(c);
    loom_error_oom("a config");
    return NULL;
  }
  c->base_dir = strdup(dirname(dir));
  free(dir);
  c->root = root;
  if (!c->base_dir) {
    loom_config_destroy(c);
    loom_error_oom("a config's directory");
    return NULL;
  }
  return c;
}

loom_config *loom_config_parse(const char *text, const char *name) { return from_text(text, name ? name : "<config>"); }

loom_config *loom_config_load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  struct stat st;
  if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
    fclose(f);
    loom_error_set(LOOM_EINVAL, "%s is a directory; give the config's JSON file", path);
    return NULL;
  }
  if (S_ISREG(st.st_mode) && st.st_size > LOOM_CONFIG_MAX_BYTES) {
    fclose(f);
    too_large(path, (unsigned long long)st.st_size);
    return NULL;
  }
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  char buf[65536];
  size_t n;
  size_t total = 0;
  while (mem && total <= LOOM_CONFIG_MAX_BYTES && (n = fread(buf, 1, sizeof buf, f)) > 0) {
    fwrite(buf, 1, n, mem);
    total += n;
  }
  int read_errno = ferror(f) ? errno : 0;
  fclose(f);
  if (!mem || fclose(mem) != 0) {
    free(text);
    loom_error_oom("reading a config");
    return NULL;
  }
  if (read_errno) {
    free(text);
    loom_error_set(LOOM_EIO, "%s: cannot read: %s", path, strerror(read_errno));
    return NULL;
  }
  loom_config *c = from_text(text, path);
  free(text);
  return c;
}

void loom_config_destroy(loom_config *c) {
  if (!c)
    return;
  loom_config_forget_built(c);
  json_decref(c->root);
  loom_pos_index_free(&c->index);
  for (size_t i = 0; i < c->num_overrides; i++) {
    free(c->overrides[i].path);
    free(c->overrides[i].assignment);
    free(c->overrides[i].created);
  }
  free(c->overrides);
  free(c->name);
  free(c->base_dir);
  free(c);
}

const char *loom_config_name(const loom_config *c) { return c->name; }

static bool starts_path(const char *path, const char *prefix) {
  size_t n = strlen(prefix);
  return strncmp(path, prefix, n) == 0 && (path[n] == '\0' || path[n] == '.' || path[n] == '[');
}

void loom_config_where(const loom_config *c, const char *path, bool key, char *buf, size_t size) {
  for (size_t i = c->num_overrides; i-- > 0;) {
    /* Its own path and below, and any key it created (a typo in its first
     * component is reported at the key it made, e.g. "stage"). */
    const loom_override *o = &c->overrides[i];
    if (starts_path(path, o->path) || (o->created && starts_path(path, o->created))) {
      snprintf(buf, size, "--set %s: ", o->assignment);
      return;
    }
  }
  /* A missing key is reported where its object stands. */
  char p[1024];
  snprintf(p, sizeof p, "%s", path);
  const loom_pos *pos = NULL;
  for (;;) {
    if ((pos = loom_pos_find(&c->index, p)) || !*p)
      break;
    char *cut = strrchr(p, '.'), *bracket = strrchr(p, '[');
    if (bracket && (!cut || bracket > cut))
      cut = bracket;
    if (cut)
      *cut = '\0';
    else
      p[0] = '\0';
    key = false;
  }
  if (!pos)
    snprintf(buf, size, "%s: ", c->name);
  else if (key && pos->key_line)
    snprintf(buf, size, "%s:%d:%d: ", c->name, pos->key_line, pos->key_col);
  else
    snprintf(buf, size, "%s:%d:%d: ", c->name, pos->line, pos->col);
}

/* --- --set --- */

/* A JSON string literal ("str", as --set 'k="str"' passes it): its text. */
static json_t *quoted_string(const char *text) {
  size_t n = strlen(text);
  if (n < 2 || text[0] != '"' || text[n - 1] != '"')
    return NULL;
  json_t *v = json_loads(text, JSON_DECODE_ANY, NULL);
  if (v && !json_is_string(v)) {
    json_decref(v);
    v = NULL;
  }
  return v;
}

/* The value `text` as the type the existing value has: NULL with *want
 * saying what was expected, or NULL with *want NULL when out of memory. */
static json_t *typed_value(const json_t *old, const char *text, const char **want) {
  char *end;
  *want = NULL;
  if (json_is_string(old)) {
    json_t *quoted = quoted_string(text);
    return quoted ? quoted : json_string(text);
  }
  if (json_is_integer(old)) {
    errno = 0;
    long long v = strtoll(text, &end, 10);
    *want = "an integer";
    if (!*text || *end || errno != 0)
      return NULL;
    *want = NULL;
    return json_integer(v);
  }
  if (json_is_real(old)) {
    double v = strtod(text, &end);
    *want = "a number";
    if (!*text || *end)
      return NULL;
    *want = NULL;
    return json_real(v);
  }
  if (json_is_boolean(old)) {
    *want = "true or false";
    return strcmp(text, "true") == 0 ? json_true() : strcmp(text, "false") == 0 ? json_false() : NULL;
  }
  json_error_t err;
  json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &err);
  if (json_is_object(old) || json_is_array(old)) {
    /* A section is replaced only by a section of the same kind. */
    *want = json_is_object(old) ? "a JSON object" : "a JSON array";
    if (v && json_typeof(v) != json_typeof(old)) {
      json_decref(v);
      v = NULL;
    }
  } else if (!v) {
    v = json_string(text); /* a new key, or null: a bare word is a string */
  }
  return v;
}

/* Whether `s` is UTF-8 (what jansson takes as a key), without allocating. */
static bool valid_utf8(const char *s) {
  for (const unsigned char *p = (const unsigned char *)s; *p;) {
    int n = *p < 0x80 ? 0 : (*p & 0xE0) == 0xC0 ? 1 : (*p & 0xF0) == 0xE0 ? 2 : (*p & 0xF8) == 0xF0 ? 3 : -1;
    if (n < 0 || (n == 1 && *p < 0xC2) || (n == 3 && *p > 0xF4))
      return false;
    unsigned cp = n ? *p & (0x3Fu >> n) : *p;
    p++;
    for (int i = 0; i < n; i++, p++) {
      if ((*p & 0xC0) != 0x80)
        return false;
      cp = cp << 6 | (*p & 0x3Fu);
    }
    if ((n == 2 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)))
      return false;
  }
  return true;
}

/* Where a --set puts its value: parent[last] or parent[index] (index -1:
 * an object's key; `append`: a new last item of the array parent). */
typedef struct target {
  json_t *parent, *node;
  char last[256], path[1024], created[1024];
  long index;
  bool append;
} target;

/* Walks "a.b[2].c" (or "a.b[+]") from the root, creating objects that do
 * not exist yet (and the list a [+] appends to). */
static int walk(loom_config *c, const char *assignment, char *work, target *t) {
  t->node = c->root;
  t->parent = NULL;
  t->path[0] = t->created[0] = '\0';
  t->index = -1;
  t->append = false;
  char *save = NULL;
  for (char *part = strtok_r(work, ".", &save); part; part = strtok_r(NULL, ".", &save)) {
    bool more = save && *save;
    char *bracket = strchr(part, '[');
    long idx = -1;
    bool append = false;
    if (bracket) {
      char *end;
      append = strcmp(bracket, "[+]") == 0;
      idx = append ? 0 : strtol(bracket + 1, &end, 10);
      if (!append && (end == bracket + 1 || strcmp(end, "]") != 0 || idx < 0))
        return loom_error_set(LOOM_EINVAL, "--set %s: \"%s\": an item is [N] (N from 0), or [+] to append", assignment,
                              bracket);
      if (append && more)
        return loom_error_set(LOOM_EINVAL, "--set %s: [+] appends a value: it ends the key", assignment);
      *bracket = '\0';
    }
    if (!json_is_object(t->node))
      return loom_error_set(LOOM_EINVAL, "--set %s: %s is not an object", assignment, *t->path ? t->path : "the config");
    json_t *next = json_object_get(t->node, part);
    char grown[1024];
    loom_path_child(grown, sizeof grown, t->path, part); /* not in place: snprintf cannot alias */
    /* json_object_set_new frees the new object when it fails (the key is
     * valid UTF-8, checked first: out of memory), so its result decides
     * whether `next` lives. */
    if (!next && (idx >= 0 || more)) {
      if (json_object_set_new(t->node, part, next = append ? json_array() : json_object()) < 0)
        return loom_error_oom("a --set key");
      if (!*t->created)
        memcpy(t->created, grown, sizeof t->created);
    }
    memcpy(t->path, grown, sizeof t->path);
    t->parent = t->node;
    snprintf(t->last, sizeof t->last, "%s", part);
    t->index = -1;
    t->node = next;
    if (append) {
      if (!json_is_array(next))
        return loom_error_set(LOOM_EINVAL, "--set %s: %s is not a list: [+] appends to a list", assignment, t->path);
      t->parent = next;
      t->append = true;
      t->index = (long)json_array_size(next);
      /* New items take the type of the list's items, if it has any. */
      t->node = json_array_size(next) ? json_array_get(next, 0) : NULL;
    } else if (idx >= 0) {
      if (!json_is_array(next) || (size_t)idx >= json_array_size(next))
        return loom_error_set(LOOM_EINVAL, "--set %s: %s has no item %ld", assignment, t->path, idx);
      t->parent = next;
      t->index = idx;
      t->node = json_array_get(next, (size_t)idx);
    }
    if (t->index >= 0) {
      loom_path_index(grown, sizeof grown, t->path, (size_t)t->index);
      memcpy(t->path, grown, sizeof t->path);
    }
  }
  return 0;
}

static int place(const target *t, json_t *value) {
  if (t->append)
    return json_array_append_new(t->parent, value);
  return t->index >= 0 ? json_array_set_new(t->parent, (size_t)t->index, value)
                       : json_object_set_new(t->parent, t->last, value);
}

static int record(loom_config *c, const char *assignment, const target *t) {
  if (loom_array_reserve((void **)&c->overrides, &c->cap_overrides, c->num_overrides + 1, sizeof *c->overrides,
                         "an override") < 0)
    return LOOM_ENOMEM;
  loom_override *o = &c->overrides[c->num_overrides];
  o->path = strdup(t->path);
  o->assignment = strdup(assignment);
  o->created = *t->created ? strdup(t->created) : NULL;
  if (!o->path || !o->assignment || (*t->created && !o->created)) {
    free(o->path);
    free(o->assignment);
    free(o->created);
    return loom_error_oom("an override");
  }
  c->num_overrides++;
  return 0;
}

int loom_config_set(loom_config *c, const char *assignment) {
  const char *eq = strchr(assignment, '=');
  if (!eq || eq == assignment)
    return loom_error_set(LOOM_EINVAL, "--set %s: expected KEY=VALUE, e.g. stages.train.num_epochs=3", assignment);
  char work[1024];
  size_t plen = (size_t)(eq - assignment);
  if (plen >= sizeof work)
    return loom_error_set(LOOM_EINVAL, "--set %s: the key is too long", assignment);
  memcpy(work, assignment, plen);
  work[plen] = '\0';
  /* jansson takes only UTF-8 keys: refuse before anything is created. */
  if (!valid_utf8(work))
    return loom_error_set(LOOM_EINVAL, "--set %s: the key is not valid UTF-8", assignment);
  target t;
  int rc = walk(c, assignment, work, &t);
  if (rc < 0)
    return rc;
  const char *want;
  json_t *value = typed_value(t.node, eq + 1, &want);
  if (!value && !want)
    return loom_error_oom("a --set value");
  if (!value)
    return loom_error_set(LOOM_EINVAL, "--set %s: %s: expected %s, got \"%s\"", assignment, t.path, want, eq + 1);
  if (place(&t, value) < 0) /* the key is valid UTF-8 */
    return loom_error_oom("a --set value");
  return record(c, assignment, &t);
}

int loom_config_write(const loom_config *c, const char *path) {
  char dir[4096];
  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir)
    return loom_error_set(LOOM_EINVAL, "cannot write the resolved config: the path %.64s... is too long", path);
  char *slash = strrchr(dir, '/');
  if (slash && slash != dir) {
    *slash = '\0';
    int rc = loom_mkdir_p(dir);
    if (rc < 0)
      return loom_error_wrap(rc, "cannot write the resolved config to %s", path);
  }
  if (json_dump_file(c->root, path, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) < 0)
    return loom_error_set(errno == ENOMEM ? LOOM_ENOMEM : LOOM_EIO, "cannot write the resolved config to %s: %s", path,
                          strerror(errno));
  return 0;
}

int loom_config_record_run(loom_config *c, const loom_runner *r) {
  const char *logdir = loom_runner_logdir(r);
  char path[4200];
  json_t *exp = json_object_get(c->root, "experiment");
  if (json_is_object(exp))
    json_object_set_new(exp, "seed", json_integer((json_int_t)loom_experiment_seed(loom_runner_experiment(r))));
  if (snprintf(path, sizeof path, "%s/config.json", logdir) >= (int)sizeof path)
    return loom_error_set(LOOM_EINVAL, "the logdir %.64s... is too long", logdir);
  int rc = loom_config_write(c, path);
  snprintf(path, sizeof path, "%s/config_history.jsonl", logdir);
  char when[32];
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  const char *changes = loom_runner_config_changes(r);
  json_t *line = json_pack("{s:s, s:o, s:o}", "time", when, "resumed_from",
                           loom_runner_is_resumed(r) ? json_string(loom_runner_resume_path(r)) : json_null(),
                           "changes", changes ? json_loads(changes, 0, NULL) : json_array());
  char *text = line ? json_dumps(line, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
  FILE *f = rc == 0 && text ? fopen(path, "a") : NULL;
  if (rc == 0 && !text)
    rc = loom_error_oom("a config history line");
  else if (rc == 0 && (!f || fprintf(f, "%s\n", text) < 0))
    rc = loom_error_set(LOOM_EIO, "cannot append to %s: %s", path, strerror(errno));
  if (f && fclose(f) != 0 && rc == 0)
    rc = loom_error_set(LOOM_EIO, "cannot append to %s: %s", path, strerror(errno));
  free(text);
  json_decref(line);
  return rc;
}
