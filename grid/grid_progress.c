/* The grid's progress for people: on a terminal one status line redrawn
 * with \r (done / running / failed / left, ETA, the best so far); in a log
 * a timestamped line per start, end and interrupt. It is a progress
 * function the loom command hands to loom_grid_run, as a logger callback
 * is for a run: the library itself prints nothing. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "grid/grid_internal.h"

static void duration(char *buf, size_t size, double s) {
  if (s < 0)
    snprintf(buf, size, "?");
  else if (s < 60)
    snprintf(buf, size, "%.0fs", s);
  else if (s < 3600)
    snprintf(buf, size, "%dm%02ds", (int)s / 60, (int)s % 60);
  else
    snprintf(buf, size, "%dh%02dm", (int)s / 3600, (int)s / 60 % 60);
}

static void counts(FILE *out, const loom_grid_progress *p) {
  char eta[32];
  duration(eta, sizeof eta, p->eta_s);
  fprintf(out, "%zu/%zu done, %zu running, %zu failed, %zu left, ETA %s", p->done, p->total, p->running, p->failed,
          p->left, eta);
  if (p->has_best)
    fprintf(out, ", best %s %.6g (%s)", p->metric ? p->metric : "", p->best, p->best_id);
}

void loom_grid_print_progress(const loom_grid_progress *p, void *user) {
  FILE *out = user ? user : stdout;
  if (isatty(fileno(out))) {
    fputs("\r\033[K", out); /* back to the line's start, cleared */
    if (p->event == LOOM_GRID_FINISHED && p->status[0] != 'd')
      fprintf(out, "%s: %s%s%s (attempt %d)\n", p->id, p->status, p->reason ? ", " : "", p->reason ? p->reason : "",
              p->attempt);
    else if (p->event == LOOM_GRID_STOPPING)
      fputs("interrupted: waiting for the running experiments to save their checkpoints (Ctrl-C again kills them)\n",
            out);
    fputs("grid: ", out);
    counts(out, p);
    fflush(out);
    return;
  }
  if (p->event == LOOM_GRID_TICK)
    return;
  char when[32];
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&now));
  fprintf(out, "%s ", when);
  if (p->event == LOOM_GRID_STARTED)
    fprintf(out, "started %s (attempt %d)", p->id, p->attempt);
  else if (p->event == LOOM_GRID_FINISHED)
    fprintf(out, "%s %s%s%s in %.1fs", p->id, p->status, p->reason ? ": " : "", p->reason ? p->reason : "",
            p->duration_s);
  else
    fputs("interrupted: waiting for the running experiments to save their checkpoints", out);
  fputs("; ", out);
  counts(out, p);
  fputc('\n', out);
  fflush(out);
}
