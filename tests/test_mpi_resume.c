/* Checkpoints of distributed runs, under mpirun with 3 ranks (CTest): runs
 * on 2 ranks use ranks 0 and 1 (rank 2 waits), runs on 1 rank use rank 0
 * alone (MPI_COMM_SELF).
 * - Two identical 2-rank runs write identical metrics.jsonl and weights.
 * - A 2-rank run interrupted inside a train loader, inside a valid loader
 *   whose shards have different numbers of batches, at an epoch end, or
 *   resumed from a checkpoint callback's every_n_batches file, resumes on 2
 *   ranks to the uninterrupted run's weights and metrics.jsonl, bit for
 *   bit; the checkpoint records the world size and each rank's position.
 * - 2 -> 1 and 1 -> 3 ranks: the interrupted loader starts again from its
 *   first batch, the notice says so, and the run trains on (its optimizer
 *   steps, counted by hand).
 * - The 2-rank run's last.h5 loads on one process: the same weights, and
 *   the same valid accuracy to the last bit. */
#include <mpi.h>

#include "helpers.h"

static int world_rank, world_size;
static MPI_Comm pair; /* ranks 0 and 1; MPI_COMM_NULL on rank 2 */
static char base[256]; /* rank 0's temporary directory, the same path on every rank */

#define EPOCHS 3
#define TRAIN 96 /* 2 ranks: 6 batches of 8 each; 1 rank: 12; 3 ranks: 4 */
#define VALID 33 /* 2 ranks: rank 0 17 samples (3 batches), rank 1 16 (2) */
#define BATCH 8

/* Where to stop: loom_runner_interrupt on rank `rank` at on_batch_end of
 * loader batch `batch` of the train (or valid) loader in global epoch
 * `epoch`, or at on_epoch_end with batch 0 (never with -1); copies last.h5 to `copy_to` at
 * train batch `copy_at` of epoch `epoch` (after the checkpoint callback). */
typedef struct stop_at {
  int epoch, rank;
  bool valid;
  int64_t batch;
  const char *copy_to;
  int64_t copy_at;
} stop_at;

static double last_valid_accuracy;

static bool here(const stop_at *s, loom_runner *r) {
  return s && loom_runner_global_epoch(r) == s->epoch;
}

static int stop_batch_end(loom_callback *cb, loom_runner *r) {
  const stop_at *s = loom_callback_data(cb);
  if (!here(s, r))
    return 0;
  bool valid = !loom_runner_is_train_loader(r);
  if (s->copy_to && !valid && loom_runner_loader_batch_step(r) == s->copy_at && world_rank == 0) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp '%s/checkpoints/last.h5' '%s'", loom_runner_logdir(r), s->copy_to);
    assert_int_equal(system(cmd), 0);
  }
  if (s->batch > 0 && valid == s->valid && loom_runner_loader_batch_step(r) == s->batch && world_rank == s->rank)
    loom_runner_interrupt(r, "test stop");
  return 0;
}

static int stop_epoch_end(loom_callback *cb, loom_runner *r) {
  const stop_at *s = loom_callback_data(cb);
  double v;
  if (loom_metrics_get(loom_runner_epoch_metrics(r), "valid/accuracy", &v))
    last_valid_accuracy = v;
  if (here(s, r) && s->batch == 0 && world_rank == s->rank)
    loom_runner_interrupt(r, "test stop");
  return 0;
}

static const loom_callback_ops stop_ops = {
    .type = "stop_at", .on_batch_end = stop_batch_end, .on_epoch_end = stop_epoch_end};

static loom_experiment *build(const char *logdir, const stop_at *s, int every_n_batches) {
  loom_experiment *exp = loom_experiment_create("dist_resume");
  loom_experiment_set_seed(exp, 5);
  loom_experiment_set_logdir(exp, logdir);
  const int64_t sizes[] = {8, 16, 3};
  loom_adam_options adam = loom_adam_defaults();
  adam.lr = 0.01;
  loom_stage *st = loom_experiment_add_stage(exp, "train", EPOCHS);
  assert_int_equal(loom_stage_set_model(st, loom_mlp_create(sizes, 3, 5)), 0);
  assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
  assert_int_equal(loom_stage_set_optimizer(st, loom_adam_create(&adam)), 0);
  assert_int_equal(loom_stage_add_loader(st, "train", test_loader(TRAIN, 8, 3, BATCH, true)), 0);
  assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(VALID, 8, 3, BATCH, false)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_metrics_logger_create()), 0);
  loom_checkpoint_options ck = loom_checkpoint_defaults();
  ck.every_n_batches = every_n_batches;
  assert_int_equal(loom_experiment_add_callback(exp, loom_checkpoint_callback_create(&ck)), 0);
  assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&stop_ops, (void *)s, 300)), 0);
  return exp;
}

