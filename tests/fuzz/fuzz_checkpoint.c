/* Checkpoint load and resume, structure-aware: HDF5 and the file checksum
 * would stop almost every raw mutation, so the input edits a real
 * checkpoint value by value (the way a careless tool would) and the
 * checkpoint is written again with fresh checksums; a tiny experiment then
 * resumes from it and runs to its end. Every value loom reads back must be
 * checked against the running experiment before use. Nothing touches the
 * disk: the checkpoint is an image in memory (loom_checkpoint_write_memory,
 * loom_runner_set_resume_image) and the runs write no files
 * (loom_run_options.no_write: the checkpoint callback keeps its images in
 * memory, the metrics logger writes nothing but saves and loads its state).
 *
 * The real checkpoints are taken once, at start-up, from the same
 * experiment: in the middle of the train loader, in the middle of the
 * valid loader, and at an epoch's end. Input layout:
 *   u8 which of them, then up to 8 edits of
 *   u8 op (mod 8), u8 group, u8 key, then the op's operands:
 *     0 set an integer (u64)      1 set a double (u64 bits)  2 set a string
 *     3 set an array (u8 length, then its values from the bytes)
 *     4 set one array item (u8 index, u64 value)  5 drop the key
 *     6 drop the group            7 nudge an integer by a signed u8 */
#include <hdf5.h>

#include "fuzz.h"
#include "loom/config.h"

#define STAGE_CONFIG                                                                                                    \
  "{\"experiment\": {\"name\": \"fuzz\", \"seed\": 3, \"logdir\": \"%s\"},"                                             \
  " \"datasets\": {\"d\": {\"type\": \"idx\", \"images\": \"data/images.idx\", \"labels\": \"data/labels.idx\"}},"      \
  " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2, \"shuffle\": true},"                               \
  "               \"valid\": {\"dataset\": \"d\", \"batch_size\": 3}},"                                                 \
  " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 3, 2]},"                                                               \
  " \"stages\": {\"train\": {\"num_epochs\": 3, \"loaders\": [\"train\", \"valid\"],"                                    \
  "   \"criterion\": {\"type\": \"cross_entropy\"},"                                                                     \
  "   \"optimizer\": {\"type\": \"adam\", \"lr\": 0.01},"                                                                \
  "   \"scheduler\": {\"type\": \"step\", \"step_size\": 2, \"gamma\": 0.5, \"unit\": \"step\"},"                        \
  "   \"callbacks\": [{\"type\": \"accuracy\"}, {\"type\": \"metrics_logger\"},"                                         \
  "                   {\"type\": \"early_stopping\", \"patience\": 2},"                                                  \
  "                   {\"type\": \"checkpoint\", \"every_n_batches\": 1}]}}}"

static loom_checkpoint *templates[3];

static loom_experiment *build(void) {
  char text[4096];
  snprintf(text, sizeof text, STAGE_CONFIG, "fuzz-run-never-written");
  loom_config *c = loom_config_parse(text, LOOM_FUZZ_CONFIGS "/fuzz.json");
  loom_experiment *exp = NULL;
  if (!c || loom_config_build(c, &exp) < 0) {
    fprintf(stderr, "fuzz_checkpoint: %s\n", loom_last_error());
    abort();
  }
  loom_config_destroy(c);
  return exp;
}

/* A run that writes no files. */
static loom_runner *quiet_runner(void) {
  loom_runner *r = loom_runner_create();
  loom_run_options o = loom_run_options_defaults();
  o.no_write = true;
  o.handle_signals = false;
  loom_runner_set_options(r, &o);
  return r;
}

/* templates[i] := a snapshot of the run now, through a checkpoint's bytes. */
static int take(loom_runner *r, int i) {
  loom_checkpoint *snap;
  void *bytes;
  size_t size;
  int rc = loom_runner_snapshot(r, &snap);
  if (rc == 0) {
    rc = loom_checkpoint_write_memory(snap, &bytes, &size);
    loom_checkpoint_destroy(snap);
  }
  if (rc == 0) {
    templates[i] = loom_checkpoint_read_memory(bytes, size, "template");
    free(bytes);
  }
  return rc < 0 ? rc : templates[i] ? 0 : loom_last_error_code();
}

