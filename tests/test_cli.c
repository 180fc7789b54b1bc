/* The loom command as a user runs it: exit codes, messages, the resolved
 * config in the logdir, --check, Ctrl-C and --resume, plugins.
 * Usage: test_cli LOOM CONFIGS_DIR PLUGINS_DIR */
#define _XOPEN_SOURCE 700 /* realpath */
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static const char *loom, *configs, *plugins;
static char tiny[1024], errfile[1024], outfile[1024];
/* When not 0, the largest file the next child may write (RLIMIT_FSIZE):
 * its writes beyond fail with EFBIG, as on a full disk. */
static rlim_t child_file_limit;

/* Runs loom with the arguments (NULL-terminated); returns the exit code
 * (or 1000 + signal) and leaves stderr in errfile. With `pid_out`, returns
 * at once with the child's pid instead. */
static int run(pid_t *pid_out, const char *arg, ...) {
  const char *argv[32] = {loom};
  int n = 1;
  va_list ap;
  va_start(ap, arg);
  for (const char *a = arg; a && n < 31; a = va_arg(ap, const char *))
    argv[n++] = a;
  va_end(ap);
  argv[n] = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    if (!freopen(outfile, "w", stdout) || !freopen(errfile, "w", stderr))
      _exit(127);
    if (child_file_limit) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit lim = {child_file_limit, child_file_limit};
      if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
        _exit(127);
    }
    execv(loom, (char *const *)argv);
    _exit(127);
  }
  if (pid_out) {
    *pid_out = pid;
    return 0;
  }
  int status;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1000 + WTERMSIG(status);
}

static bool stderr_has(const char *text) {
  char *s = test_read_file(errfile);
  bool found = s && strstr(s, text);
  if (!found)
    print_error("stderr was: %s\n", s ? s : "(none)");
  free(s);
  return found;
}

/* stderr is exactly `text` (one line, say). */
static bool stderr_is(const char *text) {
  char *s = test_read_file(errfile);
  bool same = s && strcmp(s, text) == 0;
  if (!same)
    print_error("stderr was: %s\n", s ? s : "(none)");
  free(s);
  return same;
}

/* A directory as CONFIG, convert --help, an unknown converter: one line
 * that says what is wrong. */
static void test_one_line_mistakes(void **state) {
  (void)state;
  char want[1200];
  assert_int_equal(run(NULL, "validate", configs, NULL), 2);
  snprintf(want, sizeof want, "loom: error: %s is a directory; give the config's JSON file\n", configs);
  assert_true(stderr_is(want));
  assert_int_equal(run(NULL, "run", configs, NULL), 2);
  assert_true(stderr_is(want));
  assert_int_equal(run(NULL, "convert", "--help", NULL), 0);
  assert_true(stderr_is(""));
  assert_int_equal(run(NULL, "convert", "csv", "out.h5", NULL), 2);
  assert_true(stderr_is("loom: convert: no converter for \"csv\"; loom converts idx files (loom convert idx OUT.h5 "
                        "--images FILE --labels FILE)\n"));
  assert_int_equal(run(NULL, "convert", "idx", "out.h5", NULL), 2);
  assert_true(stderr_is("loom: convert: --images FILE and --labels FILE are both required\n"));
  /* A 100 MB config (sparse: it costs no disk) is refused by its size before it is read. */
  char huge[64];
  snprintf(huge, sizeof huge, "/tmp/loom-test-cli-huge.%ld.json", (long)getpid());
  FILE *f = fopen(huge, "w");
  assert_non_null(f);
  assert_int_equal(ftruncate(fileno(f), 100 << 20), 0);
  fclose(f);
  assert_int_equal(run(NULL, "validate", huge, NULL), 2);
  snprintf(want, sizeof want, "loom: error: %s: 104857600 bytes; a config is at most 16 MiB (LOOM_CONFIG_MAX_BYTES): "
                              "keep data out of it and give datasets by path\n", huge);
  assert_true(stderr_is(want));
  unlink(huge);
}

