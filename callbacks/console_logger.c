/* Console logger: a line per loader per epoch; a live bar on terminals. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/error_internal.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

#define BAR_WIDTH 24
#define REDRAW_NS 100000000ull /* 10 redraws a second at most */

typedef struct console {
  FILE *out;
  bool progress, verbose;
  bool bar_shown;
  uint64_t last_draw;
  size_t notices_shown; /* loom_notice()s already printed */
} console;

static void clear_bar(console *c) {
  if (c->bar_shown) {
    fputs("\r\033[K", c->out);
    c->bar_shown = false;
  }
}

static int console_stage_start(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  if (loom_runner_resumed_finished(r))
    return 0; /* "already finished" said it */
  fprintf(c->out, "stage \"%s\": %d epoch%s\n", loom_runner_stage_name(r), loom_runner_num_epochs(r),
          loom_runner_num_epochs(r) == 1 ? "" : "s");
  if (c->verbose)
    loom_runner_print_callbacks(r, c->out);
  if (c->verbose && loom_runner_model(r) && loom_model_is_built(loom_runner_model(r)))
    loom_model_print_summary(loom_runner_model(r), c->out);
  fflush(c->out);
  return 0;
}

static int console_experiment_start(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  for (; c->notices_shown < loom_notice_count(); c->notices_shown++)
    fprintf(c->out, "warning: %s\n", loom_notice(c->notices_shown));
  if (loom_runner_is_resumed(r)) {
    const char *notice = loom_runner_resume_notice(r);
    fprintf(c->out, "resumed from %s%s%s\n", loom_runner_resume_path(r), notice[0] ? ": " : "", notice);
    fflush(c->out);
  }
  return 0;
}

static int console_loader_start(loom_callback *cb, loom_runner *r) {
  (void)r;
  console *c = loom_callback_data(cb);
  c->last_draw = 0;
  return 0;
}

static int console_batch_end(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  if (!c->progress)
    return 0;
  uint64_t now = uv_hrtime();
  int64_t step = loom_runner_loader_batch_step(r), total = loom_runner_loader_num_batches(r);
  if (now - c->last_draw < REDRAW_NS && step < total)
    return 0;
  c->last_draw = now;
  double elapsed = loom_runner_loader_elapsed(r);
  double sps = elapsed > 0 ? (double)loom_runner_loader_samples_run(r) / elapsed : 0.0;
  int64_t run = step - loom_runner_loader_resumed_batches(r); /* batches this run did */
  double eta = run > 0 ? elapsed * (double)(total - step) / (double)run : 0.0;
  int filled = total > 0 ? (int)(BAR_WIDTH * step / total) : 0;
  char bar[BAR_WIDTH + 1];
  for (int i = 0; i < BAR_WIDTH; i++)
    bar[i] = i < filled ? '=' : (i == filled ? '>' : ' ');
  bar[BAR_WIDTH] = '\0';
  double loss;
  char loss_text[32] = "";
  if (loom_metrics_get(loom_runner_batch_metrics(r), "loss", &loss))
    snprintf(loss_text, sizeof loss_text, " loss %.4f", loss);
  fprintf(c->out, "\r\033[K%s %d/%d [%s] %lld/%lld %.0f samples/s ETA %.1fs%s", loom_runner_loader_name(r),
          loom_runner_epoch(r), loom_runner_num_epochs(r), bar, (long long)step, (long long)total, sps, eta,
          loss_text);
  fflush(c->out);
  c->bar_shown = true;
  return 0;
}

