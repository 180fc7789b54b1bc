/* loom grid run: the experiments as child processes of the loom command
 * (`loom run BASE --set ... --logdir EXPDIR`), N at a time, on one libuv
 * loop: process handles, a timer per worker for --timeout, SIGINT and
 * SIGTERM watched to interrupt the children (once) or kill them (twice).
 *
 * Children run detached (their own session), so a Ctrl-C at the terminal
 * reaches the grid only and the grid forwards it once: a child that got it
 * twice would die without its checkpoint. Pinning to a CPU set: the
 * spawning thread takes the worker's CPU set for the moment of uv_spawn,
 * so the child is born with it (its threads inherit it), with no window
 * in which it runs elsewhere and no dependency on taskset. */
#define _GNU_SOURCE /* sched_setaffinity, CPU_* */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "grid/grid_internal.h"

extern char **environ;

struct grid_run;

typedef struct worker {
  struct grid_run *run;
  uv_process_t *proc; /* while busy; freed when its handle closes */
  uv_timer_t timer;
  bool busy, timed_out;
  int kill_stage; /* 0, 1 after SIGTERM (timeout), 2 after SIGKILL */
  size_t exp;
  int attempt;
  uint64_t start_ns;
  long err_from; /* stderr.txt's length when the attempt began */
  bool pinned;
  cpu_set_t cpus;
  char threads_env[32];
} worker;

typedef struct grid_run {
  loom_grid *g;
  loom_grid_run_options o;
  uv_loop_t loop;
  uv_signal_t sigint, sigterm;
  uv_timer_t tick;
  worker *workers;
  size_t *queue, qhead, qtail;
  int *attempts;       /* per experiment: attempts in this call */
  int *prev_attempts;  /* rows results already had for it */
  bool *resume;        /* --resume last */
  char **env;          /* the children's environment */
  int stop;            /* SIGINTs (and SIGTERMs) received */
  int rc;
  int results_fd;
  char dir[PATH_MAX], results_path[PATH_MAX + 64], exe[PATH_MAX];
  size_t total, done, failed, running, interrupted;
  uint64_t t0;
  double durations;
  size_t timed;
  bool has_best;
  double best;
  char best_id[1100];
} grid_run;

static double since(uint64_t t0) { return (double)(uv_hrtime() - t0) / 1e9; }

static void report(grid_run *r, loom_grid_event event, const char *id, const char *status, const char *reason,
                   int attempt, double duration) {
  if (!r->o.progress)
    return;
  size_t left = r->total - r->done - r->failed - r->running - r->interrupted;
  double elapsed = since(r->t0), eta = -1;
  if (r->timed) {
    double each = r->durations / (double)r->timed;
    size_t waves = (left + r->running + (size_t)r->o.workers - 1) / (size_t)r->o.workers;
    /* The running ones are partly done: count down as they run. */
    double age = 0;
    for (int i = 0; i < r->o.workers; i++)
      age += r->workers[i].busy ? since(r->workers[i].start_ns) : 0;
    age = r->running ? age / (double)r->running : 0;
    eta = fmax(0, each * (double)waves - fmin(each, age));
  }
  const char *metric = r->g->metric ? r->g->metric : r->g->points[0].metric;
  loom_grid_progress p = {event, id, status, reason, attempt, duration, r->total, r->done, r->failed, r->running,
                          left + r->interrupted, elapsed, eta, metric, r->has_best, r->best, r->best_id};
  r->o.progress(&p, r->o.progress_user);
}

static void note_best(grid_run *r, const json_t *row) {
  const char *metric = json_string_value(json_object_get(json_object_get(row, "main_metric"), "name"));
  const char *dir = json_string_value(json_object_get(json_object_get(row, "main_metric"), "direction"));
  json_t *v = json_object_get(json_object_get(row, "best"), metric ? metric : "");
  if (!json_is_number(v))
    return;
  double x = json_number_value(v);
  bool max = dir && strcmp(dir, "max") == 0;
  if (!r->has_best || (max ? x > r->best : x < r->best)) {
    r->has_best = true;
    r->best = x;
    snprintf(r->best_id, sizeof r->best_id, "%s", json_string_value(json_object_get(row, "id")));
  }
}

static void expdir(const grid_run *r, size_t exp, char *out, size_t size) {
  snprintf(out, size, "%s/%s", r->dir, r->g->experiments[exp].id);
}

static void spawn_next(grid_run *r);

static void free_handle(uv_handle_t *h) { free(h); }

