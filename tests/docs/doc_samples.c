/* The C samples of the docs, compiled and run by check_doc_samples.py (which
 * extracts them into NAME_I.c files): each is included where the docs use
 * it and checked against what the docs say it does. Runs in a scratch
 * directory (logdirs are relative to it). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

#include "howto_0.c" /* batch_counter: a callback with saved state */
#include "howto_1.c" /* square: a layer and its gradient check */

enum { N = 64, FEATURES = 4, CLASSES = 3, BATCH = 8 };

#define CHECK(cond)                                                                        \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "doc_samples: %s:%d: %s failed (%s)\n", __FILE__, __LINE__, #cond, \
              loom_last_error());                                                          \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

static loom_loader *loader(bool shuffle) {
  static float x[N * FEATURES], y[N];
  for (int i = 0; i < N * FEATURES; i++)
    x[i] = (float)((i * 37) % 17) / 17.0f - 0.5f;
  for (int i = 0; i < N; i++)
    y[i] = (float)(i % CLASSES);
  loom_dataset *ds = loom_memory_dataset_create(x, y, N, 1, (int64_t[]){FEATURES}, 0, NULL);
  return loom_loader_create(ds, &(loom_loader_options){.batch_size = BATCH, .shuffle = shuffle});
}

static bool exists(const char *path) {
  FILE *f = fopen(path, "r");
  if (f)
    fclose(f);
  return f != NULL;
}

/* An experiment of `epochs` with the how-to's batch_counter and a
 * checkpoint, so that it can resume. */
static loom_experiment *counted(int epochs) {
  loom_experiment *exp = loom_experiment_create("counted");
  loom_stage *stage = loom_experiment_add_stage(exp, "train", epochs);
  loom_stage_set_model(stage, loom_mlp_create((int64_t[]){FEATURES, 5, CLASSES}, 3, 1));
  loom_stage_set_criterion(stage, loom_cross_entropy_create());
  loom_adam_options adam = loom_adam_defaults();
  loom_stage_set_optimizer(stage, loom_adam_create(&adam));
  loom_stage_add_loader(stage, "train", loader(true));
  loom_stage_add_loader(stage, "valid", loader(false));
  loom_experiment_add_callback(exp, batch_counter_create());
  loom_experiment_add_callback(exp, loom_metrics_logger_create());
  loom_experiment_add_callback(exp, loom_checkpoint_callback_create(NULL));
  return exp;
}

/* The last epoch row's train_batches in logs/counted/metrics.jsonl. */
static double last_train_batches(void) {
  FILE *f = fopen("logs/counted/metrics.jsonl", "r");
  CHECK(f);
  char line[4096];
  double v = -1;
  while (fgets(line, sizeof line, f)) {
    const char *p = strstr(line, "\"train_batches\":");
    if (p && strstr(line, "\"loader\":null"))
      v = strtod(p + strlen("\"train_batches\":"), NULL);
  }
  fclose(f);
  return v;
}

/* howto.md: the callback counts train batches across a resume (1 epoch,
 * then resumed with 3: 3 epochs of N / BATCH batches in all). */
static void callback_with_saved_state(void) {
  loom_experiment *exp = counted(1);
  loom_runner *runner = loom_runner_create();
  CHECK(loom_run_experiment(runner, exp) == 0);
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  CHECK(last_train_batches() == N / BATCH);

  exp = counted(3);
  runner = loom_runner_create();
  {
#include "howto_2.c" /* resuming from C */
    CHECK(rc == 0);
  }
  CHECK(strstr(loom_runner_resume_path(runner), "last.h5"));
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  CHECK(last_train_batches() == 3 * N / BATCH);
}

/* howto.md: the layer passes its gradient check and goes into a model. */
static void layer_with_gradcheck(void) {
  CHECK(check_square() == 0);
  loom_model *m = loom_model_create();
  CHECK(loom_model_add(m, "sq1", square_create()) == 0);
  CHECK(loom_model_build(m, 1, (int64_t[]){FEATURES}, 1) == 0);
  CHECK(loom_model_num_params(m) == 1);
  loom_model_destroy(m);
}

/* predict-export.md: predictions of a loader into an HDF5 file. */
static void predict_from_c(void) {
  loom_model *model = loom_mlp_create((int64_t[]){FEATURES, 5, CLASSES}, 3, 1);
  loom_loader *loader_ = loader(false), *loader = loader_;
  {
#include "predict_export_0.c"
    CHECK(rc == 0);
  }
  CHECK(exists("preds.h5"));
  loom_loader_destroy(loader);
  loom_model_destroy(model);
}

/* callbacks.md: hyperparameters of a C run reach hparams.json. */
static void hparams_from_c(void) {
  loom_experiment *exp = counted(1);
  loom_experiment_set_logdir(exp, "logs/hparams");
#include "callbacks_0.c"
  loom_runner *runner = loom_runner_create();
  CHECK(loom_run_experiment(runner, exp) == 0);
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  FILE *f = fopen("logs/hparams/hparams.json", "r");
  CHECK(f);
  char text[8192] = {0};
  CHECK(fread(text, 1, sizeof text - 1, f) > 0);
  fclose(f);
  CHECK(strstr(text, "\"lr\"") && strstr(text, "\"layout\"") && strstr(text, "\"augment\""));
}

/* README.md: the program to copy from, on the small dataset. */
static void readme_program(void) {
  const int64_t sizes[] = {FEATURES, 8, 6, CLASSES};
  uint64_t seed = 3;
  loom_adam_options adam = loom_adam_defaults();
  loom_loader *train_loader = loader(true), *valid_loader = loader(false);
  loom_runner *runner = loom_runner_create();
  {
#include "README_0.c"
    CHECK(rc == 0);
    loom_experiment_destroy(exp);
  }
  loom_runner_destroy(runner);
  CHECK(exists("logs/fashion_mnist_mlp/metrics.jsonl"));
}

int main(void) {
  callback_with_saved_state();
  layer_with_gradcheck();
  predict_from_c();
  hparams_from_c();
  readme_program();
  printf("doc_samples: every C sample of the docs compiled and ran as documented\n");
  return 0;
}
