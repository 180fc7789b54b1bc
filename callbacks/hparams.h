/* Hyperparameters: a list of named scalars, and TensorBoard's HParams plugin
 * summaries of them (tensorboard/plugins/hparams/{api,plugin_data}.proto),
 * written by the tensorboard logger for one run and by `loom grid results
 * --tensorboard` for a sweep. */
#ifndef LOOM_CALLBACKS_HPARAMS_H
#define LOOM_CALLBACKS_HPARAMS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "callbacks/tfevent.h"

typedef enum loom_hparam_type { LOOM_HPARAM_NUMBER, LOOM_HPARAM_STRING, LOOM_HPARAM_BOOL } loom_hparam_type;

typedef struct loom_hparam {
  char *name;
  loom_hparam_type type;
  double number;
  char *string;
  bool boolean;
} loom_hparam;

/* Zero-initialise; names are unique (a second set replaces), kept in the
 * order first set. */
typedef struct loom_hparams {
  loom_hparam *items;
  size_t count, cap;
} loom_hparams;

int loom_hparams_set_number(loom_hparams *h, const char *name, double value);
int loom_hparams_set_string(loom_hparams *h, const char *name, const char *value);
int loom_hparams_set_bool(loom_hparams *h, const char *name, bool value);
/* Every number, string and boolean in `v`, named by its key path as --set
 * writes it ("stages.train.callbacks[0].topk[1]") under `path` ("" at the
 * top); nulls, empty objects and empty arrays give nothing. */
int loom_hparams_add_json(loom_hparams *h, const char *path, const json_t *v);
/* Each of `from`'s, set into h (replacing those of the same name). */
int loom_hparams_merge(loom_hparams *h, const loom_hparams *from);
/* {"name": value, ...}; NULL when out of memory. */
json_t *loom_hparams_to_json(const loom_hparams *h);
void loom_hparams_clear(loom_hparams *h);

/* --- HParams plugin summaries (plugin "hparams", data version 0) --- */
/* Session status, as api.proto's Status. */
enum { LOOM_HPARAMS_STATUS_UNKNOWN = 0, LOOM_HPARAMS_STATUS_SUCCESS = 1, LOOM_HPARAMS_STATUS_FAILURE = 2 };

/* The Experiment, tag "_hparams_/experiment": an HParamInfo per name seen in
 * any of `sessions` (its type, and the distinct values as its discrete
 * domain; a name whose type differs between sessions gets neither), and a
 * MetricInfo per tag in `metrics` (group "": the session's own run; dataset
 * type from the loader the tag starts with, "train*" or "valid*"). */
int loom_hparams_write_experiment(loom_tfevents *t, const loom_hparams *sessions, size_t num_sessions,
                                  const char *const *metrics, size_t num_metrics, double time_created);
/* The SessionStartInfo, tag "_hparams_/session_start_info": the values, and
 * the session's group (NULL or "": the session alone). */
int loom_hparams_write_session_start(loom_tfevents *t, const loom_hparams *h, const char *group_name,
                                     double start_time);
/* The SessionEndInfo, tag "_hparams_/session_end_info". */
int loom_hparams_write_session_end(loom_tfevents *t, int status, double end_time);

/* Seconds since the epoch, as the summaries' times. */
double loom_hparams_now(void);

#endif
