/* Configs that run: the resolved config reproduces the run, --set types
 * values by the schema, user components from the registry, and the
 * carry-over rules of multi-stage schedules.
 * Usage: test_config_run CONFIGS_DIR (tests/configs) */
#include <math.h>

#include "helpers.h"

static const char *configs;

/* --- a user component: a probe callback registered from C --- */

typedef struct probe_log {
  char trace[64][64];
  int n;
  int64_t steps_at_start[3], steps_at_end[3];
  float fc1_start[3][16], fc1_end[3][16], all_start[3][64], all_end[3][64];
  int best_matches_at_start[3]; /* 1: params equal best.h5's; -1: no best.h5 */
} probe_log;

static probe_log plog;

typedef struct probe {
  char tag[16];
} probe;

static int stage_no(loom_runner *r) { return loom_runner_stage_index(r); }

static void copy_weights(loom_runner *r, float *fc1, float *all) {
  loom_model *m = loom_runner_model(r);
  memcpy(fc1, loom_linear_weight(loom_model_find_layer(m, "fc1")), 12 * sizeof(float));
  memcpy(all, loom_model_params(m), loom_model_num_params(m) * sizeof(float));
}

static int probe_stage_start(loom_callback *cb, loom_runner *r) {
  probe *p = loom_callback_data(cb);
  snprintf(plog.trace[plog.n++], 64, "%s:%s", p->tag, loom_runner_stage_name(r));
  if (strcmp(p->tag, "E") != 0)
    return 0;
  int s = stage_no(r);
  plog.steps_at_start[s] = loom_optimizer_steps(loom_runner_optimizer(r));
  copy_weights(r, plog.fc1_start[s], plog.all_start[s]);
  char path[512], notice[64];
  loom_checkpoint *c = loom_checkpoint_open_logdir(loom_runner_logdir(r), "best", path, sizeof path, notice, sizeof notice);
  plog.best_matches_at_start[s] = -1;
  if (c) {
    size_t n = loom_model_num_params(loom_runner_model(r));
    float *best = malloc(n * sizeof *best);
    loom_state_get_f32_array(loom_checkpoint_find(c, "model"), "params", best, n);
    plog.best_matches_at_start[s] = memcmp(best, loom_model_params(loom_runner_model(r)), n * sizeof *best) == 0;
    free(best);
    loom_checkpoint_destroy(c);
  }
  return 0;
}

static int probe_stage_end(loom_callback *cb, loom_runner *r) {
  probe *p = loom_callback_data(cb);
  if (strcmp(p->tag, "E") == 0) {
    int s = stage_no(r);
    plog.steps_at_end[s] = loom_optimizer_steps(loom_runner_optimizer(r));
    copy_weights(r, plog.fc1_end[s], plog.all_end[s]);
  }
  return 0;
}

static const loom_callback_ops probe_ops = {
    .type = "probe", .on_stage_start = probe_stage_start, .on_stage_end = probe_stage_end, .destroy = free};

static void *make_probe(loom_params *params, const void *context, void *user) {
  (void)context;
  assert_ptr_equal(user, &plog);
  const char *tag;
  if (loom_params_string(params, "tag", NULL, &tag) < 0)
    return NULL;
  probe *p = calloc(1, sizeof *p);
  snprintf(p->tag, sizeof p->tag, "%s", tag);
  return loom_callback_create(&probe_ops, p, LOOM_ORDER_EXTERNAL);
}

static void *make_offset(loom_params *params, const void *context, void *user);
static void *make_refusing(loom_params *params, const void *context, void *user);
static void *make_grab(loom_params *params, const void *context, void *user);

static int setup(void **state) {
  (void)state;
  if (loom_register(LOOM_KIND_TRANSFORM, "add_offset", make_offset, NULL) < 0 ||
      loom_register(LOOM_KIND_TRANSFORM, "refusing", make_refusing, NULL) < 0 ||
      loom_register(LOOM_KIND_CALLBACK, "grab", make_grab, NULL) < 0)
    return -1;
  int rc = loom_register(LOOM_KIND_CALLBACK, "probe", make_probe, &plog);
  /* A second registration of the name is refused. */
  if (rc == 0 && loom_register(LOOM_KIND_CALLBACK, "probe", make_probe, NULL) != LOOM_EINVAL)
    return -1;
  if (loom_register(LOOM_KIND_CALLBACK, "accuracy", make_probe, NULL) != LOOM_EINVAL)
    return -1; /* built-in names are taken too */
  return rc;
}

