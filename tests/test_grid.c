#define _DEFAULT_SOURCE /* cfmakeraw */
/* loom grid as a user runs it: a small grid's rows and seeds, failures
 * isolated (a segfault, a timeout), --retries, Ctrl-C then a rerun that
 * resumes, and validate's message for a bad option.
 * Usage: test_grid LOOM CONFIGS_DIR PLUGINS_DIR */
#define _XOPEN_SOURCE 700
#include <pty.h>
#include <termios.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

static const char *loom, *configs, *plugins;
static char outfile[1200], errfile[1200];

/* Runs loom with the arguments (NULL-terminated) in test_dir; the exit
 * code, or with pid_out the child's pid at once. */
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
    if (chdir(test_dir) < 0 || !freopen(outfile, "w", stdout) || !freopen(errfile, "w", stderr))
      _exit(127);
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

/* tiny.json with absolute data paths, the misbehave plugin and its
 * callback (stages.train.callbacks[3]), `epochs` epochs: test_dir/base.json. */
static void write_base(int epochs) {
  char path[1300];
  snprintf(path, sizeof path, "%s/tiny.json", configs);
  json_t *c = json_load_file(path, 0, NULL);
  assert_non_null(c);
  json_t *d = json_object_get(json_object_get(c, "datasets"), "d");
  snprintf(path, sizeof path, "%s/data/images.idx", configs);
  json_object_set_new(d, "images", json_string(path));
  snprintf(path, sizeof path, "%s/data/labels.idx", configs);
  json_object_set_new(d, "labels", json_string(path));
  snprintf(path, sizeof path, "%s/libtest_plugin_misbehave.so", plugins);
  json_object_set_new(c, "plugins", json_pack("[s]", path));
  json_t *train = json_object_get(json_object_get(c, "stages"), "train");
  json_object_set_new(train, "num_epochs", json_integer(epochs));
  json_array_append_new(json_object_get(train, "callbacks"), json_pack("{s:s}", "type", "test_misbehave"));
  snprintf(path, sizeof path, "%s/base.json", test_dir);
  assert_int_equal(json_dump_file(c, path, JSON_INDENT(2)), 0);
  json_decref(c);
}

