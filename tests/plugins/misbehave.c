/* A plugin for test_grid: a callback that makes its experiment misbehave
 * as "action" says, so that a grid meets every way a run can end:
 *   "none"      nothing;
 *   "segv"      raises SIGSEGV at the first batch;
 *   "hang"      never returns from the first batch (only SIGKILL ends it);
 *   "fail_once" fails its first run in a logdir, then runs normally;
 *   "slow"      sleeps `sleep_ms` (default 50) after each batch. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <loom.h>

typedef struct misbehave {
  int action;
  int64_t sleep_ms;
} misbehave;

enum { NONE, SEGV, HANG, FAIL_ONCE, SLOW };
static const char *const actions[] = {"none", "segv", "hang", "fail_once", "slow", NULL};

static int start(loom_callback *cb, loom_runner *r) {
  misbehave *m = loom_callback_data(cb);
  if (m->action != FAIL_ONCE)
    return 0;
  char path[4200];
  snprintf(path, sizeof path, "%s/failed_once", loom_runner_logdir(r));
  if (access(path, F_OK) == 0)
    return 0;
  FILE *f = fopen(path, "w");
  if (f)
    fclose(f);
  return loom_error_set(LOOM_EIO, "test_misbehave: failing the first run, as asked");
}

static int batch(loom_callback *cb, loom_runner *r) {
  (void)r;
  misbehave *m = loom_callback_data(cb);
  struct timespec t = {m->sleep_ms / 1000, (m->sleep_ms % 1000) * 1000000};
  if (m->action == SEGV) {
    signal(SIGSEGV, SIG_DFL); /* a sanitizer's handler would turn it into exit(1) */
    raise(SIGSEGV);
  }
  while (m->action == HANG)
    nanosleep(&(struct timespec){1, 0}, NULL);
  if (m->action == SLOW)
    nanosleep(&t, NULL);
  return 0;
}

static void destroy(void *data) { free(data); }

static const loom_callback_ops ops = {
    .type = "test_misbehave", .on_experiment_start = start, .on_batch_end = batch, .destroy = destroy};

static void *make(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  misbehave *m = calloc(1, sizeof *m);
  if (!m || loom_params_choice(p, "action", "none", actions, &m->action) < 0 ||
      loom_params_int(p, "sleep_ms", 50, 0, 10000, &m->sleep_ms) < 0) {
    free(m);
    return NULL;
  }
  return loom_callback_create(&ops, m, LOOM_ORDER_LOGGING);
}

static int init(void) { return loom_register(LOOM_KIND_CALLBACK, "test_misbehave", make, NULL); }

LOOM_PLUGIN("misbehave", init);
