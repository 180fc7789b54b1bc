#ifndef LOOM_CORE_CHECKPOINT_DIR_H
#define LOOM_CORE_CHECKPOINT_DIR_H

#include <jansson.h>
#include <stddef.h>

#include "loom/state.h"

/* The layout of <logdir>/checkpoints, shared by the checkpoint callback
 * (which writes it) and the runner (which resumes from it):
 *   last.h5, last.prev.h5   the newest resumable state and the one before
 *   best.h5                 the best so far (a hard link to a ranked file)
 *   epoch_NNNN.h5           the best K, by the monitored metric
 *   manifest.json           {"files": {name: {"crc32": [n], ...}}, "ranking": [...]}
 * A file whose CRC-32 differs from the manifest's is damaged. */

#define LOOM_CHECKPOINT_SUBDIR "checkpoints"
#define LOOM_MANIFEST "manifest.json"

/* The two halves of loom_checkpoint_write: a complete, fsynced temporary
 * file next to `path` (its name in tmp), then the rename and the fsync of
 * the directory. Between them a caller can record the new file's CRC. */
int loom_checkpoint_write_temp(const loom_checkpoint *c, const char *path, char *tmp, size_t tmp_size);
int loom_checkpoint_commit(const char *tmp, const char *path);

/* The CRCs the manifest accepts for `name` (an array, normally of one; two
 * while a file is being replaced, so a crash at any moment leaves a file the
 * manifest accepts). */
json_t *loom_manifest_crcs(const json_t *manifest, const char *name);

/* <logdir>/checkpoints */
int loom_checkpoint_dir(const char *logdir, char *out, size_t size);
/* Removes the temporary files (NAME.tmp.PID) another process left in the
 * checkpoint directory `dir`: a run killed while writing. Only for the
 * holder of the logdir's lock (no other run writes there). */
int loom_checkpoint_dir_sweep(const char *dir);
/* An empty manifest. */
json_t *loom_manifest_new(void);
/* The manifest (a new empty one if there is none); NULL on a damaged one. */
json_t *loom_manifest_load(const char *dir);
/* Written atomically. */
int loom_manifest_save(const char *dir, const json_t *manifest);

#endif