static void write_grid(const char *name, const char *text) {
  char path[1300];
  snprintf(path, sizeof path, "%s/%s", test_dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Every row of DIR/results.jsonl, in order. */
static json_t *rows_of(const char *dir) {
  char path[1300];
  snprintf(path, sizeof path, "%s/%s/results.jsonl", test_dir, dir);
  json_t *rows = json_array();
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char line[65536];
  while (fgets(line, sizeof line, f)) {
    json_error_t err;
    json_t *row = json_loads(line, 0, &err);
    assert_non_null(row); /* every line whole */
    json_array_append_new(rows, row);
  }
  fclose(f);
  return rows;
}

/* The last row of `id`, borrowed from rows. */
static json_t *last_row(json_t *rows, const char *id) {
  json_t *found = NULL;
  for (size_t i = 0; i < json_array_size(rows); i++)
    if (strcmp(json_string_value(json_object_get(json_array_get(rows, i), "id")), id) == 0)
      found = json_array_get(rows, i);
  return found;
}

static const char *str(json_t *row, const char *key) { return json_string_value(json_object_get(row, key)); }

/* splitmix64 of grid seed + rep * golden gamma, as docs/grid.md gives it. */
static uint64_t expected_seed(uint64_t seed, int rep) {
  uint64_t z = seed + (uint64_t)rep * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) >> 1;
}

static json_t *experiment_config(const char *grid, const char *id) {
  char path[1500];
  snprintf(path, sizeof path, "%s/%s/%s/config.json", test_dir, grid, id);
  json_t *c = json_load_file(path, 0, NULL);
  assert_non_null(c);
  return c;
}

/* 2 x 2 options x 2 repetitions: 8 rows, all done, named from their
 * values, seeded by the documented function, each config as its values. */
static void test_small_grid(void **state) {
  (void)state;
  write_base(2);
  write_grid("small.json", "{\"base\": \"base.json\", \"seed\": 11, \"repetitions\": 2,\n"
                           " \"options\": {\"stages.train.optimizer.lr\": [0.1, 0.003],\n"
                           "             \"loaders.train.batch_size\": [2, 4]}}\n");
  assert_int_equal(run(NULL, "grid", "validate", "small.json", NULL), 0);
  assert_int_equal(run(NULL, "grid", "run", "small.json", "--workers", "2", NULL), 0);
  json_t *rows = rows_of("small");
  assert_int_equal(json_array_size(rows), 8);
  const double lrs[] = {0.1, 0.003};
  const int sizes[] = {2, 4};
  for (int rep = 1; rep <= 2; rep++)
    for (int i = 0; i < 2; i++)
      for (int j = 0; j < 2; j++) {
        char id[200];
        snprintf(id, sizeof id, "lr=%g,batch_size=%d/rep%d", lrs[i], sizes[j], rep);
        json_t *row = last_row(rows, id);
        assert_non_null(row);
        assert_string_equal(str(row, "status"), "done");
        assert_int_equal(json_integer_value(json_object_get(row, "rep")), rep);
        assert_int_equal(json_integer_value(json_object_get(row, "attempt")), 1);
        assert_true(json_is_null(json_object_get(row, "reason")));
        assert_string_equal(str(row, "logdir"), id);
        uint64_t seed = (uint64_t)json_integer_value(json_object_get(row, "seed"));
        assert_true(seed == expected_seed(11, rep));
        json_t *options = json_object_get(row, "options");
        assert_true(json_real_value(json_object_get(options, "stages.train.optimizer.lr")) == lrs[i]);
        assert_int_equal(json_integer_value(json_object_get(options, "loaders.train.batch_size")), sizes[j]);
        /* The run used those values and that seed. */
        json_t *c = experiment_config("small", id);
        assert_true((uint64_t)json_integer_value(json_object_get(json_object_get(c, "experiment"), "seed")) == seed);
        json_t *opt = json_object_get(json_object_get(json_object_get(c, "stages"), "train"), "optimizer");
        assert_true(json_real_value(json_object_get(opt, "lr")) == lrs[i]);
        json_decref(c);
        /* final: the last epoch's loader metrics; best: the main metric's. */
        json_t *final = json_object_get(row, "final");
        assert_true(json_is_number(json_object_get(final, "train/loss")));
        assert_true(json_is_number(json_object_get(final, "valid/accuracy")));
        assert_string_equal(str(json_object_get(row, "main_metric"), "name"), "valid/loss");
        assert_string_equal(str(json_object_get(row, "main_metric"), "direction"), "min");
        double best = json_number_value(json_object_get(json_object_get(row, "best"), "valid/loss"));
        assert_true(best <= json_number_value(json_object_get(final, "valid/loss")));
      }
  assert_true(expected_seed(11, 1) != expected_seed(11, 2));
  json_decref(rows);
  /* Again: everything is done, nothing runs, no row is added. */
  assert_int_equal(run(NULL, "grid", "run", "small.json", "--workers", "2", NULL), 0);
  rows = rows_of("small");
  assert_int_equal(json_array_size(rows), 8);
  json_decref(rows);
  char env[1300];
  snprintf(env, sizeof env, "%s/small/environment.json", test_dir);
  json_t *e = json_load_file(env, 0, NULL);
  assert_non_null(e);
  assert_string_equal(str(e, "loom_version"), LOOM_VERSION);
  assert_non_null(strstr(str(e, "grid_hash"), "fnv1a64:"));
  json_decref(e);
}

/* The ids of a results file (test_dir/DIR/FILE), in order, one per line. */
static void ids_of(const char *dir, const char *file, char *out, size_t size) {
  char path[1300];
  snprintf(path, sizeof path, "%s/%s/%s", test_dir, dir, file);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char line[65536];
  out[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    json_t *row = json_loads(line, 0, NULL);
    snprintf(out + strlen(out), size - strlen(out), "%s\n", str(row, "id"));
    json_decref(row);
  }
  fclose(f);
}

/* --shard i/n, and an MPI launcher's rank and size as the shard: each
 * shard runs the experiments whose index mod n is i, into its own file. */
static void test_shards(void **state) {
  (void)state;
  write_base(1);
  write_grid("shard.json", "{\"base\": \"base.json\", \"repetitions\": 2,\n"
                           " \"options\": {\"stages.train.optimizer.lr\": [0.1, 0.03, 0.01]}}\n");
  assert_int_equal(run(NULL, "grid", "run", "shard.json", "--workers", "2", "--shard", "0/2", NULL), 0);
  setenv("OMPI_COMM_WORLD_RANK", "1", 1);
  setenv("OMPI_COMM_WORLD_SIZE", "2", 1);
  assert_int_equal(run(NULL, "grid", "run", "shard.json", "--workers", "2", NULL), 0);
  unsetenv("OMPI_COMM_WORLD_RANK");
  unsetenv("OMPI_COMM_WORLD_SIZE");
  char ids[4096];
  ids_of("shard", "results-shard-0-of-2.jsonl", ids, sizeof ids);
  /* Experiments 0, 2, 4 in the order rep1 of every point, then rep2 (the
   * finishing order of two workers may differ: compare sorted). */
  char sorted[4096], cmd[5000];
  snprintf(cmd, sizeof cmd, "printf '%%s' '%s' | sort", ids);
  FILE *p = popen(cmd, "r");
  size_t got = fread(sorted, 1, sizeof sorted - 1, p);
  sorted[got] = '\0';
  pclose(p);
  assert_string_equal(sorted, "lr=0.01/rep1\nlr=0.03/rep2\nlr=0.1/rep1\n");
  ids_of("shard", "results-shard-1-of-2.jsonl", ids, sizeof ids);
  snprintf(cmd, sizeof cmd, "printf '%%s' '%s' | sort", ids);
  p = popen(cmd, "r");
  got = fread(sorted, 1, sizeof sorted - 1, p);
  sorted[got] = '\0';
  pclose(p);
  assert_string_equal(sorted, "lr=0.01/rep2\nlr=0.03/rep1\nlr=0.1/rep2\n");
  /* The whole grid afterwards: every experiment is done already. */
  assert_int_equal(run(NULL, "grid", "run", "shard.json", "--workers", "2", NULL), 0);
  char path[1300];
  snprintf(path, sizeof path, "%s/shard/results.jsonl", test_dir);
  char *all = test_read_file(path);
  assert_true(!all || !all[0]);
  free(all);
}

/* One experiment segfaults, one hangs past --timeout: both failed with
 * their signal and reason, the others done. */
static void test_failures_isolated(void **state) {
  (void)state;
  write_base(2);
  write_grid("bad.json", "{\"base\": \"base.json\", \"sets\": [\n"
                         "  {\"stages.train.optimizer.lr\": [0.1, 0.03]},\n"
                         "  {\"stages.train.callbacks[3].action\": [\"segv\", \"hang\"]}]}\n");
  assert_int_equal(run(NULL, "grid", "run", "bad.json", "--workers", "2", "--timeout", "5", "--kill-after", "1",
                       NULL), 1);
  assert_true(stderr_has("2 experiments failed"));
  json_t *rows = rows_of("bad");
  assert_int_equal(json_array_size(rows), 4);
  assert_string_equal(str(last_row(rows, "lr=0.1/rep1"), "status"), "done");
  assert_string_equal(str(last_row(rows, "lr=0.03/rep1"), "status"), "done");
  json_t *segv = last_row(rows, "action=segv/rep1"), *hang = last_row(rows, "action=hang/rep1");
  assert_string_equal(str(segv, "status"), "failed");
  assert_string_equal(str(segv, "reason"), "signal");
  assert_string_equal(str(segv, "signal"), "SIGSEGV");
  assert_true(json_is_null(json_object_get(segv, "exit_code")));
  assert_non_null(str(segv, "stderr_tail"));
  assert_string_equal(str(hang, "status"), "failed");
  assert_string_equal(str(hang, "reason"), "timeout");
  assert_string_equal(str(hang, "signal"), "SIGKILL"); /* it ignored SIGTERM */
  json_decref(rows);
}

/* A run that fails once is retried with --retries 1 and then done. */
static void test_retries(void **state) {
  (void)state;
  write_base(1);
  write_grid("retry.json", "{\"base\": \"base.json\",\n"
                           " \"options\": {\"stages.train.callbacks[3].action\": [\"none\", \"fail_once\"]}}\n");
  assert_int_equal(run(NULL, "grid", "run", "retry.json", "--workers", "1", "--retries", "1", NULL), 0);
  json_t *rows = rows_of("retry");
  assert_int_equal(json_array_size(rows), 3);
  json_t *first = json_array_get(rows, 1), *second = json_array_get(rows, 2);
  assert_string_equal(str(first, "id"), "action=fail_once/rep1");
  assert_string_equal(str(first, "status"), "failed");
  assert_string_equal(str(first, "reason"), "exit");
  assert_int_equal(json_integer_value(json_object_get(first, "exit_code")), 1);
  assert_non_null(strstr(str(first, "stderr_tail"), "failing the first run, as asked"));
  assert_string_equal(str(second, "id"), "action=fail_once/rep1");
  assert_string_equal(str(second, "status"), "done");
  assert_int_equal(json_integer_value(json_object_get(second, "attempt")), 2);
  json_decref(rows);
  /* Without retries the failure stands, and the exit code says so. */
  write_grid("noretry.json", "{\"base\": \"base.json\",\n"
                             " \"options\": {\"stages.train.callbacks[3].action\": [\"fail_once\"]}}\n");
  assert_int_equal(run(NULL, "grid", "run", "noretry.json", "--workers", "1", NULL), 1);
}

static bool exists(const char *grid, const char *id, const char *file) {
  char path[1500];
  snprintf(path, sizeof path, "%s/%s/%s/%s", test_dir, grid, id, file);
  return access(path, F_OK) == 0;
}

/* config_history.jsonl's last line's resumed_from (NULL: a fresh run). */
static char *resumed_from(const char *grid, const char *id) {
  char path[1500];
  snprintf(path, sizeof path, "%s/%s/%s/config_history.jsonl", test_dir, grid, id);
  char *text = test_read_file(path), *line = text, *next;
  assert_non_null(text);
  while ((next = strchr(line, '\n')) && next[1])
    line = next + 1;
  json_t *row = json_loads(line, 0, NULL);
  const char *from = json_string_value(json_object_get(row, "resumed_from"));
  char *copy = from ? strdup(from) : NULL;
  json_decref(row);
  free(text);
  return copy;
}

/* The global epochs of metrics.jsonl's train rows, as "1 2 3". */
static void train_epochs(const char *grid, const char *id, char *out, size_t size) {
  char path[1500];
  snprintf(path, sizeof path, "%s/%s/%s/metrics.jsonl", test_dir, grid, id);
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  char line[8192];
  out[0] = '\0';
  while (fgets(line, sizeof line, f)) {
    json_t *row = json_loads(line, 0, NULL);
    if (str(row, "loader") && strcmp(str(row, "loader"), "train") == 0)
      snprintf(out + strlen(out), size - strlen(out), "%s%lld", out[0] ? " " : "",
               (long long)json_integer_value(json_object_get(row, "global_epoch")));
    json_decref(row);
  }
  fclose(f);
}

/* Ctrl-C while two of three slow experiments run: those two are recorded
 * interrupted, the third never started; the rerun resumes the two from
 * their last.h5 (their history says so, their epochs run on), starts the
 * third, and every experiment is done exactly once. */
static void test_interrupt_then_resume(void **state) {
  (void)state;
  write_base(3);
  write_grid("slow.json", "{\"base\": \"base.json\",\n"
                          " \"options\": {\"stages.train.callbacks[3].action\": [\"slow\"],\n"
                          "             \"stages.train.optimizer.lr\": [0.1, 0.03, 0.01]}}\n");
  pid_t pid;
  run(&pid, "grid", "run", "slow.json", "--workers", "2", NULL);
  struct timespec poll = {0, 10000000};
  for (int i = 0; i < 3000 && !(exists("slow", "lr=0.1/rep1", "checkpoints/last.h5") &&
                                exists("slow", "lr=0.03/rep1", "checkpoints/last.h5"));
       i++)
    nanosleep(&poll, NULL);
  kill(pid, SIGINT);
  int status;
  waitpid(pid, &status, 0);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 130);
  assert_true(stderr_has("run the same command again"));
  json_t *rows = rows_of("slow");
  assert_int_equal(json_array_size(rows), 2);
  assert_string_equal(str(last_row(rows, "lr=0.1/rep1"), "status"), "interrupted");
  assert_string_equal(str(last_row(rows, "lr=0.03/rep1"), "status"), "interrupted");
  assert_int_equal(json_integer_value(json_object_get(last_row(rows, "lr=0.1/rep1"), "exit_code")), 130);
  assert_false(exists("slow", "lr=0.01/rep1", "stdout.txt"));
  json_decref(rows);

  assert_int_equal(run(NULL, "grid", "run", "slow.json", "--workers", "2", NULL), 0);
  rows = rows_of("slow");
  assert_int_equal(json_array_size(rows), 5);
  const char *ids[] = {"lr=0.1/rep1", "lr=0.03/rep1", "lr=0.01/rep1"};
  for (int i = 0; i < 3; i++) {
    int done = 0;
    for (size_t k = 0; k < json_array_size(rows); k++) {
      json_t *row = json_array_get(rows, k);
      done += strcmp(str(row, "id"), ids[i]) == 0 && strcmp(str(row, "status"), "done") == 0;
    }
    assert_int_equal(done, 1);
    char epochs[64];
    train_epochs("slow", ids[i], epochs, sizeof epochs);
    assert_string_equal(epochs, "1 2 3");
    char *from = resumed_from("slow", ids[i]);
    if (i < 2) {
      assert_non_null(from); /* resumed, not restarted */
      assert_non_null(strstr(from, "last.h5"));
    } else {
      assert_null(from);
    }
    free(from);
  }
  json_decref(rows);
}