/* The attempt's row, the progress, and a retry if one is left. */
static void finish(worker *w, const char *status, const char *reason, int exit_code, int sig) {
  grid_run *r = w->run;
  char dir[PATH_MAX + 1200], err_path[PATH_MAX + 1300];
  expdir(r, w->exp, dir, sizeof dir);
  snprintf(err_path, sizeof err_path, "%s/stderr.txt", dir);
  char *tail = strcmp(status, "failed") == 0 ? loom_grid_file_tail(err_path, w->err_from, 20) : NULL;
  double duration = since(w->start_ns);
  grid_outcome o = {status, exit_code, sig, reason, r->prev_attempts[w->exp] + w->attempt, duration, tail};
  json_t *row = loom_grid_result_row(r->g, w->exp, dir, &o);
  int rc = row ? loom_grid_append_row(r->results_fd, row, r->results_path) : loom_error_oom("a results row");
  if (rc < 0 && r->rc == 0)
    r->rc = rc;
  r->running--;
  w->busy = false;
  if (strcmp(status, "done") == 0) {
    r->done++;
    r->durations += duration, r->timed++;
    note_best(r, row);
  } else if (strcmp(status, "interrupted") == 0) {
    r->interrupted++;
  } else if (w->attempt <= r->o.retries && !r->stop) {
    r->queue[r->qtail++] = w->exp; /* again, from the start */
    r->resume[w->exp] = false;
  } else {
    r->failed++;
  }
  report(r, LOOM_GRID_FINISHED, r->g->experiments[w->exp].id, status, reason, o.attempt, duration);
  json_decref(row);
  free(tail);
}

static void on_exit_cb(uv_process_t *proc, int64_t exit_status, int term_signal) {
  worker *w = proc->data;
  uv_timer_stop(&w->timer);
  uv_close((uv_handle_t *)proc, free_handle);
  w->proc = NULL;
  int code = term_signal ? -1 : (int)exit_status;
  if (w->timed_out)
    finish(w, "failed", "timeout", code, term_signal);
  else if (code == 0)
    finish(w, "done", NULL, code, 0);
  else if (code == 130 || (w->run->stop && term_signal))
    finish(w, "interrupted", NULL, code, term_signal); /* it saved last.h5 (or its last one stands) */
  else if (term_signal)
    finish(w, "failed", "signal", code, term_signal);
  else
    finish(w, "failed", "exit", code, 0);
  spawn_next(w->run);
}

static void on_timeout(uv_timer_t *t) {
  worker *w = t->data;
  if (!w->proc)
    return;
  w->timed_out = true;
  w->kill_stage++;
  uv_process_kill(w->proc, w->kill_stage == 1 ? SIGTERM : SIGKILL);
  if (w->kill_stage == 1)
    uv_timer_start(&w->timer, on_timeout, (uint64_t)(w->run->o.kill_after_s * 1000), 0);
}

static int open_append(const char *dir, const char *name, int *fd) {
  char path[PATH_MAX + 1300];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  *fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  return *fd < 0 ? loom_error_set(LOOM_EIO, "cannot write %s: %s", path, strerror(errno)) : 0;
}

/* Starts experiment `exp` on worker w; a failure to start is the
 * attempt's failure (exit code 127, as a shell says). */
