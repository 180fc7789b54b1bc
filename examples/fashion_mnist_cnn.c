/* The C twin of examples/configs/fashion_mnist_cnn.json: a two-block CNN
 * (about 220K parameters) on Fashion-MNIST.
 *
 *   build/bin/fashion_mnist_cnn [--check] [--overwrite] [--dist auto|local|mpi] [--device DEV]
 *                               [EPOCHS [LOGDIR [DATA_DIR]]]
 *
 * (--check: a smoke run, 2 batches per loader and 2 epochs; --device: cpu,
 * the default, cuda or cuda:N.) Under
 * `mpirun -np N` (or --dist mpi) each rank trains on its share of every
 * epoch (global batch N x 128) and rank 0 alone prints and writes
 * (docs/distributed.md); --dist local trains this process alone.
 * conv3x3(32) BN ReLU maxpool, conv3x3(64) BN ReLU maxpool, dropout 0.25,
 * linear 64, ReLU, linear 10; Adam 1e-3 on a per-step cosine schedule with
 * 200 warmup steps; batch 128. Checkpoints go to LOGDIR/checkpoints. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <loom.h>

#define BATCH 128
#define TRAIN_SAMPLES 60000

/* Not built here: the runner builds it when the stage starts, for the first
 * loader's samples (1x28x28) and from the experiment's seed, as it builds a
 * config's model. */
static loom_model *cnn(void) {
  loom_model *m = loom_model_create();
  loom_conv2d_options c1 = {.out_channels = 32, .kernel = {3, 3}, .padding = {1, 1}, .no_bias = true};
  loom_conv2d_options c2 = {.out_channels = 64, .kernel = {3, 3}, .padding = {1, 1}, .no_bias = true};
  if (!m || loom_model_add(m, "conv1", loom_conv2d_create(&c1)) < 0 ||
      loom_model_add(m, "bn1", loom_batchnorm_create(32, 1e-5f, 0.1f)) < 0 ||
      loom_model_add(m, "relu1", loom_relu_create()) < 0 ||
      loom_model_add(m, "pool1", loom_maxpool2d_create(2, 0, 0)) < 0 ||
      loom_model_add(m, "conv2", loom_conv2d_create(&c2)) < 0 ||
      loom_model_add(m, "bn2", loom_batchnorm_create(64, 1e-5f, 0.1f)) < 0 ||
      loom_model_add(m, "relu2", loom_relu_create()) < 0 ||
      loom_model_add(m, "pool2", loom_maxpool2d_create(2, 0, 0)) < 0 ||
      loom_model_add(m, "flatten", loom_flatten_create()) < 0 ||
      loom_model_add(m, "dropout", loom_dropout_create(0.25f)) < 0 ||
      loom_model_add(m, "fc1", loom_linear_create(64 * 7 * 7, 64, true)) < 0 ||
      loom_model_add(m, "relu3", loom_relu_create()) < 0 || loom_model_add(m, "head", loom_linear_create(64, 10, true)) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  return m;
}

static loom_loader *open_loader(const char *dir, bool train) {
  loom_dataset *ds = loom_normalize_dataset_create(loom_fashion_mnist_open(dir, train), 0.286f, 0.353f);
  loom_loader_options o = {.batch_size = BATCH, .shuffle = train};
  return ds ? loom_loader_create(ds, &o) : NULL;
}

int main(int argc, char **argv) {
  loom_run_options run = loom_run_options_defaults();
  loom_dist dist = LOOM_DIST_AUTO;
  const char *device = "cpu";
  for (; argc > 1 && strncmp(argv[1], "--", 2) == 0; argv++, argc--)
    if (strcmp(argv[1], "--check") == 0)
      run.check = true;
    else if (strcmp(argv[1], "--overwrite") == 0)
      run.overwrite = true; /* replace the run in LOGDIR (else refused) */
    else if (strcmp(argv[1], "--dist") == 0 && argc > 2 && loom_dist_parse(argv[2], &dist) == 0)
      argv++, argc--;
    else if (strcmp(argv[1], "--device") == 0 && argc > 2)
      device = argv[2], argv++, argc--;
    else
      argc = 99; /* usage */
  int epochs = argc > 1 ? atoi(argv[1]) : 15;
  const char *logdir = argc > 2 ? argv[2] : "logs/fashion_mnist_cnn";
  const char *data = argc > 3 ? argv[3] : "/usr/share/datasets/fashion-mnist";
  if (epochs < 1 || argc > 4) {
    fprintf(stderr, "usage: fashion_mnist_cnn [--check] [--overwrite] [--dist auto|local|mpi] [--device DEV] "
                    "[EPOCHS [LOGDIR [DATA_DIR]]]\n");
    return 2;
  }
  loom_experiment *exp = loom_experiment_create("fashion_mnist_cnn");
  loom_runner *runner = loom_runner_create();
  /* Under mpirun, the ranks mpirun started (auto); else this process alone. */
  loom_comm *comm = runner ? loom_comm_for_dist(dist) : NULL;
  if (comm)
    loom_runner_set_comm(runner, comm);
  loom_stage *stage = exp && comm ? loom_experiment_add_stage(exp, "train", epochs) : NULL;
  loom_adam_options adam = loom_adam_defaults();
  /* Each rank steps once per batch of its shard of the epoch. */
  int64_t shard = comm ? (TRAIN_SAMPLES + loom_comm_size(comm) - 1) / loom_comm_size(comm) : TRAIN_SAMPLES;
  int64_t steps = (int64_t)epochs * ((shard + BATCH - 1) / BATCH);
  const int topk[] = {1, 3};
  int rc = -1;
  if (runner)
    loom_runner_set_options(runner, &run);
  loom_backend *backend = NULL; /* "cpu": none; else the experiment's to free */
  if (runner && stage && loom_experiment_set_logdir(exp, logdir) == 0 && loom_device_open(device, &backend) == 0 &&
      (!backend || loom_experiment_own_backend(exp, backend) == 0)) {
    loom_experiment_set_seed(exp, 42);
    if (loom_stage_set_model(stage, cnn()) == 0 && loom_stage_set_criterion(stage, loom_cross_entropy_create()) == 0 &&
        loom_stage_set_optimizer(stage, loom_adam_create(&adam)) == 0 &&
        loom_stage_add_loader(stage, "train", open_loader(data, true)) == 0 &&
        loom_stage_add_loader(stage, "valid", open_loader(data, false)) == 0 &&
        loom_stage_set_main_metric(stage, "valid", "accuracy", false) == 0 &&
        loom_stage_add_callback(stage, loom_scheduler_callback_create(loom_cosine_lr_create(200, steps, 0, 0),
                                                                      LOOM_SCHEDULE_PER_STEP, NULL, NULL)) == 0 &&
        loom_stage_add_callback(stage, loom_accuracy_callback_create(topk, 2)) == 0 &&
        loom_stage_add_callback(stage, loom_console_logger_create(NULL)) == 0 &&
        loom_stage_add_callback(stage, loom_metrics_logger_create()) == 0 &&
        loom_stage_add_callback(stage, loom_checkpoint_callback_create(NULL)) == 0)
      rc = loom_run_experiment(runner, exp);
  }
  /* Other ranks print only their errors, saying whose. */
  bool master = runner && loom_runner_is_master(runner);
  if (rc < 0 && (master || rc != LOOM_EINTERRUPTED)) {
    if (!master && runner)
      fprintf(stderr, "[rank %d] ", loom_runner_rank(runner));
    fprintf(stderr, "error: %s\n", loom_last_error());
  }
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  return rc == LOOM_EINTERRUPTED ? 130 : rc < 0 ? 1 : 0;
}
