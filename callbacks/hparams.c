/* Hyperparameters and the HParams plugin's summaries: see callbacks/hparams.h.
 * Field numbers are those of tensorboard/plugins/hparams/api.proto
 * (Experiment, HParamInfo, MetricInfo, MetricName), plugin_data.proto
 * (HParamsPluginData, SessionStartInfo, SessionEndInfo),
 * google/protobuf/struct.proto (Value, ListValue) and TensorFlow's
 * summary.proto (Summary.Value, SummaryMetadata, PluginData). */
#include "callbacks/hparams.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/array.h"
#include "core/error_internal.h"
#include "loom/runner_view.h"

static void clear_value(loom_hparam *p) {
  free(p->string);
  p->string = NULL;
}

/* The entry named `name`, added at the end if new; NULL when out of memory. */
static loom_hparam *slot(loom_hparams *h, const char *name) {
  for (size_t i = 0; i < h->count; i++)
    if (strcmp(h->items[i].name, name) == 0) {
      clear_value(&h->items[i]);
      return &h->items[i];
    }
  if (loom_array_reserve((void **)&h->items, &h->cap, h->count + 1, sizeof *h->items, "hyperparameters") < 0)
    return NULL;
  loom_hparam *p = &h->items[h->count];
  *p = (loom_hparam){.name = strdup(name)};
  if (!p->name) {
    loom_error_oom("a hyperparameter's name");
    return NULL;
  }
  h->count++;
  return p;
}

int loom_hparams_set_number(loom_hparams *h, const char *name, double value) {
  loom_hparam *p = slot(h, name);
  if (!p)
    return LOOM_ENOMEM;
  p->type = LOOM_HPARAM_NUMBER, p->number = value;
  return 0;
}

int loom_hparams_set_bool(loom_hparams *h, const char *name, bool value) {
  loom_hparam *p = slot(h, name);
  if (!p)
    return LOOM_ENOMEM;
  p->type = LOOM_HPARAM_BOOL, p->boolean = value;
  return 0;
}

int loom_hparams_set_string(loom_hparams *h, const char *name, const char *value) {
  char *copy = strdup(value);
  if (!copy)
    return loom_error_oom("a hyperparameter's value");
  loom_hparam *p = slot(h, name);
  if (!p) {
    free(copy);
    return LOOM_ENOMEM;
  }
  p->type = LOOM_HPARAM_STRING, p->string = copy;
  return 0;
}

static int set_from(loom_hparams *h, const loom_hparam *p) {
  switch (p->type) {
  case LOOM_HPARAM_NUMBER:
    return loom_hparams_set_number(h, p->name, p->number);
  case LOOM_HPARAM_BOOL:
    return loom_hparams_set_bool(h, p->name, p->boolean);
  default:
    return loom_hparams_set_string(h, p->name, p->string);
  }
}

int loom_hparams_merge(loom_hparams *h, const loom_hparams *from) {
  int rc = 0;
  for (size_t i = 0; i < from->count && rc == 0; i++)
    rc = set_from(h, &from->items[i]);
  return rc;
}

int loom_hparams_add_json(loom_hparams *h, const char *path, const json_t *v) {
  char sub[1024];
  int rc = 0;
  if (json_is_object(v)) {
    const char *k;
    json_t *x;
    json_object_foreach((json_t *)v, k, x) {
      snprintf(sub, sizeof sub, "%s%s%s", path, path[0] ? "." : "", k);
      if ((rc = loom_hparams_add_json(h, sub, x)) < 0)
        return rc;
    }
  } else if (json_is_array(v)) {
    size_t i;
    json_t *x;
    json_array_foreach(v, i, x) {
      snprintf(sub, sizeof sub, "%s[%zu]", path, i);
      if ((rc = loom_hparams_add_json(h, sub, x)) < 0)
        return rc;
    }
  } else if (json_is_number(v)) {
    rc = loom_hparams_set_number(h, path, json_number_value(v));
  } else if (json_is_boolean(v)) {
    rc = loom_hparams_set_bool(h, path, json_is_true(v));
  } else if (json_is_string(v)) {
    rc = loom_hparams_set_string(h, path, json_string_value(v));
  }
  return rc;
}