static void test_usage_and_validate(void **state) {
  (void)state;
  assert_int_equal(run(NULL, NULL), 2);
  assert_int_equal(run(NULL, "--help", NULL), 0);
  assert_int_equal(run(NULL, "run", "--help", NULL), 0);
  assert_int_equal(run(NULL, "--version", NULL), 0);
  assert_int_equal(run(NULL, "train", tiny, NULL), 2);
  assert_true(stderr_has("unknown command \"train\""));
  assert_int_equal(run(NULL, "run", NULL), 2);
  assert_int_equal(run(NULL, "run", tiny, "--bogus", NULL), 2);
  assert_int_equal(run(NULL, "validate", tiny, NULL), 0);
  assert_int_equal(run(NULL, "validate", "/nonexistent.json", NULL), 2);
  assert_true(stderr_has("/nonexistent.json: No such file or directory"));
  char bad[1100];
  snprintf(bad, sizeof bad, "%s/invalid/optimizer_unknown_key/config.json", configs);
  assert_int_equal(run(NULL, "validate", bad, NULL), 2);
  assert_true(stderr_has("stages.train.optimizer.lrr: unknown key (did you mean \"lr\"?)"));
  assert_int_equal(run(NULL, "validate", tiny, "--set", "stages.train.num_epochs=x", NULL), 2);
  assert_true(stderr_has("--set stages.train.num_epochs=x: stages.train.num_epochs: expected an integer"));
  /* --device sets experiment.device; validating touches no device, so a
   * GPU config validates on any machine. */
  assert_int_equal(run(NULL, "validate", tiny, "--device", "cuda:x", NULL), 2);
  assert_true(stderr_has("experiment.device: expected a device such as \"cpu\", \"cuda\" or \"cuda:1\""));
  assert_int_equal(run(NULL, "validate", tiny, "--device", "cuda:1", "--no-data", NULL), 0);
  assert_int_equal(run(NULL, "validate", tiny, "--device", "cpu", NULL), 0);
  /* --no-data is validate's: other commands refuse it (tune once crashed on it). */
  assert_int_equal(run(NULL, "tune", "lr", tiny, "--no-data", NULL), 2);
  assert_true(stderr_has("unrecognized option '--no-data'"));
}

static void test_run_writes_resolved_config(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=2", NULL), 0);
  char path[1100];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_error_t err;
  json_t *c = json_load_file(path, 0, &err);
  assert_non_null(c);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(json_object_get(c, "stages"), "train"), "num_epochs")), 2);
  assert_string_equal(json_string_value(json_object_get(json_object_get(c, "experiment"), "logdir")), dir);
  json_decref(c);
  char *rows = jsonl_without_time(dir);
  int n = 0;
  for (char *p = rows; *p; p++)
    n += *p == '\n';
  assert_int_equal(n, 6); /* 2 epochs x (train, valid, the epoch's row) */
  free(rows);
  /* Running the resolved config reproduces the run. */
  char *dir2 = test_tmpdir();
  assert_int_equal(run(NULL, "run", path, "--logdir", dir2, NULL), 0);
  char *a = jsonl_without_time(dir), *b = jsonl_without_time(dir2);
  assert_string_equal(a, b);
  free(a), free(b);
  /* --check: 2 epochs of 2 batches, whatever the config says. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir2, "--check", "--overwrite", "--set",
                       "stages.train.num_epochs=50", NULL),
                   0);
  test_rm_rf(dir), test_rm_rf(dir2);
  free(dir), free(dir2);
}

/* --check without --logdir leaves the experiment's logdir alone: it writes
 * into a new directory under $TMPDIR and says which. */
static void test_check_uses_a_temporary_logdir(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  char tmp[1100], set[1200], exp_logdir[1100];
  snprintf(tmp, sizeof tmp, "%s/tmp", dir);
  snprintf(exp_logdir, sizeof exp_logdir, "%s/experiment", dir);
  snprintf(set, sizeof set, "experiment.logdir=%s", exp_logdir);
  assert_int_equal(mkdir(tmp, 0755), 0);
  char *old = getenv("TMPDIR") ? strdup(getenv("TMPDIR")) : NULL;
  setenv("TMPDIR", tmp, 1);
  int rc = run(NULL, "run", tiny, "--set", set, "--check", NULL);
  old ? setenv("TMPDIR", old, 1) : unsetenv("TMPDIR");
  free(old);
  assert_int_equal(rc, 0);
  struct stat st;
  assert_int_not_equal(stat(exp_logdir, &st), 0); /* never made */
  char *out = test_read_file(outfile), want[1200];
  snprintf(want, sizeof want, "loom: --check writes into %s/loom-check-", tmp);
  char *at = strstr(out, want);
  assert_non_null(at);
  char used[900];
  assert_int_equal(sscanf(at + strlen("loom: --check writes into "), "%899s", used), 1);
  free(out);
  char *rows = jsonl_without_time(used);
  assert_non_null(strstr(rows, "\"epoch\":2,\"global_epoch\":2,\"loader\":\"valid\""));
  free(rows);
  test_rm_rf(dir);
  free(dir);
}

/* The words a POSIX shell makes of `line`, one per line. */
static char *shell_words(const char *line) {
  char cmd[4096], out[1100];
  snprintf(out, sizeof out, "%s.words", errfile);
  snprintf(cmd, sizeof cmd, "printf '%%s\\n' %s > %s", line, out);
  assert_int_equal(system(cmd), 0);
  char *words = test_read_file(out);
  unlink(out);
  return words;
}

/* How often `text` occurs in what the last child printed (stdout and stderr). */
static int printed(const char *text) {
  int n = 0;
  const char *files[] = {outfile, errfile};
  for (int f = 0; f < 2; f++) {
    char *s = test_read_file(files[f]);
    for (const char *at = s; at && (at = strstr(at, text)); at++)
      n++;
    free(s);
  }
  return n;
}

