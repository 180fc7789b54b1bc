/* A whole experiment with its model on a device backend, checked without a
 * GPU on the fake device (tests/fake_device.h: tagged pointers, so any host
 * read of device memory by the runner or a built-in callback faults; the
 * CPU's ops behind them, so the results must be the CPU's bit for bit).
 * The same two-stage experiment runs once on the CPU and once with
 * loom_experiment_set_backend(fake): the metrics and final weights must
 * agree, the transfers per training batch stay bounded, and a checkpoint
 * the device run wrote resumes on the CPU to the CPU run's weights.
 *
 * The fake device has asynchronous uploads (pinned host memory, a copy
 * stream's cycle checked, loom/backend.h's loom_upload): every batch goes
 * through them, with no from_host copy per batch, with 0 and 2 loader
 * workers; without them (FAKE_NO_UPLOAD) the runner copies each batch
 * after on_batch_start. Both give the CPU's bits. */
#include "helpers.h"

#include <signal.h>

#include "fake_device.h"

static loom_backend *fake;
static fake_device *dev;

static int setup(void **state) {
  (void)state;
  fake = fake_device_create((size_t)64 << 20, &dev);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  loom_backend_destroy(fake);
  return 0;
}

/* The transfers and the ops whose result lands on the host (each a wait
 * for the device) of each training batch, from after its on_batch_start
 * callbacks (order below: this one last) to after its on_batch_end ones:
 * the upload, handle_batch and the metric callbacks. */
typedef struct transfers {
  fake_device_counts at_start;
  int64_t batches, max_to_host, max_from_host, first_to_host, first_from_host, max_host_results, max_updates;
  int64_t all_batches;  /* of every loader */
  int64_t max_uploads;  /* asynchronous uploads from on_batch_start to on_batch_end */
  int64_t min_waits, max_waits; /* upload waits in that span */
  int64_t interrupt_at; /* interrupt after this global train batch (0: never) */
  int64_t valid_batches, min_valid_waits, max_valid_waits; /* evaluation batches: to_host and host results */
} transfers;

static int tr_batch_start(loom_callback *cb, loom_runner *r) {
  transfers *t = loom_callback_data(cb);
  if (dev)
    t->at_start = fake_device_counts_of(dev);
  (void)r;
  return 0;
}

/* An asynchronous upload's wait comes between on_batch_start and
 * on_batch_end (its copy before, when the batch was made). */
static void count_uploads(transfers *t) {
  fake_device_counts now = fake_device_counts_of(dev);
  int64_t uploads = now.uploads - t->at_start.uploads, waits = now.upload_waits - t->at_start.upload_waits;
  if (uploads > t->max_uploads)
    t->max_uploads = uploads;
  if (t->all_batches == 0 || waits < t->min_waits)
    t->min_waits = waits;
  if (waits > t->max_waits)
    t->max_waits = waits;
  t->all_batches++;
}

static int tr_batch_end(loom_callback *cb, loom_runner *r) {
  transfers *t = loom_callback_data(cb);
  if (dev)
    count_uploads(t);
  if (dev && !loom_runner_is_train_loader(r)) {
    fake_device_counts now = fake_device_counts_of(dev);
    int64_t waits = now.to_host - t->at_start.to_host + now.host_results - t->at_start.host_results;
    if (t->valid_batches++ == 0 || waits < t->min_valid_waits)
      t->min_valid_waits = waits;
    if (waits > t->max_valid_waits)
      t->max_valid_waits = waits;
  }
  if (!loom_runner_is_train_loader(r))
    return 0;
  if (t->interrupt_at && loom_runner_global_batch_step(r) == t->interrupt_at)
    loom_runner_interrupt(r, "test interrupt");
  if (!dev)
    return 0;
  fake_device_counts now = fake_device_counts_of(dev);
  int64_t to_host = now.to_host - t->at_start.to_host, from_host = now.from_host - t->at_start.from_host;
  int64_t host_results = now.host_results - t->at_start.host_results;
  if (host_results > t->max_host_results)
    t->max_host_results = host_results;
  if (now.updates - t->at_start.updates > t->max_updates)
    t->max_updates = now.updates - t->at_start.updates;
  if (t->batches++ == 0) {
    t->first_from_host = from_host; /* the criterion's tensors move to the device */
    t->first_to_host = to_host;
    return 0;
  }
  if (to_host > t->max_to_host)
    t->max_to_host = to_host;
  if (from_host > t->max_from_host)
    t->max_from_host = from_host;
  return 0;
}

