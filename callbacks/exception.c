/* Records a failed run's error and, as asked, checkpoints and handles it. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/checkpoint_dir.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "loom/callbacks.h"
#include "loom/runner_view.h"

/* <logdir>/exception.json and, as asked, checkpoints/exception.h5. */
static int write_report(const loom_exception_options *o, loom_runner *r, int error) {
  const char *logdir = loom_runner_logdir(r);
  char path[4096], dir[4096];
  int rc = loom_mkdir_p(logdir);
  json_t *report = json_pack("{s:s, s:i, s:s, s:s, s:i, s:i, s:s, s:I, s:I}", "error", loom_err_name(error), "code",
                             error, "message", loom_runner_error_message(r), "stage",
                             loom_runner_stage_name(r) ? loom_runner_stage_name(r) : "", "epoch", loom_runner_epoch(r),
                             "global_epoch", loom_runner_global_epoch(r), "loader",
                             loom_runner_loader_name(r) ? loom_runner_loader_name(r) : "", "batch",
                             (json_int_t)loom_runner_loader_batch_step(r), "time", (json_int_t)time(NULL));
  if (rc == 0 && (rc = loom_path_join(path, sizeof path, logdir, "exception.json")) == 0 &&
      (!report || json_dump_file(report, path, JSON_INDENT(2)) < 0))
    rc = loom_error_set(LOOM_EIO, "exception callback: cannot write %s: %s", path, strerror(errno));
  json_decref(report);
  if (rc == 0 && o->save_checkpoint && loom_checkpoint_dir(logdir, dir, sizeof dir) == 0 && loom_mkdir_p(dir) == 0 &&
      loom_path_join(path, sizeof path, dir, "exception.h5") == 0) {
    loom_checkpoint *snap;
    if (loom_runner_snapshot(r, &snap) == 0) { /* outside a stage there is no state to save */
      rc = loom_checkpoint_write(snap, path);
      loom_checkpoint_destroy(snap);
    }
  }
  return rc;
}

static int exc_exception(loom_callback *cb, loom_runner *r) {
  const loom_exception_options *o = loom_callback_data(cb);
  int error = loom_runner_error(r);
  int rc = loom_runner_writes_files(r) ? write_report(o, r, error) : 0;
  if (o->handle && (!o->handle_interrupts_only || error == LOOM_EINTERRUPTED))
    loom_runner_mark_error_handled(r);
  return rc;
}

static const loom_callback_ops exception_ops = {.type = "exception", .on_exception = exc_exception, .destroy = free};

loom_callback *loom_exception_callback_create(const loom_exception_options *o) {
  loom_exception_options *copy = malloc(sizeof *copy);
  if (!copy) {
    loom_error_oom("the exception callback");
    return NULL;
  }
  *copy = o ? *o : (loom_exception_options){0};
  return loom_callback_create(&exception_ops, copy, LOOM_ORDER_EXTERNAL);
}