static void test_ctrl_c_then_resume(void **state) {
  (void)state;
  char *top = test_tmpdir(), dir[1100];
  /* A logdir and a --set that need quoting, and a --set that changes a
   * key the config has: the hint repeats them all. */
  snprintf(dir, sizeof dir, "%s/my logs", top);
  pid_t pid;
  /* With a console logger, which used to print the interrupt as an error. */
  run(&pid, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=1000000", "--set",
      "experiment.name=it's tiny", "--set", "stages.train.callbacks[+]={\"type\": \"console_logger\"}", NULL);
  char last[1200];
  snprintf(last, sizeof last, "%s/checkpoints/last.h5", dir);
  struct timespec poll = {0, 10000000};
  for (int i = 0; i < 3000 && access(last, F_OK) < 0; i++)
    nanosleep(&poll, NULL);
  nanosleep(&poll, NULL);
  kill(pid, SIGINT);
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 130);
  assert_true(stderr_has("interrupted by SIGINT"));
  char want[4400];
  snprintf(want, sizeof want, "loom: the checkpoint is in %s/checkpoints\n", dir);
  assert_true(stderr_has(want));
  char *err = test_read_file(errfile), *hint = strstr(err, "continue with: loom run ");
  assert_non_null(hint);
  hint += strlen("continue with: loom run ");
  *strchr(hint, '\n') = '\0';
  char *words = shell_words(hint);
  snprintf(want, sizeof want, "%s\n--logdir\n%s\n--set\nstages.train.num_epochs=1000000\n--set\n"
           "experiment.name=it's tiny\n--set\nstages.train.callbacks[+]={\"type\": \"console_logger\"}\n--resume\nlast\n",
           tiny, dir);
  assert_string_equal(words, want);
  free(words);
  free(err);
  assert_true(stderr_has("--resume last"));
  /* Reported once, as an interrupt that saved a checkpoint, not as an error. */
  char saved[1200];
  snprintf(saved, sizeof saved, "); checkpoint saved: %s/checkpoints/last.h5\n", dir);
  assert_true(stderr_has(saved));
  assert_int_equal(printed("interrupted by SIGINT"), 1);
  assert_int_equal(printed("error"), 0);
  assert_int_equal(printed("LOOM_EINTERRUPTED"), 0);
  /* Resume with a stage short enough to be over: it finishes at once. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "experiment.name=it's tiny", "--set",
                       "stages.train.callbacks[+]={\"type\": \"console_logger\"}", "--resume", "last", NULL),
                   0);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--resume", "/nonexistent.h5", NULL), 1);
  assert_true(stderr_has("cannot resume from \"/nonexistent.h5\""));
  /* A failure during the run is printed once, with the state it saved. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--overwrite", "--set", "stages.train.callbacks[+]={\"type\": "
                       "\"console_logger\"}", "--set", "stages.train.callbacks[+]={\"type\": \"early_stopping\", "
                       "\"monitors\": [{\"metric\": \"nope\"}]}", NULL), 1);
  assert_int_equal(printed("early stopping watches \"valid/nope\""), 1);
  snprintf(saved, sizeof saved, "; its state saved: %s/checkpoints/exception.h5\n", dir);
  assert_true(stderr_has(saved));
  test_rm_rf(top);
  free(top);
}

/* How many files in `dir` have names that start with `prefix`. */
static int count_files(const char *dir, const char *prefix) {
  char cmd[1300];
  snprintf(cmd, sizeof cmd, "ls '%s' | grep -c '^%s' > %s.count", dir, prefix, errfile);
  if (system(cmd) < 0)
    return -1;
  snprintf(cmd, sizeof cmd, "%s.count", errfile);
  char *text = test_read_file(cmd);
  unlink(cmd);
  int n = text ? atoi(text) : -1;
  free(text);
  return n;
}

/* A finished run resumed: "already finished" on the console, exit 0, and
 * nothing written (no TensorBoard file, no metrics rows). */
static void test_resume_finished_run(void **state) {
  (void)state;
  char *dir = test_tmpdir(), config[1200], file[1200];
  json_t *c = json_load_file(tiny, 0, NULL);
  json_t *d = json_object_get(json_object_get(c, "datasets"), "d");
  snprintf(file, sizeof file, "%s/data/images.idx", configs);
  json_object_set_new(d, "images", json_string(file));
  snprintf(file, sizeof file, "%s/data/labels.idx", configs);
  json_object_set_new(d, "labels", json_string(file));
  json_t *train = json_object_get(json_object_get(c, "stages"), "train");
  json_array_append_new(json_object_get(train, "callbacks"), json_pack("{s:s}", "type", "tensorboard"));
  json_array_append_new(json_object_get(train, "callbacks"), json_pack("{s:s, s:s}", "type", "console_logger",
                                                                       "progress", "off"));
  snprintf(config, sizeof config, "%s.json", dir); /* beside the logdir: a fresh run wants it empty */
  assert_int_equal(json_dump_file(c, config, 0), 0);
  json_decref(c);
  assert_int_equal(run(NULL, "run", config, "--logdir", dir, NULL), 0);
  assert_int_equal(count_files(dir, "events.out.tfevents"), 1);
  char *rows = jsonl_without_time(dir);
  assert_int_equal(run(NULL, "run", config, "--logdir", dir, "--resume", "last", NULL), 0);
  char *out = test_read_file(outfile), want[1300];
  snprintf(want, sizeof want, "last.h5: already finished (the checkpoint's run had finished): nothing left to run\n");
  assert_non_null(strstr(out, want)); /* the console logger */
  snprintf(want, sizeof want, "loom: the run in %s had already finished: nothing to run\n", dir);
  assert_non_null(strstr(out, want)); /* loom run */
  assert_null(strstr(out, "epoch")); /* nothing ran */
  free(out);
  assert_int_equal(count_files(dir, "events.out.tfevents"), 1);
  char *again = jsonl_without_time(dir);
  assert_string_equal(again, rows);
  free(rows), free(again);
  test_rm_rf(dir);
  unlink(config);
  free(dir);
}

