/* Crash loops (issue 18): `loom run` killed with SIGKILL at random moments,
 * LOOM_CRASH_KILLS times (default 20; the heavy CTest runs 100), each time
 * started again with `--resume last` once a checkpoint exists, then run to
 * its end; and a two-stage run sent SIGINT or SIGTERM LOOM_CRASH_SIGNALS
 * times (default 24) at random moments, during checkpoint writes and at the
 * stage transition, resumed the same way (test_signal_loop). The run must
 * survive every kill: each restart succeeds, the last checkpoint loads, metrics.jsonl is well formed with each epoch's row once,
 * and the final weights and metrics are bit-identical to a run never killed
 * (the config checkpoints after every batch and resume is exact). Kill
 * times are random (LOOM_CRASH_SEED, printed, replays them) and scaled to
 * the uninterrupted run's duration; nothing asserts a time.
 * Usage: test_crash_loop LOOM CONFIGS_DIR */
#include <dirent.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static const char *loom;
static char tiny[1024];
#define EPOCHS "30"

/* The signal loop's second stage: Adam from the first stage's best weights
 * (loaded from disk at the transition); the first stage's callbacks run in
 * it too (scope experiment: one metrics logger, one checkpointer). */
#define TUNE_EPOCHS 4
#define TUNE_STAGE                                                                                                      \
  "stages.tune={\"num_epochs\": 4, \"loaders\": [\"train\", \"valid\"], \"load_weights\": \"best\","                  \
  " \"optimizer\": {\"type\": \"adam\", \"lr\": 0.01}}"
#define TUNE_CALLBACKS                                                                                                  \
  "stages.train.callbacks=[{\"type\": \"accuracy\", \"scope\": \"experiment\"}, {\"type\": \"metrics_logger\","       \
  " \"scope\": \"experiment\"}, {\"type\": \"checkpoint\", \"every_n_batches\": 1, \"scope\": \"experiment\"}]"
static bool two_stages; /* the runs start() starts have the tune stage */

/* Starts `loom run tiny --logdir DIR --set num_epochs` (+ the tune stage,
 * + --resume last); its output goes to DIR.out. */
static pid_t start(const char *dir, bool resume) {
  char epochs[] = "stages.train.num_epochs=" EPOCHS, out[600];
  snprintf(out, sizeof out, "%s.out", dir);
  /* A fresh start replaces what a run killed before its first checkpoint
   * wrote (its metrics), as a user would: --overwrite. */
  const char *argv[16] = {loom, "run", tiny, "--logdir", dir, "--set", epochs};
  int argc = 7;
  const char *stages[4] = {"--set", TUNE_CALLBACKS, "--set", TUNE_STAGE}, *resumed[2] = {"--resume", "last"};
  for (int i = 0; two_stages && i < 4; i++)
    argv[argc++] = stages[i];
  for (int i = 0; resume && i < 2; i++)
    argv[argc++] = resumed[i];
  if (!resume)
    argv[argc++] = "--overwrite";
  argv[argc] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen(out, "a", stdout) || !freopen(out, "a", stderr))
      _exit(127);
    execv(loom, (char *const *)argv);
    _exit(127);
  }
  return pid;
}

static bool exists(const char *dir, const char *name) {
  char path[1200];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return access(path, F_OK) == 0;
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The model's parameters in DIR/checkpoints/last.h5, read as a user would. */
static float *last_params(const char *dir, size_t *n) {
  char path[1200];
  snprintf(path, sizeof path, "%s/checkpoints/last.h5", dir);
  loom_checkpoint *c = loom_checkpoint_read(path);
  if (!c)
    fail_msg("%s", loom_last_error());
  const loom_state *m = loom_checkpoint_find(c, "model");
  assert_non_null(m);
  *n = loom_state_array_length(m, "params");
  assert_true(*n > 0);
  float *p = malloc(*n * sizeof *p);
  assert_int_equal(loom_state_get_f32_array(m, "params", p, *n), 0);
  loom_checkpoint_destroy(c);
  return p;
}

/* Every line of metrics.jsonl is a JSON object; each epoch's row (loader
 * null) appears once, for epochs 1..EPOCHS (+ TUNE_EPOCHS) in order, and no
 * loader's row of an epoch twice. */
static void check_metrics(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  assert_non_null(text);
  assert_true(text[0] && text[strlen(text) - 1] == '\n');
  int epochs = 0, train_rows = 0;
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    if (!json_is_object(row))
      fail_msg("metrics.jsonl: a torn or broken line: %s", line);
    json_int_t epoch = json_integer_value(json_object_get(row, "global_epoch"));
    json_t *loader = json_object_get(row, "loader");
    if (json_is_null(loader))
      assert_int_equal(epoch, ++epochs);
    else if (strcmp(json_string_value(loader), "train") == 0)
      assert_int_equal(epoch, ++train_rows);
    else
      assert_int_equal(epoch, train_rows); /* valid follows its epoch's train */
    json_decref(row);
  }
  assert_int_equal(epochs, atoi(EPOCHS) + (two_stages ? TUNE_EPOCHS : 0));
  assert_int_equal(train_rows, atoi(EPOCHS) + (two_stages ? TUNE_EPOCHS : 0));
  free(text);
}

