/* Fault injection, the SQLite way (issue 18; docs/reliability.md, "Fault
 * injection"): every allocation loom performs is failed in turn, and every
 * write, flush, fsync and rename of a run's files fails in turn, each in a
 * fresh process; the call must return a LOOM_E* code with a message (or
 * succeed), never crash, leak nothing (LeakSanitizer in the sanitizer
 * build), and lose nothing already saved.
 *
 * The injector. This binary links libloom's objects statically, with
 * -Wl,--wrap for malloc, calloc, realloc, strdup, aligned_alloc and libuv's
 * uv_mutex_init, uv_cond_init, uv_thread_create and uv_loop_init
 * (tests/CMakeLists.txt): every such call loom makes lands in __wrap_* here,
 * and only loom's (the libraries under it are not relinked). jansson's
 * allocations for loom go through json_set_alloc_funcs. Writes: write,
 * pwrite, fsync, fdatasync and rename are defined in this binary, so that
 * loom's calls and libhdf5's (checkpoints) both reach them; loom's stdio
 * writes (fwrite, fputs, fputc, fprintf, fflush, fclose) and jansson's
 * json_dump_file are wrapped. Only files under the trial's directory count.
 *
 * Each trial runs in a forked child of a parent that never calls loom, so
 * that every child initialises loom's process-wide state (the registry's
 * built-ins, the CPU backend, the notice lock, the thread pool) itself and
 * the walk fails those too. The child reports through a shared page.
 *
 * LOOM_FAULTS_FULL=1 walks every N; otherwise each walk takes at most
 * SAMPLED_TRIALS evenly spaced N (the full walk is the ctest label
 * faults_full, with -DLOOM_TEST_FAULTS_FULL=ON).
 * Usage: test_faults */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "helpers.h"

#define SAMPLED_TRIALS 150
#define TRIAL_SECONDS 60

/* ---------------------------------------------------------------- injector */

typedef enum { IO_ENOSPC, IO_EIO, IO_SHORT } io_mode;

static struct {
  atomic_int armed;
  atomic_long allocs, alloc_fail_at, alloc_hits;
  atomic_long alloc_per_million; /* > 0: each allocation fails with this chance instead */
  uint64_t alloc_seed;
  atomic_long ios, io_fail_at, io_hits;
  io_mode mode;
  char root[512];       /* only files under it count */
  char fault_path[600]; /* the operation that failed and its file */
} inj;

/* splitmix64's finaliser: allocation k's draw, from the seed alone, so a
 * random trial replays (children run one compute thread). */
static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static bool fail_alloc(void) {
  if (!atomic_load(&inj.armed))
    return false;
  long k = atomic_fetch_add(&inj.allocs, 1) + 1;
  long ppm = atomic_load(&inj.alloc_per_million);
  if (ppm ? (long)(mix(inj.alloc_seed + (uint64_t)k * 0x9e3779b97f4a7c15ull) % 1000000) >= ppm
          : k != atomic_load(&inj.alloc_fail_at))
    return false;
  atomic_fetch_add(&inj.alloc_hits, 1);
  if (getenv("LOOM_FAULTS_BACKTRACE")) { /* where it failed, for debugging one trial */
    void *frames[16];
    backtrace_symbols_fd(frames, backtrace(frames, 16), STDERR_FILENO);
  }
  return true;
}

/* The C library's allocator (ASan's in the sanitizer build), looked up
 * rather than named: libxsmm, linked in with loom, declares malloc hidden,
 * which a __real_malloc reference would clash with. */
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static char *(*real_strdup)(const char *);
static void *(*real_aligned_alloc)(size_t, size_t);
static void find_allocator(void) {
  if (real_malloc)
    return;
  *(void **)&real_calloc = dlsym(RTLD_NEXT, "calloc");
  *(void **)&real_realloc = dlsym(RTLD_NEXT, "realloc");
  *(void **)&real_strdup = dlsym(RTLD_NEXT, "strdup");
  *(void **)&real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  *(void **)&real_malloc = dlsym(RTLD_NEXT, "malloc");
}
int __real_uv_mutex_init(uv_mutex_t *m);
int __real_uv_cond_init(uv_cond_t *c);
int __real_uv_thread_create(uv_thread_t *t, uv_thread_cb cb, void *arg);
int __real_uv_loop_init(uv_loop_t *l);

#define FAIL_NULL()     \
  do {                  \
    find_allocator();   \
    if (fail_alloc()) { \
      errno = ENOMEM;   \
      return NULL;      \
    }                   \
  } while (0)
void *__wrap_malloc(size_t n) {
  FAIL_NULL();
  return real_malloc(n);
}
void *__wrap_calloc(size_t k, size_t n) {
  FAIL_NULL();
  return real_calloc(k, n);
}
void *__wrap_realloc(void *p, size_t n) {
  FAIL_NULL();
  return real_realloc(p, n);
}
char *__wrap_strdup(const char *s) {
  FAIL_NULL();
  return real_strdup(s);
}
void *__wrap_aligned_alloc(size_t a, size_t n) {
  FAIL_NULL();
  return real_aligned_alloc(a, n);
}
int __wrap_uv_mutex_init(uv_mutex_t *m) { return fail_alloc() ? UV_ENOMEM : __real_uv_mutex_init(m); }
int __wrap_uv_cond_init(uv_cond_t *c) { return fail_alloc() ? UV_ENOMEM : __real_uv_cond_init(c); }
int __wrap_uv_thread_create(uv_thread_t *t, uv_thread_cb cb, void *arg) {
  return fail_alloc() ? UV_EAGAIN : __real_uv_thread_create(t, cb, arg);
}
int __wrap_uv_loop_init(uv_loop_t *l) { return fail_alloc() ? UV_ENOMEM : __real_uv_loop_init(l); }
/* jansson 2.14 mishandles its own allocation failures, which loom cannot
 * mend: its parser writes past its buffer, and its encoder returns text
 * with a key dropped ({"a":{":4}}, reproduced outside loom). Its
 * allocations are failed everywhere but in json_loads, json_load_file,
 * json_dumps and json_dump_file. */