static void start(grid_run *r, worker *w, size_t exp) {
  const loom_grid *g = r->g;
  char dir[PATH_MAX + 1200];
  expdir(r, exp, dir, sizeof dir);
  const char *args[2 * 64 + 16];
  size_t n = 0, num_sets;
  const char *const *sets = loom_grid_experiment_sets(g, exp, &num_sets);
  args[n++] = r->exe, args[n++] = "run", args[n++] = g->base, args[n++] = "--dist", args[n++] = "local";
  args[n++] = "--logdir", args[n++] = dir;
  for (size_t s = 0; s < num_sets && n + 4 < sizeof args / sizeof *args; s++)
    args[n++] = "--set", args[n++] = sets[s];
  if (r->resume[exp])
    args[n++] = "--resume", args[n++] = "last";
  else /* a failed attempt's run is replaced; its stdout.txt and stderr.txt stay */
    args[n++] = "--overwrite";
  args[n] = NULL;
  w->busy = true, w->timed_out = false, w->kill_stage = 0;
  w->exp = exp;
  w->attempt = ++r->attempts[exp];
  w->start_ns = uv_hrtime();
  r->running++;
  int out = -1, err = -1, rc = loom_mkdir_p(dir);
  if (rc == 0)
    rc = open_append(dir, "stdout.txt", &out);
  if (rc == 0)
    rc = open_append(dir, "stderr.txt", &err);
  w->err_from = err >= 0 ? lseek(err, 0, SEEK_END) : 0;
  uv_stdio_container_t stdio[3] = {{.flags = UV_IGNORE}, {.flags = UV_INHERIT_FD, .data.fd = out},
                                   {.flags = UV_INHERIT_FD, .data.fd = err}};
  uv_process_options_t po = {.exit_cb = on_exit_cb, .file = r->exe, .args = (char **)args, .env = r->env,
                             .flags = UV_PROCESS_DETACHED, .stdio_count = 3, .stdio = stdio};
  cpu_set_t mine;
  bool pinned = w->pinned && sched_getaffinity(0, sizeof mine, &mine) == 0;
  if (pinned)
    sched_setaffinity(0, sizeof w->cpus, &w->cpus);
  /* The worker's LOOM_NUM_THREADS is the environment's last entry. */
  size_t last = 0;
  while (r->env[last])
    last++;
  r->env[last - 1] = w->threads_env;
  w->proc = rc == 0 ? calloc(1, sizeof *w->proc) : NULL;
  int spawned = w->proc ? uv_spawn(&r->loop, w->proc, &po) : UV_ENOMEM;
  if (pinned)
    sched_setaffinity(0, sizeof mine, &mine);
  if (out >= 0)
    close(out);
  if (err >= 0)
    close(err);
  if (rc == 0 && spawned == 0) {
    w->proc->data = w;
    if (r->o.timeout_s > 0)
      uv_timer_start(&w->timer, on_timeout, (uint64_t)(r->o.timeout_s * 1000), 0);
    report(r, LOOM_GRID_STARTED, g->experiments[exp].id, NULL, NULL, r->prev_attempts[exp] + w->attempt, 0);
    return;
  }
  /* Not started: recorded as a failed attempt, its reason in its stderr. */
  const char *why = rc < 0 ? loom_last_error() : uv_strerror(spawned);
  char msg[PATH_MAX + 1400];
  snprintf(msg, sizeof msg, "loom grid: cannot start %s: %s\n", r->exe, why);
  if (err >= 0 || open_append(dir, "stderr.txt", &err) == 0) {
    if (write(err, msg, strlen(msg)) < 0) { /* the row still says it failed */ }
    close(err);
  }
  if (w->proc) {
    if (spawned == 0 || uv_is_active((uv_handle_t *)w->proc))
      uv_close((uv_handle_t *)w->proc, free_handle);
    else
      free(w->proc);
  }
  w->proc = NULL;
  finish(w, "failed", "exit", 127, 0);
}

static void spawn_next(grid_run *r) {
  for (int i = 0; i < r->o.workers && !r->stop && r->qhead < r->qtail; i++)
    if (!r->workers[i].busy)
      start(r, &r->workers[i], r->queue[r->qhead++]);
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)signum;
  grid_run *r = s->data;
  r->stop++;
  if (r->stop == 1)
    report(r, LOOM_GRID_STOPPING, NULL, NULL, NULL, 0, 0);
  for (int i = 0; i < r->o.workers; i++)
    if (r->workers[i].busy && r->workers[i].proc)
      uv_process_kill(r->workers[i].proc, r->stop == 1 ? SIGINT : SIGKILL);
}

static void on_tick(uv_timer_t *t) { report(t->data, LOOM_GRID_TICK, NULL, NULL, NULL, 0, 0); }

/* "0-3,8:4-7" -> worker w's set (w mod the number of sets). */
static int parse_cpus(const char *text, int w, cpu_set_t *set) {
  int count = 1;
  for (const char *c = text; *c; c++)
    count += *c == ':';
  const char *at = text;
  for (int skip = w % count; skip > 0; skip--)
    at = strchr(at, ':') + 1;
  CPU_ZERO(set);
  while (*at && *at != ':') {
    char *end;
    long lo = strtol(at, &end, 10), hi = lo;
    if (end == at)
      break;
    if (*end == '-')
      at = end + 1, hi = strtol(at, &end, 10);
    if (end == at || lo < 0 || hi < lo || hi >= CPU_SETSIZE)
      break;
    for (long c = lo; c <= hi; c++)
      CPU_SET((size_t)c, set);
    at = end;
    if (*at == ',')
      at++;
    else if (*at && *at != ':')
      break;
  }
  if ((*at && *at != ':') || CPU_COUNT(set) == 0)
    return loom_error_set(LOOM_EINVAL, "--cpus %s: expected CPU lists for the workers separated by ':', each "
                                       "as taskset's (e.g. 0-3,8:4-7)", text);
  return 0;
}

/* The children's environment: this one without LOOM_NUM_THREADS and an MPI
 * launcher's rank variables (a child is one local run), then a slot for
 * each worker's LOOM_NUM_THREADS. */