/* No temporary file of a killed checkpoint write is left behind. */
static void check_no_litter(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/checkpoints", dir);
  DIR *d = opendir(path);
  assert_non_null(d);
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".tmp"))
      fail_msg("%s/%s left behind", path, e->d_name);
  closedir(d);
}

/* The epochs metrics.jsonl has a row for (each stage's, in order). */
static int first_stage_epochs(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
  char *text = test_read_file(path);
  int n = 0;
  for (const char *p = text; p && (p = strstr(p, "\"loader\":null")); p++)
    n++;
  free(text);
  return n;
}

/* Runs the killed run to its end (unless it finished), checks it against
 * the run never killed (parameters, metrics.jsonl without timings, no
 * temporary file left), and removes both. */
static void finish_and_compare(char *ref, char *dir, bool finished) {
  int status;
  if (!finished)
    assert_int_equal(waitpid(start(dir, exists(dir, "checkpoints/last.h5") || exists(dir, "checkpoints/last.prev.h5")),
                             &status, 0) > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1,
                     0);
  size_t n_ref, n;
  float *want = last_params(ref, &n_ref), *got = last_params(dir, &n);
  assert_int_equal(n, n_ref);
  assert_memory_equal(want, got, n * sizeof *got);
  check_metrics(ref);
  check_metrics(dir);
  char *want_jsonl = jsonl_without_time(ref), *got_jsonl = jsonl_without_time(dir);
  assert_string_equal(want_jsonl, got_jsonl);
  check_no_litter(dir);
  free(want), free(got), free(want_jsonl), free(got_jsonl);
  char out[600];
  snprintf(out, sizeof out, "%s.out", dir);
  unlink(out);
  snprintf(out, sizeof out, "%s.out", ref);
  unlink(out);
  test_rm_rf(ref), test_rm_rf(dir);
  free(ref), free(dir);
}

static void test_sigkill_loop(void **state) {
  (void)state;
  int kills = getenv("LOOM_CRASH_KILLS") ? atoi(getenv("LOOM_CRASH_KILLS")) : 20;
  unsigned seed = getenv("LOOM_CRASH_SEED") ? (unsigned)atol(getenv("LOOM_CRASH_SEED")) : (unsigned)time(NULL);
  print_message("%d kills, LOOM_CRASH_SEED=%u\n", kills, seed);
  srand(seed);

  /* The run never killed. */
  char *ref = test_tmpdir(), *dir = test_tmpdir();
  double t0 = now(), startup = 0;
  int status;
  pid_t pid = start(ref, false);
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (!startup && exists(ref, "checkpoints/last.h5"))
      startup = now() - t0;
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
  }
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  double span = now() - t0;
  if (!startup)
    startup = span;

  /* Killed at uniform random times up to half again the time a start
   * takes to its first checkpoint plus a fair share of the rest: the kills
   * hit the start-up, the lock, the resume and every part of a batch, and
   * most restarts get a little further than the one before. A restart that
   * has reached its share of the epochs (k + 1 of kills + 1) is killed at
   * once, so the run lasts through every kill whatever the machine's speed
   * does meanwhile (by time alone, 100 kills left it finished after 37 to
   * 100 on a loaded machine). */
  int landed = 0, restarts = 0;
  for (int k = 0; k < kills; k++) {
    bool resume = exists(dir, "checkpoints/last.h5") || exists(dir, "checkpoints/last.prev.h5");
    pid = start(dir, resume);
    restarts += resume;
    const double wait = (1.5 * startup + (span - startup) / kills) * (double)rand() / RAND_MAX;
    const int share = atoi(EPOCHS) * (k + 1) / (kills + 1);
    for (const double t = now(); now() - t < wait && first_stage_epochs(dir) < share;)
      nanosleep(&(struct timespec){0, 500000}, NULL);
    kill(pid, SIGKILL);
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status)) {
      landed++;
      continue;
    }
    char out[600];
    snprintf(out, sizeof out, "%s.out", dir);
    char *text = test_read_file(out);
    if (WEXITSTATUS(status) != 0)
      fail_msg("restart %d (%s) failed with exit %d:\n%s", k, resume ? "--resume last" : "fresh", WEXITSTATUS(status), text);
    free(text);
    break; /* it finished before this kill */
  }
  print_message("%d kills landed (%d restarts resumed); a run takes %.2f s, %.2f s to its first checkpoint\n", landed,
                restarts, span, startup);
  assert_int_equal(landed, kills); /* every kill hit a running run */

  finish_and_compare(ref, dir, false);
}

/* What the signal loop aims at, besides a random moment. */
enum aim { AIM_RANDOM, AIM_CHECKPOINT_WRITE, AIM_STAGE_TRANSITION, NUM_AIMS };

