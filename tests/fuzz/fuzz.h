/* Shared by the fuzz targets (docs/reliability.md, "Fuzzing"): each target
 * is one LLVMFuzzerTestOneInput, linked either with libFuzzer (-DLOOM_FUZZ=ON,
 * clang) or with replay.c, a plain main that feeds it every file of its
 * corpus (the fuzz_replay_* tests of the normal build).
 *
 * The contract every target checks: an input either succeeds or fails with
 * a LOOM_E* code and a message; anything else (a crash, a leak, undefined
 * behaviour, an error without a message) aborts. */
#ifndef LOOM_TESTS_FUZZ_H
#define LOOM_TESTS_FUZZ_H

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loom/error.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A failure must be a loom error with a message. */
static inline void fuzz_expect_clean_error(int rc) {
  if (rc >= 0)
    return;
  if (strcmp(loom_err_name(rc), "LOOM_UNKNOWN") == 0 || !loom_last_error()[0]) {
    fprintf(stderr, "fuzz: error %d without a loom code or message (\"%s\")\n", rc, loom_last_error());
    abort();
  }
}

/* The same for a constructor that returned NULL. */
static inline void fuzz_expect_clean_null(void) {
  int rc = loom_last_error_code();
  fuzz_expect_clean_error(rc < 0 ? rc : -1000);
}

static char fuzz_scratch_dir[256];

static inline int fuzz_remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st, (void)flag, (void)ftw;
  return remove(path);
}

/* Removes everything under `dir`, and `dir` itself. */
static inline void fuzz_remove_tree(const char *dir) { nftw(dir, fuzz_remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static inline void fuzz_remove_scratch(void) { fuzz_remove_tree(fuzz_scratch_dir); }

/* The process's scratch directory (files the targets write: the readers
 * take paths), removed at exit. Under /dev/shm when it exists, so it costs
 * no disk. */
static inline const char *fuzz_scratch(void) {
  char *dir = fuzz_scratch_dir;
  if (!dir[0]) {
    const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : (getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    snprintf(dir, sizeof fuzz_scratch_dir, "%s/loom-fuzz-XXXXXX", base);
    if (!mkdtemp(dir))
      abort();
    atexit(fuzz_remove_scratch);
  }
  return dir;
}

/* Writes `data` to <scratch>/<name>; `path` gets the file's path. */
static inline void fuzz_write(const char *name, const void *data, size_t n, char *path, size_t path_size) {
  snprintf(path, path_size, "%s/%s", fuzz_scratch(), name);
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(data, 1, n, f) != n) || fclose(f) != 0)
    abort();
}

/* The input read front to back; past its end every read gives zeros. */
typedef struct fuzz_bytes {
  const uint8_t *p;
  size_t n;
} fuzz_bytes;

static inline uint8_t fuzz_u8(fuzz_bytes *b) {
  if (!b->n)
    return 0;
  b->n--;
  return *b->p++;
}

static inline uint32_t fuzz_u32(fuzz_bytes *b) {
  uint32_t v = 0;
  for (int i = 0; i < 4; i++)
    v |= (uint32_t)fuzz_u8(b) << (8 * i);
  return v;
}

static inline uint64_t fuzz_u64(fuzz_bytes *b) { return fuzz_u32(b) | (uint64_t)fuzz_u32(b) << 32; }

/* Up to `max` bytes as a NUL-terminated string (the caller frees it). */
static inline char *fuzz_str(fuzz_bytes *b, size_t max) {
  size_t n = fuzz_u8(b) % (max + 1);
  if (n > b->n)
    n = b->n;
  char *s = malloc(n + 1);
  memcpy(s, b->p, n);
  s[n] = '\0';
  b->p += n, b->n -= n;
  return s;
}

#endif