static _Thread_local bool in_parser;
char *__real_json_dumps(const json_t *json, size_t flags);
char *__wrap_json_dumps(const json_t *json, size_t flags) {
  in_parser = true;
  char *text = __real_json_dumps(json, flags);
  in_parser = false;
  return text;
}
json_t *__real_json_loads(const char *text, size_t flags, json_error_t *error);
json_t *__wrap_json_loads(const char *text, size_t flags, json_error_t *error) {
  in_parser = true;
  json_t *j = __real_json_loads(text, flags, error);
  in_parser = false;
  return j;
}
json_t *__real_json_load_file(const char *path, size_t flags, json_error_t *error);
json_t *__wrap_json_load_file(const char *path, size_t flags, json_error_t *error) {
  in_parser = true;
  json_t *j = __real_json_load_file(path, flags, error);
  in_parser = false;
  return j;
}
static void *jansson_malloc(size_t n) {
  find_allocator();
  if (in_parser)
    return real_malloc(n);
  FAIL_NULL();
  return real_malloc(n);
}

/* Whether an operation on `path` (NULL: not a file of ours) is the one to
 * fail; `data` says it writes bytes (the only ones counted for short writes). */
static bool fail_io(const char *op, const char *path, bool data) {
  if (!atomic_load(&inj.armed) || !path || strncmp(path, inj.root, strlen(inj.root)) != 0)
    return false;
  if (inj.mode == IO_SHORT && !data)
    return false;
  long k = atomic_fetch_add(&inj.ios, 1) + 1, at = atomic_load(&inj.io_fail_at);
  /* a full disk stays full; an I/O error or a short write happens once */
  if (!at || (inj.mode == IO_ENOSPC ? k < at : k != at))
    return false;
  if (atomic_fetch_add(&inj.io_hits, 1) == 0)
    snprintf(inj.fault_path, sizeof inj.fault_path, "%s %s", op, path);
  errno = inj.mode == IO_EIO ? EIO : ENOSPC;
  return true;
}

static const char *fd_path(int fd, char *buf, size_t size) {
  char link[64];
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, buf, size - 1);
  if (n < 0)
    return NULL;
  buf[n] = '\0';
  return buf;
}

static bool fail_fd(const char *op, int fd, bool data) {
  char buf[512];
  return atomic_load(&inj.armed) && fail_io(op, fd_path(fd, buf, sizeof buf), data);
}

/* (streams open for reading are never failed) */
static bool fail_file(const char *op, FILE *f, bool data) {
  return atomic_load(&inj.armed) && f && (fcntl(fileno(f), F_GETFL) & O_ACCMODE) != O_RDONLY &&
         fail_fd(op, fileno(f), data);
}

/* The system calls themselves, for loom and for libhdf5 alike. */
ssize_t write(int fd, const void *buf, size_t n) {
  if (fail_fd("write", fd, true)) {
    if (inj.mode != IO_SHORT || n < 2)
      return -1;
    n /= 2;
  }
  return syscall(SYS_write, fd, buf, n);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
  if (fail_fd("pwrite", fd, true)) {
    if (inj.mode != IO_SHORT || n < 2)
      return -1;
    n /= 2;
  }
  return syscall(SYS_pwrite64, fd, buf, n, off);
}

int fsync(int fd) { return fail_fd("fsync", fd, false) ? -1 : (int)syscall(SYS_fsync, fd); }
int fdatasync(int fd) { return fail_fd("fdatasync", fd, false) ? -1 : (int)syscall(SYS_fdatasync, fd); }

int rename(const char *from, const char *to) {
  return fail_io("rename", to, false) ? -1 : (int)syscall(SYS_renameat, AT_FDCWD, from, AT_FDCWD, to);
}

/* loom's stdio writes: the bytes go out through glibc's own write, which
 * nothing can interpose, so the calls themselves fail. */
size_t __real_fwrite(const void *p, size_t size, size_t n, FILE *f);
int __real_fputs(const char *s, FILE *f);
int __real_fflush(FILE *f);
int __real_fclose(FILE *f);
int __real_json_dump_file(const json_t *json, const char *path, size_t flags);

size_t __wrap_fwrite(const void *p, size_t size, size_t n, FILE *f) {
  if (fail_file("fwrite", f, true))
    return inj.mode == IO_SHORT && size && n >= 2 ? __real_fwrite(p, size, n / 2, f) : 0;
  return __real_fwrite(p, size, n, f);
}
int __wrap_fputs(const char *s, FILE *f) {
  if (fail_file("fputs", f, true)) {
    if (inj.mode == IO_SHORT)
      __real_fwrite(s, 1, strlen(s) / 2, f);
    return EOF;
  }
  return __real_fputs(s, f);
}
int __real_fputc(int c, FILE *f);
int __wrap_fputc(int c, FILE *f) { return fail_file("fputc", f, true) ? EOF : __real_fputc(c, f); }
int __wrap_fprintf(FILE *f, const char *fmt, ...) {
  if (fail_file("fprintf", f, true))
    return -1;
  va_list ap;
  va_start(ap, fmt);
  int n = vfprintf(f, fmt, ap);
  va_end(ap);
  return n;
}
int __wrap_fflush(FILE *f) { return fail_file("fflush", f, false) ? EOF : __real_fflush(f); }
int __wrap_fclose(FILE *f) {
  bool fail = fail_file("fclose", f, false);
  int e = errno, rc = __real_fclose(f);
  if (!fail)
    return rc;
  errno = e;
  return EOF;
}
int __wrap_json_dump_file(const json_t *json, const char *path, size_t flags) {
  if (!fail_io("json_dump_file", path, true)) {
    in_parser = true;
    int rc = __real_json_dump_file(json, path, flags);
    in_parser = false;
    return rc;
  }
  /* what a full disk leaves: the file begun, cut short */
  int e = errno;
  int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd >= 0) {
    (void)!syscall(SYS_write, fd, "{\n  \"exp", 9);
    close(fd);
  }
  errno = e;
  return -1;
}