static const loom_callback_ops transfers_ops = {
    .type = "transfers", .on_batch_start = tr_batch_start, .on_batch_end = tr_batch_end};

/* A callback with a batch result (loom_runner_add_batch_result): the
 * first score of each batch, copied on the device into its result and
 * made the batch metric "echo" when it arrives; on a batch that was not
 * deferred (the CPU run), read at on_batch_end. Its issue or finish fails
 * at global train batch `fail_at` when asked. */
typedef struct echo {
  int64_t fail_at;
  bool fail_issue, no_message;
  int64_t finished, read_at_end; /* batches whose echo came by the copy, or was read at on_batch_end */
} echo;

static int echo_fails(const echo *e, loom_runner *r, bool issuing) {
  if (!e->fail_at || issuing != e->fail_issue || !loom_runner_is_train_loader(r) ||
      loom_runner_global_batch_step(r) != e->fail_at)
    return 0;
  return e->no_message ? LOOM_EIO : loom_error_set(LOOM_EIO, "the test's %s failed", issuing ? "issue" : "finish");
}

static int echo_issue(loom_callback *cb, loom_runner *r, loom_backend *b, void *device) {
  int rc = echo_fails(loom_callback_data(cb), r, true);
  return rc < 0 ? rc : loom_backend_copy(b, device, loom_tensor_data(loom_runner_output(r)), sizeof(float));
}

static int echo_finish(loom_callback *cb, loom_runner *r, const void *host) {
  echo *e = loom_callback_data(cb);
  int rc = echo_fails(e, r, false);
  e->finished++;
  return rc < 0 ? rc : loom_metrics_set(loom_runner_batch_metrics(r), "echo", *(const float *)host);
}

static int echo_stage_start(loom_callback *cb, loom_runner *r) {
  const loom_batch_result result = {.bytes = sizeof(float), .issue = echo_issue, .finish = echo_finish};
  return loom_runner_add_batch_result(r, cb, &result);
}

static int echo_batch_end(loom_callback *cb, loom_runner *r) {
  if (loom_runner_batch_result_done(r, cb))
    return 0;
  const float *scores = loom_tensor_host_data(loom_runner_output(r));
  ((echo *)loom_callback_data(cb))->read_at_end++;
  return loom_metrics_set(loom_runner_batch_metrics(r), "echo", scores[0]);
}

static const loom_callback_ops echo_ops = {
    .type = "echo", .on_stage_start = echo_stage_start, .on_batch_end = echo_batch_end};

/* What build_with adds for some tests: an echo callback, a filter on the
 * accuracy. */
static echo *with_echo;
static const loom_event_filter *accuracy_filter;

/* Pretrain (Adam, early stopping that keeps the best weights) then
 * finetune (SGD with momentum, fc1 frozen) the MLP 8-16-3 on the same
 * model; accuracy, metrics.jsonl and checkpoints on. */
static loom_experiment *build_with(const char *logdir, loom_backend *backend, transfers *t, int workers) {
  loom_experiment *exp = loom_experiment_create("device");
  loom_experiment_set_seed(exp, 7);
  loom_experiment_set_logdir(exp, logdir);
  loom_experiment_set_backend(exp, backend);
  const int64_t sizes[] = {8, 16, 3};
  loom_adam_options adam = loom_adam_defaults();
  adam.lr = 0.01;
  loom_stage *pre = loom_experiment_add_stage(exp, "pretrain", 3);
  assert_int_equal(loom_stage_set_model(pre, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(pre, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(pre, loom_adam_create(&adam)), 0);
  /* 7 and 3 batches, the last ones partial */
  assert_int_equal(loom_stage_add_loader(pre, "train", test_loader_workers(100, 8, 3, 16, true, workers)), 0);
  assert_int_equal(loom_stage_add_loader(pre, "valid", test_loader_workers(40, 8, 3, 16, false, workers)), 0);
  loom_early_stopping_options es = loom_early_stopping_defaults();
  es.patience = 1;
  es.restore_best_weights = true;
  assert_int_equal(loom_stage_add_callback(pre, loom_early_stopping_callback_create(&es)), 0);
  loom_stage *fine = loom_experiment_add_stage(exp, "finetune", 2);
  loom_sgd_options sgd = {.lr = 0.05, .momentum = 0.9};
  assert_int_equal(loom_stage_set_optimizer(fine, loom_sgd_create(&sgd)), 0);
  assert_int_equal(loom_stage_freeze(fine, "fc1"), 0);
  loom_callback *accuracy = loom_accuracy_callback_create(NULL, 0);
  if (accuracy_filter)
    assert_int_equal(loom_callback_set_filter(accuracy, accuracy_filter), 0);
  assert_int_equal(loom_experiment_add_callback(exp, accuracy), 0);
  if (with_echo)
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&echo_ops, with_echo, 10)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&transfers_ops, t, 1000)), 0);
  return exp;
}