/* Whether a checkpoint is being written in DIR now: a temporary file of the
 * checkpoint writer (.last.h5.tmp.PID, manifest.json.tmp...) exists. */
static bool writing_checkpoint(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/checkpoints", dir);
  DIR *d = opendir(path);
  bool found = false;
  for (struct dirent *e; d && !found && (e = readdir(d));)
    found = strstr(e->d_name, ".tmp") != NULL;
  if (d)
    closedir(d);
  return found;
}

/* How many epoch rows (loader null) of the first stage metrics.jsonl has. */

/* Waits (polling every 100 us, up to `limit` s) until the aim is met or the
 * child has exited; true if it is still running. */
static bool wait_for(pid_t pid, const char *dir, enum aim aim, double limit) {
  double t0 = now();
  for (;;) {
    if (waitpid(pid, NULL, WNOHANG | WNOWAIT) == pid) /* ended (not reaped) */
      return false;
    if (now() - t0 >= limit)
      return true;
    if (aim == AIM_CHECKPOINT_WRITE && writing_checkpoint(dir))
      return true;
    if (aim == AIM_STAGE_TRANSITION && first_stage_epochs(dir) >= atoi(EPOCHS))
      return true;
    struct timespec ts = {0, 100000};
    nanosleep(&ts, NULL);
  }
}

/* SIGINT and SIGTERM at random moments, and aimed at checkpoint writes and
 * at the two-stage run's stage transition (the first stage's last epoch row
 * written: its end, the best weights loaded, the next stage's start). A
 * signal is interrupted-and-checkpointed (exit 130) once loom's handler is
 * in place, or ends the process by the default action before or after
 * (start-up, exit): either way each restart resumes from last, and the run
 * ends bit-identical to one never signalled. How many signals land where is
 * printed, not asserted (it depends on timing). */
static void test_signal_loop(void **state) {
  (void)state;
  int signals = getenv("LOOM_CRASH_SIGNALS") ? atoi(getenv("LOOM_CRASH_SIGNALS")) : 24;
  unsigned seed = getenv("LOOM_CRASH_SEED") ? (unsigned)atol(getenv("LOOM_CRASH_SEED")) : (unsigned)time(NULL);
  print_message("%d signals, LOOM_CRASH_SEED=%u\n", signals, seed);
  srand(seed);
  two_stages = true;

  char *ref = test_tmpdir(), *dir = test_tmpdir();
  double t0 = now();
  int status;
  assert_int_equal(waitpid(start(ref, false), &status, 0) > 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
  double span = now() - t0;

  int interrupted = 0, defaulted = 0, aimed[NUM_AIMS] = {0};
  bool finished = false;
  for (int k = 0; k < signals && !finished; k++) {
    bool resume = exists(dir, "checkpoints/last.h5") || exists(dir, "checkpoints/last.prev.h5");
    enum aim aim = (enum aim)(k % NUM_AIMS);
    if (aim == AIM_STAGE_TRANSITION && first_stage_epochs(dir) >= atoi(EPOCHS))
      aim = AIM_CHECKPOINT_WRITE; /* that transition is behind this run */
    pid_t pid = start(dir, resume);
    double limit = aim == AIM_RANDOM ? span * 0.6 * (double)rand() / RAND_MAX : span;
    bool running = wait_for(pid, dir, aim, limit);
    int sig = rand() % 2 ? SIGINT : SIGTERM;
    if (running)
      kill(pid, sig);
    aimed[aim] += running;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (WIFSIGNALED(status)) {
      assert_int_equal(WTERMSIG(status), sig); /* the default action: before or after loom's handler */
      defaulted++;
      continue;
    }
    char out[600];
    snprintf(out, sizeof out, "%s.out", dir);
    char *text = test_read_file(out);
    if (WEXITSTATUS(status) != 0 && WEXITSTATUS(status) != 130)
      fail_msg("start %d (%s, %s) failed with exit %d:\n%s", k, resume ? "--resume last" : "fresh",
               sig == SIGINT ? "SIGINT" : "SIGTERM", WEXITSTATUS(status), text);
    free(text);
    interrupted += WEXITSTATUS(status) == 130;
    finished = WEXITSTATUS(status) == 0;
  }
  print_message("%d interrupted with a checkpoint, %d ended by the default action; aimed: %d random, %d at a checkpoint "
                "write, %d at the stage transition; a run takes %.2f s\n",
                interrupted, defaulted, aimed[AIM_RANDOM], aimed[AIM_CHECKPOINT_WRITE], aimed[AIM_STAGE_TRANSITION],
                span);

  finish_and_compare(ref, dir, finished);
  two_stages = false;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: test_crash_loop LOOM CONFIGS_DIR\n");
    return 2;
  }
  loom = argv[1];
  snprintf(tiny, sizeof tiny, "%s/tiny.json", argv[2]);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sigkill_loop), cmocka_unit_test(test_signal_loop)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