/* config.json's value at stages.train.`key`, or loaders.valid.batch_size. */
static double config_value(const char *dir, const char *key) {
  char path[1200];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_t *c = json_load_file(path, 0, NULL);
  assert_non_null(c);
  json_t *v = key ? json_object_get(json_object_get(json_object_get(c, "stages"), "train"), key)
                  : json_object_get(json_object_get(json_object_get(c, "loaders"), "valid"), "batch_size");
  double x = json_number_value(v);
  json_decref(c);
  return x;
}

/* The lines of config_history.jsonl, as a JSON array. */
static json_t *history(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/config_history.jsonl", dir);
  char *text = test_read_file(path);
  assert_non_null(text);
  json_t *lines = json_array();
  for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n"))
    json_array_append_new(lines, json_loads(line, 0, NULL));
  free(text);
  return lines;
}

/* A resume compares the config with the checkpoint's: a longer num_epochs
 * is allowed, another change is refused with the keys, old and new values
 * (config.json untouched), unless --allow-change names it; config.json
 * then describes the run and config_history.jsonl says what changed. */
static void test_resume_with_changed_config(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, NULL), 0);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=4", "--resume", "last",
                       NULL), 0);
  assert_true(config_value(dir, "num_epochs") == 4);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=5", "--set",
                       "loaders.valid.batch_size=2", "--set", "stages.train.optimizer.momentum=0.5", "--resume", "last",
                       NULL), 1);
  assert_true(stderr_has("the config differs from the one the checkpoint was written under: "
                         "loaders.valid.batch_size: 4 -> 2; stages.train.optimizer.momentum: 0.9 -> 0.5 (the "
                         "checkpoint restores it: it cannot change on resume). "));
  assert_true(config_value(dir, "num_epochs") == 4); /* what last ran */
  /* The rate and momentum come back from the checkpoint: allowing a change
   * there would make config.json lie about the run, so it stays refused. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.optimizer.lr=0.5", "--allow-change",
                       "stages.train.optimizer.lr", "--resume", "last", NULL),
                   1);
  assert_true(stderr_has("stages.train.optimizer.lr: "));
  assert_true(stderr_has("(the checkpoint restores it: it cannot change on resume)"));
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=5", "--set",
                       "loaders.valid.batch_size=2", "--allow-change", "loaders.*.batch_size", "--resume", "last",
                       NULL), 0);
  assert_true(config_value(dir, "num_epochs") == 5);
  assert_true(config_value(dir, NULL) == 2);
  json_t *h = history(dir);
  assert_int_equal(json_array_size(h), 3); /* the refused resume did not run */
  assert_true(json_is_null(json_object_get(json_array_get(h, 0), "resumed_from")));
  assert_true(json_is_string(json_object_get(json_array_get(h, 2), "resumed_from")));
  char *changes = json_dumps(json_object_get(json_array_get(h, 1), "changes"), JSON_COMPACT);
  assert_string_equal(changes, "[{\"key\":\"stages.train.num_epochs\",\"old\":3,\"new\":4}]");
  free(changes);
  changes = json_dumps(json_object_get(json_array_get(h, 2), "changes"), JSON_COMPACT);
  assert_string_equal(changes, "[{\"key\":\"loaders.valid.batch_size\",\"old\":4,\"new\":2},"
                               "{\"key\":\"stages.train.num_epochs\",\"old\":4,\"new\":5}]");
  free(changes);
  json_decref(h);
  /* The config's experiment.allow_change allows as --allow-change does
   * (and may itself change on resume). */
  const char *train_batch = "loaders.train.batch_size=4";
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=6", "--set",
                       "loaders.valid.batch_size=2", "--set", train_batch, "--resume", "last", NULL),
                   1);
  assert_true(stderr_has("the config differs from the one the checkpoint was written under: "
                         "loaders.train.batch_size: 2 -> 4. "));
  assert_true(stderr_has("the config's experiment.allow_change"));
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--set", "stages.train.num_epochs=6", "--set",
                       "loaders.valid.batch_size=2", "--set", train_batch, "--set",
                       "experiment.allow_change=[\"loaders.train.batch_size\"]", "--resume", "last", NULL),
                   0);
  h = history(dir);
  changes = json_dumps(json_object_get(json_array_get(h, 3), "changes"), JSON_COMPACT);
  assert_string_equal(changes, "[{\"key\":\"experiment.allow_change\",\"old\":null,\"new\":"
                               "[\"loaders.train.batch_size\"]},{\"key\":\"loaders.train.batch_size\",\"old\":2,"
                               "\"new\":4},{\"key\":\"stages.train.num_epochs\",\"old\":5,\"new\":6}]");
  free(changes);
  json_decref(h);
  test_rm_rf(dir);
  free(dir);
}