static int make_env(grid_run *r) {
  size_t n = 0;
  while (environ[n])
    n++;
  r->env = calloc(n + 2, sizeof *r->env);
  if (!r->env)
    return loom_error_oom("the workers' environment");
  size_t k = 0;
  static const char *const drop[] = {"LOOM_NUM_THREADS=", "OMPI_COMM_WORLD_", "PMI_", "PMIX_", "OMPI_MCA_ess"};
  for (size_t i = 0; i < n; i++) {
    bool keep = true;
    for (size_t d = 0; d < sizeof drop / sizeof *drop; d++)
      keep = keep && strncmp(environ[i], drop[d], strlen(drop[d])) != 0;
    if (keep)
      r->env[k++] = environ[i];
  }
  r->env[k] = r->workers[0].threads_env;
  return 0;
}

static int setup_workers(grid_run *r, int *threads) {
  int cores = (int)uv_available_parallelism();
  r->workers = calloc((size_t)r->o.workers, sizeof *r->workers);
  if (!r->workers)
    return loom_error_oom("the workers");
  *threads = r->o.threads_per_worker > 0 ? r->o.threads_per_worker : cores / r->o.workers > 0 ? cores / r->o.workers : 1;
  for (int i = 0; i < r->o.workers; i++) {
    worker *w = &r->workers[i];
    w->run = r;
    uv_timer_init(&r->loop, &w->timer);
    w->timer.data = w;
    int t = *threads;
    if (r->o.cpus) {
      int rc = parse_cpus(r->o.cpus, i, &w->cpus);
      if (rc < 0)
        return rc;
      w->pinned = true;
      if (r->o.threads_per_worker <= 0)
        t = CPU_COUNT(&w->cpus);
    }
    snprintf(w->threads_env, sizeof w->threads_env, "LOOM_NUM_THREADS=%d", t);
  }
  return make_env(r);
}

/* The shard this process runs: the options', else an MPI launcher's. */
static int pick_shard(grid_run *r) {
  if (r->o.num_shards == 0) {
    const char *rank = getenv("OMPI_COMM_WORLD_RANK"), *size = getenv("OMPI_COMM_WORLD_SIZE");
    if (!rank || !size)
      rank = getenv("PMI_RANK"), size = getenv("PMI_SIZE");
    if (rank && size)
      r->o.shard = atoi(rank), r->o.num_shards = atoi(size);
  }
  if (r->o.num_shards < 0 || r->o.shard < 0 || (r->o.num_shards > 0 && r->o.shard >= r->o.num_shards))
    return loom_error_set(LOOM_EINVAL, "shard %d/%d: expected i/n with 0 <= i < n", r->o.shard, r->o.num_shards);
  if (r->o.num_shards > 1)
    snprintf(r->results_path, sizeof r->results_path, "%s/results-shard-%d-of-%d.jsonl", r->dir, r->o.shard,
             r->o.num_shards);
  else
    snprintf(r->results_path, sizeof r->results_path, "%s/results.jsonl", r->dir);
  return 0;
}

static int grid_dir(grid_run *r) {
  char def[PATH_MAX];
  const char *dir = r->o.dir;
  if (!dir) {
    const char *slash = strrchr(r->g->path, '/'), *name = slash ? slash + 1 : r->g->path;
    size_t len = strlen(name);
    if (len > 5 && strcmp(name + len - 5, ".json") == 0)
      len -= 5;
    snprintf(def, sizeof def, "%.*s", (int)len, name);
    dir = def;
  }
  int rc = loom_mkdir_p(dir);
  if (rc < 0)
    return loom_error_wrap(rc, "the grid's directory %s", dir);
  if (!realpath(dir, r->dir))
    return loom_error_set(LOOM_EIO, "the grid's directory %s: %s", dir, strerror(errno));
  return 0;
}

/* What is left to run: not done by an earlier call; an interrupted one (or
 * one whose row never came) resumes from its last.h5, a failed one starts
 * again. */
static int plan(grid_run *r) {
  json_t *rows;
  int rc = loom_grid_read_results(r->dir, &rows);
  if (rc < 0)
    return rc;
  size_t n = r->g->num_experiments;
  for (size_t i = 0; i < n; i++) {
    if (r->o.num_shards > 1 && (int)(i % (size_t)r->o.num_shards) != r->o.shard)
      continue;
    r->total++;
    const char *id = r->g->experiments[i].id;
    json_t *row = json_object_get(rows, id);
    const char *status = json_string_value(json_object_get(row, "status"));
    r->prev_attempts[i] = (int)json_integer_value(json_object_get(row, "attempt"));
    if (status && strcmp(status, "done") == 0) {
      r->done++;
      note_best(r, row);
      continue;
    }
    char last[PATH_MAX + 1300];
    snprintf(last, sizeof last, "%s/%s/checkpoints/last.h5", r->dir, id);
    r->resume[i] = !(status && strcmp(status, "failed") == 0) && access(last, F_OK) == 0;
    r->queue[r->qtail++] = i;
  }
  json_decref(rows);
  return 0;
}