static int console_loader_end(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  clear_bar(c);
  double elapsed = loom_runner_loader_elapsed(r);
  fprintf(c->out, "%s %d/%d", loom_runner_loader_name(r), loom_runner_epoch(r), loom_runner_num_epochs(r));
  const loom_metrics *m = loom_runner_loader_metrics(r);
  for (size_t i = 0; i < loom_metrics_count(m); i++)
    fprintf(c->out, " | %s %.4f", loom_metrics_name(m, i), loom_metrics_value(m, i));
  double sps = elapsed > 0 ? (double)loom_runner_loader_samples_run(r) / elapsed : 0.0;
  fprintf(c->out, " | %.2f s (%.0f samples/s)", elapsed, sps);
  int64_t resumed = loom_runner_loader_resumed_batches(r);
  if (resumed > 0)
    fprintf(c->out, " | resumed after batch %lld: time and rate of the %lld batches since",
            (long long)resumed, (long long)(loom_runner_loader_batch_step(r) - resumed));
  fputc('\n', c->out);
  fflush(c->out);
  return 0;
}

static int console_epoch_end(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  /* Loader metrics were printed at their loader's end; the rest here. */
  const loom_metrics *m = loom_runner_epoch_metrics(r);
  fprintf(c->out, "epoch %d/%d", loom_runner_epoch(r), loom_runner_num_epochs(r));
  for (size_t i = 0; i < loom_metrics_count(m); i++)
    if (!strchr(loom_metrics_name(m, i), '/'))
      fprintf(c->out, " | %s %.4g", loom_metrics_name(m, i), loom_metrics_value(m, i));
  fputc('\n', c->out);
  if (loom_runner_is_best_valid(r)) {
    double v = 0;
    loom_metrics_get(loom_runner_best_valid_metrics(r), loom_runner_main_metric(r), &v);
    fprintf(c->out, "  * new best %s/%s %.4f\n", loom_runner_valid_loader(r), loom_runner_main_metric(r), v);
  }
  if (loom_runner_stop_reason(r))
    fprintf(c->out, "  stopping: %s\n", loom_runner_stop_reason(r));
  fflush(c->out);
  return 0;
}

static int console_stage_end(loom_callback *cb, loom_runner *r) {
  console *c = loom_callback_data(cb);
  const loom_metrics *best = loom_runner_best_valid_metrics(r);
  if (loom_metrics_count(best) == 0 || loom_runner_resumed_finished(r))
    return 0;
  fprintf(c->out, "stage \"%s\" best (epoch %d):", loom_runner_stage_name(r), loom_runner_best_epoch(r));
  for (size_t i = 0; i < loom_metrics_count(best); i++)
    fprintf(c->out, " %s/%s %.4f", loom_runner_valid_loader(r), loom_metrics_name(best, i),
            loom_metrics_value(best, i));
  fputc('\n', c->out);
  fflush(c->out);
  return 0;
}

/* The failure itself is reported once, by whoever called
 * loom_run_experiment (it returns the error and its message, with what the
 * callbacks did about it); the console only clears its progress line. */
static int console_exception(loom_callback *cb, loom_runner *r) {
  (void)r;
  console *c = loom_callback_data(cb);
  clear_bar(c);
  fflush(c->out);
  return 0;
}

static const loom_callback_ops console_ops = {
    .type = "console_logger",
    .on_experiment_start = console_experiment_start,
    .on_stage_start = console_stage_start,
    .on_loader_start = console_loader_start,
    .on_batch_end = console_batch_end,
    .on_loader_end = console_loader_end,
    .on_epoch_end = console_epoch_end,
    .on_stage_end = console_stage_end,
    .on_exception = console_exception,
    .destroy = free,
};

loom_callback *loom_console_logger_create(const loom_console_logger_options *o) {
  console *c = calloc(1, sizeof *c);
  if (!c) {
    loom_error_oom("the console logger");
    return NULL;
  }
  c->out = (o && o->out) ? o->out : stdout;
  loom_progress p = o ? o->progress : LOOM_PROGRESS_AUTO;
  c->progress = p == LOOM_PROGRESS_ON || (p == LOOM_PROGRESS_AUTO && isatty(fileno(c->out)));
  c->verbose = o && o->verbose;
  loom_callback *cb = loom_callback_create(&console_ops, c, LOOM_ORDER_LOGGING);
  if (cb)
    loom_callback_set_node(cb, LOOM_NODE_MASTER);
  return cb;
}
