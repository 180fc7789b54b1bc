/* One run per logdir, also over time: a run that is not a resume refuses a
 * logdir an earlier run wrote (its metrics and checkpoints would be
 * overwritten), unless loom_run_options.overwrite asks to remove that run's
 * files first. Checked once, when the run takes <logdir>/.lock, which every
 * writer does before its first write. */
#include <dirent.h>
#include <errno.h>
#include <string.h>

#include "runners/runner_impl.h"

#include "core/fs.h"

/* What loom writes in a logdir: the only entries overwrite removes. A
 * logger that writes a new file there adds its name here. */
static bool written_by_loom(const char *name) {
  static const char *const files[] = {"metrics.jsonl",  "metrics.csv", "config.json", "config_history.jsonl",
                                      "model_summary.json", "checkpoints"};
  static const char tensorboard[] = "events.out.tfevents.";
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (strcmp(name, files[i]) == 0)
      return true;
  return strncmp(name, tensorboard, sizeof tensorboard - 1) == 0;
}

/* Removes the earlier run's files; refuses, removing nothing, if the logdir
 * holds a file loom does not write. */
static int overwrite(const char *logdir) {
  char path[4400];
  /* Check all first: nothing is removed from a logdir that will be refused. */
  for (int pass = 0; pass < 2; pass++) {
    DIR *d = opendir(logdir);
    if (!d)
      return loom_error_set(LOOM_EIO, "cannot read the logdir %s: %s", logdir, strerror(errno));
    int rc = 0;
    for (struct dirent *e; rc == 0 && (e = readdir(d));) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0 || strcmp(e->d_name, ".lock") == 0)
        continue;
      if (!written_by_loom(e->d_name))
        rc = loom_error_set(LOOM_EEXIST, "cannot overwrite the logdir %s: it holds %s, which loom did not write "
                                         "(overwrite removes only a run's files); move it away or give this run "
                                         "another logdir",
                            logdir, e->d_name);
      else if (pass == 1 && (rc = loom_path_join(path, sizeof path, logdir, e->d_name)) == 0)
        rc = loom_remove_tree(path);
    }
    closedir(d);
    if (rc < 0)
      return rc;
  }
  return 0;
}

int loom_runner_claim_logdir(loom_runner *r) {
  const char *logdir = loom_experiment_logdir(r->exp);
  if (r->resumed)
    return 0; /* a resume continues the run that is there */
  if (r->options.overwrite)
    return overwrite(logdir);
  char name[256];
  int found = loom_dir_first_entry(logdir, ".lock", name, sizeof name);
  if (found <= 0)
    return found;
  return loom_error_set(LOOM_EEXIST, "the logdir %s already holds a run's files (%s, ...); resume that run (loom run "
                                     "--resume last, loom_runner_set_resume), overwrite it (loom run --overwrite, "
                                     "loom_run_options.overwrite), or give this run another logdir",
                        logdir, name);
}