/* ------------------------------------------------------------------ trials */

/* What a child reports. */
typedef struct trial {
  long allocs, alloc_hits, ios, io_hits;
  int rc, code;
  char msg[1024];
  char fault_path[600];
  int verify_rc;
  char verify_msg[1024];
} trial;

static const int crash_signals[] = {SIGSEGV, SIGABRT, SIGBUS, SIGILL, SIGFPE};
#define NUM_CRASH_SIGNALS (sizeof crash_signals / sizeof *crash_signals)
static struct sigaction crash_actions[NUM_CRASH_SIGNALS];

static trial *shared; /* a page shared with the children */
static char root[256];
static bool full, verbose;

typedef int (*scenario_fn)(const char *dir);

static void record_error(int rc, int *code, char *msg, size_t size) {
  *code = rc < 0 ? loom_last_error_code() : 0;
  snprintf(msg, size, "%s", rc < 0 ? loom_last_error() : "");
}

/* Runs fn(dir) in a child with allocation `alloc_at` or I/O operation
 * `io_at` failing (0: none); the child's exit status (nonzero: a crash, a
 * leak, a sanitizer report). */
/* For random trials (alloc_random): the chance per allocation, and the seed. */
static long random_per_million;
static uint64_t random_seed;

static int run_trial(scenario_fn prepare, scenario_fn fn, scenario_fn verify, const char *dir, long alloc_at, long io_at,
                     io_mode mode) {
  memset(shared, 0, sizeof *shared);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    /* cmocka's handlers would carry on with the parent's tests in here:
     * back to the ones from before cmocka (the sanitizers', or none) */
    for (size_t i = 0; i < NUM_CRASH_SIGNALS; i++)
      sigaction(crash_signals[i], &crash_actions[i], NULL);
    alarm(TRIAL_SECONDS); /* a hang is a failure too (SIGALRM) */
    int null = open("/dev/null", O_WRONLY);
    dup2(null, STDOUT_FILENO);
    close(null);
    setenv("LOOM_NUM_THREADS", "1", 1);
    json_set_alloc_funcs(jansson_malloc, free);
    snprintf(inj.root, sizeof inj.root, "%s/", dir);
    inj.mode = mode;
    atomic_store(&inj.alloc_fail_at, alloc_at);
    atomic_store(&inj.alloc_per_million, random_per_million);
    inj.alloc_seed = random_seed;
    atomic_store(&inj.io_fail_at, io_at);
    if (prepare && prepare(dir) < 0) {
      snprintf(shared->msg, sizeof shared->msg, "preparing failed: %s", loom_last_error());
      exit(3);
    }
    atomic_store(&inj.armed, 1);
    int rc = fn(dir);
    atomic_store(&inj.armed, 0);
    shared->rc = rc;
    record_error(rc, &shared->code, shared->msg, sizeof shared->msg);
    shared->allocs = atomic_load(&inj.allocs);
    shared->alloc_hits = atomic_load(&inj.alloc_hits);
    shared->ios = atomic_load(&inj.ios);
    shared->io_hits = atomic_load(&inj.io_hits);
    snprintf(shared->fault_path, sizeof shared->fault_path, "%s", inj.fault_path);
    if (verify) {
      shared->verify_rc = verify(dir);
      if (shared->verify_rc < 0 && !shared->verify_msg[0])
        snprintf(shared->verify_msg, sizeof shared->verify_msg, "%s", loom_last_error());
    }
    exit(0); /* exit, not _exit: LeakSanitizer checks at exit */
  }
  assert_true(pid > 0);
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

