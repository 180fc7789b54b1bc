/* loom/config.h - experiments described in JSON.
 *
 * A config is parsed with jansson and indexed so that every key and value
 * has a line and column. Everything is checked: an unknown key (with "did
 * you mean"), a duplicate key, a wrong type, a value out of range, a missing
 * file, a name that resolves to nothing. Errors read
 *   config.json:14:9: stages.train.optimizer.lrr: unknown key (did you mean "lr"?)
 * Keys set with --set report "--set KEY=VALUE" instead of a position.
 * docs/config.md lists every key. */
#ifndef LOOM_CONFIG_H
#define LOOM_CONFIG_H

#include "loom/api.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "loom/comm_mpi.h"
#include "loom/experiment.h"
#include "loom/runner.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_config loom_config;
typedef struct loom_params loom_params;

/* The largest config loom reads (16 MiB): a larger file is refused before
 * it is read or parsed. JSON nests at most 2048 levels (jansson's limit). */
#define LOOM_CONFIG_MAX_BYTES (16 << 20)

/* Parses a file; NULL with "FILE:LINE:COL: ..." on a syntax error. */
LOOM_API loom_config *loom_config_load(const char *path);
/* Parses text; `name` stands for the file in messages. */
LOOM_API loom_config *loom_config_parse(const char *text, const char *name);
LOOM_API void loom_config_destroy(loom_config *config);

/* Overrides one key: "stages.train.num_epochs=3". The value is read as the
 * type the key has (or, for a new key, as JSON if it parses, else as a
 * string; a string may be quoted as JSON); objects on the way are created.
 * "KEY[+]=VALUE" appends to the list at KEY (created if absent), typed as
 * its items. Later errors about what it set or created name the --set. */
LOOM_API int loom_config_set(loom_config *config, const char *assignment);

/* Loads a plugin (loom_plugin_load: `path` relative to the working
 * directory) and adds its absolute path to the config's "plugins", so that
 * the resolved config loads it too. */
LOOM_API int loom_config_add_plugin(loom_config *config, const char *path);

/* Checks everything and builds the experiment (the config's "plugins"
 * loaded first, datasets loaded, model built, every component
 * constructed). Defaults are filled into the
 * config, and a missing seed is drawn from the clock, so afterwards
 * loom_config_write gives the resolved config that reproduces the run. */
LOOM_API int loom_config_build(loom_config *config, loom_experiment **experiment);
/* Checks the config as loom_config_build does, but reads no data and
 * allocates no model: every key, type and range, every registered name,
 * every reference between sections (a loader's dataset, a stage's loaders,
 * frozen and optimizer layer names), the model's layers and whether it
 * fits in memory, its parameters counted, not allocated (loom_model_plan).
 * No dataset file is opened, no experiment is kept, nothing is written,
 * and the config is left as it was (no defaults filled in); the config's
 * "plugins" are loaded. Left to loom_config_build, since only the data can
 * tell: that the datasets' files exist and read, that the model's inputs
 * match the samples (an mlp's sizes[0]) and, for a sequential model, the
 * layers' shapes; its size then counts the layers whose sizes the config
 * gives (a Linear's in_features, a Conv2d's in_channels). A model
 * constructor gets a context of ndim 0 (loom/registry.h). An error reads
 * as loom_config_build's for the same key. */
LOOM_API int loom_config_validate(loom_config *config);

/* The backend a device name stands for, as experiment.device reads it:
 * "cpu" (*out NULL: host memory, nothing to open), "cuda", "cuda:1", or a
 * backend a plugin registered, "NAME[:INDEX]". Otherwise *out is a new
 * backend the caller owns (loom_experiment_own_backend, or
 * loom_backend_destroy after its last buffer is freed); an error names
 * what is missing (no CUDA driver, no device, an index past the devices,
 * an unknown name). For C programs' --device options. */
LOOM_API int loom_device_open(const char *device, loom_backend **out);
/* Writes the (resolved) config as indented JSON, creating the file's
 * directory if needed. */
LOOM_API int loom_config_write(const loom_config *config, const char *path);
/* Records what a run runs, from its on_experiment_start (after a resume
 * was opened): <logdir>/config.json (the resolved config with the seed the
 * run uses: a resume's is the checkpoint's) and a line appended to
 * <logdir>/config_history.jsonl: {"time", "resumed_from" (the checkpoint,
 * or null), "changes" (the config changes the resume accepted:
 * loom_runner_config_changes)}. */
LOOM_API int loom_config_record_run(loom_config *config, const loom_runner *runner);
/* The config's "distributed" ("auto", the default, "local" or "mpi"), once
 * loom_config_build has read it: the communicator the loom command opens
 * (loom_comm_for_dist) unless --dist says otherwise. */
LOOM_API loom_dist loom_config_distributed(const loom_config *config);
/* Reduces the config to a learning-rate sweep of one stage, what `loom
 * tune lr` runs (call it before loom_config_build, add a
 * loom_lr_finder_callback to the one stage left): `stage` (NULL: the
 * first) with the criterion and optimizer it would run with (inherited
 * from an earlier stage if it sets none), its train loaders only, `steps`
 * epochs (the finder ends the stage when its sweep is done), and of its
 * callbacks only the "optimizer" ones (accumulation, clipping); its
 * scheduler, load_weights and main-metric keys and every other stage are
 * dropped. An unknown stage is an error naming the config's stages. */
