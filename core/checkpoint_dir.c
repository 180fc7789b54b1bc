#include "core/checkpoint_dir.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/fs.h"

int loom_checkpoint_dir(const char *logdir, char *out, size_t size) {
  return loom_path_join(out, size, logdir, LOOM_CHECKPOINT_SUBDIR);
}

/* "NAME.tmp.PID", the temporaries of checkpoint_write_temp, the link
 * moves and the manifest; their PID in *pid. */
static bool temp_name(const char *name, long *pid) {
  const char *t = strstr(name, ".tmp.");
  if (!t || !t[5])
    return false;
  char *end;
  *pid = strtol(t + 5, &end, 10);
  return *end == '\0' && *pid > 0;
}

int loom_checkpoint_dir_sweep(const char *dir) {
  DIR *d = opendir(dir);
  if (!d)
    return errno == ENOENT ? 0 : loom_error_set(LOOM_EIO, "cannot list %s: %s", dir, strerror(errno));
  int rc = 0;
  long pid;
  for (struct dirent *e; rc == 0 && (e = readdir(d));) {
    char path[4096];
    if (!temp_name(e->d_name, &pid) || pid == (long)getpid())
      continue;
    if (loom_path_join(path, sizeof path, dir, e->d_name) == 0 && unlink(path) < 0 && errno != ENOENT)
      rc = loom_error_set(LOOM_EIO, "cannot remove %s, left by a run that was killed: %s", path, strerror(errno));
  }
  closedir(d);
  return rc;
}

json_t *loom_manifest_new(void) { return json_pack("{s:i, s:{}, s:[]}", "format", 1, "files", "ranking"); }

json_t *loom_manifest_load(const char *dir) {
  char path[4096];
  if (loom_path_join(path, sizeof path, dir, LOOM_MANIFEST) < 0)
    return NULL;
  if (access(path, F_OK) < 0) {
    json_t *m = loom_manifest_new();
    if (!m)
      loom_error_oom("a checkpoint manifest");
    return m;
  }
  json_error_t err;
  json_t *m = json_load_file(path, 0, &err);
  if (!m && json_error_code(&err) == json_error_out_of_memory) {
    loom_error_oom("reading the checkpoint manifest");
    return NULL;
  }
  if (!m || !json_is_object(json_object_get(m, "files")) || !json_is_array(json_object_get(m, "ranking"))) {
    json_decref(m);
    loom_error_set(LOOM_EFORMAT, "%s is damaged (%s at line %d); delete it to start the ranking afresh", path,
                   m ? "missing files or ranking" : err.text, err.line);
    return NULL;
  }
  return m;
}

int loom_manifest_save(const char *dir, const json_t *manifest) {
  char path[4096], tmp[4200];
  int rc = loom_path_join(path, sizeof path, dir, LOOM_MANIFEST);
  if (rc < 0)
    return rc;
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  if (json_dump_file(manifest, tmp, JSON_INDENT(2) | JSON_REAL_PRECISION(17)) < 0)
    return loom_error_set(errno == ENOMEM ? LOOM_ENOMEM : LOOM_EIO, "cannot write %s: %s", tmp, strerror(errno));
  int fd = open(tmp, O_RDONLY);
  if (fd < 0 || fsync(fd) < 0 || rename(tmp, path) < 0) {
    rc = loom_error_set(LOOM_EIO, "cannot replace %s: %s", path, strerror(errno));
    unlink(tmp);
  }
  if (fd >= 0)
    close(fd);
  return rc;
}

json_t *loom_manifest_crcs(const json_t *manifest, const char *name) {
  json_t *crcs = json_object_get(json_object_get(json_object_get(manifest, "files"), name), "crc32");
  return json_is_array(crcs) ? crcs : NULL;
}

/* Reads `name` in dir if its CRC is one the manifest accepts (when listed). */
static loom_checkpoint *try_open(const char *dir, const json_t *manifest, const char *name, char *path,
                                 size_t path_size) {
  if (loom_path_join(path, path_size, dir, name) < 0)
    return NULL;
  json_t *want = manifest ? loom_manifest_crcs(manifest, name) : NULL;
  if (want) {
    uint32_t crc;
    if (loom_file_crc32(path, &crc) < 0)
      return NULL;
    bool listed = false;
    size_t i;
    json_t *v;
    json_array_foreach(want, i, v) listed = listed || json_integer_value(v) == (json_int_t)crc;
    if (!listed) {
      loom_error_set(LOOM_EFORMAT, "%s fails its checksum (file %08x, not among the manifest's): the file is "
                                   "damaged",
                     path, crc);
      return NULL;
    }
  }
  return loom_checkpoint_read(path);
}

loom_checkpoint *loom_checkpoint_open_logdir(const char *logdir, const char *which, char *path, size_t path_size,
                                          char *notice, size_t notice_size) {
  char dir[4096];
  notice[0] = '\0';
  if (loom_checkpoint_dir(logdir, dir, sizeof dir) < 0)
    return NULL;
  json_t *manifest = loom_manifest_load(dir); /* a damaged manifest only loses the CRC check */
  const char *candidates[16];
  size_t n = 0;
  if (strcmp(which, "last") == 0) {
    candidates[n++] = "last.h5";
    candidates[n++] = "last.prev.h5";
  } else {
    candidates[n++] = "best.h5";
    size_t i;
    json_t *entry;
    json_array_foreach(json_object_get(manifest, "ranking"), i, entry) {
      json_t *file = json_object_get(entry, "file");
      if (n < 16 && json_is_string(file))
        candidates[n++] = json_string_value(file);
    }
  }
  loom_checkpoint *c = NULL;
  char first_error[LOOM_ERROR_MAX] = "";
  bool oom = false; /* a file that could not be read for want of memory is not unusable */
  for (size_t i = 0; i < n && !c; i++) {
    c = try_open(dir, manifest, candidates[i], path, path_size);
    oom = oom || (!c && loom_last_error_code() == LOOM_ENOMEM);
    if (!c && !first_error[0])
      snprintf(first_error, sizeof first_error, "%s", loom_last_error());
    if (c && i > 0)
      snprintf(notice, notice_size, "%.700s; resumed from %.200s instead", first_error, candidates[i]);
  }
  json_decref(manifest);
  if (!c)
    loom_error_set(oom ? LOOM_ENOMEM : LOOM_ENOENT, "no usable \"%s\" checkpoint in %s (%s)", which, dir,
                   first_error[0] ? first_error : "none written");
  return c;
}
