/* Components written by a user through the public ops: an optimizer
 * (Signum: sign-SGD with momentum, written here) and a schedule (SGDR's warm
 * restarts with doubling periods, kept as state of its own), stepped by hand
 * against values worked out in the comments, then driven through a real run
 * whose checkpoint resumes bit for bit, their own state included. And
 * config constructors of a user's with the powers the built-ins have:
 * nested components built through the registry, errors at the nested key's
 * line and column, file names relative to the config's directory. */
#define _XOPEN_SOURCE 700 /* realpath */
#include <limits.h>
#include <math.h>

#include "helpers.h"

#define PI 3.14159265358979323846

/* --- Signum: m = beta m + (1 - beta) (g + wd p); p -= lr sign(m) --- */

typedef struct signum {
  double beta;
  int64_t calls; /* update calls: state of its own, saved and restored */
} signum;

static float sign_of(float x) { return (float)((x > 0) - (x < 0)); }

static int signum_update(void *data, float *p, const float *g, float *state, size_t total, size_t off, size_t len,
                          int64_t step, double lr, double wd) {
  (void)total, (void)step;
  signum *s = data;
  s->calls++;
  for (size_t i = off; i < off + len; i++) {
    state[i] = (float)(s->beta * state[i] + (1.0 - s->beta) * (g[i] + wd * p[i]));
    p[i] -= (float)lr * sign_of(state[i]);
  }
  return 0;
}

static double signum_momentum(void *data) { return ((signum *)data)->beta; }
static void signum_set_momentum(void *data, double m) { ((signum *)data)->beta = m; }
static int signum_save(void *data, loom_state *st) { return loom_state_set_i64(st, "calls", ((signum *)data)->calls); }
static int signum_load(void *data, const loom_state *st) {
  return loom_state_get_i64(st, "calls", &((signum *)data)->calls);
}
static void signum_reset(void *data) { ((signum *)data)->calls = 0; }

static const loom_optimizer_ops signum_ops = {.type = "signum",
                                              .state_per_param = 1,
                                              .elementwise = false, /* counts its calls */
                                              .update = signum_update,
                                              .momentum = signum_momentum,
                                              .set_momentum = signum_set_momentum,
                                              .save = signum_save,
                                              .load = signum_load,
                                              .reset = signum_reset,
                                              .destroy = free};

static loom_optimizer *signum_create(double lr, double beta) {
  signum *s = calloc(1, sizeof *s);
  s->beta = beta;
  return loom_optimizer_create(&signum_ops, s, lr);
}

/* --- SGDR: cosine from base to min_lr over a cycle, then a restart with a
 * period `mult` times longer; the position in the cycle is its own state --- */

typedef struct sgdr {
  int64_t first, mult;
  double min_lr;
  int64_t pos, len;
  bool forget_on_load; /* a broken load, to show the resume test notices */
} sgdr;

static int sgdr_rate(void *data, int64_t t, double base, double metric, double *lr, double *momentum) {
  (void)metric, (void)momentum;
  sgdr *s = data;
  if (t > 0 && ++s->pos == s->len)
    s->pos = 0, s->len *= s->mult;
  *lr = s->min_lr + (base - s->min_lr) * (1.0 + cos(PI * (double)s->pos / (double)s->len)) / 2.0;
  return 0;
}

static void sgdr_reset(void *data) {
  sgdr *s = data;
  s->pos = 0, s->len = s->first;
}

static int sgdr_save(void *data, loom_state *st) {
  const sgdr *s = data;
  const int64_t v[2] = {s->pos, s->len};
  return loom_state_set_i64_array(st, "cycle", v, 2);
}

static int sgdr_load(void *data, const loom_state *st) {
  sgdr *s = data;
  int64_t v[2];
  int rc = loom_state_get_i64_array(st, "cycle", v, 2);
  if (rc == 0 && !s->forget_on_load)
    s->pos = v[0], s->len = v[1];
  return rc;
}