static json_t *value_json(const loom_hparam *p) {
  switch (p->type) {
  case LOOM_HPARAM_NUMBER:
    return json_real(p->number);
  case LOOM_HPARAM_BOOL:
    return json_boolean(p->boolean);
  default:
    return json_string(p->string);
  }
}

json_t *loom_hparams_to_json(const loom_hparams *h) {
  json_t *o = json_object();
  for (size_t i = 0; o && i < h->count; i++)
    if (json_object_set_new(o, h->items[i].name, value_json(&h->items[i])) < 0) {
      json_decref(o);
      return NULL;
    }
  return o;
}

void loom_hparams_clear(loom_hparams *h) {
  for (size_t i = 0; i < h->count; i++) {
    free(h->items[i].name);
    clear_value(&h->items[i]);
  }
  free(h->items);
  *h = (loom_hparams){0};
}

double loom_hparams_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* --- encoding --- */

/* google.protobuf.Value { number_value = 2, string_value = 3, bool_value = 4 } */
static void encode_value(loom_pb *m, const loom_hparam *p) {
  switch (p->type) {
  case LOOM_HPARAM_NUMBER:
    loom_pb_double_field(m, 2, p->number);
    break;
  case LOOM_HPARAM_BOOL:
    loom_pb_varint_field(m, 4, p->boolean);
    break;
  default:
    loom_pb_string_field(m, 3, p->string);
  }
}

static bool same_value(const loom_hparam *a, const loom_hparam *b) {
  if (a->type != b->type)
    return false;
  if (a->type == LOOM_HPARAM_NUMBER)
    return a->number == b->number;
  if (a->type == LOOM_HPARAM_BOOL)
    return a->boolean == b->boolean;
  return strcmp(a->string, b->string) == 0;
}

static const loom_hparam *find(const loom_hparams *h, const char *name) {
  for (size_t i = 0; i < h->count; i++)
    if (strcmp(h->items[i].name, name) == 0)
      return &h->items[i];
  return NULL;
}

/* Summary { Value { tag = 1, metadata = 9: SummaryMetadata { plugin_data =
 * 1: PluginData { plugin_name = 1, content = 2 } } } }, with content an
 * HParamsPluginData { version = 1 (0), `field` = the message }. */
static int write_plugin_summary(loom_tfevents *t, const char *tag, int field, const loom_pb *message) {
  loom_pb data = {0}, plugin = {0}, meta = {0}, value = {0}, summary = {0};
  loom_pb_message_field(&data, field, message);
  loom_pb_string_field(&plugin, 1, "hparams");
  loom_pb_message_field(&plugin, 2, &data);
  loom_pb_message_field(&meta, 1, &plugin);
  loom_pb_string_field(&value, 1, tag);
  loom_pb_message_field(&value, 9, &meta);
  loom_pb_message_field(&summary, 1, &value);
  int rc = loom_tfevents_write_summary(t, 0, &summary);
  loom_pb *all[] = {&data, &plugin, &meta, &value, &summary};
  for (size_t i = 0; i < sizeof all / sizeof *all; i++)
    loom_pb_free(all[i]);
  return rc;
}

/* HParamInfo { name = 1, type = 4 (DataType: STRING 1, BOOL 2, FLOAT64 3),
 * domain_discrete = 5: ListValue { values = 1 } } for `name` over the
 * sessions. */
static void encode_hparam_info(loom_pb *info, const char *name, const loom_hparams *sessions, size_t n) {
  static const int data_type[] = {[LOOM_HPARAM_NUMBER] = 3, [LOOM_HPARAM_STRING] = 1, [LOOM_HPARAM_BOOL] = 2};
  const loom_hparam *first = NULL;
  bool mixed = false;
  for (size_t s = 0; s < n; s++) {
    const loom_hparam *p = find(&sessions[s], name);
    if (p && !first)
      first = p;
    mixed |= p && p->type != first->type;
  }
  loom_pb_string_field(info, 1, name);
  if (mixed)
    return;
  loom_pb_varint_field(info, 4, (uint64_t)data_type[first->type]);
  loom_pb list = {0};
  for (size_t s = 0; s < n; s++) {
    const loom_hparam *p = find(&sessions[s], name);
    bool seen = !p;
    for (size_t e = 0; e < s && !seen; e++) {
      const loom_hparam *q = find(&sessions[e], name);
      seen = q && same_value(p, q);
    }
    if (!seen) {
      loom_pb v = {0};
      encode_value(&v, p);
      loom_pb_message_field(&list, 1, &v);
      loom_pb_free(&v);
    }
  }
  loom_pb_message_field(info, 5, &list);
  loom_pb_free(&list);
}