/* How many times `text` occurs in the file at dir/name. */
static int occurrences(const char *dir, const char *name, const char *text) {
  char path[1300];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  char *s = test_read_file(path);
  int n = 0;
  for (const char *p = s; p && (p = strstr(p, text)); p++)
    n++;
  free(s);
  return n;
}

/* A second run into a logdir that holds a run is refused and leaves every
 * file of the first byte for byte; --resume last still continues it;
 * --overwrite replaces it (the first run's files gone), and never removes a
 * file loom did not write. */
static void test_second_run_refused(void **state) {
  (void)state;
  char *dir = test_tmpdir(), log[1100], cmd[2400];
  snprintf(log, sizeof log, "%s/log", dir);
  const char *tb = "stages.train.callbacks[+]={\"type\": \"tensorboard\"}";
  assert_int_equal(run(NULL, "run", tiny, "--logdir", log, "--set", "stages.train.num_epochs=2", "--set", tb, NULL), 0);
  assert_int_equal(count_files(log, "events.out.tfevents"), 1);
  snprintf(cmd, sizeof cmd, "cp -a '%s' '%s/saved'", log, dir);
  assert_int_equal(system(cmd), 0);
  /* Forgetting --resume: refused (exit 2), nothing touched. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", log, "--set", "stages.train.num_epochs=2", "--set", tb, NULL), 2);
  char want[1400];
  snprintf(want, sizeof want, "the logdir %s already holds a run's files (", log);
  assert_true(stderr_has(want));
  assert_true(stderr_has("resume that run (loom run --resume last, loom_runner_set_resume), overwrite it (loom run "
                         "--overwrite, loom_run_options.overwrite), or give this run another logdir"));
  snprintf(cmd, sizeof cmd, "diff -r '%s/saved' '%s' >&2", dir, log);
  assert_int_equal(system(cmd), 0);
  /* --resume last continues the first run: a third epoch. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", log, "--set", "stages.train.num_epochs=3", "--set", tb,
                       "--resume", "last", NULL),
                   0);
  assert_int_equal(occurrences(log, "metrics.jsonl", "\"loader\":null"), 3);
  assert_int_equal(occurrences(log, "config_history.jsonl", "\"resumed_from\""), 2);
  /* --overwrite and --resume exclude each other. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", log, "--overwrite", "--resume", "last", NULL), 2);
  assert_true(stderr_is("loom: --overwrite starts the run afresh and --resume continues it: give one of them\n"));
  /* A file loom did not write is no run's: it stays through --overwrite. */
  snprintf(cmd, sizeof cmd, "%s/notes.txt", log);
  FILE *f = fopen(cmd, "w");
  assert_non_null(f);
  fclose(f);
  /* --overwrite: a new run of 1 epoch, without TensorBoard; the first run's
   * files are gone. */
  assert_int_equal(run(NULL, "run", tiny, "--logdir", log, "--overwrite", "--set", "stages.train.num_epochs=1", NULL),
                   0);
  assert_int_equal(count_files(log, "events.out.tfevents"), 0);
  assert_int_equal(occurrences(log, "metrics.jsonl", "\"loader\":null"), 1);
  assert_int_equal(occurrences(log, "config_history.jsonl", "\"resumed_from\""), 1);
  assert_int_equal(access(cmd, F_OK), 0); /* notes.txt */
  test_rm_rf(dir);
  free(dir);
}

/* The train batches a run in `dir` has done, from its last.h5. */
static int64_t train_batches(const char *dir) {
  char path[1200];
  snprintf(path, sizeof path, "%s/checkpoints/last.h5", dir);
  loom_checkpoint *c = loom_checkpoint_read(path);
  assert_non_null(c);
  int64_t counters[7];
  assert_int_equal(loom_state_get_i64_array(loom_checkpoint_find(c, "runner"), "counters", counters, 7), 0);
  loom_checkpoint_destroy(c);
  return counters[0];
}

/* --limit-batches and --overfit-batches: tiny.json's train loader has 4
 * batches (8 samples, batch 2), 3 epochs. */