/* --- helpers --- */

static loom_config *config_text(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static loom_config *config_text(const char *fmt, ...) {
  char text[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  loom_config *c = loom_config_parse(text, "inline.json");
  if (!c)
    fail_msg("%s", loom_last_error());
  return c;
}

static void run_config(loom_config *c) {
  loom_experiment *exp;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_runner *r = loom_runner_create();
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

#define DATA "\"images\": \"%s/data/images.idx\", \"labels\": \"%s/data/labels.idx\""
#define NORM "{\"type\": \"normalize\", \"mean\": 120, \"std\": 70}"

static const char *const base =
    "{\"experiment\": {\"name\": \"roundtrip\"},"
    " \"datasets\": {\"d\": {\"type\": \"idx\", " DATA "}},"
    " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2, \"transforms\": [" NORM "]},"
    "             \"valid\": {\"dataset\": \"d\", \"batch_size\": 4, \"transforms\": [" NORM "]}},"
    " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 3, 2]},"
    " \"stages\": {\"train\": {\"num_epochs\": 3, \"loaders\": [\"train\", \"valid\"],"
    "   \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"adam\", \"lr\": 0.05},"
    "   \"callbacks\": [{\"type\": \"accuracy\"}, {\"type\": \"metrics_logger\"}]}}}";

static void test_resolved_config_reproduces_the_run(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char set[700], resolved[600], a[600], b[600];
  snprintf(a, sizeof a, "%s/a", dir);
  snprintf(b, sizeof b, "%s/b", dir);
  snprintf(resolved, sizeof resolved, "%s/resolved.json", dir);
  /* No seed given: one is drawn and written into the resolved config. */
  loom_config *c = config_text(base, configs, configs);
  snprintf(set, sizeof set, "experiment.logdir=%s", a);
  assert_int_equal(loom_config_set(c, set), 0);
  run_config(c);
  assert_int_equal(loom_config_write(c, resolved), 0);
  loom_config_destroy(c);
  json_error_t err;
  json_t *r = json_load_file(resolved, 0, &err);
  assert_true(json_is_integer(json_object_get(json_object_get(r, "experiment"), "seed")));
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "experiment"), "device")), "cpu");
  assert_true(json_is_true(json_object_get(json_object_get(json_object_get(r, "loaders"), "train"), "shuffle")));
  assert_true(json_is_false(json_object_get(json_object_get(json_object_get(r, "loaders"), "valid"), "shuffle")));
  json_decref(r);
  /* Running the resolved file elsewhere gives the same metrics. */
  c = loom_config_load(resolved);
  assert_non_null(c);
  snprintf(set, sizeof set, "experiment.logdir=%s", b);
  assert_int_equal(loom_config_set(c, set), 0);
  run_config(c);
  loom_config_destroy(c);
  char *ja = jsonl_without_time(a), *jb = jsonl_without_time(b);
  assert_string_equal(ja, jb);
  free(ja), free(jb);
  test_rm_rf(dir);
  free(dir);
}

static json_t *resolved_after(loom_config *c, const char *dir) {
  char path[600];
  snprintf(path, sizeof path, "%s/r.json", dir);
  assert_int_equal(loom_config_write(c, path), 0);
  json_error_t err;
  return json_load_file(path, 0, &err);
}

/* A key that is not valid UTF-8 is refused, new or not, at any depth,
 * before anything is created (found by fuzzing: a freed object was used). */
static void test_set_rejects_invalid_utf8_keys(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_config *c = config_text(base, configs, configs);
  assert_int_equal(loom_config_set(c, "\xff.a=1"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set \xff.a=1: the key is not valid UTF-8");
  assert_int_equal(loom_config_set(c, "experiment.\xfe\xff=1"), LOOM_EINVAL);
  assert_int_equal(loom_config_set(c, "experiment.x.\xc3=1"), LOOM_EINVAL);
  assert_int_equal(loom_config_set(c, "loaders.train.batch_size=4"), 0); /* still usable */
  json_t *r = resolved_after(c, dir);
  assert_null(json_object_get(json_object_get(r, "experiment"), "x")); /* nothing half-made */
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(r, "loaders"), "train"), "batch_size")), 4);
  json_decref(r);
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

