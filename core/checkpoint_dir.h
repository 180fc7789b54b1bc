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
 *   manifest.json           {"files": {name: {"crc32": n, ...}}, "ranking": [...]}
 * A file whose CRC-32 differs from the manifest's is damaged. */

#define LOOM_CHECKPOINT_SUBDIR "checkpoints"
#define LOOM_MANIFEST "manifest.json"

/* <logdir>/checkpoints */
int loom_checkpoint_dir(const char *logdir, char *out, size_t size);
/* The manifest (a new empty one if there is none); NULL on a damaged one. */
json_t *loom_manifest_load(const char *dir);
/* Written atomically. */
int loom_manifest_save(const char *dir, const json_t *manifest);

/* Opens the newest good checkpoint for `which` ("last" or "best"): checks
 * each candidate's CRC against the manifest and its content checksum, and
 * falls back (last.h5 -> last.prev.h5; best.h5 -> the ranked files in
 * order). `path` receives the file used, `notice` what was skipped. */
loom_checkpoint *loom_checkpoint_dir_open(const char *logdir, const char *which, char *path, size_t path_size,
                                          char *notice, size_t notice_size);

#endif
