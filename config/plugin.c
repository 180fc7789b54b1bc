/* Plugins: shared libraries that register components when loaded. The
 * version a plugin was built against is read from its loom_plugin record
 * before any of its code runs. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>

#include "config/config_internal.h"
#include "core/array.h"
#include "core/error_internal.h"
#include "loom/plugin.h"

/* Loaded plugins by real path; never unloaded, as the registry points into
 * them. */
static char **loaded;
static size_t num_loaded, cap_loaded;

static bool is_loaded(const char *real) {
  for (size_t i = 0; i < num_loaded; i++)
    if (strcmp(loaded[i], real) == 0)
      return true;
  return false;
}

static int remember(const char *real) {
  if (loom_array_reserve((void **)&loaded, &cap_loaded, num_loaded + 1, sizeof *loaded, "the plugin list") < 0)
    return LOOM_ENOMEM;
  if (!(loaded[num_loaded] = strdup(real)))
    return loom_error_oom("the plugin list");
  num_loaded++;
  return 0;
}

/* The library's loom_plugin record, checked; NULL with an error. */
static const loom_plugin_info *entry_point(uv_lib_t *lib, const char *path) {
  const loom_plugin_info *info = NULL;
  if (uv_dlsym(lib, "loom_plugin", (void **)&info) != 0 || !info) {
    loom_error_set(LOOM_EFORMAT, "plugin %s is not a loom plugin: it exports no \"loom_plugin\" entry point "
                                 "(define one with LOOM_PLUGIN(name, init) from loom/plugin.h)", path);
    return NULL;
  }
  if (info->magic != LOOM_PLUGIN_MAGIC) {
    loom_error_set(LOOM_EFORMAT, "plugin %s: its \"loom_plugin\" symbol is not a loom plugin record (define it with "
                                 "LOOM_PLUGIN(name, init) from loom/plugin.h)", path);
    return NULL;
  }
  if (info->abi != LOOM_ABI_VERSION || info->major != LOOM_VERSION_MAJOR || info->minor != LOOM_VERSION_MINOR) {
    loom_error_set(LOOM_ENOTSUP, "plugin %s was built against loom %d.%d.%d (ABI %d), but this is loom %d.%d.%d "
                                 "(ABI %d): rebuild the plugin against this loom's headers and library",
                   path, info->major, info->minor, info->patch, info->abi, LOOM_VERSION_MAJOR, LOOM_VERSION_MINOR,
                   LOOM_VERSION_PATCH, LOOM_ABI_VERSION);
    return NULL;
  }
  if (!info->init) {
    loom_error_set(LOOM_EFORMAT, "plugin %s has no init function (LOOM_PLUGIN(name, init) names it)", path);
    return NULL;
  }
  return info;
}

int loom_plugin_load(const char *path) {
  if (!path || !*path)
    return loom_error_set(LOOM_EINVAL, "loom_plugin_load: no file name given");
  struct stat st;
  char real[PATH_MAX];
  if (stat(path, &st) != 0 || !realpath(path, real))
    return loom_error_set(LOOM_ENOENT, "plugin %s: no such file (build it first, or give its path: relative to the "
                                       "working directory on the command line, to the config's directory in "
                                       "\"plugins\")", path);
  if (S_ISDIR(st.st_mode))
    return loom_error_set(LOOM_EINVAL, "plugin %s is a directory, not a shared library", path);
  if (is_loaded(real))
    return 0;
  uv_lib_t lib;
  if (uv_dlopen(real, &lib) != 0) {
    loom_error_set(LOOM_EFORMAT, "plugin %s cannot be loaded: %s", path, uv_dlerror(&lib));
    uv_dlclose(&lib);
    return LOOM_EFORMAT;
  }
  const loom_plugin_info *info = entry_point(&lib, path);
  if (!info) {
    uv_dlclose(&lib); /* none of its code has run */
    return loom_last_error_code();
  }
  int rc = remember(real);
  if (rc < 0) {
    uv_dlclose(&lib);
    return rc;
  }
  /* From here the library stays: init may register before it fails. */
  unsigned before = loom_error_serial();
  if ((rc = info->init()) < 0) {
    if (loom_error_serial() == before)
      loom_error_clear(); /* no message of its own: the code's */
    return loom_error_wrap(rc, "plugin %s (\"%s\"): init failed", path, info->name ? info->name : "?");
  }
  return 0;
}

int loom_config_add_plugin(loom_config *c, const char *path) {
  int rc = loom_plugin_load(path);
  char real[PATH_MAX];
  if (rc < 0)
    return rc;
  if (!realpath(path, real))
    return loom_error_set(LOOM_ENOENT, "plugin %s: no such file", path);
  json_t *list = json_object_get(c->root, "plugins");
  if (!list) {
    list = json_array();
    if (!list || json_object_set_new(c->root, "plugins", list) < 0)
      return loom_error_oom("the config's plugins");
  }
  if (!json_is_array(list)) /* loom_config_build reports it */
    return 0;
  size_t i;
  json_t *item;
  json_array_foreach(list, i, item) {
    if (json_is_string(item) && strcmp(json_string_value(item), real) == 0)
      return 0;
  }
  return json_array_append_new(list, json_string(real)) < 0 ? loom_error_oom("the config's plugins") : 0;
}
