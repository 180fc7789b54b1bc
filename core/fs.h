#ifndef LOOM_CORE_FS_H
#define LOOM_CORE_FS_H

#include <stddef.h>

/* Creates `path` and its parents (mkdir -p). */
int loom_mkdir_p(const char *path);
/* out = dir + "/" + name; an error if it does not fit. */
int loom_path_join(char *out, size_t size, const char *dir, const char *name);

#endif
