/* One run per logdir, also over time: a run that is not a resume refuses a
 * logdir an earlier run wrote (its metrics and checkpoints would be
 * overwritten), unless loom_run_options.overwrite asks to remove that run's
 * files first. Other files (a grid's stdout.txt, a user's notes) are no
 * run's and stay. Checked once, when the run takes <logdir>/.lock, which
 * every writer does before its first write. */
#include <dirent.h>
#include <errno.h>
#include <string.h>

#include "runners/runner_impl.h"

#include "core/fs.h"

/* What loom writes in a logdir: the only entries overwrite removes. A
 * logger that writes a new file there adds its name here. */
static bool written_by_loom(const char *name) {
  static const char *const files[] = {"metrics.jsonl",      "metrics.csv", "config.json",  "config_history.jsonl",
                                      "model_summary.json", "checkpoints", "hparams.json", "lr_find"};
  static const char tensorboard[] = "events.out.tfevents.";
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    if (strcmp(name, files[i]) == 0)
      return true;
  return strncmp(name, tensorboard, sizeof tensorboard - 1) == 0;
}

/* The first entry of the logdir that an earlier run wrote: 1 with its name,
 * 0 for none, or an error. */
static int first_run_file(const char *logdir, char *name, size_t size) {
  DIR *d = opendir(logdir);
  if (!d)
    return errno == ENOENT ? 0 : loom_error_set(LOOM_EIO, "cannot read the logdir %s: %s", logdir, strerror(errno));
  int found = 0;
  for (struct dirent *e; !found && (e = readdir(d));)
    if (written_by_loom(e->d_name)) {
      snprintf(name, size, "%s", e->d_name);
      found = 1;
    }
  closedir(d);
  return found;
}

/* Removes the earlier run's files, and nothing else. */
static int overwrite(const char *logdir) {
  char name[256], path[4400];
  int found;
  while ((found = first_run_file(logdir, name, sizeof name)) > 0) {
    int rc = loom_path_join(path, sizeof path, logdir, name);
    if (rc == 0)
      rc = loom_remove_tree(path);
    if (rc < 0)
      return rc;
  }
  return found;
}

int loom_runner_claim_logdir(loom_runner *r) {
  const char *logdir = loom_experiment_logdir(r->exp);
  if (r->resumed)
    return 0; /* a resume continues the run that is there */
  if (r->options.overwrite)
    return overwrite(logdir);
  char name[256];
  int found = first_run_file(logdir, name, sizeof name);
  if (found <= 0)
    return found;
  return loom_error_set(LOOM_EEXIST, "the logdir %s already holds a run's files (%s, ...); resume that run (loom run "
                                     "--resume last, loom_runner_set_resume), overwrite it (loom run --overwrite, "
                                     "loom_run_options.overwrite), or give this run another logdir",
                        logdir, name);
}

/* The absolute path of what `cb` writes, or "" for nothing. */
static int written_path(const loom_runner *r, const loom_callback *cb, char *out, size_t size) {
  const char *path = loom_callback_writes(cb);
  out[0] = '\0';
  if (!path)
    return 0;
  if (path[0] == '/')
    return snprintf(out, size, "%s", path) < (int)size ? 0 : loom_error_set(LOOM_EINVAL, "path too long: %s", path);
  return loom_path_join(out, size, loom_experiment_logdir(r->exp), path);
}

int loom_runner_check_writers(const loom_runner *r) {
  const loom_callback_table *t = &r->exp_table;
  char a[4200], b[4200];
  for (size_t i = 0; i < t->count; i++) {
    int rc = written_path(r, t->all[i], a, sizeof a);
    for (size_t j = i + 1; rc == 0 && a[0] && j < t->count; j++) {
      if ((rc = written_path(r, t->all[j], b, sizeof b)) == 0 && strcmp(a, b) == 0)
        return loom_error_set(LOOM_EINVAL, "callbacks \"%s\" and \"%s\" both write %s: their writes would "
                                           "interleave or overwrite each other; keep one (every stage's callbacks "
                                           "and the experiment's write into the one logdir)",
                              loom_callback_name(t->all[i]), loom_callback_name(t->all[j]), a);
    }
    if (rc < 0)
      return rc;
  }
  return 0;
}