static const char *describe_status(int status, char *buf, size_t size) {
  if (WIFSIGNALED(status))
    snprintf(buf, size, "killed by signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
  else
    snprintf(buf, size, "exit status %d (a sanitizer report or leak: see stderr)", WEXITSTATUS(status));
  return buf;
}

static void trial_dir(char *dir, size_t size, const char *name) {
  snprintf(dir, size, "%s/%s", root, name);
  char cmd[1000];
  snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s'", dir, dir);
  assert_int_equal(system(cmd), 0);
}

static long next_n(long n, long total) {
  if (full || total <= SAMPLED_TRIALS)
    return n + 1;
  return n + (total + SAMPLED_TRIALS - 1) / SAMPLED_TRIALS;
}

/* What is wrong with a trial whose allocations failed, or NULL: it must
 * end with success or a clean LOOM_ENOMEM that has a message. */
static const char *alloc_problem(int status, const trial *t, char *why, size_t size) {
  if (status != 0)
    return describe_status(status, why, size);
  if (!t->alloc_hits && t->rc != 0)
    return "failed with no fault injected";
  if (t->rc > 0)
    return "returned a positive code";
  if (t->rc < 0 && (!t->msg[0] || t->code != t->rc))
    return "failed without a message";
  if (t->rc < 0 && t->code != LOOM_ENOMEM)
    return "reported a failed allocation as another error";
  return NULL;
}

/* Fails allocation N = 1, 2, ... of fn until a run hits none. */
static void alloc_walk(const char *name, scenario_fn prepare, scenario_fn fn) {
  char dir[400], why[128];
  trial_dir(dir, sizeof dir, name);
  int status = run_trial(prepare, fn, NULL, dir, 0, 0, IO_ENOSPC);
  if (status != 0 || shared->rc != 0)
    fail_msg("%s: the run without faults failed (%s): %s", name, describe_status(status, why, sizeof why), shared->msg);
  long total = shared->allocs, trials = 0, enomem = 0, recovered = 0, bad = 0;
  long only = getenv("LOOM_FAULTS_N") ? atol(getenv("LOOM_FAULTS_N")) : 0; /* one trial, to debug it */
  for (long n = only ? only : 1; n <= 4 * total + 100; n = only ? LONG_MAX : next_n(n, total)) {
    trial_dir(dir, sizeof dir, name);
    status = run_trial(prepare, fn, NULL, dir, n, 0, IO_ENOSPC);
    trials++;
    const trial *t = shared;
    if (verbose)
      fprintf(stderr, "%s: N=%ld/%ld status %d rc %d hits %ld: %s\n", name, n, total, status, t->rc, t->alloc_hits, t->msg);
    const char *problem = alloc_problem(status, t, why, sizeof why);
    if (problem) {
      bad++;
      print_error("%s: allocation %ld of %ld failed: %s; rc %d (%s): %s\n", name, n, total, problem, t->rc,
                  loom_err_name(t->rc), t->msg);
    }
    enomem += t->rc == LOOM_ENOMEM;
    recovered += t->alloc_hits && t->rc == 0;
    if (status == 0 && !t->alloc_hits && n > total)
      break;
  }
  print_message("alloc walk %-10s %5ld allocations, %4ld trials%s: %ld LOOM_ENOMEM, %ld recovered, %ld bad\n", name,
                total, trials, full ? "" : " (sampled)", enomem, recovered, bad);
  if (bad)
    fail_msg("%s: %ld of %ld trials failed (above)", name, bad, trials);
}

/* Each allocation fails with a chance of 3 in the run's count (about three
 * failures a run, on any path, error paths included), over a number of
 * seeded trials: every run ends cleanly, as in the walk. */
static void alloc_random(const char *name, scenario_fn prepare, scenario_fn fn) {
  char dir[400], why[128];
  trial_dir(dir, sizeof dir, name);
  random_per_million = 0;
  int status = run_trial(prepare, fn, NULL, dir, 0, 0, IO_ENOSPC);
  if (status != 0 || shared->rc != 0)
    fail_msg("%s: the run without faults failed (%s): %s", name, describe_status(status, why, sizeof why), shared->msg);
  const long total = shared->allocs, trials = full ? 1000 : 40;
  const uint64_t base = getenv("LOOM_FAULTS_SEED") ? strtoull(getenv("LOOM_FAULTS_SEED"), NULL, 10) : (uint64_t)time(NULL);
  random_per_million = 3000000 / (total > 3 ? total : 3);
  long enomem = 0, recovered = 0, bad = 0, hits = 0;
  for (long i = 0; i < trials; i++) {
    random_seed = base + (uint64_t)i;
    trial_dir(dir, sizeof dir, name);
    status = run_trial(prepare, fn, NULL, dir, 0, 0, IO_ENOSPC);
    const trial *t = shared;
    const char *problem = alloc_problem(status, t, why, sizeof why);
    if (problem) {
      bad++;
      print_error("%s: seed %llu (%ld allocations failed): %s; rc %d (%s): %s\n", name, (unsigned long long)random_seed,
                  t->alloc_hits, problem, t->rc, loom_err_name(t->rc), t->msg);
    }
    hits += t->alloc_hits;
    enomem += t->rc == LOOM_ENOMEM;
    recovered += t->alloc_hits && t->rc == 0;
  }
  random_per_million = 0;
  print_message("alloc random %-8s %5ld allocations, %4ld trials (seeds %llu..): %ld failed allocations, %ld LOOM_ENOMEM, "
                "%ld recovered, %ld bad\n",
                name, total, trials, (unsigned long long)base, hits, enomem, recovered, bad);
  if (bad)
    fail_msg("%s: %ld of %ld random trials failed (above)", name, bad, trials);
}

static const char *mode_name[] = {"ENOSPC", "EIO", "short write"};

/* Whether msg names the file of the failed operation (its temporary name
 * counts as naming it: "last.h5.tmp.123" -> "last.h5"). */
static bool names_file(const char *msg, const char *path) {
  char base[600];
  path = strchr(path, ' ') ? strchr(path, ' ') + 1 : path; /* after the operation's name */
  snprintf(base, sizeof base, "%s", strrchr(path, '/') ? strrchr(path, '/') + 1 : path);
  char *tmp = strstr(base, ".tmp");
  if (tmp)
    *tmp = '\0';
  return strstr(msg, base) != NULL;
}

/* Fails write operation K = 1, 2, ... (a write, pwrite, fsync, fdatasync,
 * rename, stdio write, flush or close, json_dump_file under the trial's
 * directory) of fn with `mode`; then verify(dir) runs in the same child
 * with nothing failing, and must find nothing lost. */
static void io_walk(const char *name, scenario_fn prepare, scenario_fn fn, scenario_fn verify, io_mode mode,
                    long budget) {
  char dir[400], why[128];
  trial_dir(dir, sizeof dir, name);
  int status = run_trial(prepare, fn, verify, dir, 0, 0, mode);
  if (status != 0 || shared->rc != 0 || shared->verify_rc != 0)
    fail_msg("%s: the run without faults failed (%s): %s %s", name, describe_status(status, why, sizeof why),
             shared->msg, shared->verify_msg);
  long total = shared->ios, trials = 0, failed = 0, tolerated = 0, bad = 0;
  long step = full || total <= budget ? 1 : (total + budget - 1) / budget;
  long only = getenv("LOOM_FAULTS_N") ? atol(getenv("LOOM_FAULTS_N")) : 0;
  for (long k = only ? only : 1; k <= 4 * total + 100; k = only ? LONG_MAX : k + step) {
    trial_dir(dir, sizeof dir, name);
    status = run_trial(prepare, fn, verify, dir, 0, k, mode);
    trials++;
    const trial *t = shared;
    if (verbose)
      fprintf(stderr, "%s %s: K=%ld/%ld status %d rc %d hits %ld at %s: %s | verify %d %s\n", name, mode_name[mode], k,
              total, status, t->rc, t->io_hits, t->fault_path, t->msg, t->verify_rc, t->verify_msg);
    const char *problem = NULL;
    if (status != 0)
      problem = describe_status(status, why, sizeof why);
    else if (!t->io_hits && t->rc != 0)
      problem = "failed with no fault injected";
    else if (t->rc > 0 || (t->rc < 0 && (!t->msg[0] || t->code != t->rc)))
      problem = "failed without a message";
    else if (t->rc < 0 && !names_file(t->msg, t->fault_path))
      problem = "the message does not name the file";
    else if (t->rc < 0 && mode != IO_SHORT && !strstr(t->msg, strerror(mode == IO_EIO ? EIO : ENOSPC)))
      problem = "the message does not say what the system said";
    else if (t->verify_rc != 0)
      problem = t->verify_msg;
    else if (mode == IO_ENOSPC && t->io_hits && t->rc == 0)
      problem = "the disk was full and the run succeeded";
    if (problem) {
      bad++;
      print_error("%s, %s: write operation %ld of %ld (%s) failed: %s; rc %d (%s): %s\n", name, mode_name[mode], k,
                  total, t->fault_path, problem, t->rc, loom_err_name(t->rc), t->msg);
    }
    failed += t->rc < 0;
    tolerated += t->io_hits && t->rc == 0;
    if (status == 0 && !t->io_hits && k > total)
      break;
  }
  print_message("io walk %-8s %-12s %4ld operations, %4ld trials%s: %ld failed cleanly, %ld tolerated, %ld bad\n", name,
                mode_name[mode], total, trials, step == 1 ? "" : " (sampled)", failed, tolerated, bad);
  if (bad)
    fail_msg("%s, %s: %ld of %ld trials failed (above)", name, mode_name[mode], bad, trials);
}

/* ----------------------------------------------------------------- inputs */

#define SAMPLES 16
#define SIDE 6
#define CLASSES 3

static void write_be32(FILE *f, uint32_t v) {
  unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8), (unsigned char)v};
  fwrite(b, 1, 4, f);
}