static const loom_scheduler_ops sgdr_ops = {.type = "sgdr",
                                            .rate = sgdr_rate,
                                            .reset = sgdr_reset,
                                            .save = sgdr_save,
                                            .load = sgdr_load,
                                            .destroy = free};

static loom_scheduler *sgdr_create(int64_t first, int64_t mult, double min_lr, bool forget_on_load) {
  sgdr *s = calloc(1, sizeof *s);
  *s = (sgdr){.first = first, .mult = mult, .min_lr = min_lr, .forget_on_load = forget_on_load};
  return loom_scheduler_create(&sgdr_ops, s);
}

/* SGDR's rate at step k, from the cycle lengths 5, 10, 20, ... */
static double sgdr_expected(int64_t k, double base, double min_lr) {
  int64_t len = 5;
  while (k >= len)
    k -= len, len *= 2;
  return min_lr + (base - min_lr) * (1.0 + cos(PI * (double)k / (double)len)) / 2.0;
}

/* A model with exactly 3 parameters: Linear(2 -> 1) with bias. */
static loom_model *three_params(void) {
  loom_model *m = loom_model_create();
  assert_int_equal(loom_model_add(m, "fc", loom_linear_create(2, 1, true)), 0);
  int64_t in = 2;
  assert_int_equal(loom_model_build(m, 1, &in, 1), 0);
  return m;
}

static void test_user_optimizer_steps(void **state) {
  (void)state;
  loom_model *m = three_params();
  float *p = loom_model_params(m), *g = loom_model_grads(m);
  p[0] = 1.0f, p[1] = -2.0f, p[2] = 0.5f;
  g[0] = 0.5f, g[1] = -0.25f, g[2] = 0.0f;
  loom_optimizer *opt = signum_create(0.1, 0.5);
  assert_string_equal(loom_optimizer_type(opt), "signum");
  /* step 1: m = 0.5 g = [0.25, -0.125, 0]; p -= 0.1 sign(m) = [0.9, -1.9, 0.5] */
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  assert_float_equal(p[0], 0.9, 1e-6);
  assert_float_equal(p[1], -1.9, 1e-6);
  assert_float_equal(p[2], 0.5, 0);
  /* step 2 with g = [-1, -1, 1]: m = 0.5 m + 0.5 g = [-0.375, -0.5625, 0.5];
   * p = [1.0, -1.8, 0.4] */
  g[0] = -1.0f, g[1] = -1.0f, g[2] = 1.0f;
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  assert_float_equal(p[0], 1.0, 1e-6);
  assert_float_equal(p[1], -1.8, 1e-6);
  assert_float_equal(p[2], 0.4, 1e-6);
  size_t n;
  const float *buf = loom_optimizer_state(opt, &n);
  assert_int_equal(n, 3);
  assert_true(buf[0] == -0.375f && buf[1] == -0.5625f && buf[2] == 0.5f);
  /* Not elementwise: one call per range (the layer's weights, its bias
   * spared decay), never cut over threads. */
  assert_int_equal(((signum *)loom_optimizer_data(opt))->calls, 2);
  loom_optimizer_set_no_decay_bias_norm(opt, true);
  assert_int_equal(loom_optimizer_step(opt, m), 0);
  assert_int_equal(((signum *)loom_optimizer_data(opt))->calls, 4);
  /* lr and momentum through the generic calls; save and load carry the
   * buffer and the ops' own state. */
  loom_optimizer_set_momentum(opt, 0.75);
  assert_float_equal(loom_optimizer_momentum(opt), 0.75, 0);
  loom_state *saved = loom_state_create();
  assert_int_equal(loom_optimizer_save(opt, saved), 0);
  assert_true(loom_state_has(saved, "calls"));
  loom_optimizer *again = signum_create(0.5, 0.1);
  assert_int_equal(loom_optimizer_load(again, saved), 0);
  assert_int_equal(((signum *)loom_optimizer_data(again))->calls, 4);
  assert_float_equal(loom_optimizer_momentum(again), 0.75, 0);
  assert_float_equal(loom_optimizer_lr(again), 0.1, 0);
  assert_int_equal(loom_optimizer_steps(again), 3);
  assert_memory_equal(loom_optimizer_state(again, &n), buf, 3 * sizeof(float));
  loom_optimizer_reset(again);
  assert_int_equal(((signum *)loom_optimizer_data(again))->calls, 0);
  assert_null(loom_optimizer_state(again, &n));
  /* A built-in refuses the user's state by type. */
  loom_sgd_options so = {.lr = 0.1, .momentum = 0.9};
  loom_optimizer *sgd = loom_sgd_create(&so);
  assert_int_equal(loom_optimizer_load(sgd, saved), LOOM_EFORMAT);
  assert_non_null(strstr(loom_last_error(), "signum"));
  loom_optimizer_destroy(sgd);
  loom_optimizer_destroy(again);
  loom_state_destroy(saved);
  loom_optimizer_destroy(opt);
  loom_model_destroy(m);
}