LOOM_API int loom_config_lr_sweep(loom_config *config, const char *stage, int64_t steps);
/* The document (borrowed). */
LOOM_API const char *loom_config_name(const loom_config *config);

/* --- what a build made (loom predict, loom export) ---
 * After loom_config_build: the loaders the config defines, by name, in the
 * config's order. A loader a stage runs belongs to the experiment (valid
 * while it lives); one no stage runs (an infer* loader kept for
 * predictions, say) is kept by the config until it is destroyed or built
 * again. The model is the experiment's. NULL / 0 before a build. */
LOOM_API size_t loom_config_num_loaders(const loom_config *config);
LOOM_API const char *loom_config_loader_name(const loom_config *config, size_t i);
LOOM_API loom_loader *loom_config_loader(const loom_config *config, const char *name);
LOOM_API loom_model *loom_config_model(const loom_config *config);
/* Before loom_config_build: adds the dataset and loader `name` (a name
 * starting with "infer") that read `path`, an HDF5 (.h5, .hdf5) or CSV
 * (.csv) file relative to the working directory, prepared as the config's
 * first infer* loader (else valid*, else the first) prepares its samples:
 * its batch size and transforms, and its dataset's keys (inputs, scale,
 * header, ...) when that dataset has the file's type; an HDF5 file in place
 * of an IDX dataset (idx, fashion_mnist) gets scale 1/255, as the IDX
 * dataset reads the bytes loom convert idx copies. Labels are not read:
 * an HDF5 file needs only its inputs, and every CSV column is a feature. */
LOOM_API int loom_config_add_dataset_file(loom_config *config, const char *path, const char *name);

/* --- reading parameters (for component constructors) ---
 * Each getter reads one key of the component's object. A key absent from
 * the config takes the default, which is written back (the resolved config
 * shows it). Keys no getter asked for are reported as unknown, with the
 * nearest asked-for key as "did you mean". Errors carry the position. */
#define LOOM_REQUIRED_INT INT64_MIN

LOOM_API int loom_params_int(loom_params *p, const char *key, int64_t def, int64_t min, int64_t max, int64_t *out);
/* def NAN: required. */
LOOM_API int loom_params_number(loom_params *p, const char *key, double def, double min, double max, double *out);
LOOM_API int loom_params_bool(loom_params *p, const char *key, bool def, bool *out);
/* def NULL: required. *out is borrowed from the config. */
LOOM_API int loom_params_string(loom_params *p, const char *key, const char *def, const char **out);
/* One of `choices` (NULL-terminated); def NULL: required. *index its position. */
LOOM_API int loom_params_choice(loom_params *p, const char *key, const char *def, const char *const *choices, int *index);
/* An array of integers / numbers (at most max); def may be NULL (required). */
LOOM_API int loom_params_int_array(loom_params *p, const char *key, const int64_t *def, size_t def_n, int64_t min, int64_t max,
                          int64_t *out, size_t out_max, size_t *n);
LOOM_API int loom_params_number_array(loom_params *p, const char *key, const double *def, size_t def_n, double *out,
                             size_t out_max, size_t *n);
/* A file path (def NULL: required), relative to the config file's
 * directory unless absolute. The absolute path is written back, so the
 * resolved config works from any directory; *out is borrowed from the
 * config. The file need not exist: the reader reports that, and a
 * constructor reports a reader's error at the key with loom_params_error. */
LOOM_API int loom_params_file(loom_params *p, const char *key, const char *def, const char **out);
/* Whether the component's object has `key` (counts as asking for it). */
LOOM_API bool loom_params_has(loom_params *p, const char *key);
/* Whether `key` holds an array (counts as asking for it): for keys that
 * take one value or one per channel. */
LOOM_API bool loom_params_is_array(loom_params *p, const char *key);
/* The number of items of the array at `key`; absent: an error if required,
 * else 0. Items are read with keys "key[i]" (every getter takes them). */
LOOM_API int loom_params_array_length(loom_params *p, const char *key, bool required, size_t *n);
/* The non-empty array of non-empty strings at `key`: *names[0, *n) borrow
 * the config's strings, the array is the caller's to free(). Absent: an
 * error if required, else *names NULL and *n 0. */
LOOM_API int loom_params_strings(loom_params *p, const char *key, bool required, const char ***names, size_t *n);

/* --- nested objects ---
 * The object at `key` ("optimizer", or an array item: "layers[2]") read
 * with the same getters; its errors carry its own path and position
 * ("model.layers[2].out_features"). *child is NULL if the key is absent
 * (an error if required). Check its keys with loom_params_check_unknown
 * and free it with loom_params_close, also after a failure. Nested
 * components of a registered kind: loom_params_build (loom/registry.h). */
LOOM_API int loom_params_open(loom_params *p, const char *key, bool required, loom_params **child);
/* Reports the first key of p's object that no getter asked for, with the
 * nearest asked-for key as "did you mean". */
LOOM_API int loom_params_check_unknown(const loom_params *p);
LOOM_API void loom_params_close(loom_params *child);
/* Reports an error about `key` (NULL: the object itself) at its position. */
LOOM_API int loom_params_error(const loom_params *p, const char *key, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* "stages.train.optimizer" */
LOOM_API const char *loom_params_path(const loom_params *p);
/* The directory of the config file, for resolving relative paths. */
LOOM_API const char *loom_params_base_dir(const loom_params *p);

#ifdef __cplusplus
}
#endif
#endif