static void test_set_types_by_schema(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_config *c = config_text(base, configs, configs);
  assert_int_equal(loom_config_set(c, "experiment.name=123"), 0);              /* a string stays a string */
  assert_int_equal(loom_config_set(c, "loaders.train.batch_size=4"), 0);       /* an integer */
  assert_int_equal(loom_config_set(c, "stages.train.optimizer.lr=0.5"), 0);    /* a number */
  assert_int_equal(loom_config_set(c, "loaders.train.shuffle=false"), 0);      /* new key: JSON */
  assert_int_equal(loom_config_set(c, "stages.train.callbacks[1].type=timer"), 0);
  assert_int_equal(loom_config_set(c, "experiment.tags={\"a\": 1}"), 0);       /* new object */
  json_t *r = resolved_after(c, dir);
  json_t *e = json_object_get(r, "experiment");
  assert_string_equal(json_string_value(json_object_get(e, "name")), "123");
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(r, "loaders"), "train"), "batch_size")), 4);
  assert_true(json_is_false(json_object_get(json_object_get(json_object_get(r, "loaders"), "train"), "shuffle")));
  json_decref(r);
  /* ... and the schema still checks what was set: "tags" is no key. */
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set experiment.tags={\"a\": 1}: experiment.tags: unknown key (known keys "
                                         "here: name, seed, logdir, precision, loss_scaling, device, allow_change)");
  loom_config_destroy(c);
  /* Typed errors. */
  c = config_text(base, configs, configs);
  assert_int_equal(loom_config_set(c, "loaders.train.batch_size=two"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set loaders.train.batch_size=two: loaders.train.batch_size: expected an "
                                         "integer, got \"two\"");
  assert_int_equal(loom_config_set(c, "loaders.train=3"), LOOM_EINVAL);
  assert_int_equal(loom_config_set(c, "stages.train.loaders[5]=x"), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "has no item 5"));
  assert_int_equal(loom_config_set(c, "loaders.valid.shuffle=maybe"), 0); /* new key: a string... */
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);                /* ...that the schema refuses */
  assert_string_equal(loom_last_error(), "--set loaders.valid.shuffle=maybe: loaders.valid.shuffle: expected true or "
                                         "false, got the string \"maybe\"");
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* --set 'k="str"' sets the string without its quotes; KEY[+]=VALUE appends
 * to a list (creating it), typed as the list's items are. */