static int prepare(grid_run *r, int *threads) {
  size_t n = r->g->num_experiments;
  size_t cap = n * (size_t)(r->o.retries + 1);
  r->queue = calloc(cap ? cap : 1, sizeof *r->queue);
  r->attempts = calloc(n, sizeof *r->attempts);
  r->prev_attempts = calloc(n, sizeof *r->prev_attempts);
  r->resume = calloc(n, sizeof *r->resume);
  if (!r->queue || !r->attempts || !r->prev_attempts || !r->resume)
    return loom_error_oom("the grid's queue");
  size_t size = sizeof r->exe;
  if (r->o.loom)
    snprintf(r->exe, sizeof r->exe, "%s", r->o.loom);
  else if (uv_exepath(r->exe, &size) < 0)
    return loom_error_set(LOOM_EIO, "cannot find this program's path (uv_exepath) to start the experiments");
  int rc = grid_dir(r);
  if (rc == 0)
    rc = pick_shard(r);
  if (rc == 0)
    rc = setup_workers(r, threads);
  if (rc == 0)
    rc = plan(r);
  if (rc == 0)
    rc = loom_grid_write_environment(r->g, r->dir, &r->o, *threads);
  if (rc == 0 && (r->results_fd = open(r->results_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0)
    rc = loom_error_set(LOOM_EIO, "cannot write %s: %s", r->results_path, strerror(errno));
  return rc;
}

static void close_handle(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

loom_grid_run_options loom_grid_run_options_defaults(void) {
  return (loom_grid_run_options){.workers = 1, .kill_after_s = 10};
}

int loom_grid_run(loom_grid *g, const loom_grid_run_options *options) {
  if (options->workers < 1 || options->retries < 0 || options->timeout_s < 0 || options->kill_after_s < 0)
    return loom_error_set(LOOM_EINVAL, "loom grid run: workers >= 1, retries, timeout and kill delay >= 0");
  int rc = loom_grid_validate(g);
  if (rc < 0)
    return rc;
  grid_run *r = calloc(1, sizeof *r);
  if (!r)
    return loom_error_oom("a grid run");
  r->g = g;
  r->o = *options;
  if (r->o.kill_after_s == 0)
    r->o.kill_after_s = 10;
  r->results_fd = -1;
  r->t0 = uv_hrtime();
  int threads = 1;
  rc = uv_loop_init(&r->loop);
  if (rc < 0) {
    free(r);
    return loom_error_set(LOOM_EIO, "cannot start the grid's event loop: %s", uv_strerror(rc));
  }
  rc = prepare(r, &threads);
  if (rc == 0) {
    uv_signal_init(&r->loop, &r->sigint);
    uv_signal_init(&r->loop, &r->sigterm);
    uv_timer_init(&r->loop, &r->tick);
    r->sigint.data = r->sigterm.data = r->tick.data = r;
    uv_signal_start(&r->sigint, on_signal, SIGINT);
    uv_signal_start(&r->sigterm, on_signal, SIGTERM);
    uv_timer_start(&r->tick, on_tick, 1000, 1000);
    /* They watch; only the experiments keep the loop running. */
    uv_unref((uv_handle_t *)&r->sigint);
    uv_unref((uv_handle_t *)&r->sigterm);
    uv_unref((uv_handle_t *)&r->tick);
    report(r, LOOM_GRID_TICK, NULL, NULL, NULL, 0, 0);
    spawn_next(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    rc = r->rc;
  }
  uv_walk(&r->loop, close_handle, NULL);
  uv_run(&r->loop, UV_RUN_DEFAULT);
  uv_loop_close(&r->loop);
  if (rc == 0 && r->stop)
    rc = loom_error_set(LOOM_EINTERRUPTED, "the grid was interrupted: %zu experiment%s interrupted, %zu not started; "
                        "run the same command again to resume them", r->interrupted, r->interrupted == 1 ? "" : "s",
                        r->total - r->done - r->failed - r->interrupted);
  if (rc == 0)
    rc = (int)r->failed;
  if (r->results_fd >= 0)
    close(r->results_fd);
  free(r->queue), free(r->attempts), free(r->prev_attempts), free(r->resume);
  free(r->workers);
  free(r->env);
  free(r);
  return rc;
}
