/* TensorBoard event files decoded by an independent decoder (Google's
 * protobuf runtime, tests/tfevents/decode.py) and handed back as JSON.
 * The build defines LOOM_PB_PYTHON (a python3 that imports
 * google.protobuf, "" if none), LOOM_PROTOC and TFEVENTS_DIR. */
#ifndef LOOM_TEST_TFEVENTS_H
#define LOOM_TEST_TFEVENTS_H

#include <dirent.h>
#include <math.h>

#include "helpers.h"

static inline bool tfevents_decoder_available(void) { return LOOM_PB_PYTHON[0] && LOOM_PROTOC[0]; }

/* The paths of dir's events files (not recursive), sorted; returns the count. */
static inline int tfevents_files(const char *dir, char files[][1024], int max) {
  struct dirent **names;
  int n = scandir(dir, &names, NULL, alphasort), found = 0;
  for (int i = 0; i < n; i++) {
    if (strncmp(names[i]->d_name, "events.out.tfevents.", 20) == 0 && found < max)
      snprintf(files[found++], 1024, "%s/%s", dir, names[i]->d_name);
    free(names[i]);
  }
  if (n >= 0)
    free(names);
  return found;
}

/* The decoded events of one file: an array of {"step", "values": [...]}. */
static inline json_t *tfevents_decode(const char *file) {
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "'%s' '%s/decode.py' '%s' '%s' '%s'", LOOM_PB_PYTHON, TFEVENTS_DIR, LOOM_PROTOC,
           TFEVENTS_DIR, file);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  json_error_t err;
  json_t *all = json_loadf(p, 0, &err);
  assert_int_equal(pclose(p), 0);
  if (!all)
    fail_msg("decode.py printed no JSON: %s", err.text);
  json_t *events = json_incref(json_object_get(all, file));
  json_decref(all);
  assert_true(json_is_array(events));
  return events;
}

/* The HParams plugin data under `tag` ("_hparams_/experiment", ...): the
 * message inside HParamsPluginData (borrowed from events), NULL if absent.
 * Checks the plugin's name and data version on the way. */
static inline json_t *tfevents_hparams(json_t *events, const char *tag, const char *field) {
  size_t i, j;
  json_t *e, *v;
  json_array_foreach(events, i, e) {
    json_array_foreach(json_object_get(e, "values"), j, v) {
      if (strcmp(json_string_value(json_object_get(v, "tag")), tag) != 0)
        continue;
      assert_string_equal(json_string_value(json_object_get(v, "plugin")), "hparams");
      assert_int_equal(json_integer_value(json_object_get(v, "version")), 0);
      json_t *m = json_object_get(json_object_get(v, "data"), field);
      assert_non_null(m);
      return m;
    }
  }
  return NULL;
}

/* The last scalar written under `tag`, as its float; NAN if none. */
static inline double tfevents_last_scalar(json_t *events, const char *tag, int64_t *step) {
  double value = NAN;
  size_t i, j;
  json_t *e, *v;
  json_array_foreach(events, i, e) {
    json_array_foreach(json_object_get(e, "values"), j, v) {
      if (strcmp(json_string_value(json_object_get(v, "tag")), tag) == 0 && json_object_get(v, "simple_value")) {
        value = json_number_value(json_object_get(v, "simple_value"));
        if (step)
          *step = json_integer_value(json_object_get(e, "step"));
      }
    }
  }
  return value;
}

/* The HParamInfo named `name` in an Experiment, NULL if absent. */
static inline json_t *tfevents_hparam_info(json_t *experiment, const char *name) {
  size_t i;
  json_t *info;
  json_array_foreach(json_object_get(experiment, "hparam_infos"), i, info) {
    if (strcmp(json_string_value(json_object_get(info, "name")), name) == 0)
      return info;
  }
  return NULL;
}

#endif