static void test_batch_limits(void **state) {
  (void)state;
  char *dir = test_tmpdir();
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, NULL), 0);
  assert_int_equal(train_batches(dir), 12);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--overwrite", "--limit-batches", "1", NULL), 0);
  assert_int_equal(train_batches(dir), 3);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--overwrite", "--overfit-batches", "3", NULL), 0);
  assert_int_equal(train_batches(dir), 9);
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--limit-batches", "0", NULL), 2);
  assert_true(stderr_is("loom: --limit-batches: expected a number of batches >= 1, got \"0\"\n"));
  assert_int_equal(run(NULL, "run", tiny, "--logdir", dir, "--overfit-batches", "2x", NULL), 2);
  assert_true(stderr_is("loom: --overfit-batches: expected a number of batches >= 1, got \"2x\"\n"));
  test_rm_rf(dir);
  free(dir);
}

/* loom convert creates the output's directory; a write error names the
 * file the user gave and the system's reason. */
static void test_convert(void **state) {
  (void)state;
  char *dir = test_tmpdir(), images[1100], labels[1100], out[1200], want[1400];
  snprintf(images, sizeof images, "%s/data/images.idx", configs);
  snprintf(labels, sizeof labels, "%s/data/labels.idx", configs);
  snprintf(out, sizeof out, "%s/new/sub/d.h5", dir);
  assert_int_equal(run(NULL, "convert", "idx", out, "--images", images, "--labels", labels, NULL), 0);
  loom_hdf5_options o = {.files = (const char *[]){out}, .num_files = 1, .inputs = "images", .targets = "labels"};
  loom_dataset *ds = loom_hdf5_dataset_open(&o);
  assert_non_null(ds);
  assert_int_equal(loom_dataset_length(ds), 8);
  loom_dataset_release(ds);
  /* A file where a directory should be. */
  snprintf(out, sizeof out, "%s/new/sub/d.h5/x.h5", dir);
  assert_int_equal(run(NULL, "convert", "idx", out, "--images", images, "--labels", labels, NULL), 1);
  snprintf(want, sizeof want, "loom: error: cannot write %s: \"%s/new/sub/d.h5\" exists but is not a directory",
           out, dir);
  assert_true(stderr_has(want));
  /* A full disk: the write fails with the system's reason, no file is left. */
  snprintf(out, sizeof out, "%s/full.h5", dir);
  child_file_limit = 512;
  int code = run(NULL, "convert", "idx", out, "--images", images, "--labels", labels, NULL);
  child_file_limit = 0;
  assert_int_equal(code, 1);
  snprintf(want, sizeof want, "loom: error: cannot write %s: File too large\n", out);
  assert_true(stderr_has(want));
  char *text = test_read_file(errfile);
  assert_null(strstr(text, ".tmp")); /* not the temporary name */
  free(text);
  assert_int_equal(access(out, F_OK), -1);
  snprintf(want, sizeof want, "%s.tmp", out);
  assert_int_equal(access(want, F_OK), -1);
  test_rm_rf(dir);
  free(dir);
}

/* --- plugins (the libraries of tests/plugins) --- */

/* The plugin `name`'s library. */
static const char *plugin(const char *name) {
  static char path[4][1100];
  static int next;
  char *out = path[next++ % 4];
  snprintf(out, sizeof path[0], "%s/libtest_plugin_%s.so", plugins, name);
  return out;
}

/* tiny.json with the good plugin's optimizer and callback, and `list` (if
 * not NULL) as its "plugins", written to dir/config.json. */
static const char *plugin_config(const char *dir, json_t *list) {
  static char path[1100];
  char file[1100];
  json_t *c = json_load_file(tiny, 0, NULL);
  assert_non_null(c);
  json_t *d = json_object_get(json_object_get(c, "datasets"), "d");
  snprintf(file, sizeof file, "%s/data/images.idx", configs);
  json_object_set_new(d, "images", json_string(file));
  snprintf(file, sizeof file, "%s/data/labels.idx", configs);
  json_object_set_new(d, "labels", json_string(file));
  json_t *train = json_object_get(json_object_get(c, "stages"), "train");
  json_object_set_new(train, "optimizer", json_pack("{s:s, s:f}", "type", "plugin_sign_sgd", "lr", 0.05));
  json_array_append_new(json_object_get(train, "callbacks"), json_pack("{s:s}", "type", "plugin_marker"));
  if (list)
    json_object_set_new(c, "plugins", list);
  snprintf(path, sizeof path, "%s/config.json", dir);
  assert_int_equal(json_dump_file(c, path, JSON_INDENT(2)), 0);
  json_decref(c);
  return path;
}

