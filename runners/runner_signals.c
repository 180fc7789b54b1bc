/* SIGINT and SIGTERM through libuv: its handler only records the signal;
 * the runner polls once per batch.
 *
 * libuv resets a signal to SIG_DFL when its last watcher stops, which would
 * throw away the host program's own handlers. So the dispositions found at
 * start (handler, mask, flags) are saved and put back exactly as soon as
 * the runner stops watching: at the first signal, or at the end of the run.
 * A second signal therefore reaches whatever the host had installed; with
 * the default action it ends the process at once (checkpoints are written
 * atomically, so nothing breaks). No other signal is touched. */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "runners/runner_impl.h"

static const int watched[LOOM_NUM_WATCHED_SIGNALS] = {SIGINT, SIGTERM};

/* Stops both watchers (libuv sets SIG_DFL) and puts the host's dispositions
 * back, once. */
static void stop_watching(loom_signals *s) {
  if (!s->watching)
    return;
  uv_signal_stop(&s->sigint);
  uv_signal_stop(&s->sigterm);
  for (int i = 0; i < LOOM_NUM_WATCHED_SIGNALS; i++)
    sigaction(watched[i], &s->host[i], NULL);
  s->watching = false;
}

static void on_signal(uv_signal_t *handle, int signum) {
  loom_runner *r = handle->data;
  r->signals.received = signum;
  stop_watching(&r->signals);
  loom_runner_interrupt(r, signum == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM");
}

int loom_signals_start(loom_runner *r) {
  loom_signals *s = &r->signals;
  memset(s, 0, sizeof *s);
  for (int i = 0; i < LOOM_NUM_WATCHED_SIGNALS; i++)
    if (sigaction(watched[i], NULL, &s->host[i]) < 0)
      return loom_error_set(LOOM_EIO, "cannot read the action of signal %d: %s", watched[i], strerror(errno));
  int rc = uv_loop_init(&s->loop);
  if (rc < 0)
    return loom_error_set(rc == UV_ENOMEM ? LOOM_ENOMEM : LOOM_EIO, "cannot watch for signals: %s", uv_strerror(rc));
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  s->sigint.data = s->sigterm.data = r;
  s->active = s->watching = true;
  rc = uv_signal_start(&s->sigint, on_signal, SIGINT);
  if (rc == 0)
    rc = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  if (rc < 0) {
    loom_signals_stop(r);
    return loom_error_set(LOOM_EIO, "cannot watch for SIGINT/SIGTERM: %s", uv_strerror(rc));
  }
  return 0;
}

void loom_signals_poll(loom_runner *r) {
  if (r->signals.active)
    uv_run(&r->signals.loop, UV_RUN_NOWAIT);
}

void loom_signals_stop(loom_runner *r) {
  loom_signals *s = &r->signals;
  if (!s->active)
    return;
  stop_watching(s);
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT); /* runs the close callbacks */
  uv_loop_close(&s->loop);
  s->active = false;
}