/* A value the config refuses: validate names the option, its value and
 * where the grid file gives it, and nothing runs. */
static void test_validate_reports_option(void **state) {
  (void)state;
  write_base(1);
  write_grid("typo.json", "{\"base\": \"base.json\",\n"
                          " \"options\": {\"stages.train.optimizer.lr\": [0.1, \"fast\"]}}\n");
  assert_int_equal(run(NULL, "grid", "validate", "typo.json", NULL), 2);
  assert_true(stderr_has("typo.json:2:49: options.stages.train.optimizer.lr[1]: experiment \"lr=fast\""));
  assert_true(stderr_has("--set stages.train.optimizer.lr=\"fast\": stages.train.optimizer.lr: expected a number"));
  assert_int_equal(run(NULL, "grid", "run", "typo.json", "--workers", "1", NULL), 2);
  char dir[1300];
  snprintf(dir, sizeof dir, "%s/typo", test_dir);
  assert_int_not_equal(access(dir, F_OK), 0); /* nothing started */
  write_grid("key.json", "{\"base\": \"base.json\", \"repetition\": 2}\n");
  assert_int_equal(run(NULL, "grid", "validate", "key.json", NULL), 2);
  assert_true(stderr_has("key.json:1:23: repetition: unknown key (did you mean \"repetitions\"?)"));
  write_grid("list.json", "{\"base\": \"base.json\", \"options\": {\"model.sizes\": 3}}\n");
  assert_int_equal(run(NULL, "grid", "validate", "list.json", NULL), 2);
  assert_true(stderr_has("options.model.sizes: expected a non-empty list of values"));
}