static void test_user_ops_are_checked(void **state) {
  (void)state;
  /* data is freed when creation fails */
  loom_optimizer_ops no_update = {.type = "x", .destroy = free};
  assert_null(loom_optimizer_create(&no_update, malloc(8), 0.1));
  assert_int_equal(loom_last_error_code(), LOOM_EINVAL);
  assert_null(loom_optimizer_create(&signum_ops, calloc(1, sizeof(signum)), -1));
  loom_scheduler_ops no_rate = {.type = "y", .destroy = free};
  assert_null(loom_scheduler_create(&no_rate, malloc(8)));
  assert_int_equal(loom_last_error_code(), LOOM_EINVAL);
}

static void test_user_scheduler_steps(void **state) {
  (void)state;
  loom_optimizer *opt = signum_create(0.2, 0.9);
  loom_scheduler *s = sgdr_create(5, 2, 0.01, false);
  assert_string_equal(loom_scheduler_type(s), "sgdr");
  assert_false(loom_scheduler_needs_metric(s));
  assert_int_equal(loom_scheduler_start(s, opt), 0);
  for (int64_t k = 0; k < 40; k++) {
    if (k)
      assert_int_equal(loom_scheduler_step(s, opt, NAN), 0);
    assert_float_equal(loom_optimizer_lr(opt), sgdr_expected(k, 0.2, 0.01), 1e-12);
    assert_float_equal(loom_scheduler_lr(s), loom_optimizer_lr(opt), 0);
    if (k == 0 || k == 5 || k == 15 || k == 35) /* the restarts */
      assert_float_equal(loom_optimizer_lr(opt), 0.2, 1e-15);
  }
  loom_scheduler_destroy(s);
  loom_optimizer_destroy(opt);
}

/* --- a real run, snapshotted mid-epoch and resumed --- */

typedef struct recorder {
  double lr[64]; /* the rate each optimizer step used */
  int64_t n;
  const char *snapshot; /* saved at train batch 5 of epoch 2, if set */
} recorder;

static int rec_batch_start(loom_callback *cb, loom_runner *r) {
  recorder *rec = loom_callback_data(cb);
  int64_t k = loom_runner_optimizer_step_count(r);
  if (loom_runner_is_train_loader(r) && k < 64)
    rec->lr[k] = loom_optimizer_lr(loom_runner_optimizer(r)), rec->n = k + 1;
  return 0;
}

static int rec_batch_end(loom_callback *cb, loom_runner *r) {
  recorder *rec = loom_callback_data(cb);
  if (rec->snapshot && loom_runner_global_epoch(r) == 2 && loom_runner_is_train_loader(r) &&
      loom_runner_loader_batch_step(r) == 5)
    return loom_runner_save_checkpoint(r, rec->snapshot);
  return 0;
}

static const loom_callback_ops recorder_ops = {
    .type = "recorder", .on_batch_start = rec_batch_start, .on_batch_end = rec_batch_end};

