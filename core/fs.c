#include "core/array.h"
#include "core/fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

int loom_path_join(char *out, size_t size, const char *dir, const char *name) {
  int n = snprintf(out, size, "%s/%s", dir, name);
  if (n < 0 || (size_t)n >= size)
    return loom_error_set(LOOM_EINVAL, "path \"%s/%s\" is too long", dir, name);
  return 0;
}
