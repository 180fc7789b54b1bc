/* loom/plugin.h - components in a shared library, for the loom command.
 *
 * A plugin registers components (loom_register, loom/registry.h) when it is
 * loaded, so that `loom run|validate --plugin libmine.so CONFIG`, or a
 * config's "plugins": ["libmine.so"], can use them without a program of
 * your own. One line in the library names its init function:
 *
 *   static int init(void) { return loom_register(LOOM_KIND_MODEL, "mine", make_mine, NULL); }
 *   LOOM_PLUGIN("mine", init)
 *
 * Build it as a module linked to libloom (CMake: add_library(mine MODULE
 * mine.c) + target_link_libraries(mine PRIVATE loom); by hand:
 * cc -shared -fPIC mine.c $(pkg-config --cflags --libs loom)).
 * LOOM_PLUGIN records the loom version and ABI the plugin was compiled
 * against; loom refuses a plugin of another major.minor version or ABI
 * before running any of its code, as the components' structs may differ. */
#ifndef LOOM_PLUGIN_H
#define LOOM_PLUGIN_H

#include "loom/api.h"

#include <stdint.h>

#include "loom/version.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_PLUGIN_MAGIC 0x6c6f6f6dU /* "loom" */

/* What a plugin exports, as the data symbol `loom_plugin`. The first five
 * fields keep their place in every version of loom, so that any loom can
 * read which version a plugin was built against. */
typedef struct loom_plugin_info {
  uint32_t magic;       /* LOOM_PLUGIN_MAGIC */
  int abi;              /* LOOM_ABI_VERSION */
  int major, minor, patch;
  const char *name;     /* for messages */
  /* Registers the plugin's components; 0, or a negative LOOM_E* code with
   * a message (loom_error_set, or a failed loom_register's). */
  int (*init)(void);
} loom_plugin_info;

#ifdef __cplusplus
#define LOOM_PLUGIN_EXTERN extern "C"
#else
#define LOOM_PLUGIN_EXTERN
#endif

/* Defines the plugin's entry point: its name and init function. */
#define LOOM_PLUGIN(name, init)                                                                                    \
  LOOM_PLUGIN_EXTERN __attribute__((visibility("default"))) const loom_plugin_info loom_plugin = {                \
      LOOM_PLUGIN_MAGIC, LOOM_ABI_VERSION, LOOM_VERSION_MAJOR, LOOM_VERSION_MINOR, LOOM_VERSION_PATCH, name, init}

/* Loads a plugin (a file name, relative to the working directory) and
 * runs its init: an error names the file and says what went wrong (no such
 * file, not loadable, no loom_plugin entry point, built against another
 * loom, init failed). Loading a file again does nothing. Plugins stay
 * loaded until the process ends (their components are registered). Not
 * thread-safe, as the registry is not: load plugins before building. */
LOOM_API int loom_plugin_load(const char *path);

#ifdef __cplusplus
}
#endif
#endif