static loom_experiment *build(const char *logdir, loom_backend *backend, transfers *t) {
  return build_with(logdir, backend, t, 0);
}

typedef struct outcome {
  float *params;
  size_t n;
  char *jsonl;
} outcome;

/* Runs exp (resuming from `resume` if not NULL); keeps the final weights,
 * read through the host-copy helper wherever the model is. */
static int run(loom_experiment *exp, const char *resume, outcome *out) {
  loom_runner *r = loom_runner_create();
  if (resume)
    assert_int_equal(loom_runner_set_resume(r, resume), 0);
  int rc = loom_run_experiment(r, exp);
  loom_model *m = loom_runner_model(r);
  if (out && m) {
    out->n = loom_model_num_params(m);
    out->params = malloc(out->n * sizeof(float));
    assert_int_equal(loom_model_params_to_host(m, out->params), 0);
    out->jsonl = jsonl_without_time(loom_experiment_logdir(exp));
  }
  loom_runner_destroy(r);
  return rc;
}

static void outcome_free(outcome *o) { free(o->params), free(o->jsonl); }

/* Runs the experiment on the CPU; keeps what came out. */
static void cpu_run(const char *logdir, outcome *out) {
  transfers t = {0};
  fake_device *keep = dev;
  dev = NULL; /* nothing to count */
  loom_experiment *exp = build(logdir, NULL, &t);
  int rc = run(exp, NULL, out);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  loom_experiment_destroy(exp);
  dev = keep;
}

/* The experiment on backend b (device d, counted) with `workers` loader
 * threads: the CPU run's metrics and weights, bit for bit, and every
 * device allocation, pinned buffer and upload slot back at the end. */