/* The progress printer: on a terminal (a pseudo-terminal here) one status
 * line redrawn in place with \r and a clear, a failure on a line of its
 * own above it; in a file, a timestamped line per event and nothing for
 * the ticks. */
static void read_all(int fd, char *out, size_t size) {
  size_t n = 0;
  for (ssize_t got; n + 1 < size && (got = read(fd, out + n, size - 1 - n)) > 0;)
    n += (size_t)got;
  out[n] = '\0';
}

static void test_progress_on_a_terminal(void **state) {
  (void)state;
  int master, slave;
  assert_int_equal(openpty(&master, &slave, NULL, NULL, NULL), 0);
  struct termios t; /* raw: the bytes as written, no \n -> \r\n */
  assert_int_equal(tcgetattr(slave, &t), 0);
  cfmakeraw(&t);
  assert_int_equal(tcsetattr(slave, TCSANOW, &t), 0);
  FILE *tty = fdopen(slave, "w");
  assert_non_null(tty);
  loom_grid_progress p = {.event = LOOM_GRID_STARTED, .id = "lr=0.1/rep1", .attempt = 1, .total = 4, .running = 1,
                          .left = 3, .eta_s = -1};
  loom_grid_print_progress(&p, tty);
  p = (loom_grid_progress){.event = LOOM_GRID_FINISHED, .id = "lr=0.1/rep1", .status = "failed", .reason = "timeout",
                           .attempt = 1, .total = 4, .failed = 1, .running = 1, .left = 2, .eta_s = 75,
                           .metric = "valid/loss", .has_best = true, .best = 0.25, .best_id = "lr=0.3/rep1"};
  loom_grid_print_progress(&p, tty);
  p.event = LOOM_GRID_TICK;
  loom_grid_print_progress(&p, tty);
  fclose(tty);
  char got[2048];
  read_all(master, got, sizeof got);
  close(master);
  const char *status = "grid: 0/4 done, 1 running, 1 failed, 2 left, ETA 1m15s, best valid/loss 0.25 (lr=0.3/rep1)";
  char want[2048];
  snprintf(want, sizeof want,
           "\r\033[Kgrid: 0/4 done, 1 running, 0 failed, 3 left, ETA ?"
           "\r\033[Klr=0.1/rep1: failed, timeout (attempt 1)\ngrid: %s"
           "\r\033[Kgrid: %s",
           status + 6, status + 6);
  if (strcmp(got, want) != 0)
    fail_msg("on a terminal:\n got  %s\n want %s", got, want);

  /* Not a terminal: timestamped lines, none for a tick. */
  FILE *log = tmpfile();
  assert_non_null(log);
  loom_grid_print_progress(&p, log);
  p.event = LOOM_GRID_FINISHED;
  loom_grid_print_progress(&p, log);
  rewind(log);
  read_all(fileno(log), got, sizeof got);
  fclose(log);
  int lines = 0;
  for (const char *c = got; *c; c++)
    lines += *c == '\n';
  assert_int_equal(lines, 1);
  assert_non_null(strstr(got, " lr=0.1/rep1 failed: timeout in 0.0s; "));
  assert_true(got[4] == '-' && got[7] == '-' && got[10] == ' ' && got[13] == ':'); /* YYYY-MM-DD HH: */
  assert_null(strchr(got, '\r'));
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: test_grid LOOM CONFIGS_DIR PLUGINS_DIR\n");
    return 2;
  }
  loom = argv[1], configs = argv[2], plugins = argv[3];
  snprintf(outfile, sizeof outfile, "/tmp/loom-test-grid-out.%ld", (long)getpid());
  snprintf(errfile, sizeof errfile, "/tmp/loom-test-grid-err.%ld", (long)getpid());
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_progress_on_a_terminal), cmocka_unit_test(test_validate_reports_option),
      cmocka_unit_test(test_small_grid),
      cmocka_unit_test(test_retries), cmocka_unit_test(test_shards), cmocka_unit_test(test_failures_isolated),
      cmocka_unit_test(test_interrupt_then_resume),
  };
  int failed = cmocka_run_group_tests(tests, test_dir_setup, test_dir_teardown);
  unlink(outfile), unlink(errfile);
  return failed;
}
