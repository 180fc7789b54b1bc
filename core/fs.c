/* nftw is XSI. */
#define _XOPEN_SOURCE 700
#include "core/array.h"
#include "core/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error_internal.h"

int loom_array_reserve(void **items, size_t *cap, size_t need, size_t size, const char *what) {
  if (need <= *cap)
    return 0;
  size_t n = *cap ? *cap : 4;
  while (n < need)
    n *= 2;
  void *grown = realloc(*items, n * size);
  if (!grown)
    return loom_error_oom(what);
  *items = grown;
  *cap = n;
  return 0;
}

int loom_refuse_directory(const char *path, const char *kind) {
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return loom_error_set(LOOM_EINVAL, "%s is a directory; give the %s file in it", path, kind);
  return 0;
}

int loom_mkdir_p(const char *path) {
  char buf[4096];
  size_t len = strlen(path);
  if (len == 0 || len >= sizeof buf)
    return loom_error_set(LOOM_EINVAL, "cannot create directory \"%s\": empty or too long a path", path);
  memcpy(buf, path, len + 1);
  for (char *p = buf + 1; ; p++) {
    if (*p != '/' && *p != '\0')
      continue;
    char saved = *p;
    *p = '\0';
    if (mkdir(buf, 0777) < 0 && errno != EEXIST)
      return loom_error_set(LOOM_EIO, "cannot create directory \"%s\": %s; check the path and its permissions",
                            buf, strerror(errno));
    *p = saved;
    if (saved == '\0')
      break;
  }
  struct stat st;
  if (stat(path, &st) < 0 || !S_ISDIR(st.st_mode))
    return loom_error_set(LOOM_EIO, "\"%s\" exists but is not a directory; choose another path", path);
  return 0;
}

/* The pid a lock file holds (0 if none). */
static long lock_pid(int fd) {
  char text[32] = {0};
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  return n > 0 ? strtol(text, NULL, 10) : 0;
}

int loom_dir_lock(const char *dir, int *fd, long *stale_pid) {
  char path[4200];
  *stale_pid = 0;
  int rc = loom_mkdir_p(dir);
  if (rc == 0)
    rc = loom_path_join(path, sizeof path, dir, ".lock");
  if (rc < 0)
    return rc;
  int f = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (f < 0)
    return loom_error_set(LOOM_EIO, "cannot create the logdir's lock %s: %s; check the path and its permissions", path,
                          strerror(errno));
  if (flock(f, LOCK_EX | LOCK_NB) < 0) {
    int e = errno;
    long holder = lock_pid(f);
    close(f);
    if (e == EWOULDBLOCK)
      return loom_error_set(LOOM_EBUSY, "the logdir %s is in use by another run (pid %ld, lock %s); wait for it to "
                                        "end or give this run another logdir",
                            dir, holder, path);
    return loom_error_set(LOOM_EIO, "cannot lock %s: %s", path, strerror(e));
  }
  long old = lock_pid(f);
  if (old > 0 && old != (long)getpid() && kill((pid_t)old, 0) < 0 && errno == ESRCH)
    *stale_pid = old;
  char text[32];
  int len = snprintf(text, sizeof text, "%ld\n", (long)getpid());
  if (ftruncate(f, 0) < 0 || pwrite(f, text, (size_t)len, 0) != len) {
    int e = errno;
    close(f);
    return loom_error_set(LOOM_EIO, "cannot write the logdir's lock %s: %s", path, strerror(e));
  }
  *fd = f;
  return 0;
}

/* The file stays, emptied: removing it would let a run that opened it just
 * before lock the removed file while a third locks a new one. */
void loom_dir_unlock(int fd) {
  if (ftruncate(fd, 0) < 0) {
    /* a pid left behind reads as a stale lock next time: harmless */
  }
  close(fd);
}

int loom_path_join(char *out, size_t size, const char *dir, const char *name) {
  int n = snprintf(out, size, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= size)
    return loom_error_set(LOOM_EINVAL, "path \"%s/%s\" is too long", dir, name);
  return 0;
}

static int remove_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)ftw;
  return (flag == FTW_DP ? rmdir(path) : unlink(path)) < 0 && errno != ENOENT ? -1 : 0;
}

int loom_remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) < 0)
    return errno == ENOENT ? 0 : loom_error_set(LOOM_EIO, "cannot remove %s: %s", path, strerror(errno));
  int rc = S_ISDIR(st.st_mode) ? nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS) : unlink(path);
  if (rc != 0)
    return loom_error_set(LOOM_EIO, "cannot remove %s: %s; check its permissions", path, strerror(errno));
  return 0;
}

int loom_write_file_durable(const char *path, const void *data, size_t size) {
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0666);
  if (fd < 0)
    return -1;
  for (size_t done = 0; done < size;) {
    ssize_t w = write(fd, (const char *)data + done, size - done);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0) {
      int err = errno;
      close(fd);
      errno = err;
      return -1;
    }
    done += (size_t)w;
  }
  if (fsync(fd) < 0) {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return close(fd);
}