/* Takes templates[0..2] as the reference run goes. */
static int take_mid(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_global_epoch(r) != 2 || loom_runner_loader_batch_step(r) != 2)
    return 0;
  return take(r, strcmp(loom_runner_loader_name(r), "train") == 0 ? 0 : 1);
}

static int take_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  return loom_runner_global_epoch(r) == 1 ? take(r, 2) : 0;
}

static const loom_callback_ops taker = {.type = "taker", .on_batch_end = take_mid, .on_epoch_end = take_end};

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  /* libhdf5's own free lists keep what it frees, without limit: the metadata
   * cache every file open allocates again (hundreds of KiB) then comes from
   * them, not from fresh pages (ASan's quarantine holds freed memory back),
   * which was most of an input's time. Only libhdf5's memory: loom's stays
   * ASan's. */
  H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
  loom_experiment *exp = build();
  loom_runner *r = quiet_runner();
  if (loom_experiment_add_callback(exp, loom_callback_create(&taker, NULL, 300)) < 0 || loom_run_experiment(r, exp) < 0) {
    fprintf(stderr, "fuzz_checkpoint: %s\n", loom_last_error());
    abort();
  }
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  for (int i = 0; i < 3; i++)
    if (!templates[i])
      abort();
  if (getenv("LOOM_FUZZ_LIST_KEYS")) /* for writing corpus inputs by hand */
    for (size_t g = 0; g < loom_checkpoint_num_groups(templates[0]); g++) {
      const loom_state *s = loom_checkpoint_find(templates[0], loom_checkpoint_group_name(templates[0], g));
      for (size_t i = 0; i < loom_state_count(s); i++)
        printf("%zu %s %zu %s\n", g, loom_checkpoint_group_name(templates[0], g), i, loom_state_key(s, i));
    }
  return 0;
}

/* Copies entry i of `from` into `to`. */
static void copy_entry(loom_state *to, const loom_state *from, size_t i) {
  const char *key = loom_state_key(from, i);
  size_t n = loom_state_array_length(from, key);
  void *buf = malloc((n ? n : 1) * 8);
  int64_t v;
  double d;
  const char *s;
  switch (loom_state_type(from, i)) {
  case LOOM_VALUE_I64: loom_state_get_i64(from, key, &v), loom_state_set_i64(to, key, v); break;
  case LOOM_VALUE_F64: loom_state_get_f64(from, key, &d), loom_state_set_f64(to, key, d); break;
  case LOOM_VALUE_STR: loom_state_get_str(from, key, &s), loom_state_set_str(to, key, s); break;
  case LOOM_VALUE_F32_ARRAY: loom_state_get_f32_array(from, key, buf, n), loom_state_set_f32_array(to, key, buf, n); break;
  case LOOM_VALUE_F64_ARRAY: loom_state_get_f64_array(from, key, buf, n), loom_state_set_f64_array(to, key, buf, n); break;
  case LOOM_VALUE_I64_ARRAY: loom_state_get_i64_array(from, key, buf, n), loom_state_set_i64_array(to, key, buf, n); break;
  }
  free(buf);
}

/* `c` without group `drop_group`'s key `drop_key` (NULL: the whole group). */
static loom_checkpoint *without(const loom_checkpoint *c, size_t drop_group, const char *drop_key) {
  loom_checkpoint *out = loom_checkpoint_create();
  for (size_t g = 0; g < loom_checkpoint_num_groups(c); g++) {
    if (g == drop_group && !drop_key)
      continue;
    const loom_state *from = loom_checkpoint_find(c, loom_checkpoint_group_name(c, g));
    loom_state *to = loom_checkpoint_group(out, loom_checkpoint_group_name(c, g));
    for (size_t i = 0; i < loom_state_count(from); i++)
      if (g != drop_group || strcmp(loom_state_key(from, i), drop_key) != 0)
        copy_entry(to, from, i);
  }
  return out;
}

