#ifndef LOOM_LOADERS_IDX_INTERNAL_H
#define LOOM_LOADERS_IDX_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "loom/tensor.h"

/* An unsigned-byte IDX file read whole. */
typedef struct idx_array {
  int ndim;
  int64_t dims[LOOM_MAX_DIMS];
  int64_t count; /* elements */
  uint8_t *bytes;
} idx_array;

/* Reads `path` (gzip'd or plain), which must have `want_ndim` dimensions. */
int loom_idx_read(const char *path, int want_ndim, idx_array *a);
/* The same from an IDX file's bytes in memory; `name` stands for it in messages. */
int loom_idx_read_memory(const void *bytes, size_t size, const char *name, int want_ndim, idx_array *a);

#endif