typedef struct outcome {
  int rc;
  char message[1024], notice[1024];
  int64_t steps;
  float params[8 * 16 + 16 + 16 * 3 + 3];
  char *jsonl; /* rank 0's */
  double valid_accuracy;
} outcome;

/* One run on `ranks` (1: rank 0 alone; 2: ranks 0 and 1; 3: all), in
 * <base>/<name>; ranks outside it only wait for it. */
/* `o` starts zeroed or holds an earlier run's outcome. */
static void run(int ranks, const char *name, const stop_at *s, int every, const char *resume, outcome *o) {
  free(o->jsonl); /* of the run before, if any */
  memset(o, 0, sizeof *o);
  o->rc = -1;
  bool in = world_rank < ranks;
  if (in) {
    char logdir[512];
    snprintf(logdir, sizeof logdir, "%s/%s", base, name);
    loom_experiment *exp = build(logdir, s, every);
    loom_runner *r = loom_runner_create();
    MPI_Comm self = MPI_COMM_SELF;
    loom_comm *c = loom_comm_mpi_create(ranks == 1 ? &self : ranks == 2 ? &pair : NULL);
    assert_non_null(c);
    loom_runner_set_comm(r, c);
    loom_run_options opt = loom_run_options_defaults();
    opt.handle_signals = false;
    loom_runner_set_options(r, &opt);
    if (resume)
      assert_int_equal(loom_runner_set_resume(r, resume), 0);
    last_valid_accuracy = -1;
    o->rc = loom_run_experiment(r, exp);
    snprintf(o->message, sizeof o->message, "%s", o->rc ? loom_runner_error_message(r) : "");
    snprintf(o->notice, sizeof o->notice, "%s", loom_runner_resume_notice(r));
    o->steps = loom_runner_optimizer_step_count(r);
    loom_model *m = loom_runner_model(r);
    assert_int_equal(loom_model_num_params(m) * sizeof(float), sizeof o->params);
    memcpy(o->params, loom_model_params(m), sizeof o->params);
    o->valid_accuracy = last_valid_accuracy;
    if (world_rank == 0)
      o->jsonl = jsonl_without_time(logdir);
    print_message("rank %d of %d, %s: rc %d, %lld steps%s%s%s%s\n", world_rank, ranks, name, o->rc,
                  (long long)o->steps, o->message[0] ? ": " : "", o->message, o->notice[0] ? "; notice: " : "",
                  o->notice);
    loom_runner_destroy(r);
    loom_experiment_destroy(exp);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

static void same(const outcome *want, const outcome *got) {
  if (world_rank > 1)
    return;
  assert_int_equal(got->rc, 0);
  assert_memory_equal(want->params, got->params, sizeof want->params);
  if (world_rank == 0)
    assert_string_equal(want->jsonl, got->jsonl);
}

static void has(const char *text, const char *part) {
  if (!strstr(text, part))
    fail_msg("rank %d: \"%s\" lacks \"%s\"", world_rank, text, part);
}

static outcome reference;

static int setup(void **state) {
  (void)state;
  if (world_rank == 0) {
    char *dir = test_tmpdir();
    snprintf(base, sizeof base, "%s", dir);
    free(dir);
  }
  MPI_Bcast(base, sizeof base, MPI_CHAR, 0, MPI_COMM_WORLD);
  MPI_Comm_split(MPI_COMM_WORLD, world_rank < 2 ? 0 : MPI_UNDEFINED, world_rank, &pair);
  run(2, "reference", NULL, 0, NULL, &reference);
  return reference.rc == 0 || world_rank > 1 ? 0 : -1;
}

static int teardown(void **state) {
  (void)state;
  free(reference.jsonl);
  if (pair != MPI_COMM_NULL)
    MPI_Comm_free(&pair);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank == 0)
    test_rm_rf(base);
  return 0;
}

static void test_two_identical_runs(void **state) {
  (void)state;
  outcome again = {0};
  run(2, "again", NULL, 0, NULL, &again);
  same(&reference, &again);
  free(again.jsonl);
}

/* The master's last.h5 in <base>/<name> (or the file `name` names): its
 * world size, and rank i's position in the loader under way (batches,
 * samples). */
static void recorded(const char *name, int64_t world, const int64_t (*positions)[2]) {
  if (world_rank != 0)
    return;
  char path[1024];
  if (name[0] == '/')
    snprintf(path, sizeof path, "%s", name);
  else
    snprintf(path, sizeof path, "%s/%s/checkpoints/last.h5", base, name);
  loom_checkpoint *c = loom_checkpoint_read(path);
  assert_non_null(c);
  int64_t w = 0, pos[2];
  assert_int_equal(loom_state_get_i64(loom_checkpoint_find(c, "runner"), "world_size", &w), 0);
  assert_int_equal(w, world);
  for (int i = 0; i < world; i++) {
    snprintf(path, sizeof path, "ranks/%d", i);
    const loom_state *g = loom_checkpoint_find(c, path);
    assert_non_null(g);
    assert_int_equal(loom_state_get_i64_array(g, "position", pos, 2), 0);
    assert_int_equal(pos[0], positions[i][0]);
    assert_int_equal(pos[1], positions[i][1]);
  }
  loom_checkpoint_destroy(c);
}

static void interrupted(const outcome *o, const char *where) {
  if (world_rank > 1)
    return;
  assert_int_equal(o->rc, LOOM_EINTERRUPTED);
  has(o->message, where); /* every rank stopped after the same batch */
}

static void test_resume_inside_train_loader(void **state) {
  (void)state;
  outcome o = {0};
  stop_at s = {.epoch = 2, .rank = 1, .batch = 4};
  run(2, "mid_train", &s, 0, NULL, &o);
  interrupted(&o, "loader \"train\", after batch 4)");
  recorded("mid_train", 2, (const int64_t[][2]){{4, 32}, {4, 32}});
  run(2, "mid_train", NULL, 0, "last", &o);
  same(&reference, &o);
  if (world_rank < 2)
    assert_string_equal(o.notice, "");
  free(o.jsonl);
}

/* Rank 1 has 2 valid batches, rank 0 3: stopped after rank 0's third. */
static void test_resume_inside_uneven_valid_loader(void **state) {
  (void)state;
  outcome o = {0};
  stop_at s = {.epoch = 2, .rank = 0, .valid = true, .batch = 3};
  run(2, "mid_valid", &s, 0, NULL, &o);
  interrupted(&o, "loader \"valid\", after batch");
  recorded("mid_valid", 2, (const int64_t[][2]){{3, 17}, {2, 16}});
  run(2, "mid_valid", NULL, 0, "last", &o);
  same(&reference, &o);
  free(o.jsonl);
}

static void test_resume_at_epoch_end(void **state) {
  (void)state;
  outcome o = {0};
  stop_at s = {.epoch = 1, .rank = 1, .batch = 0};
  run(2, "epoch_end", &s, 0, NULL, &o);
  interrupted(&o, "at the end of epoch 1 of stage \"train\"");
  run(2, "epoch_end", NULL, 0, "last", &o);
  same(&reference, &o);
  free(o.jsonl);
}

/* The checkpoint callback's every_n_batches file (global batch 10: epoch
 * 2's 4th), copied aside, resumes exactly too. */
static void test_resume_from_every_n_batches(void **state) {
  (void)state;
  char copy[512];
  snprintf(copy, sizeof copy, "%s/every.h5", base);
  stop_at s = {.epoch = 2, .batch = -1, .copy_to = copy, .copy_at = 4};
  outcome o = {0};
  run(2, "every", &s, 10, NULL, &o);
  same(&reference, &o); /* saving every 10 batches changes nothing */
  recorded(copy, 2, (const int64_t[][2]){{4, 32}, {4, 32}});
  run(2, "every", NULL, 10, copy, &o);
  same(&reference, &o);
  if (world_rank < 2)
    assert_string_equal(o.notice, "");
  free(o.jsonl);
}

/* 2 ranks stop at epoch 2's 4th train batch (10 steps); 1 rank starts
 * epoch 2's train loader again: 12 + 12 more steps. */
static void test_resume_two_ranks_on_one(void **state) {
  (void)state;
  outcome o = {0};
  stop_at s = {.epoch = 2, .rank = 1, .batch = 4};
  run(2, "two_to_one", &s, 0, NULL, &o);
  interrupted(&o, "after batch 4");
  run(1, "two_to_one", NULL, 0, "last", &o);
  if (world_rank == 0) {
    assert_int_equal(o.rc, 0);
    has(o.notice, "written by 2 ranks, resumed on 1: loader \"train\" of epoch 2 starts again from its first batch");
    assert_int_equal(o.steps, 10 + 2 * 12);
    assert_true(o.valid_accuracy > 0.5); /* 3 balanced classes: it learnt */
  }
  free(o.jsonl);
}

/* 1 rank stops at epoch 2's 5th train batch (17 steps); 3 ranks start
 * epoch 2's train loader again: 4 + 4 more steps each. */
static void test_resume_one_rank_on_three(void **state) {
  (void)state;
  outcome o = {0};
  stop_at s = {.epoch = 2, .rank = 0, .batch = 5};
  run(1, "one_to_three", &s, 0, NULL, &o);
  if (world_rank == 0)
    assert_int_equal(o.rc, LOOM_EINTERRUPTED);
  run(3, "one_to_three", NULL, 0, "last", &o);
  assert_int_equal(o.rc, 0);
  has(o.notice, "written by 1 rank, resumed on 3: loader \"train\" of epoch 2 starts again from its first batch");
  assert_int_equal(o.steps, 17 + 2 * 4);
  if (world_rank == 0)
    assert_true(o.valid_accuracy > 0.5);
  free(o.jsonl);
}

/* The reference's last.h5 on one process: its weights, and its valid
 * accuracy evaluated by one rank equals the 2-rank run's to the last bit. */
static void test_two_rank_checkpoint_on_one_process(void **state) {
  (void)state;
  if (world_rank == 0) {
    char path[512], logdir[512];
    snprintf(path, sizeof path, "%s/reference/checkpoints/last.h5", base);
    snprintf(logdir, sizeof logdir, "%s/eval", base);
    const int64_t sizes[] = {8, 16, 3};
    loom_model *m = loom_mlp_create(sizes, 3, 99);
    assert_int_equal(loom_model_load_weights(m, path), 0);
    assert_memory_equal(loom_model_params(m), reference.params, sizeof reference.params);
    loom_experiment *exp = loom_experiment_create("eval");
    loom_experiment_set_logdir(exp, logdir);
    loom_stage *st = loom_experiment_add_stage(exp, "eval", 1);
    assert_int_equal(loom_stage_set_model(st, m), 0);
    assert_int_equal(loom_stage_set_criterion(st, loom_cross_entropy_create()), 0);
    assert_int_equal(loom_stage_add_loader(st, "valid", test_loader(VALID, 8, 3, BATCH, false)), 0);
    assert_int_equal(loom_experiment_add_callback(exp, loom_accuracy_callback_create(NULL, 0)), 0);
    assert_int_equal(loom_experiment_add_callback(exp, loom_callback_create(&stop_ops, NULL, 300)), 0);
    loom_runner *r = loom_runner_create();
    loom_run_options opt = loom_run_options_defaults();
    opt.handle_signals = false;
    loom_runner_set_options(r, &opt);
    last_valid_accuracy = -1;
    assert_int_equal(loom_run_experiment(r, exp), 0);
    print_message("one process: valid accuracy %.17g; 2 ranks: %.17g\n", last_valid_accuracy,
                  reference.valid_accuracy);
    assert_true(last_valid_accuracy == reference.valid_accuracy);
    loom_runner_destroy(r);
    loom_experiment_destroy(exp);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

int main(void) {
  if (!test_mpi_world("test_mpi_resume", &world_rank, &world_size))
    return 1;
  if (world_size != 3) {
    fprintf(stderr, "test_mpi_resume: run it on 3 ranks (mpirun -np 3)\n");
    return 2;
  }
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_two_identical_runs),
      cmocka_unit_test(test_resume_inside_train_loader),
      cmocka_unit_test(test_resume_inside_uneven_valid_loader),
      cmocka_unit_test(test_resume_at_epoch_end),
      cmocka_unit_test(test_resume_from_every_n_batches),
      cmocka_unit_test(test_resume_two_ranks_on_one),
      cmocka_unit_test(test_resume_one_rank_on_three),
      cmocka_unit_test(test_two_rank_checkpoint_on_one_process),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