static void make_inputs(void) {
  char path[400];
  snprintf(path, sizeof path, "%s/images.idx", root);
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  write_be32(f, 0x803), write_be32(f, SAMPLES), write_be32(f, SIDE), write_be32(f, SIDE);
  for (int i = 0; i < SAMPLES * SIDE * SIDE; i++)
    fputc((i * 37 + i / 7) % 251, f);
  fclose(f);
  snprintf(path, sizeof path, "%s/labels.idx", root);
  assert_non_null(f = fopen(path, "wb"));
  write_be32(f, 0x801), write_be32(f, SAMPLES);
  for (int i = 0; i < SAMPLES; i++)
    fputc(i % CLASSES, f);
  fclose(f);
  snprintf(path, sizeof path, "%s/data.csv", root);
  assert_non_null(f = fopen(path, "w"));
  fputs("a,b,c,label\n", f);
  for (int i = 0; i < SAMPLES; i++)
    fprintf(f, "%d.5,%d,%g,%d\n", i, -i, i * 0.25, i % CLASSES);
  fclose(f);
  /* Two stages, every kind of component and most of their types; the valid
   * loader reads the HDF5 twin of the IDX files (made by setup_h5). */
  snprintf(path, sizeof path, "%s/config.json", root);
  assert_non_null(f = fopen(path, "w"));
  fprintf(f,
          "{\"experiment\": {\"name\": \"faults\", \"seed\": 5},\n"
          " \"datasets\": {\"img\": {\"type\": \"idx\", \"images\": \"images.idx\", \"labels\": \"labels.idx\"},\n"
          "              \"h5\": {\"type\": \"hdf5\", \"files\": [\"data.h5\"], \"block\": 4, \"cache_mb\": 1}},\n"
          " \"loaders\": {\"train\": {\"dataset\": \"img\", \"batch_size\": 4, \"shuffle\": true, \"transforms\": [\n"
          "     {\"type\": \"normalize\", \"mean\": 120, \"std\": 70}, {\"type\": \"random_crop\", \"padding\": 1},\n"
          "     {\"type\": \"random_flip\"}]},\n"
          "   \"valid\": {\"dataset\": \"h5\", \"batch_size\": 8, \"transforms\": [{\"type\": \"normalize\", \"mean\": 120, "
          "\"std\": 70}]}},\n"
          " \"model\": {\"type\": \"sequential\", \"layers\": [\n"
          "   {\"type\": \"conv2d\", \"name\": \"conv1\", \"out_channels\": 3, \"kernel\": 3, \"padding\": 1, \"bias\": false},\n"
          "   {\"type\": \"batchnorm\", \"name\": \"bn1\", \"num_features\": 3}, {\"type\": \"relu\"},\n"
          "   {\"type\": \"maxpool2d\", \"kernel\": 2},\n"
          "   {\"type\": \"conv2d\", \"name\": \"conv2\", \"out_channels\": 4, \"kernel\": 3, \"padding\": 1},\n"
          "   {\"type\": \"leaky_relu\"}, {\"type\": \"global_avgpool\"}, {\"type\": \"flatten\"},\n"
          "   {\"type\": \"dropout\", \"p\": 0.1}, {\"type\": \"linear\", \"name\": \"fc1\", \"out_features\": 8},\n"
          "   {\"type\": \"gelu\"}, {\"type\": \"linear\", \"name\": \"fc2\", \"out_features\": 6}, {\"type\": \"tanh\"},\n"
          "   {\"type\": \"sigmoid\"}, {\"type\": \"linear\", \"name\": \"head\", \"out_features\": %d}]},\n"
          " \"stages\": {\n"
          "   \"warm\": {\"num_epochs\": 1, \"loaders\": [\"train\", \"valid\"], \"criterion\": {\"type\": "
          "\"cross_entropy\"},\n"
          "     \"optimizer\": {\"type\": \"adam\", \"lr\": 0.01},\n"
          "     \"scheduler\": {\"type\": \"cosine\", \"total_steps\": 8, \"unit\": \"step\"},\n"
          "     \"callbacks\": [{\"type\": \"accuracy\"}, {\"type\": \"loss_metric\", \"name\": \"xent\", \"criterion\": "
          "{\"type\": \"cross_entropy\"}},\n"
          "       {\"type\": \"metrics_logger\", \"scope\": \"experiment\"}, {\"type\": \"tensorboard\", \"batch_every\": 2, "
          "\"scope\": \"experiment\"},\n"
          "       {\"type\": \"checkpoint\", \"every_n_batches\": 2, \"scope\": \"experiment\"},\n"
          "       {\"type\": \"timer\"}, {\"type\": \"time_limit\", \"seconds\": 3600}, {\"type\": \"early_stopping\", "
          "\"patience\": 3},\n"
          "       {\"type\": \"console_logger\", \"progress\": \"off\"}]},\n"
          "   \"tune\": {\"num_epochs\": 1, \"loaders\": [\"train\", \"valid\"], \"criterion\": {\"type\": "
          "\"cross_entropy\"},\n"
          "     \"optimizer\": {\"type\": \"rmsprop\", \"lr\": 0.005, \"momentum\": 0.9},\n"
          "     \"scheduler\": {\"type\": \"step\", \"step_size\": 1},\n"
          "     \"callbacks\": [{\"type\": \"accuracy\"}]}}}\n",
          CLASSES);
  fclose(f);
}