static loom_experiment *build(const char *logdir, recorder *rec, bool broken_load) {
  loom_experiment *exp = loom_experiment_create("extensions");
  loom_experiment_set_seed(exp, 5);
  loom_experiment_set_logdir(exp, logdir);
  const int64_t sizes[] = {8, 16, 3};
  loom_stage *st = loom_experiment_add_stage(exp, "train", 3);
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, signum_create(0.02, 0.9)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(200, 8, 3, 16, true)), 0); /* 13 batches */
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(60, 8, 3, 16, false)), 0);
  loom_scheduler *s = sgdr_create(5, 2, 0.001, broken_load);
  assert_int_equal(loom_stage_add_callback(st, loom_scheduler_callback_create(s, LOOM_SCHEDULE_PER_STEP, NULL, NULL)),
                   0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&recorder_ops, rec, 300)), 0);
  return exp;
}

typedef struct outcome {
  float *params;
  size_t n;
  char *jsonl;
  int64_t calls;
} outcome;

static void run(const char *logdir, recorder *rec, const char *resume, bool broken_load, outcome *out) {
  loom_experiment *exp = build(logdir, rec, broken_load);
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, resume), 0);
  if (loom_run_experiment(r, exp) < 0)
    fail_msg("%s", loom_last_error());
  loom_model *m = loom_runner_model(r);
  out->n = loom_model_num_params(m);
  out->params = malloc(out->n * sizeof(float));
  memcpy(out->params, loom_model_params(m), out->n * sizeof(float));
  out->jsonl = jsonl_without_time(logdir);
  out->calls = ((signum *)loom_optimizer_data(loom_runner_optimizer(r)))->calls;
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
}

/* The reference run's metrics.jsonl in `dir`, as a killed run leaves it:
 * the resumed logger trims what came after the checkpoint. */
static void copy_jsonl(const char *from, const char *dir) {
  char cmd[1400];
  snprintf(cmd, sizeof cmd, "cp '%s/metrics.jsonl' '%s/'", from, dir);
  assert_int_equal(system(cmd), 0);
}

static void test_user_components_resume_exactly(void **state) {
  (void)state;
  char *ref_dir = test_tmpdir(), *dir = test_tmpdir(), *bad_dir = test_tmpdir(), snapshot[600];
  snprintf(snapshot, sizeof snapshot, "%s/mid.h5", ref_dir);
  recorder ref_rec = {.snapshot = snapshot}, rec = {0}, bad_rec = {0};
  outcome ref, got, bad;
  run(ref_dir, &ref_rec, NULL, false, &ref);
  /* The schedule drove the run: 39 steps at SGDR's rates. */
  assert_int_equal(ref_rec.n, 39);
  for (int64_t k = 0; k < ref_rec.n; k++)
    assert_float_equal(ref_rec.lr[k], sgdr_expected(k, 0.02, 0.001), 1e-12);
  assert_int_equal(ref.calls, 39 * 2); /* two Linear layers, one call each per step */
  /* Resumed from train batch 5 of epoch 2 (step 18, inside the 20-step
   * cycle): the same rates, parameters and metrics, and Signum's count. */
  copy_jsonl(ref_dir, dir);
  run(dir, &rec, snapshot, false, &got);
  for (int64_t k = 18; k < 39; k++)
    assert_float_equal(rec.lr[k], ref_rec.lr[k], 0);
  assert_int_equal(got.n, ref.n);
  assert_memory_equal(got.params, ref.params, ref.n * sizeof(float));
  assert_int_equal(got.calls, ref.calls);
  assert_string_equal(got.jsonl, ref.jsonl);
  /* The check is sharp: a schedule that forgets its cycle on load resumes
   * at other rates and ends elsewhere. */
  copy_jsonl(ref_dir, bad_dir);
  run(bad_dir, &bad_rec, snapshot, true, &bad);
  assert_true(bad_rec.lr[20] != ref_rec.lr[20]);
  assert_memory_not_equal(bad.params, ref.params, ref.n * sizeof(float));
  outcome *all[] = {&ref, &got, &bad};
  for (int i = 0; i < 3; i++)
    free(all[i]->params), free(all[i]->jsonl);
  test_rm_rf(ref_dir), test_rm_rf(dir), test_rm_rf(bad_dir);
  free(ref_dir), free(dir), free(bad_dir);
}


