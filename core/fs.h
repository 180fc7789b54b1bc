#ifndef LOOM_CORE_FS_H
#define LOOM_CORE_FS_H

#include <stddef.h>

/* Creates `path` and its parents (mkdir -p). */
int loom_mkdir_p(const char *path);
/* An error if `path` is a directory where a data file of `kind` ("IDX",
 * "CSV", "HDF5") is expected (readers would report it as a damaged file);
 * 0 otherwise, a missing path included (the reader reports that). */
int loom_refuse_directory(const char *path, const char *kind);
/* out = dir + "/" + name; an error if it does not fit. */
int loom_path_join(char *out, size_t size, const char *dir, const char *name);

#endif