/* --------------------------------------------------------------- scenarios */

static void in_root(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", root, name); }

/* data.h5, through `loom convert`'s function (in a child: the parent
 * never calls loom). */
static int setup_h5(const char *dir) {
  (void)dir;
  char images[400], labels[400], out[400];
  in_root(images, sizeof images, "images.idx"), in_root(labels, sizeof labels, "labels.idx");
  in_root(out, sizeof out, "data.h5");
  return loom_idx_to_hdf5(images, labels, out);
}

static int fetch_all(loom_dataset *ds, float *x, float *y) {
  int64_t idx[SAMPLES];
  for (int i = 0; i < SAMPLES; i++)
    idx[i] = SAMPLES - 1 - i;
  return loom_dataset_fetch(ds, idx, loom_dataset_length(ds), x, y);
}

/* Reads the IDX, CSV and HDF5 datasets whole, and converts IDX to HDF5. */
static int sc_datasets(const char *dir) {
  char images[400], labels[400], csv[400], h5[400], out[500];
  in_root(images, sizeof images, "images.idx"), in_root(labels, sizeof labels, "labels.idx");
  in_root(csv, sizeof csv, "data.csv"), in_root(h5, sizeof h5, "data.h5");
  snprintf(out, sizeof out, "%s/out/converted.h5", dir);
  static float x[SAMPLES * SIDE * SIDE], y[SAMPLES];
  int rc = 0;
  loom_dataset *ds = loom_idx_dataset_open(images, labels);
  rc = ds ? fetch_all(ds, x, y) : -1;
  loom_dataset_release(ds);
  if (rc == 0) {
    ds = loom_csv_dataset_open(csv, -1, true);
    rc = ds ? fetch_all(ds, x, y) : -1;
    loom_dataset_release(ds);
  }
  if (rc == 0) {
    const char *files[] = {h5};
    loom_hdf5_options o = {.files = files, .num_files = 1, .inputs = "images", .targets = "labels", .scale = 1,
                           .cache_mb = 1, .block = 4};
    ds = loom_hdf5_dataset_open(&o);
    rc = ds ? fetch_all(ds, x, y) : -1;
    loom_dataset_release(ds);
  }
  if (rc == 0)
    rc = loom_idx_to_hdf5(images, labels, out);
  return rc < 0 ? loom_last_error_code() : 0;
}

/* A step's op log on the CPU backend (core/op_log.c): ops recorded, a
 * host read flushing them, memory freed while the log is open (its frees
 * wait for the end), a second logged step; the results checked. */
static int sc_op_log(const char *dir) {
  (void)dir;
  loom_backend *b = loom_backend_cpu();
  if (!b)
    return loom_last_error_code();
  const float one[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  float *x = loom_backend_alloc(b, sizeof one), *y = loom_backend_alloc(b, sizeof one), got[16];
  int rc = x && y ? loom_backend_from_host(b, x, one, sizeof one) : LOOM_ENOMEM;
  for (int step = 0; rc == 0 && step < 2; step++) {
    float *t = NULL;
    if ((rc = loom_backend_log_begin(b)) < 0)
      break;
    rc = (t = loom_backend_alloc(b, sizeof one)) ? 0 : LOOM_ENOMEM;
    if (rc == 0)
      rc = loom_backend_add(b, x, x, t, 16); /* t = 2x */
    if (rc == 0)
      rc = loom_backend_copy(b, y, t, sizeof one);
    loom_backend_free(b, t); /* waits for the log's end */
    if (rc == 0 && step == 1)
      rc = loom_backend_to_host(b, got, y, sizeof got); /* flushes */
    if (rc == 0)
      rc = loom_backend_scale(b, x, 2.0f, 16);
    int end = loom_backend_log_end(b, rc == 0);
    rc = rc < 0 ? rc : end;
  }
  if (rc == 0 && (got[0] != 4.0f || got[15] != 4.0f))
    rc = loom_error_set(LOOM_EINVAL, "sc_op_log: y is %g, not 4", (double)got[0]);
  loom_backend_free(b, x), loom_backend_free(b, y);
  return rc < 0 ? loom_last_error_code() : 0;
}

static int record_run(loom_callback *cb, loom_runner *r) {
  if (loom_runner_resumed_finished(r))
    return 0;
  int rc = loom_runner_lock_logdir(r);
  return rc < 0 ? rc : loom_config_record_run(loom_callback_data(cb), r);
}

static const loom_callback_ops record_ops = {.type = "resolved_config", .on_experiment_start = record_run};

typedef struct run_spec {
  bool run, resume;
  int tune_epochs;
} run_spec;

/* What `loom run` does: load, build, record config.json, run (resuming
 * from last when asked); the logdir is dir/logs. */
static int run_config(const char *dir, run_spec s) {
  char path[400], set[700];
  in_root(path, sizeof path, "config.json");
  loom_config *config = loom_config_load(path);
  if (!config)
    return loom_last_error_code();
  loom_experiment *exp = NULL;
  loom_runner *runner = NULL;
  snprintf(set, sizeof set, "experiment.logdir=%s/logs", dir);
  int rc = loom_config_set(config, set);
  snprintf(set, sizeof set, "stages.tune.num_epochs=%d", s.tune_epochs ? s.tune_epochs : 1);
  if (rc == 0)
    rc = loom_config_set(config, set);
  if (rc == 0)
    rc = loom_config_build(config, &exp);
  if (rc == 0 && s.run && !(runner = loom_runner_create()))
    rc = loom_last_error_code();
  if (rc == 0 && s.run) {
    loom_callback *record = loom_callback_create(&record_ops, config, LOOM_ORDER_INTERNAL);
    rc = record ? loom_experiment_add_callback(exp, record) : loom_last_error_code();
  }
  if (rc == 0 && s.resume)
    rc = loom_runner_allow_change(runner, "stages.tune.num_epochs");
  if (rc == 0 && s.resume)
    rc = loom_runner_set_resume(runner, "last");
  if (rc == 0 && s.run)
    rc = loom_run_experiment(runner, exp);
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  loom_config_destroy(config);
  return rc;
}

static int sc_build(const char *dir) { return run_config(dir, (run_spec){0}); }
static int sc_run(const char *dir) { return run_config(dir, (run_spec){.run = true}); }
static int sc_resume(const char *dir) { return run_config(dir, (run_spec){.run = true, .resume = true, .tune_epochs = 2}); }

/* The one-epoch-per-stage run that sc_resume continues, copied into dir. */
static int prepare_resume(const char *dir) {
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "cp -a '%s/resume_base/.' '%s/'", root, dir);
  return system(cmd) == 0 ? 0 : loom_error_set(LOOM_EIO, "cannot copy the run to resume");
}

/* The final parameters of the run in dir/logs against the uninterrupted
 * reference run's: bit for bit. */
static int same_params_as_reference(const char *dir) {
  char mine[600], ref[600];
  snprintf(mine, sizeof mine, "%s/logs/checkpoints/last.h5", dir);
  snprintf(ref, sizeof ref, "%s/reference/logs/checkpoints/last.h5", root);
  loom_checkpoint *a = loom_checkpoint_read(mine), *b = loom_checkpoint_read(ref);
  int rc = a && b ? 0 : -1;
  if (rc < 0)
    snprintf(shared->verify_msg, sizeof shared->verify_msg, "a final checkpoint does not load: %s", loom_last_error());
  const loom_state *sa = rc == 0 ? loom_checkpoint_find(a, "model") : NULL, *sb = rc == 0 ? loom_checkpoint_find(b, "model") : NULL;
  size_t n = sa && sb ? loom_state_array_length(sa, "params") : 0;
  if (rc == 0 && (n == 0 || n != loom_state_array_length(sb, "params")))
    rc = -1, snprintf(shared->verify_msg, sizeof shared->verify_msg, "the final checkpoints hold different models");
  static float pa[4096], pb[4096];
  if (rc == 0 && (n > 4096 || loom_state_get_f32_array(sa, "params", pa, n) < 0 ||
                  loom_state_get_f32_array(sb, "params", pb, n) < 0))
    rc = -1, snprintf(shared->verify_msg, sizeof shared->verify_msg, "cannot read the parameters back");
  if (rc == 0 && memcmp(pa, pb, n * sizeof *pa) != 0)
    rc = -1, snprintf(shared->verify_msg, sizeof shared->verify_msg,
                      "resumed to the end, the parameters differ from the uninterrupted run's");
  loom_checkpoint_destroy(a);
  loom_checkpoint_destroy(b);
  return rc;
}

/* After a failed write: last still loads, and resuming from it to the end
 * gives the uninterrupted run's parameters. */
static int verify_resume(const char *dir) {
  char logdir[500], path[700], notice[512];
  snprintf(logdir, sizeof logdir, "%s/logs", dir);
  loom_checkpoint *c = loom_checkpoint_open_logdir(logdir, "last", path, sizeof path, notice, sizeof notice);
  if (!c) {
    snprintf(shared->verify_msg, sizeof shared->verify_msg, "last no longer loads: %s", loom_last_error());
    return -1;
  }
  loom_checkpoint_destroy(c);
  int rc = sc_resume(dir);
  if (rc < 0) {
    snprintf(shared->verify_msg, sizeof shared->verify_msg, "resuming again failed: %s", loom_last_error());
    return rc;
  }
  return same_params_as_reference(dir);
}

static int sc_reference(const char *dir) { return run_config(dir, (run_spec){.run = true, .tune_epochs = 2}); }

static int sc_convert(const char *dir) {
  char images[400], labels[400], out[500];
  in_root(images, sizeof images, "images.idx"), in_root(labels, sizeof labels, "labels.idx");
  snprintf(out, sizeof out, "%s/out/converted.h5", dir);
  return loom_idx_to_hdf5(images, labels, out);
}

/* After a failed conversion: no output, or a whole one; no temporary left. */
static int verify_convert(const char *dir) {
  char out[500], cmd[600];
  snprintf(out, sizeof out, "%s/out/converted.h5", dir);
  snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s/out' | grep -v '^converted.h5$')\"", dir);
  if (system(cmd) != 0) {
    snprintf(shared->verify_msg, sizeof shared->verify_msg, "a temporary file was left in %s/out", dir);
    return -1;
  }
  if (access(out, F_OK) != 0)
    return 0;
  const char *files[] = {out};
  loom_hdf5_options o = {.files = files, .num_files = 1, .inputs = "images", .targets = "labels"};
  loom_dataset *ds = loom_hdf5_dataset_open(&o);
  static float x[SAMPLES * SIDE * SIDE], y[SAMPLES];
  int rc = ds && loom_dataset_length(ds) == SAMPLES ? fetch_all(ds, x, y) : -1;
  loom_dataset_release(ds);
  if (rc < 0)
    snprintf(shared->verify_msg, sizeof shared->verify_msg, "%s is there but broken: %s", out, loom_last_error());
  return rc;
}

/* ----------------------------------------------------------------- tests */

static void prepare(scenario_fn fn, const char *name) {
  char dir[400], why[128];
  trial_dir(dir, sizeof dir, name);
  int status = run_trial(NULL, fn, NULL, dir, 0, 0, IO_ENOSPC);
  if (status != 0 || shared->rc != 0)
    fail_msg("setup %s failed (%s): %s", name, describe_status(status, why, sizeof why), shared->msg);
}

static int group_setup(void **state) {
  (void)state;
  verbose = getenv("LOOM_FAULTS_VERBOSE") != NULL;
  full = getenv("LOOM_FAULTS_FULL") && strcmp(getenv("LOOM_FAULTS_FULL"), "1") == 0;
  shared = mmap(NULL, sizeof *shared, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  assert_true(shared != MAP_FAILED);
  snprintf(root, sizeof root, "/tmp/loom-faults-XXXXXX");
  assert_non_null(mkdtemp(root));
  chmod(root, 0755);
  make_inputs();
  prepare(setup_h5, "h5");
  prepare(sc_run, "resume_base");
  prepare(sc_reference, "reference");
  return 0;
}

static int group_teardown(void **state) {
  (void)state;
  test_rm_rf(root);
  return 0;
}

static void test_alloc_datasets(void **state) {
  (void)state;
  alloc_walk("datasets", NULL, sc_datasets);
}

static void test_alloc_build(void **state) {
  (void)state;
  alloc_walk("build", NULL, sc_build);
}

static void test_alloc_op_log(void **state) {
  (void)state;
  alloc_walk("op_log", NULL, sc_op_log);
}

static void test_alloc_run(void **state) {
  (void)state;
  alloc_walk("run", NULL, sc_run);
}

static void test_alloc_resume(void **state) {
  (void)state;
  alloc_walk("resume", prepare_resume, sc_resume);
}

static void test_alloc_random(void **state) {
  (void)state;
  alloc_random("run", NULL, sc_run);
  alloc_random("resume", prepare_resume, sc_resume);
}

/* A run into a logdir it may not write: root ignores file modes, so the
 * run drops to nobody first (skipped where it cannot). */
static int sc_readonly(const char *dir) {
  if (geteuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
    return 77;
  return sc_run(dir);
}

static void test_readonly_logdir(void **state) {
  (void)state;
  char dir[400], logs[500], why[128];
  trial_dir(dir, sizeof dir, "readonly");
  snprintf(logs, sizeof logs, "%s/logs", dir);
  assert_int_equal(mkdir(logs, 0555), 0);
  assert_int_equal(chmod(logs, 0555), 0);
  int status = run_trial(NULL, sc_readonly, NULL, dir, 0, 0, IO_EIO);
  if (status == 0 && shared->rc == 77) {
    print_message("skipped: cannot drop root's rights (setuid nobody) to make a logdir read-only\n");
    skip();
  }
  if (status != 0)
    fail_msg("read-only logdir: %s", describe_status(status, why, sizeof why));
  print_message("read-only logdir: %s\n", shared->msg);
  assert_true(shared->rc < 0);
  assert_int_equal(shared->rc, shared->code);
  assert_non_null(strstr(shared->msg, logs));
  assert_non_null(strstr(shared->msg, strerror(EACCES)));
}

/* The sampled walks take at most this many operations per mode. */
#define IO_TRIALS 40

static void test_io_resume(void **state) {
  (void)state;
  for (int mode = IO_ENOSPC; mode <= IO_SHORT; mode++)
    io_walk("io_resume", prepare_resume, sc_resume, verify_resume, (io_mode)mode, IO_TRIALS);
}

static void test_io_convert(void **state) {
  (void)state;
  for (int mode = IO_ENOSPC; mode <= IO_SHORT; mode++)
    io_walk("io_convert", NULL, sc_convert, verify_convert, (io_mode)mode, IO_TRIALS);
}

int main(int argc, char **argv) {
  if (argc > 1)
    cmocka_set_test_filter(argv[1]);
  for (size_t i = 0; i < NUM_CRASH_SIGNALS; i++)
    sigaction(crash_signals[i], NULL, &crash_actions[i]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alloc_datasets),
      cmocka_unit_test(test_alloc_build),
      cmocka_unit_test(test_alloc_op_log),
      cmocka_unit_test(test_alloc_run),
      cmocka_unit_test(test_alloc_resume),
      cmocka_unit_test(test_alloc_random),
      cmocka_unit_test(test_io_resume),
      cmocka_unit_test(test_io_convert),
      cmocka_unit_test(test_readonly_logdir),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