static void test_plugin_from_command_line(void **state) {
  (void)state;
  char *dir = test_tmpdir(), logdir[1100], marker[1200], resolved[1200], real[PATH_MAX];
  const char *config = plugin_config(dir, NULL);
  snprintf(logdir, sizeof logdir, "%s/log", dir); /* a fresh run's logdir holds no config */
  /* Without the plugin its components are unknown. */
  assert_int_equal(run(NULL, "validate", config, NULL), 2);
  assert_true(stderr_has("unknown optimizer \"plugin_sign_sgd\""));
  assert_int_equal(run(NULL, "validate", config, "--plugin", plugin("good"), NULL), 0);
  /* Given twice, it loads once. */
  assert_int_equal(run(NULL, "validate", "--plugin", plugin("good"), config, "--plugin", plugin("good"), NULL), 0);
  /* A run trains with them: 3 epochs of 4 batches of 2 of the 8 samples. */
  assert_int_equal(run(NULL, "run", config, "--plugin", plugin("good"), "--logdir", logdir, NULL), 0);
  snprintf(marker, sizeof marker, "%s/marker.txt", logdir);
  char *text = test_read_file(marker);
  assert_non_null(text);
  assert_string_equal(text, "steps 12 plugin_sign_sgd\n");
  free(text);
  /* The resolved config names the plugin by its absolute path, so it
   * runs again without --plugin. */
  snprintf(resolved, sizeof resolved, "%s/config.json", logdir);
  json_t *c = json_load_file(resolved, 0, NULL);
  assert_non_null(realpath(plugin("good"), real));
  assert_int_equal(json_array_size(json_object_get(c, "plugins")), 1);
  assert_string_equal(json_string_value(json_array_get(json_object_get(c, "plugins"), 0)), real);
  json_decref(c);
  assert_int_equal(run(NULL, "validate", resolved, NULL), 0);
  test_rm_rf(dir);
  free(dir);
}

static void test_plugin_from_config(void **state) {
  (void)state;
  /* "plugins" are relative to the config's directory, not the working one. */
  char *dir = test_tmpdir(), sub[1200], link[1300], real[PATH_MAX], logdir[1100];
  snprintf(logdir, sizeof logdir, "%s/log", dir); /* a fresh run's logdir holds no config */
  snprintf(sub, sizeof sub, "%s/plugins", dir);
  assert_int_equal(mkdir(sub, 0755), 0);
  assert_non_null(realpath(plugin("good"), real));
  snprintf(link, sizeof link, "%s/libgood.so", sub);
  assert_int_equal(symlink(real, link), 0);
  const char *config = plugin_config(dir, json_pack("[s]", "plugins/libgood.so"));
  assert_int_equal(run(NULL, "validate", config, NULL), 0);
  assert_int_equal(run(NULL, "run", config, "--logdir", logdir, "--check", NULL), 0);
  char marker[1300];
  snprintf(marker, sizeof marker, "%s/marker.txt", logdir);
  char *text = test_read_file(marker);
  assert_non_null(text);
  assert_string_equal(text, "steps 4 plugin_sign_sgd\n"); /* --check: 2 epochs of 2 batches */
  free(text);
  /* The same library from the command line and the config loads once. */
  assert_int_equal(run(NULL, "validate", config, "--plugin", plugin("good"), NULL), 0);
  /* A missing one is reported at its position in the config, resolved. */
  config = plugin_config(dir, json_pack("[s, s]", "plugins/libgood.so", "nope.so"));
  assert_int_equal(run(NULL, "validate", config, NULL), 2);
  char *conf_text = test_read_file(config), want[PATH_MAX + 2600];
  int line = 1;
  for (const char *at = conf_text; at < strstr(conf_text, "\"nope.so\""); at++)
    line += *at == '\n';
  free(conf_text);
  assert_non_null(realpath(dir, real));
  snprintf(want, sizeof want, "%s:%d:5: plugins[1]: plugin %s/nope.so: no such file", config, line, real);
  assert_true(stderr_has(want));
  test_rm_rf(dir);
  free(dir);
}

static void test_plugin_errors(void **state) {
  (void)state;
  char want[2400];
  assert_int_equal(run(NULL, "validate", tiny, "--plugin", "/nonexistent/libnope.so", NULL), 2);
  assert_true(stderr_has("loom: error: plugin /nonexistent/libnope.so: no such file (build it first, or give its "
                         "path"));
  snprintf(want, sizeof want, "loom: error: plugin %s is not a loom plugin: it exports no \"loom_plugin\" entry "
           "point (define one with LOOM_PLUGIN(name, init) from loom/plugin.h)", plugin("no_entry"));
  assert_int_equal(run(NULL, "validate", tiny, "--plugin", plugin("no_entry"), NULL), 2);
  assert_true(stderr_has(want));
  /* Refused before any of its code runs: its init would abort. */
  snprintf(want, sizeof want, "loom: error: plugin %s was built against loom 9.%d.%d (ABI 7), but this is loom "
           "%d.%d.%d (ABI %d): rebuild the plugin against this loom's headers and library", plugin("wrong_version"),
           LOOM_VERSION_MINOR, LOOM_VERSION_PATCH, LOOM_VERSION_MAJOR, LOOM_VERSION_MINOR, LOOM_VERSION_PATCH,
           LOOM_ABI_VERSION);
  assert_int_equal(run(NULL, "run", tiny, "--plugin", plugin("wrong_version"), NULL), 2);
  assert_true(stderr_has(want));
  snprintf(want, sizeof want, "loom: error: plugin %s (\"failing\"): init failed: its license file is missing",
           plugin("failing_init"));
  assert_int_equal(run(NULL, "validate", tiny, "--plugin", plugin("failing_init"), NULL), 2);
  assert_true(stderr_has(want));
  /* A file that is not a shared library at all. */
  assert_int_equal(run(NULL, "validate", tiny, "--plugin", tiny, NULL), 2);
  snprintf(want, sizeof want, "loom: error: plugin %s cannot be loaded: ", tiny);
  assert_true(stderr_has(want));
}