static void test_set_quotes_and_append(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  loom_config *c = config_text(base, configs, configs);
  assert_int_equal(loom_config_set(c, "experiment.name=\"quoted run\""), 0);
  assert_int_equal(loom_config_set(c, "stages.train.callbacks[+]={\"type\": \"timer\"}"), 0);
  assert_int_equal(loom_config_set(c, "stages.train.loaders[+]=valid"), 0);
  assert_int_equal(loom_config_set(c, "model.sizes[+]=5"), 0);
  assert_int_equal(loom_config_set(c, "experiment.tags[+]=a"), 0); /* a new list */
  assert_int_equal(loom_config_set(c, "experiment.tags[+]=\"b\""), 0);
  json_t *r = resolved_after(c, dir);
  assert_string_equal(json_string_value(json_object_get(json_object_get(r, "experiment"), "name")), "quoted run");
  json_t *train = json_object_get(json_object_get(r, "stages"), "train");
  json_t *cbs = json_object_get(train, "callbacks");
  assert_int_equal(json_array_size(cbs), 3);
  assert_string_equal(json_string_value(json_object_get(json_array_get(cbs, 2), "type")), "timer");
  json_t *loaders = json_object_get(train, "loaders");
  assert_int_equal(json_array_size(loaders), 3);
  assert_string_equal(json_string_value(json_array_get(loaders, 2)), "valid");
  json_t *sizes = json_object_get(json_object_get(r, "model"), "sizes");
  assert_int_equal(json_array_size(sizes), 4);
  assert_true(json_is_integer(json_array_get(sizes, 3)));
  assert_int_equal(json_integer_value(json_array_get(sizes, 3)), 5);
  json_t *tags = json_object_get(json_object_get(r, "experiment"), "tags");
  assert_int_equal(json_array_size(tags), 2);
  assert_string_equal(json_string_value(json_array_get(tags, 0)), "a");
  assert_string_equal(json_string_value(json_array_get(tags, 1)), "b");
  json_decref(r);
  /* An appended item is checked as the list's items are, and its errors
   * are the --set's. */
  assert_int_equal(loom_config_set(c, "model.sizes[+]=many"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set model.sizes[+]=many: model.sizes[4]: expected an integer, got \"many\"");
  assert_int_equal(loom_config_set(c, "experiment.name[+]=x"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set experiment.name[+]=x: experiment.name is not a list: [+] appends to a "
                                         "list");
  assert_int_equal(loom_config_set(c, "stages.train.callbacks[+].type=timer"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set stages.train.callbacks[+].type=timer: [+] appends a value: it ends "
                                         "the key");
  assert_int_equal(loom_config_set(c, "stages.train.loaders[x]=valid"), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set stages.train.loaders[x]=valid: \"[x]\": an item is [N] (N from 0), "
                                         "or [+] to append");
  loom_config_destroy(c);
  c = config_text(base, configs, configs);
  assert_int_equal(loom_config_set(c, "stages.train.loaders[+]=vlaid"), 0);
  loom_experiment *exp;
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  assert_string_equal(loom_last_error(), "--set stages.train.loaders[+]=vlaid: stages.train.loaders[2]: no loader "
                                         "named \"vlaid\" (did you mean \"valid\"?)");
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* pretrain (fc1 frozen) -> train (optimizer state reset) -> finetune (best
 * weights loaded, optimizer state kept). */
static const char *const multistage =
    "{\"experiment\": {\"name\": \"multi\", \"seed\": 5, \"logdir\": \"%s\"},"
    " \"datasets\": {\"d\": {\"type\": \"idx\", " DATA "}},"
    " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2, \"transforms\": [" NORM "]},"
    "             \"valid\": {\"dataset\": \"d\", \"batch_size\": 4, \"transforms\": [" NORM "]}},"
    " \"model\": {\"type\": \"sequential\", \"layers\": [{\"type\": \"linear\", \"name\": \"fc1\", \"out_features\": 3},"
    "   {\"type\": \"relu\"}, {\"type\": \"linear\", \"name\": \"fc2\", \"out_features\": 2}]},"
    " \"stages\": {"
    "  \"pretrain\": {\"num_epochs\": 2, \"loaders\": [\"train\", \"valid\"], \"frozen\": [\"fc1\"],"
    "   \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"adam\", \"lr\": 0.05},"
    "   \"callbacks\": [{\"type\": \"probe\", \"tag\": \"E\", \"scope\": \"experiment\"},"
    "                 {\"type\": \"probe\", \"tag\": \"S\"},"
    "                 {\"type\": \"checkpoint\", \"metric\": \"loss\", \"minimize\": false, \"scope\": \"experiment\"}]},"
    "  \"train\": {\"num_epochs\": 3, \"loaders\": [\"train\", \"valid\"], \"optimizer_state\": \"reset\"},"
    "  \"finetune\": {\"num_epochs\": 1, \"loaders\": [\"train\", \"valid\"], \"load_weights\": \"best\"}}}";

static void test_multistage_carry_over(void **state) {
  (void)state;
  memset(&plog, 0, sizeof plog);
  char *dir = test_tmpdir();
  loom_config *c = config_text(multistage, dir, configs, configs);
  run_config(c);
  loom_config_destroy(c);
  /* Stage order; E (experiment scope) is carried, S (stage scope) is not. */
  const char *want[] = {"E:pretrain", "S:pretrain", "E:train", "E:finetune"};
  assert_int_equal(plog.n, 4);
  for (int i = 0; i < 4; i++)
    assert_string_equal(plog.trace[i], want[i]);
  /* Frozen fc1 is bit-identical through pretrain while fc2 learned; in the
   * next stage fc1 trains. */
  assert_memory_equal(plog.fc1_start[0], plog.fc1_end[0], 12 * sizeof(float));
  assert_memory_not_equal(plog.all_start[0], plog.all_end[0], 23 * sizeof(float));
  assert_memory_not_equal(plog.fc1_start[1], plog.fc1_end[1], 12 * sizeof(float));
  /* Optimizer state: reset at "train" (steps start at 0), kept at "finetune". */
  assert_true(plog.steps_at_end[0] == 8);
  assert_int_equal(plog.steps_at_start[1], 0);
  assert_int_equal(plog.steps_at_start[2], plog.steps_at_end[1]);
  assert_int_equal(plog.steps_at_end[1], 12);
  /* finetune starts from best.h5's weights, not from where train ended. */
  assert_int_equal(plog.best_matches_at_start[2], 1);
  assert_memory_not_equal(plog.all_start[2], plog.all_end[1], 23 * sizeof(float));
  test_rm_rf(dir);
  free(dir);
}

/* AdamW with a parameter group at lr_scale 0: fc1 keeps its weights while
 * fc2 learns; a group naming a missing layer is refused at its position.
 * The model's "init" re-initialises fc2 only, with zero biases. */
static void test_param_groups_and_init(void **state) {
  (void)state;
  memset(&plog, 0, sizeof plog);
  const char *text =
      "{\"experiment\": {\"seed\": 2, \"logdir\": \"%s\"},"
      " \"datasets\": {\"d\": {\"type\": \"idx\", " DATA "}},"
      " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2, \"transforms\": [" NORM "]}},"
      " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 3, 2],"
      "   \"init\": {\"scheme\": \"xavier_normal\", \"zero_bias\": true, \"layers\": [\"fc2\"]}},"
      " \"stages\": {\"s\": {\"num_epochs\": 2, \"loaders\": [\"train\"], \"criterion\": {\"type\": \"cross_entropy\"},"
      "   \"optimizer\": {\"type\": \"adamw\", \"lr\": 0.05, \"no_decay_bias_norm\": true,"
      "     \"param_groups\": [{\"layers\": [\"%s\"], \"lr_scale\": 0}]},"
      "   \"callbacks\": [{\"type\": \"probe\", \"tag\": \"E\"}]}}}";
  char *dir = test_tmpdir();
  loom_config *c = config_text(text, dir, configs, configs, "fc1");
  run_config(c);
  loom_config_destroy(c);
  assert_memory_equal(plog.fc1_start[0], plog.fc1_end[0], 12 * sizeof(float));
  assert_true(plog.all_start[0][21] == 0.0f && plog.all_start[0][22] == 0.0f); /* fc2's bias */
  assert_true(plog.all_start[0][12] != 0.0f);                                  /* fc1's is PyTorch's default */
  assert_memory_not_equal(plog.all_start[0] + 15, plog.all_end[0] + 15, 8 * sizeof(float)); /* fc2 */
  c = config_text(text, dir, configs, configs, "fc3");
  loom_experiment *exp = NULL;
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  assert_non_null(strstr(loom_last_error(), "param_groups[0].layers[0]: the model has no layer \"fc3\""));
  loom_config_destroy(c);
  test_rm_rf(dir);
  free(dir);
}

/* A user per-sample transform: adds "offset" to every value. */
static int add_offset(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  (void)rng;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  for (int64_t i = 0; i < n; i++)
    x[i] += *(const float *)data;
  return 0;
}

static const loom_transform_ops offset_ops = {"add_offset", add_offset, free};

static void *make_offset(loom_params *params, const void *context, void *user) {
  (void)context, (void)user;
  double offset;
  if (loom_params_number(params, "offset", NAN, -1e9, 1e9, &offset) < 0)
    return NULL;
  float *f = malloc(sizeof *f);
  *f = (float)offset;
  return loom_transform_create(&offset_ops, f);
}

/* Records the first value of the first batch. */
static float first_value;
static int grab_first(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_global_batch_step(r) == 1)
    first_value = loom_tensor_data(loom_runner_input(r))[0];
  return 0;
}

static void *make_grab(loom_params *params, const void *context, void *user) {
  (void)params, (void)context, (void)user;
  static const loom_callback_ops ops = {.type = "grab", .on_batch_start = grab_first};
  return loom_callback_create(&ops, NULL, 0);
}

static void test_user_transform_from_json(void **state) {
  (void)state;
  const char *text =
      "{\"experiment\": {\"seed\": 1, \"logdir\": \"/tmp/loom-test-offset\"},"
      " \"datasets\": {\"d\": {\"type\": \"idx\", " DATA "}},"
      " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2, \"shuffle\": false, \"workers\": 2,"
      "   \"transforms\": [{\"type\": \"add_offset\", \"offset\": 100}]}},"
      " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 2]},"
      " \"stages\": {\"s\": {\"num_epochs\": 1, \"loaders\": [\"train\"], \"criterion\": {\"type\": \"cross_entropy\"},"
      "   \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.0}, \"callbacks\": [{\"type\": \"grab\"}]}}}";
  char buf[4096];
  snprintf(buf, sizeof buf, text, configs, configs);
  loom_config *c = loom_config_parse(buf, "inline.json");
  assert_non_null(c);
  run_config(c);
  loom_config_destroy(c);
  /* The first sample's first pixel is byte 0 of the fixture: 0/255 + 100. */
  assert_true(first_value == 100.0f);
  test_rm_rf("/tmp/loom-test-offset");
}

/* A transform whose constructor fails with a message of its own. */
static void *make_refusing(loom_params *params, const void *context, void *user) {
  (void)params, (void)context, (void)user;
  loom_error_set(LOOM_EINVAL, "inline.json asks for a GPU");
  return NULL;
}

/* The error of the config with loaders.train.transforms[0] = `transform`
 * and the override `set` (if any). */
static char *transform_error(const char *transform, const char *set) {
  char buf[4096];
  snprintf(buf, sizeof buf,
           "{\"datasets\": {\"d\": {\"type\": \"idx\", " DATA "}},\n"
           " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2,\n"
           "   \"transforms\": [%s]}},\n"
           " \"model\": {\"type\": \"mlp\", \"sizes\": [4, 2]},"
           " \"stages\": {\"s\": {\"num_epochs\": 1, \"loaders\": [\"train\"], \"criterion\": {\"type\": \"cross_entropy\"},"
           "   \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1}}}}",
           configs, configs, transform);
  loom_config *c = loom_config_parse(buf, "inline.json");
  assert_non_null(c);
  if (set)
    assert_int_equal(loom_config_set(c, set), 0);
  loom_experiment *exp = NULL;
  assert_int_equal(loom_config_build(c, &exp), LOOM_EINVAL);
  loom_config_destroy(c);
  return strdup(loom_last_error());
}

/* A user component's error gets its object's position once: a message
 * that already has one (its params', a --set's) is not wrapped again, and
 * one that merely mentions the config's name is. */
static void test_user_component_errors_wrapped_once(void **state) {
  (void)state;
  char *e = transform_error("{\"type\": \"add_offset\", \"offset\": 1.5}", "loaders.train.transforms[0].offset=1e12");
  assert_string_equal(e, "--set loaders.train.transforms[0].offset=1e12: loaders.train.transforms[0].offset: 1e+12 "
                         "is out of range (expected a number in [-1e+09, 1e+09])");
  free(e);
  e = transform_error("{\"type\": \"add_offset\", \"offset\": 1e12}", NULL);
  assert_string_equal(e, "inline.json:3:52: loaders.train.transforms[0].offset: 1e+12 is out of range (expected a "
                         "number in [-1e+09, 1e+09])");
  free(e);
  e = transform_error("{\"type\": \"refusing\"}", NULL);
  assert_string_equal(e, "inline.json:3:19: loaders.train.transforms[0]: transform refusing: inline.json asks for "
                         "a GPU");
  free(e);
}

int main(int argc, char **argv) {
  if (argc < 2)
    return 2;
  configs = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_resolved_config_reproduces_the_run),
      cmocka_unit_test(test_set_types_by_schema),
      cmocka_unit_test(test_set_rejects_invalid_utf8_keys),
      cmocka_unit_test(test_set_quotes_and_append),
      cmocka_unit_test(test_multistage_carry_over),
      cmocka_unit_test(test_user_transform_from_json),
      cmocka_unit_test(test_user_component_errors_wrapped_once),
      cmocka_unit_test(test_param_groups_and_init),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