/* --- a user's config constructors --- */

/* {"type": "test_tower", "blocks": [layer objects, each with an optional
 * "name"], "head": a layer object}: the blocks, then the head. */
static void *tower(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_model_context *ctx = context;
  size_t n;
  if (loom_params_array_length(p, "blocks", true, &n) < 0)
    return NULL;
  loom_model *m = loom_model_create();
  for (size_t i = 0; i < n; i++) {
    char key[32], def[32];
    snprintf(key, sizeof key, "blocks[%zu]", i);
    snprintf(def, sizeof def, "block%zu", i + 1);
    loom_params *lp;
    loom_layer *layer = NULL;
    const char *name;
    int rc = loom_params_open(p, key, true, &lp);
    if (rc == 0 && (rc = loom_params_build(lp, LOOM_KIND_LAYER, NULL, (void **)&layer)) == 0 &&
        (rc = loom_params_string(lp, "name", def, &name)) == 0 && (rc = loom_params_check_unknown(lp)) == 0)
      rc = loom_model_add(m, name, layer);
    else
      loom_component_destroy(LOOM_KIND_LAYER, layer);
    loom_params_close(lp);
    if (rc < 0) {
      loom_model_destroy(m);
      return NULL;
    }
  }
  loom_layer *head;
  if (loom_params_component(p, "head", LOOM_KIND_LAYER, NULL, true, (void **)&head) < 0 ||
      loom_model_add(m, "head", head) < 0 || loom_model_build(m, ctx->ndim, ctx->sample_shape, ctx->seed) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  return m;
}

/* {"type": "test_csv", "path": "data.csv"}: the path is the config's. */
static void *csv_file(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  const char *path;
  if (loom_params_file(p, "path", NULL, &path) < 0)
    return NULL;
  loom_dataset *ds = loom_csv_dataset_open(path, -1, false);
  if (!ds)
    loom_params_error(p, "path", loom_last_error_code(), "%s", loom_last_error());
  return ds;
}

/* {"type": "test_signum", "lr": 0.1, "beta": 0.9} */
static void *signum_ctor(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double lr, beta;
  if (loom_params_number(p, "lr", NAN, 0, 1e300, &lr) < 0 || loom_params_number(p, "beta", 0.9, 0, 1, &beta) < 0)
    return NULL;
  return signum_create(lr, beta);
}

static int register_ctors(void **state) {
  (void)state;
  if (loom_register(LOOM_KIND_MODEL, "test_tower", tower, NULL) < 0 ||
      loom_register(LOOM_KIND_DATASET, "test_csv", csv_file, NULL) < 0 ||
      loom_register(LOOM_KIND_OPTIMIZER, "test_signum", signum_ctor, NULL) < 0)
    return -1;
  return test_dir_setup(state);
}

static const char tower_config[] =
    "{\n"
    "  \"experiment\": {\"name\": \"user_ctor\", \"seed\": 3},\n"
    "  \"datasets\": {\"train\": {\"type\": \"test_csv\", \"path\": \"data.csv\"}},\n"
    "  \"loaders\": {\"train\": {\"dataset\": \"train\", \"batch_size\": 4}},\n"
    "  \"model\": {\n"
    "    \"type\": \"test_tower\",\n"
    "    \"blocks\": [\n"
    "      {\"type\": \"linear\", \"out_features\": 8, \"name\": \"hidden\"},\n"
    "      {\"type\": \"relu\"}\n"
    "    ],\n"
    "    \"head\": {\"type\": \"linear\", \"out_features\": 2}\n"
    "  },\n"
    "  \"stages\": {\"train\": {\"num_epochs\": 1, \"loaders\": [\"train\"],\n"
    "    \"criterion\": {\"type\": \"cross_entropy\"},\n"
    "    \"optimizer\": {\"type\": \"test_signum\", \"lr\": 0.1,\n"
    "                  \"param_groups\": [{\"layers\": [\"head\"], \"lr_scale\": 0}]}}}\n"
    "}\n";

/* Writes data.csv (8 rows: 3 features, a class 0/1) and config.json, the
 * config with `from` replaced by `to`, into test_dir; returns the config's
 * path. */
static const char *write_tower(const char *from, const char *to) {
  static char path[600];
  char csv[600];
  snprintf(csv, sizeof csv, "%s/data.csv", test_dir);
  FILE *f = fopen(csv, "w");
  for (int i = 0; i < 8; i++)
    fprintf(f, "%d,%d,%d,%d\n", i, 7 - i, i % 3, i % 2);
  fclose(f);
  char text[sizeof tower_config + 256];
  const char *at = from ? strstr(tower_config, from) : NULL;
  if (at)
    snprintf(text, sizeof text, "%.*s%s%s", (int)(at - tower_config), tower_config, to, at + strlen(from));
  else
    snprintf(text, sizeof text, "%s", tower_config);
  snprintf(path, sizeof path, "%s/config.json", test_dir);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

/* "PATH:LINE:COL: " of the first `needle` in the config written last. */
static void position_of(const char *needle, char *out, size_t size) {
  char path[600];
  snprintf(path, sizeof path, "%s/config.json", test_dir);
  char *text = test_read_file(path);
  const char *at = strstr(text, needle);
  assert_non_null(at);
  int line = 1, col = 1;
  for (const char *c = text; c < at; c++)
    *c == '\n' ? (line++, col = 1) : col++;
  snprintf(out, size, "%s:%d:%d: ", path, line, col);
  free(text);
}

/* The model's parameters when the stage starts. */
typedef struct initial {
  float params[64];
  size_t n;
} initial;

static int keep_initial(loom_callback *cb, loom_runner *r) {
  initial *in = loom_callback_data(cb);
  loom_model *m = loom_runner_model(r);
  in->n = loom_model_num_params(m);
  assert_true(in->n <= 64);
  memcpy(in->params, loom_model_params(m), in->n * sizeof(float));
  return 0;
}

static const loom_callback_ops initial_ops = {.type = "initial", .on_stage_start = keep_initial};

static void test_user_constructor_builds_nested(void **state) {
  (void)state;
  loom_config *c = loom_config_load(write_tower(NULL, NULL));
  assert_non_null(c);
  loom_experiment *exp;
  if (loom_config_build(c, &exp) < 0)
    fail_msg("%s", loom_last_error());
  /* The nested layers, named as given or by default, then the head. */
  initial in;
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&initial_ops, &in, 0)), 0);
  loom_runner *r = loom_runner_create();
  loom_model *m = NULL;
  assert_int_equal(loom_run_experiment(r, exp), 0);
  m = loom_runner_model(r);
  assert_int_equal(loom_model_num_layers(m), 3);
  assert_string_equal(loom_model_layer_name(m, 0), "hidden");
  assert_string_equal(loom_model_layer_name(m, 1), "block2");
  assert_string_equal(loom_model_layer_name(m, 2), "head");
  assert_int_equal(loom_model_num_params(m), 3 * 8 + 8 + 8 * 2 + 2);
  assert_int_equal(loom_runner_optimizer_step_count(r), 2); /* 8 rows of data.csv, batches of 4 */
  /* The user's optimizer took the param group: the head's rate was 0, so
   * its weights are the initial ones; the hidden layer's moved. */
  size_t off, n;
  assert_int_equal(in.n, loom_model_num_params(m));
  loom_model_layer_params(m, 2, &off, &n);
  assert_int_equal(n, 18);
  assert_memory_equal(loom_model_params(m) + off, in.params + off, n * sizeof(float));
  loom_model_layer_params(m, 0, &off, &n);
  assert_memory_not_equal(loom_model_params(m) + off, in.params + off, n * sizeof(float));
  /* The path went back into the config absolute, against the config's
   * directory (not the working directory). */
  char written[700], want[PATH_MAX + 16], real[PATH_MAX];
  snprintf(written, sizeof written, "%s/resolved.json", test_dir);
  assert_int_equal(loom_config_write(c, written), 0);
  json_t *root = json_load_file(written, 0, NULL);
  assert_non_null(root);
  assert_non_null(realpath(test_dir, real));
  snprintf(want, sizeof want, "%s/data.csv", real);
  assert_string_equal(json_string_value(json_object_get(json_object_get(json_object_get(root, "datasets"), "train"),
                                                        "path")),
                      want);
  json_decref(root);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
}

