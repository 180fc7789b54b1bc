/* SIGINT and SIGTERM through libuv: its handler only records the signal;
 * the runner polls once per batch. The watchers stop at the first signal,
 * which restores the default action, so a second one ends the process at
 * once (checkpoints are written atomically, so nothing breaks). */
#include <signal.h>
#include <string.h>

#include "runners/runner_impl.h"

static void on_signal(uv_signal_t *handle, int signum) {
  loom_runner *r = handle->data;
  r->signals.received = signum;
  uv_signal_stop(&r->signals.sigint);
  uv_signal_stop(&r->signals.sigterm);
  loom_runner_interrupt(r, signum == SIGINT ? "interrupted by SIGINT" : "interrupted by SIGTERM");
}

int loom_signals_start(loom_runner *r) {
  loom_signals *s = &r->signals;
  memset(s, 0, sizeof *s);
  int rc = uv_loop_init(&s->loop);
  if (rc < 0)
    return loom_error_set(LOOM_EIO, "cannot watch for signals: %s", uv_strerror(rc));
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  s->sigint.data = s->sigterm.data = r;
  rc = uv_signal_start(&s->sigint, on_signal, SIGINT);
  if (rc == 0)
    rc = uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  s->active = true;
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
  uv_close((uv_handle_t *)&s->sigint, NULL);
  uv_close((uv_handle_t *)&s->sigterm, NULL);
  uv_run(&s->loop, UV_RUN_DEFAULT); /* runs the close callbacks */
  uv_loop_close(&s->loop);
  s->active = false;
}