static void run_on(fake_device *d, loom_backend *b, int workers, transfers *t) {
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want = {0}, got = {0};
  cpu_run(cpu_dir, &want);

  fake_device *keep = dev;
  dev = d;
  fake_device_reset_counts(d);
  loom_experiment *exp = build_with(dev_dir, b, t, workers);
  int rc = run(exp, NULL, &got);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  assert_string_equal(want.jsonl, got.jsonl);
  assert_int_equal(want.n, got.n);
  assert_memory_equal(want.params, got.params, want.n * sizeof(float));
  /* Training batches: 7 per epoch, 3 + 2 epochs (or fewer if early
   * stopping stopped the pretraining), all counted. */
  assert_true(t->batches >= 7 * 3 && t->batches <= 7 * 5);
  /* Per training batch after the first, the batch is deferred
   * (runner_deferred.c): the loss's sums, the step's gate over every
   * gradient and the accuracy's hits (its batch result) come back in one
   * copy at its end (1 to_host: the batch's one wait); no op result on the
   * host, none per layer, and the cross-entropy checks device targets
   * through its sums. */
  assert_int_equal(t->max_to_host, 1);
  assert_int_equal(t->max_host_results, 0);
  assert_int_equal(t->first_to_host, 1);
  /* An evaluation batch too: the loss's sums and the hits, one copy. */
  assert_true(t->valid_batches >= 3 * 3);
  assert_int_equal(t->min_valid_waits, 1);
  assert_int_equal(t->max_valid_waits, 1);
  /* The step: one update op for both layers' ranges (update_ranges). */
  assert_int_equal(t->max_updates, 1);
  /* The run gave back its pinned buffers and upload slots (the loaders'
   * hooks came off), before the experiment went. */
  fake_device_counts after = fake_device_counts_of(d);
  assert_int_equal(after.pinned, 0);
  assert_int_equal(after.upload_slots, 0);
  loom_experiment_destroy(exp);
  /* The device's memory all went back when the experiment's model did. */
  assert_int_equal(fake_device_counts_of(d).live, 0);
  dev = keep;
  outcome_free(&want), outcome_free(&got);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

/* Every batch (train and valid, the last partial ones included) is copied
 * on the copy stream when it is made, its wait issued after its
 * on_batch_start: no from_host copy per batch, one upload per batch in all
 * (the loaders' workers make no batch past an epoch's end). */
static void check_async(const transfers *t, fake_device_counts c) {
  assert_int_equal(t->max_from_host, 0);
  /* On the first batch the cross-entropy's probs and its dout move to the
   * device once, contents and all. */
  assert_int_equal(t->first_from_host, 2);
  assert_int_equal(c.uploads, t->all_batches);
  assert_int_equal(c.upload_waits, t->all_batches);
  assert_int_equal(t->min_waits, 1);
  assert_int_equal(t->max_waits, 1);
}

/* Batches made in the loop's thread (no workers): each copy starts inside
 * loom_loader_next, before on_batch_start. */
static void same_run_on_device(void **state) {
  (void)state;
  transfers t = {0};
  run_on(dev, fake, 0, &t);
  check_async(&t, fake_device_counts_of(dev));
  assert_int_equal(t.max_uploads, 0);
}

/* Batches made by 2 workers, up to the prefetch depth ahead: each copy
 * starts in the worker's thread, into its slot's device tensors. */
static void same_run_on_device_with_workers(void **state) {
  (void)state;
  transfers t = {0};
  run_on(dev, fake, 2, &t);
  check_async(&t, fake_device_counts_of(dev));
}

/* A device without asynchronous uploads: the input and the target are
 * copied (2 from_host) after each on_batch_start. */
static void same_run_without_async_uploads(void **state) {
  (void)state;
  fake_device *d;
  loom_backend *b = fake_device_create_without((size_t)64 << 20, FAKE_NO_UPLOAD, &d);
  assert_false(loom_backend_can_upload_async(b));
  transfers t = {0};
  run_on(d, b, 2, &t);
  assert_int_equal(t.max_from_host, 2);
  /* On the first batch the cross-entropy's probs and its dout move to the
   * device once, contents and all (2 more). */
  assert_int_equal(t.first_from_host, 4);
  assert_int_equal(fake_device_counts_of(d).uploads, 0);
  loom_backend_destroy(b);
}

/* After a failed run on the fake device: its pinned buffers and upload
 * slots went back with the run, its memory with the experiment; `dir`
 * goes. */
static void failed_run_gave_back(loom_experiment *exp, char *dir) {
  fake_device_counts after = fake_device_counts_of(dev);
  assert_int_equal(after.pinned, 0);
  assert_int_equal(after.upload_slots, 0);
  loom_experiment_destroy(exp);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  test_rm_rf(dir);
  free(dir);
}

/* The 12th upload fails (with no workers, train's second batch of the
 * second epoch, after 7 + 3 batches; with 2, whichever batch a worker was
 * making): the run fails with the device's message, naming the loader and
 * the batch, and every buffer goes back. */
static void failed_upload(int workers) {
  char *dir = test_tmpdir();
  transfers t = {0};
  fake_device_reset_counts(dev);
  loom_experiment *exp = build_with(dir, fake, &t, workers);
  fake_device_fail_upload(dev, 12);
  assert_int_equal(run(exp, NULL, NULL), LOOM_EIO);
  const char *e = loom_last_error();
  assert_non_null(strstr(e, "fake device: upload 12 failed, as the test asked"));
  assert_non_null(strstr(e, "the batch-ready hook failed on batch"));
  assert_non_null(strstr(e, "loader \"train\""));
  if (workers == 0)
    assert_non_null(strstr(e, "loader \"train\", batch 2: the batch-ready hook failed on batch 1: uploading into "
                              "slot 0 on backend \"fake\": fake device: upload 12 failed"));
  fake_device_fail_upload(dev, 0);
  failed_run_gave_back(exp, dir);
}

static void failed_upload_is_reported(void **state) {
  (void)state;
  failed_upload(0);
  failed_upload(2); /* in a worker's thread, carried to the loop */
}

/* A callback's own batch result travels in the deferred batch's copy (no
 * wait of its own: run_on checks one to_host per batch), with the CPU
 * run's metrics; an accuracy filtered to every other batch counts those
 * only, as on the CPU. */
static void callback_results_in_the_copy(void **state) {
  (void)state;
  echo e = {0};
  const loom_event_filter every2 = {.every_batches = 2};
  with_echo = &e, accuracy_filter = &every2;
  transfers t = {0};
  run_on(dev, fake, 0, &t);
  with_echo = NULL, accuracy_filter = NULL;
  /* The CPU run read every batch's echo at on_batch_end; the device run
   * got every one by the copy, none read there. */
  assert_true(e.read_at_end > 0);
  assert_int_equal(e.finished, e.read_at_end);
}

/* A batch result's issue or finish fails at the 3rd training batch: the
 * run fails with its message, naming the callback and the batch, and
 * every buffer goes back. */
static void failed_result(echo e, const char *want) {
  char *dir = test_tmpdir();
  transfers t = {0};
  with_echo = &e;
  loom_experiment *exp = build(dir, fake, &t);
  with_echo = NULL;
  assert_int_equal(run(exp, NULL, NULL), LOOM_EIO);
  if (!strstr(loom_last_error(), want))
    fail_msg("error \"%s\" does not say \"%s\"", loom_last_error(), want);
  failed_run_gave_back(exp, dir);
}

static void failed_result_is_reported(void **state) {
  (void)state;
  failed_result((echo){.fail_at = 3, .fail_issue = true},
                "callback \"echo\" issuing its result of batch 3 (stage \"pretrain\", epoch 1, loader \"train\"): "
                "the test's issue failed");
  failed_result((echo){.fail_at = 2},
                "callback \"echo\" finishing its result of batch 2 (stage \"pretrain\", epoch 1, loader \"train\"): "
                "the test's finish failed");
  failed_result((echo){.fail_at = 9, .fail_issue = true, .no_message = true},
                "callback \"echo\" issuing its result of batch 2 (stage \"pretrain\", epoch 2, loader \"train\"): ");
}

/* A device backend without topk_hits (the slot is optional): the accuracy
 * callback counts the host copies, with the CPU run's metrics. */
static void accuracy_without_topk_hits(void **state) {
  (void)state;
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want = {0}, got = {0};
  cpu_run(cpu_dir, &want);
  fake_device *lacking;
  loom_backend *b = fake_device_create_ex((size_t)64 << 20, false, &lacking);
  assert_false(loom_backend_supports(b, LOOM_OP_TOPK_HITS));
  transfers t = {0};
  fake_device *keep = dev;
  dev = NULL; /* its counts are not the point here */
  loom_experiment *exp = build(dev_dir, b, &t);
  int rc = run(exp, NULL, &got);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  loom_experiment_destroy(exp);
  dev = keep;
  assert_string_equal(want.jsonl, got.jsonl);
  assert_int_equal(fake_device_counts_of(lacking).live, 0);
  loom_backend_destroy(b);
  outcome_free(&want), outcome_free(&got);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

/* Interrupted on the fake device after a batch of the finetuning stage,
 * resumed from its last.h5 on the CPU: the CPU run's weights. */
static void device_checkpoint_resumes_on_cpu(void **state) {
  (void)state;
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want = {0}, got = {0};
  cpu_run(cpu_dir, &want);

  transfers t = {.interrupt_at = 7 * 3 + 4}; /* inside finetune's first epoch, if pretraining ran 3 epochs */
  loom_experiment *exp = build(dev_dir, fake, &t);
  assert_int_equal(run(exp, NULL, NULL), LOOM_EINTERRUPTED);
  loom_experiment_destroy(exp);
  assert_int_equal(fake_device_counts_of(dev).live, 0);

  char last[1200];
  snprintf(last, sizeof last, "%s/checkpoints/last.h5", dev_dir);
  transfers none = {0};
  fake_device *keep = dev;
  dev = NULL;
  exp = build(dev_dir, NULL, &none);
  int rc = run(exp, last, &got);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  loom_experiment_destroy(exp);
  dev = keep;
  assert_int_equal(want.n, got.n);
  assert_memory_equal(want.params, got.params, want.n * sizeof(float));
  outcome_free(&want), outcome_free(&got);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

/* Interrupted on the fake device with 2 workers per loader, inside an
 * epoch, and resumed there on the device: the loader seeks past the
 * batches done (its slots released first: the batches its workers had made
 * from the epoch's start are dropped) and the run ends with the CPU run's
 * weights. */
static void device_checkpoint_resumes_on_device(void **state) {
  (void)state;
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want = {0}, got = {0};
  cpu_run(cpu_dir, &want);

  transfers t = {.interrupt_at = 7 * 3 + 4};
  loom_experiment *exp = build_with(dev_dir, fake, &t, 2);
  assert_int_equal(run(exp, NULL, NULL), LOOM_EINTERRUPTED);
  loom_experiment_destroy(exp);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  assert_int_equal(fake_device_counts_of(dev).pinned, 0);

  char last[1200];
  snprintf(last, sizeof last, "%s/checkpoints/last.h5", dev_dir);
  transfers again = {0};
  exp = build_with(dev_dir, fake, &again, 2);
  int rc = run(exp, last, &got);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  loom_experiment_destroy(exp);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  assert_int_equal(want.n, got.n);
  assert_memory_equal(want.params, got.params, want.n * sizeof(float));
  outcome_free(&want), outcome_free(&got);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

/* At the finetuning stage's start a callback moves the model to another
 * fake device, one without asynchronous uploads: the loaders' hooks come
 * off (their pinned buffers and slots on the first device go back) and
 * each batch is copied to the second device after on_batch_start; the
 * CPU run's weights all the same. */
static loom_backend *move_to;
static int move_at_finetune(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (strcmp(loom_runner_stage_name(r), "finetune") != 0)
    return 0;
  return loom_model_set_backend(loom_runner_model(r), move_to);
}

static void model_moves_between_stages(void **state) {
  (void)state;
  char *cpu_dir = test_tmpdir(), *dev_dir = test_tmpdir();
  outcome want = {0}, got = {0};
  cpu_run(cpu_dir, &want);
  fake_device *plain;
  move_to = fake_device_create_without((size_t)64 << 20, FAKE_NO_UPLOAD, &plain);
  transfers t = {0};
  fake_device_reset_counts(dev);
  loom_experiment *exp = build_with(dev_dir, fake, &t, 2);
  const loom_callback_ops mover = {.type = "mover", .on_stage_start = move_at_finetune};
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&mover, NULL, 0)), 0);
  int rc = run(exp, NULL, &got);
  if (rc < 0)
    fail_msg("%s", loom_last_error());
  assert_int_equal(want.n, got.n);
  assert_memory_equal(want.params, got.params, want.n * sizeof(float));
  /* The first device's batches all went through its uploads, during the
   * pretraining only; the second device had every batch of the
   * finetuning copied: 2 epochs of 7 + 3 batches, input and target. */
  fake_device_counts first = fake_device_counts_of(dev), second = fake_device_counts_of(plain);
  assert_int_equal(first.uploads, first.upload_waits);
  assert_true(first.uploads >= 10 && first.uploads <= 3 * 10);
  assert_int_equal(first.uploads + 2 * 10, t.all_batches);
  assert_true(second.from_host >= 2 * 2 * 10);
  assert_int_equal(first.pinned, 0);
  assert_int_equal(first.upload_slots, 0);
  loom_experiment_destroy(exp);
  assert_int_equal(fake_device_counts_of(dev).live, 0);
  assert_int_equal(fake_device_counts_of(plain).live, 0);
  loom_backend_destroy(move_to);
  outcome_free(&want), outcome_free(&got);
  test_rm_rf(cpu_dir), test_rm_rf(dev_dir);
  free(cpu_dir), free(dev_dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(same_run_on_device),
      cmocka_unit_test(same_run_on_device_with_workers),
      cmocka_unit_test(same_run_without_async_uploads),
      cmocka_unit_test(failed_upload_is_reported),
      cmocka_unit_test(device_checkpoint_resumes_on_cpu),
      cmocka_unit_test(device_checkpoint_resumes_on_device),
      cmocka_unit_test(model_moves_between_stages),
      cmocka_unit_test(accuracy_without_topk_hits),
      cmocka_unit_test(callback_results_in_the_copy),
      cmocka_unit_test(failed_result_is_reported),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