/* Builds the config with `from` replaced by `to`; the error must start with
 * the position of `at` in it and continue with `message`. */
static void expect_error(const char *from, const char *to, const char *at, const char *message) {
  loom_config *c = loom_config_load(write_tower(from, to));
  assert_non_null(c);
  loom_experiment *exp = NULL;
  assert_true(loom_config_build(c, &exp) < 0);
  assert_null(exp);
  char want[1200];
  position_of(at, want, sizeof want);
  snprintf(want + strlen(want), sizeof want - strlen(want), "%s", message);
  assert_string_equal(loom_last_error(), want);
  loom_config_destroy(c);
}

static void test_user_constructor_errors_are_placed(void **state) {
  (void)state;
  /* A key nobody reads in a nested layer: at the key. */
  expect_error("{\"type\": \"relu\"}", "{\"type\": \"relu\", \"slope\": 1}", "\"slope\"",
               "model.blocks[1].slope: unknown key (known keys here: type, name)");
  /* A nested constructor's own range check: at the value. */
  expect_error("\"out_features\": 8", "\"out_features\": 0", "0, \"name\"",
               "model.blocks[0].out_features: 0 is out of range (expected an integer >= 1)");
  /* An unknown type in the nested head. */
  expect_error("{\"type\": \"linear\", \"out_features\": 2}", "{\"type\": \"linaer\", \"out_features\": 2}",
               "\"linaer\"", "model.head.type: unknown layer \"linaer\" (did you mean \"linear\"?)");
  /* A nested layer that is not an object. */
  expect_error("{\"type\": \"relu\"}", "\"relu\"", "\"relu\"",
               "model.blocks[1]: expected an object, got the string \"relu\"");
  /* The param group of the user's optimizer names a layer the user's model lacks. */
  expect_error("[\"head\"]", "[\"hed\"]", "\"hed\"",
               "stages.train.optimizer.param_groups[0].layers[0]: the model has no layer \"hed\" (did you mean "
               "\"head\"?)");
  /* A missing file, reported at its key with the resolved path. */
  char message[PATH_MAX + 64], real[PATH_MAX];
  assert_non_null(realpath(test_dir, real));
  loom_config *c = loom_config_load(write_tower("data.csv", "nothere.csv"));
  loom_experiment *exp;
  assert_true(loom_config_build(c, &exp) < 0);
  position_of("\"nothere.csv\"", message, sizeof message);
  assert_non_null(strstr(loom_last_error(), message));
  snprintf(message, sizeof message, "%s/nothere.csv", real);
  assert_non_null(strstr(loom_last_error(), message));
  loom_config_destroy(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_user_optimizer_steps),
      cmocka_unit_test(test_user_ops_are_checked),
      cmocka_unit_test(test_user_scheduler_steps),
      cmocka_unit_test(test_user_components_resume_exactly),
  };
  const struct CMUnitTest ctor_tests[] = {
      cmocka_unit_test(test_user_constructor_builds_nested),
      cmocka_unit_test(test_user_constructor_errors_are_placed),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  return failed + cmocka_run_group_tests(ctor_tests, register_ctors, test_dir_teardown);
}
