#ifndef LOOM_CONFIG_CONFIG_INTERNAL_H
#define LOOM_CONFIG_CONFIG_INTERNAL_H

#include <jansson.h>

#include "loom/config.h"
#include "loom/registry.h"

/* Where a value (and, inside an object, its key) stands in the text. */
typedef struct loom_pos {
  char *path;
  int line, col;         /* the value */
  int key_line, key_col; /* its key; 0 for array items and the root */
} loom_pos;

typedef struct loom_pos_index {
  loom_pos *items;
  size_t n, cap;
} loom_pos_index;

/* Indexes valid JSON text (jansson has accepted it). */
int loom_pos_index_build(loom_pos_index *idx, const char *text);
const loom_pos *loom_pos_find(const loom_pos_index *idx, const char *path);
void loom_pos_index_free(loom_pos_index *idx);

typedef struct loom_override {
  char *path, *assignment;
  char *created; /* the first key the --set created (errors there are its), or NULL */
} loom_override;

/* A loader the last loom_config_build made (config_built.c). */
typedef struct loom_built_loader {
  char *name;
  loom_loader *loader;
  bool owned; /* no stage runs it: the config keeps it */
} loom_built_loader;

struct loom_config {
  char *name;     /* the file as given */
  char *base_dir; /* its directory */
  json_t *root;
  loom_pos_index index;
  loom_override *overrides;
  size_t num_overrides, cap_overrides;
  loom_dist distributed; /* "distributed", once built */
  /* What the last build made: every loader by name, and the model (the
   * experiment's, borrowed). */
  loom_built_loader *built_loaders;
  size_t num_built_loaders;
  loom_model *built_model;
  /* While loom_config_validate runs: the dataset every built-in dataset
   * constructor gives instead of opening its files (no samples, shape
   * unknown). NULL otherwise. */
  loom_dataset *unread;
};

/* config_built.c: records a loader the build made (owned: no stage runs
 * it, the config keeps it; else borrowed from the experiment). On failure
 * an owned loader is destroyed. */
int loom_config_keep_loader(loom_config *c, const char *name, loom_loader *loader, bool owned);
/* Drops what the last build recorded (destroying the loaders it owns). */
void loom_config_forget_built(loom_config *c);

/* A component's parameters: an object of the config at `path`, and the
 * keys asked for so far (to find unknown ones). */
struct loom_params {
  loom_config *config;
  json_t *object;
  char path[512];
  const char *asked[64];
  int num_asked;
};

void loom_params_init(loom_params *p, loom_config *config, json_t *object, const char *path);
/* Whether this is loom_config_validate's build: a constructor reads and
 * checks every key but opens no file and allocates no model. */
static inline bool loom_params_validate_only(const loom_params *p) { return p->config->unread != NULL; }

/* The backend that `key` of p names (config/device.c): *out NULL for the
 * CPU (host memory); a new backend the caller owns otherwise. With
 * validate_only the keys are checked and no device is opened. */
int loom_config_device(loom_params *p, const char *key, bool validate_only, loom_backend **out);
/* 0 if the model (if any) has the layer, else an error at `key` with the nearest name. */
int loom_params_check_layer(const loom_params *p, const char *key, const loom_model *model, const char *name);
/* Reads `key`, a non-empty array of the model's layer names, as
 * loom_params_strings does (absent: *names NULL, *n 0). */
int loom_params_layer_names(loom_params *p, const char *key, const loom_model *model, const char ***names,
                            size_t *n);
/* The component's JSON object (to write back what it resolved). */
static inline json_t *loom_params_object(loom_params *p) { return p->object; }
/* Marks keys as known without reading them (e.g. "type"). */
void loom_params_known(loom_params *p, const char *key);
/* An error about `key` itself, at the key's position. */
int loom_params_key_error(const loom_params *p, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* An error for the required `key`, absent from p's object: "missing required
 * key (<fmt>)" at the object, or, when a key of the object nobody asked for is
 * near `key` (a typo of it), "unknown key (did you mean ...)" at that key. */
int loom_params_missing(const loom_params *p, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Whether the last error was made by loom_params_error (or a sibling):
 * it already says where it is, in the file or in a --set. */
bool loom_params_error_is_positioned(void);
/* "FILE:LINE:COL: path: " (or "--set ...: path: ") into buf. */
void loom_config_where(const loom_config *c, const char *path, bool key, char *buf, size_t size);
/* "path.key" or "path[i]" */
void loom_path_child(char *out, size_t size, const char *path, const char *key);
void loom_path_index(char *out, size_t size, const char *path, size_t i);
/* The closest of `candidates` to `word` (edit distance), or NULL. */
const char *loom_did_you_mean(const char *word, const char *const *candidates, size_t n);
/* The same for a value (a choice, a component type, a name): only a
 * candidate it could be a typo of, with the same first letter and the same
 * digits ("gpu" suggests no "cpu", "fc9" no "fc1"). */
const char *loom_did_you_mean_value(const char *word, const char *const *candidates, size_t n);

/* registry.c */
void loom_register_builtin(loom_kind kind, const char *name, loom_ctor ctor);
/* 0, or the error that kept a built-in out of the registry (with its message). */
int loom_registry_status(void);
/* Builds the component described by `object` (its "type" names it), as
 * loom_params_build: the constructor reads its keys through *p, which the
 * caller may go on reading (e.g. a callback's "order") before
 * loom_params_check_unknown. The builder's own keys of the kind (model
 * "init", scheduler "unit", callback "order", ...) count as known. */
void *loom_config_instantiate(loom_config *c, json_t *object, const char *path, loom_kind kind, const void *context,
                              loom_params *p);
loom_ctor loom_registry_find(loom_kind kind, const char *name, void **user);
const char *const *loom_registry_list(loom_kind kind, size_t *n);

#endif