/* MetricInfo { name = 1: MetricName { group = 1, tag = 2 }, dataset_type = 5
 * (TRAINING 1, VALIDATION 2) }; the loader is the tag's first part. */
static void encode_metric_info(loom_pb *info, const char *tag) {
  loom_pb name = {0}; /* group "", proto3's default, is left out */
  loom_pb_string_field(&name, 2, tag);
  loom_pb_message_field(info, 1, &name);
  loom_pb_free(&name);
  char loader[256];
  snprintf(loader, sizeof loader, "%.*s", (int)strcspn(tag, "/"), tag);
  loom_loader_kind kind;
  if (strchr(tag, '/') && loom_loader_kind_from_name(loader, &kind) && kind != LOOM_LOADER_INFER)
    loom_pb_varint_field(info, 5, kind == LOOM_LOADER_TRAIN ? 1 : 2);
}

int loom_hparams_write_experiment(loom_tfevents *t, const loom_hparams *sessions, size_t num_sessions,
                                  const char *const *metrics, size_t num_metrics, double time_created) {
  /* Experiment { time_created_secs = 3, hparam_infos = 4, metric_infos = 5 } */
  loom_pb exp = {0};
  loom_pb_double_field(&exp, 3, time_created);
  for (size_t s = 0; s < num_sessions; s++)
    for (size_t i = 0; i < sessions[s].count; i++) {
      const char *name = sessions[s].items[i].name;
      bool seen = false;
      for (size_t e = 0; e < s && !seen; e++)
        seen = find(&sessions[e], name) != NULL;
      if (seen)
        continue;
      loom_pb info = {0};
      encode_hparam_info(&info, name, sessions, num_sessions);
      loom_pb_message_field(&exp, 4, &info);
      loom_pb_free(&info);
    }
  for (size_t i = 0; i < num_metrics; i++) {
    loom_pb info = {0};
    encode_metric_info(&info, metrics[i]);
    loom_pb_message_field(&exp, 5, &info);
    loom_pb_free(&info);
  }
  int rc = write_plugin_summary(t, "_hparams_/experiment", 2, &exp);
  loom_pb_free(&exp);
  return rc;
}

int loom_hparams_write_session_start(loom_tfevents *t, const loom_hparams *h, const char *group_name,
                                     double start_time) {
  /* SessionStartInfo { hparams = 1: map entries { key = 1, value = 2 },
   * group_name = 4, start_time_secs = 5 } */
  loom_pb start = {0};
  for (size_t i = 0; i < h->count; i++) {
    loom_pb entry = {0}, value = {0};
    loom_pb_string_field(&entry, 1, h->items[i].name);
    encode_value(&value, &h->items[i]);
    loom_pb_message_field(&entry, 2, &value);
    loom_pb_message_field(&start, 1, &entry);
    loom_pb_free(&entry);
    loom_pb_free(&value);
  }
  if (group_name && group_name[0])
    loom_pb_string_field(&start, 4, group_name);
  loom_pb_double_field(&start, 5, start_time);
  int rc = write_plugin_summary(t, "_hparams_/session_start_info", 3, &start);
  loom_pb_free(&start);
  return rc;
}

int loom_hparams_write_session_end(loom_tfevents *t, int status, double end_time) {
  /* SessionEndInfo { status = 1, end_time_secs = 2 } */
  loom_pb end = {0};
  loom_pb_varint_field(&end, 1, (uint64_t)status);
  loom_pb_double_field(&end, 2, end_time);
  int rc = write_plugin_summary(t, "_hparams_/session_end_info", 4, &end);
  loom_pb_free(&end);
  return rc;
}