static void set_array(loom_state *s, const char *key, loom_value_type type, fuzz_bytes *b, size_t n, int64_t at) {
  size_t have = loom_state_array_length(s, key);
  if (at >= 0)
    n = have;
  uint64_t *v = calloc(n ? n : 1, 8);
  if (at >= 0) {
    if (!n) {
      free(v);
      return;
    }
    if (type == LOOM_VALUE_I64_ARRAY)
      loom_state_get_i64_array(s, key, (int64_t *)v, n);
    else if (type == LOOM_VALUE_F64_ARRAY)
      loom_state_get_f64_array(s, key, (double *)v, n);
    else
      loom_state_get_f32_array(s, key, (float *)v, n);
    if (type == LOOM_VALUE_F32_ARRAY)
      ((uint32_t *)v)[at % (int64_t)n] = (uint32_t)fuzz_u64(b);
    else
      v[at % (int64_t)n] = fuzz_u64(b);
  } else {
    for (size_t i = 0; i < n; i++)
      v[i] = type == LOOM_VALUE_F32_ARRAY ? fuzz_u32(b) : fuzz_u64(b);
  }
  if (type == LOOM_VALUE_I64_ARRAY)
    loom_state_set_i64_array(s, key, (const int64_t *)v, n);
  else if (type == LOOM_VALUE_F64_ARRAY)
    loom_state_set_f64_array(s, key, (const double *)v, n);
  else
    loom_state_set_f32_array(s, key, (const float *)v, n);
  free(v);
}

/* Applies one edit; returns the checkpoint (maybe a new one). */
static loom_checkpoint *edit(loom_checkpoint *c, fuzz_bytes *b) {
  uint8_t op = fuzz_u8(b) % 8;
  size_t groups = loom_checkpoint_num_groups(c);
  if (!groups)
    return c;
  size_t g = fuzz_u8(b) % groups;
  loom_state *s = loom_checkpoint_group(c, loom_checkpoint_group_name(c, g));
  size_t keys = loom_state_count(s);
  if (op == 6) {
    loom_checkpoint *out = without(c, g, NULL);
    loom_checkpoint_destroy(c);
    return out;
  }
  if (!keys)
    return c;
  size_t i = fuzz_u8(b) % keys;
  char *key = strdup(loom_state_key(s, i));
  loom_value_type type = loom_state_type(s, i);
  int64_t v;
  switch (op) {
  case 0: loom_state_set_i64(s, key, (int64_t)fuzz_u64(b)); break;
  case 1: {
    uint64_t bits = fuzz_u64(b);
    double d;
    memcpy(&d, &bits, sizeof d);
    loom_state_set_f64(s, key, d);
    break;
  }
  case 2: {
    char *str = fuzz_str(b, 64);
    loom_state_set_str(s, key, str);
    free(str);
    break;
  }
  case 3:
    if (type >= LOOM_VALUE_F32_ARRAY)
      set_array(s, key, type, b, fuzz_u8(b) % 40, -1);
    break;
  case 4:
    if (type >= LOOM_VALUE_F32_ARRAY)
      set_array(s, key, type, b, 0, fuzz_u8(b));
    break;
  case 5: {
    loom_checkpoint *out = without(c, g, key);
    loom_checkpoint_destroy(c);
    c = out;
    break;
  }
  case 7:
    if (type == LOOM_VALUE_I64 && loom_state_get_i64(s, key, &v) == 0 && v > INT64_MIN + 128 && v < INT64_MAX - 128)
      loom_state_set_i64(s, key, v + (int8_t)fuzz_u8(b));
    break;
  }
  free(key);
  return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 1024)
    return 0;
  fuzz_bytes b = {data, size};
  loom_checkpoint *c = loom_checkpoint_copy(templates[fuzz_u8(&b) % 3]);
  for (int k = 0; k < 8 && b.n; k++)
    c = edit(c, &b);
  void *bytes;
  size_t n;
  if (loom_checkpoint_write_memory(c, &bytes, &n) < 0)
    abort(); /* whatever the values, a checkpoint writes */
  loom_checkpoint_destroy(c);
  loom_experiment *exp = build();
  loom_runner *r = quiet_runner();
  int rc = loom_runner_set_resume_image(r, bytes, n, "fuzzed.h5");
  free(bytes);
  if (rc == 0)
    rc = loom_run_experiment(r, exp);
  fuzz_expect_clean_error(rc);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return 0;
}