/* loom tune lr on regression.json, whose answer is known (the linear
 * regression of test_lr_finder.c: gradient descent diverges above lr 0.4):
 * the second stage is swept (its optimizer inherited, its scheduler,
 * load_weights and checkpoints dropped) from 1e-4 to 10 over at most 100
 * batches; it diverges, stops early, suggests a rate below 0.4, and writes
 * only the curve, under LOGDIR/lr_find. */
static void test_tune_lr(void **state) {
  (void)state;
  char *dir = test_tmpdir(), config[1100], csv[1200], sweep_dir[1200];
  snprintf(config, sizeof config, "%s/regression.json", configs);
  assert_int_equal(run(NULL, "tune", "lr", config, "--stage", "finetune", "--min", "1e-4", "--max", "10", "--steps",
                       "100", "--logdir", dir, NULL),
                   0);
  char *out = test_read_file(outfile);
  assert_non_null(out);
  assert_non_null(strstr(out, "loom: sweeping stage \"finetune\" from lr 0.0001 to 10 over up to 100 batches\n"));
  assert_non_null(strstr(out, "passed 4 x its best"));
  const char *line = strstr(out, "suggested lr: ");
  assert_non_null(line);
  double suggested = strtod(line + strlen("suggested lr: "), NULL);
  if (!(suggested > 0.004 && suggested < 0.4))
    fail_msg("suggested lr %g, expected below the divergence at 0.4, within two decades", suggested);
  free(out);
  /* The CSV: the exact exponential rates, stopped before the 100th. */
  snprintf(csv, sizeof csv, "%s/lr_find/lr_find.csv", dir);
  char *text = test_read_file(csv);
  assert_non_null(text);
  char *row = strtok(text, "\n");
  assert_string_equal(row, "lr,loss,smoothed");
  int n = 0;
  double lr = 0;
  while ((row = strtok(NULL, "\n"))) {
    lr = strtod(row, NULL);
    double want = 1e-4 * pow(1e5, n / 99.0);
    if (fabs(lr - want) > 1e-13 * want)
      fail_msg("row %d: lr %.17g, expected %.17g", n, lr, want);
    n++;
  }
  free(text);
  assert_true(n > 10 && n < 100);
  assert_true(lr > 0.4);
  /* Nothing else: no checkpoint, metrics or config anywhere in the logdir. */
  snprintf(sweep_dir, sizeof sweep_dir, "%s/lr_find", dir);
  assert_int_equal(count_files(dir, ""), 1);
  assert_int_equal(count_files(sweep_dir, ""), 3); /* lr_find.csv, one events file, hparams.json */
  assert_int_equal(count_files(sweep_dir, "hparams.json"), 1);
  assert_int_equal(count_files(sweep_dir, "events.out.tfevents"), 1);
  /* Mistakes: an unknown stage, a range upside down, nothing to tune. */
  assert_int_equal(run(NULL, "tune", "lr", config, "--stage", "fintune", NULL), 2);
  assert_true(stderr_has("no stage \"fintune\" (did you mean \"finetune\"?)"));
  assert_int_equal(run(NULL, "tune", "lr", config, "--min", "1", "--max", "0.1", NULL), 2);
  assert_true(stderr_is("loom: tune lr: --max (0.1) must be above --min (1)\n"));
  assert_int_equal(run(NULL, "tune", config, NULL), 2);
  assert_true(stderr_is("loom: tune: expected what to tune: lr (loom tune lr CONFIG)\n"));
  test_rm_rf(dir);
  free(dir);
}

int main(int argc, char **argv) {
  if (argc < 4)
    return 2;
  loom = argv[1];
  configs = argv[2];
  plugins = argv[3];
  snprintf(tiny, sizeof tiny, "%s/tiny.json", configs);
  snprintf(errfile, sizeof errfile, "/tmp/loom-test-cli-stderr.%ld", (long)getpid());
  snprintf(outfile, sizeof outfile, "/tmp/loom-test-cli-stdout.%ld", (long)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_usage_and_validate),
      cmocka_unit_test(test_run_writes_resolved_config),
      cmocka_unit_test(test_check_uses_a_temporary_logdir),
      cmocka_unit_test(test_ctrl_c_then_resume),
      cmocka_unit_test(test_resume_finished_run),
      cmocka_unit_test(test_resume_with_changed_config),
      cmocka_unit_test(test_convert),
      cmocka_unit_test(test_one_line_mistakes),
      cmocka_unit_test(test_batch_limits),
      cmocka_unit_test(test_second_run_refused),
      cmocka_unit_test(test_plugin_from_command_line),
      cmocka_unit_test(test_plugin_from_config),
      cmocka_unit_test(test_plugin_errors),
      cmocka_unit_test(test_tune_lr),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  unlink(errfile);
  unlink(outfile);
  return rc;
}
