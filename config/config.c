/* Config files: parsing, the position index, --set overrides, writing. */
#include <errno.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/array.h"
#include "config/config_internal.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/runner_view.h"

static loom_config *from_text(const char *text, const char *name) {
  json_error_t err;
  json_t *root = json_loads(text, JSON_REJECT_DUPLICATES, &err);
  if (!root) {
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
  return c;
}

loom_config *loom_config_parse(const char *text, const char *name) { return from_text(text, name ? name : "<config>"); }

loom_config *loom_config_load(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "%s: %s", path, strerror(errno));
    return NULL;
  }
  char *text = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&text, &len);
  char buf[65536];
  size_t n;
  while (mem && (n = fread(buf, 1, sizeof buf, f)) > 0)
    fwrite(buf, 1, n, mem);
  fclose(f);
  if (!mem || fclose(mem) != 0) {
    free(text);
    loom_error_oom("reading a config");
    return NULL;
  }
  loom_config *c = from_text(text, path);
  free(text);
  return c;
}

void loom_config_destroy(loom_config *c) {
  if (!c)
    return;
  json_decref(c->root);
  loom_pos_index_free(&c->index);
  for (size_t i = 0; i < c->num_overrides; i++) {
    free(c->overrides[i].path);
    free(c->overrides[i].assignment);
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
    if (starts_path(path, c->overrides[i].path)) {
      snprintf(buf, size, "--set %s: ", c->overrides[i].assignment);
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

/* The value `text` as the type the existing value has. */
static json_t *typed_value(const json_t *old, const char *text, const char **want) {
  char *end;
  *want = NULL;
  if (json_is_string(old))
    return json_string(text);
  if (json_is_integer(old)) {
    errno = 0;
    long long v = strtoll(text, &end, 10);
    *want = "an integer";
    return (*text && !*end && errno == 0) ? json_integer(v) : NULL;
  }
  if (json_is_real(old)) {
    double v = strtod(text, &end);
    *want = "a number";
    return (*text && !*end) ? json_real(v) : NULL;
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

int loom_config_set(loom_config *c, const char *assignment) {
  const char *eq = strchr(assignment, '=');
  if (!eq || eq == assignment)
    return loom_error_set(LOOM_EINVAL, "--set %s: expected KEY=VALUE, e.g. stages.train.num_epochs=3", assignment);
  char path[1024];
  size_t plen = (size_t)(eq - assignment);
  if (plen >= sizeof path)
    return loom_error_set(LOOM_EINVAL, "--set %s: the key is too long", assignment);
  memcpy(path, assignment, plen);
  path[plen] = '\0';
  /* jansson takes only UTF-8 keys: refuse before anything is created. */
  json_t *probe = json_string(path);
  if (!probe)
    return loom_error_set(LOOM_EINVAL, "--set %s: the key is not valid UTF-8", assignment);
  json_decref(probe);
  /* Walk "a.b[2].c", creating objects that do not exist yet. */
  json_t *node = c->root;
  char so_far[1024] = "";
  char *save = NULL;
  char work[1024];
  memcpy(work, path, plen + 1);
  json_t *parent = NULL;
  char last[256] = "";
  long index = -1;
  for (char *part = strtok_r(work, ".", &save); part; part = strtok_r(NULL, ".", &save)) {
    char *bracket = strchr(part, '[');
    long idx = -1;
    if (bracket) {
      idx = strtol(bracket + 1, NULL, 10);
      *bracket = '\0';
    }
    if (!json_is_object(node))
      return loom_error_set(LOOM_EINVAL, "--set %s: %s is not an object", assignment, *so_far ? so_far : "the config");
    json_t *next = json_object_get(node, part);
    /* json_object_set_new frees the new object when it refuses the key
     * (not valid UTF-8), so its result decides whether `next` lives. */
    if (!next && (idx >= 0 || (save && *save)) && json_object_set_new(node, part, next = json_object()) < 0)
      return loom_error_set(LOOM_EINVAL, "--set %s: cannot create key \"%s\" (keys must be valid UTF-8)", assignment,
                            part);
    char grown[1024];
    loom_path_child(grown, sizeof grown, so_far, part); /* not in place: snprintf cannot alias */
    memcpy(so_far, grown, sizeof so_far);
    parent = node;
    snprintf(last, sizeof last, "%s", part);
    index = -1;
    node = next;
    if (idx >= 0) {
      if (!json_is_array(node) || (size_t)idx >= json_array_size(node))
        return loom_error_set(LOOM_EINVAL, "--set %s: %s has no item %ld", assignment, so_far, idx);
      parent = node;
      index = idx;
      node = json_array_get(node, (size_t)idx);
      char grown[1024];
      loom_path_index(grown, sizeof grown, so_far, (size_t)idx);
      memcpy(so_far, grown, sizeof so_far);
    }
  }
  const char *want;
  json_t *value = typed_value(node, eq + 1, &want);
  if (!value)
    return loom_error_set(LOOM_EINVAL, "--set %s: %s: expected %s, got \"%s\"", assignment, so_far, want, eq + 1);
  if ((index >= 0 ? json_array_set_new(parent, (size_t)index, value) : json_object_set_new(parent, last, value)) < 0)
    return loom_error_set(LOOM_EINVAL, "--set %s: cannot set key \"%s\" (keys must be valid UTF-8)", assignment, last);
  if (loom_array_reserve((void **)&c->overrides, &c->cap_overrides, c->num_overrides + 1, sizeof *c->overrides,
                         "an override") < 0)
    return LOOM_ENOMEM;
  loom_override *o = &c->overrides[c->num_overrides];
  o->path = strdup(so_far);
  o->assignment = strdup(assignment);
  if (!o->path || !o->assignment) {
    free(o->path);
    free(o->assignment);
    return loom_error_oom("an override");
  }
  c->num_overrides++;
  return 0;
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
    return loom_error_set(LOOM_EIO, "cannot write the resolved config to %s: %s", path, strerror(errno));
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
