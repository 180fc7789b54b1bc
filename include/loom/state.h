/* loom/state.h - saved state: typed key/value records and checkpoints.
 *
 * A loom_state is one component's state: integers, doubles, strings and
 * arrays under names. A checkpoint is a set of named states ("model",
 * "optimizer", "runner", "callbacks/<name>", ...) written to one HDF5 file:
 * each state a group, scalars its attributes, arrays its datasets. Files are
 * written atomically (temp file, fsync, rename, fsync of the directory) and
 * carry a CRC-32 of their content that loom_checkpoint_read verifies, and a
 * CRC-32 of the file's bytes in an HDF5 user block (the first 512 bytes),
 * verified before HDF5 parses anything (docs/reliability.md). */
#ifndef LOOM_STATE_H
#define LOOM_STATE_H

#include "loom/api.h"


#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_state loom_state;
typedef struct loom_checkpoint loom_checkpoint;

typedef enum loom_value_type {
  LOOM_VALUE_I64,
  LOOM_VALUE_F64,
  LOOM_VALUE_STR,
  LOOM_VALUE_F32_ARRAY,
  LOOM_VALUE_F64_ARRAY,
  LOOM_VALUE_I64_ARRAY,
} loom_value_type;

LOOM_API loom_state *loom_state_create(void);
LOOM_API void loom_state_destroy(loom_state *s);

/* Setters copy their values; setting a key again replaces it. */
LOOM_API int loom_state_set_i64(loom_state *s, const char *key, int64_t value);
LOOM_API int loom_state_set_f64(loom_state *s, const char *key, double value);
LOOM_API int loom_state_set_str(loom_state *s, const char *key, const char *value);
LOOM_API int loom_state_set_f32_array(loom_state *s, const char *key, const float *values, size_t n);
LOOM_API int loom_state_set_f64_array(loom_state *s, const char *key, const double *values, size_t n);
LOOM_API int loom_state_set_i64_array(loom_state *s, const char *key, const int64_t *values, size_t n);

/* Getters fail with LOOM_ENOENT for a missing key and LOOM_EFORMAT for a
 * value of another type or (arrays) another length, naming the key. */
LOOM_API int loom_state_get_i64(const loom_state *s, const char *key, int64_t *value);
LOOM_API int loom_state_get_f64(const loom_state *s, const char *key, double *value);
/* Borrowed; valid while the state lives. */
LOOM_API int loom_state_get_str(const loom_state *s, const char *key, const char **value);
LOOM_API int loom_state_get_f32_array(const loom_state *s, const char *key, float *out, size_t n);
LOOM_API int loom_state_get_f64_array(const loom_state *s, const char *key, double *out, size_t n);
LOOM_API int loom_state_get_i64_array(const loom_state *s, const char *key, int64_t *out, size_t n);
/* Length of an array value (0 if missing or not an array). */
LOOM_API size_t loom_state_array_length(const loom_state *s, const char *key);
LOOM_API bool loom_state_has(const loom_state *s, const char *key);
LOOM_API size_t loom_state_count(const loom_state *s);
LOOM_API const char *loom_state_key(const loom_state *s, size_t i);
LOOM_API loom_value_type loom_state_type(const loom_state *s, size_t i);

LOOM_API loom_checkpoint *loom_checkpoint_create(void);
LOOM_API void loom_checkpoint_destroy(loom_checkpoint *c);
/* The state named `group` ("model", "callbacks/early_stopping"), created
 * empty if absent. NULL on allocation failure. */
LOOM_API loom_state *loom_checkpoint_group(loom_checkpoint *c, const char *group);
/* The state named `group`, or NULL if the checkpoint has none. */
LOOM_API const loom_state *loom_checkpoint_find(const loom_checkpoint *c, const char *group);
/* A deep copy; NULL on allocation failure. */
LOOM_API loom_checkpoint *loom_checkpoint_copy(const loom_checkpoint *c);
LOOM_API size_t loom_checkpoint_num_groups(const loom_checkpoint *c);
LOOM_API const char *loom_checkpoint_group_name(const loom_checkpoint *c, size_t i);

/* Writes `path` atomically: a crash at any moment leaves either the old
 * file or the new one, never a broken one. */
LOOM_API int loom_checkpoint_write(const loom_checkpoint *c, const char *path);
/* Reads and verifies a checkpoint: a file that is not a loom checkpoint, is
 * truncated, or fails its file or content checksum is refused with
 * LOOM_EFORMAT. The file's bytes are checked before libhdf5 parses them;
 * files from before the user block (plain HDF5) load with the content
 * checksum alone. */
LOOM_API loom_checkpoint *loom_checkpoint_read(const char *path);
/* The same for a checkpoint file's bytes already in memory (`name` stands
 * for the file in messages); nothing is read from disk. */
LOOM_API loom_checkpoint *loom_checkpoint_read_memory(const void *bytes, size_t size, const char *name);
/* The bytes loom_checkpoint_write would write (user block and checksums
 * included), built in memory; nothing touches the disk. *bytes is the
 * caller's to free(). */
LOOM_API int loom_checkpoint_write_memory(const loom_checkpoint *c, void **bytes, size_t *size);
/* Opens the newest good checkpoint of a run: `which` is "last" or "best"
 * in <logdir>/checkpoints. Each candidate is checked against the manifest's
 * CRC-32 and its own content checksum, falling back from last.h5 to
 * last.prev.h5, and from best.h5 down the ranking. `path` receives the file
 * used and `notice` what was passed over ("" if nothing). */
LOOM_API loom_checkpoint *loom_checkpoint_open_logdir(const char *logdir, const char *which, char *path, size_t path_size,
                                             char *notice, size_t notice_size);
/* CRC-32 of a whole file's bytes (for manifests); 0 and an error if it
 * cannot be read. */
LOOM_API int loom_file_crc32(const char *path, uint32_t *crc);

#ifdef __cplusplus
}
#endif
#endif
