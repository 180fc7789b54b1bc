#ifndef LOOM_CORE_FS_H
#define LOOM_CORE_FS_H

#include <stddef.h>

/* Creates `path` and its parents (mkdir -p). */
int loom_mkdir_p(const char *path);
/* An error if `path` is a directory where a data file of `kind` ("IDX",
 * "CSV", "HDF5") is expected (readers would report it as a damaged file);
 * 0 otherwise, a missing path included (the reader reports that). */
int loom_refuse_directory(const char *path, const char *kind);
/* Takes DIR/.lock (creating DIR): flock'd, holding this process's pid, so
 * two runs cannot write one logdir; the kernel drops the lock of a crashed
 * run. *fd gets the lock's descriptor (loom_dir_unlock releases it); a
 * lock file left holding the pid of a process that no longer runs sets
 * *stale_pid (else 0). LOOM_EBUSY naming the holder's pid if it is held. */
int loom_dir_lock(const char *dir, int *fd, long *stale_pid);
void loom_dir_unlock(int fd);
/* Removes `path`: a file, or a directory and everything under it (rm -rf,
 * symbolic links removed, not followed). A missing path is not an error. */
int loom_remove_tree(const char *path);
/* Writes `size` bytes to `path` (created or truncated) and fsyncs it; -1
 * with errno on failure (a short write is continued, not an error). */
int loom_write_file_durable(const char *path, const void *data, size_t size);
/* out = dir + "/" + name; an error if it does not fit. */
int loom_path_join(char *out, size_t size, const char *dir, const char *name);

#endif
