/* Components by kind and name. Built-ins register on first use. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/array.h"
#include "config/config_internal.h"
#include "core/error_internal.h"

typedef struct entry {
  loom_kind kind;
  char *name;
  loom_ctor ctor;
  void *user;
} entry;

static entry *entries;
static size_t num_entries, cap_entries;
static uv_once_t builtins_once = UV_ONCE_INIT;

/* Defined next to each module's components. */
void loom_register_builtin_models(void);
void loom_register_builtin_datasets(void);
void loom_register_builtin_callbacks(void);
void loom_register_builtin_backends(void);

static void register_builtins(void) {
  loom_register_builtin_models();
  loom_register_builtin_datasets();
  loom_register_builtin_callbacks();
  loom_register_builtin_backends();
}

static const char *const kind_names[LOOM_KIND_COUNT] = {"model",    "layer",   "criterion", "optimizer", "scheduler",
                                                        "callback", "dataset", "transform", "backend"};

const char *loom_kind_name(loom_kind kind) { return kind < LOOM_KIND_COUNT ? kind_names[kind] : "component"; }

static int add(loom_kind kind, const char *name, loom_ctor ctor, void *user) {
  for (size_t i = 0; i < num_entries; i++)
    if (entries[i].kind == kind && strcmp(entries[i].name, name) == 0)
      return loom_error_set(LOOM_EINVAL, "a %s named \"%s\" is already registered; pick another name",
                            kind_names[kind], name);
  if (loom_array_reserve((void **)&entries, &cap_entries, num_entries + 1, sizeof *entries, "the registry") < 0)
    return LOOM_ENOMEM;
  char *copy = strdup(name);
  if (!copy)
    return loom_error_oom("a registry name");
  entries[num_entries++] = (entry){kind, copy, ctor, user};
  return 0;
}

/* The first failure to register a built-in (out of memory at start-up):
 * every later use of the registry reports it rather than "unknown type". */
static int builtins_rc;
static char builtins_error[LOOM_ERROR_MAX];

void loom_register_builtin(loom_kind kind, const char *name, loom_ctor ctor) {
  int rc = add(kind, name, ctor, NULL);
  if (rc < 0 && builtins_rc == 0) {
    builtins_rc = rc;
    snprintf(builtins_error, sizeof builtins_error, "registering the built-in %s \"%s\": %s", kind_names[kind], name,
             loom_last_error());
  }
}

int loom_registry_status(void) {
  uv_once(&builtins_once, register_builtins);
  return builtins_rc < 0 ? loom_error_set(builtins_rc, "%s", builtins_error) : 0;
}

int loom_register(loom_kind kind, const char *name, loom_ctor ctor, void *user) {
  if (kind >= LOOM_KIND_COUNT || !name || !*name || !ctor)
    return loom_error_set(LOOM_EINVAL, "loom_register: a kind, a name and a constructor are required");
  int rc = loom_registry_status();
  return rc < 0 ? rc : add(kind, name, ctor, user);
}

loom_ctor loom_registry_find(loom_kind kind, const char *name, void **user) {
  uv_once(&builtins_once, register_builtins);
  for (size_t i = 0; i < num_entries; i++) {
    if (entries[i].kind == kind && strcmp(entries[i].name, name) == 0) {
      *user = entries[i].user;
      return entries[i].ctor;
    }
  }
  return NULL;
}

const char *const *loom_registry_list(loom_kind kind, size_t *n) {
  static const char *names[256];
  uv_once(&builtins_once, register_builtins);
  *n = 0;
  for (size_t i = 0; i < num_entries && *n < 256; i++)
    if (entries[i].kind == kind)
      names[(*n)++] = entries[i].name;
  return names;
}

const char *loom_registry_names(loom_kind kind) {
  static char buf[2048];
  size_t n;
  const char *const *names = loom_registry_list(kind, &n);
  buf[0] = '\0';
  for (size_t i = 0; i < n; i++)
    snprintf(buf + strlen(buf), sizeof buf - strlen(buf), "%s%s", i ? ", " : "", names[i]);
  return buf;
}
