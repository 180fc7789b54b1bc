/* Trains an MLP 784-256-128-10 on Fashion-MNIST with loom.
 *
 *   build/bin/fashion_mnist_mlp [--epochs N] [--logdir DIR] [--data DIR] [--seed S] [--resume WHAT] [--workers N]
 *                               [--dist auto|local|mpi] [--device DEV]
 *
 * One stage, loaders "train" (60k images) and "valid" (the 10k test set),
 * Adam 1e-3, batch 128; metrics go to the console and to DIR/metrics.jsonl,
 * checkpoints to DIR/checkpoints. Ctrl-C saves DIR/checkpoints/last.h5 and
 * exits with 130; --resume last continues from it. Under `mpirun -np N` each
 * rank trains on its share of every epoch (global batch N x 128) and rank 0
 * alone prints and writes (docs/distributed.md). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include <loom.h>

/* A callback of our own: decay the learning rate by `gamma` every epoch
 * (lr = 1e-3 * gamma^(epoch-1)); a smaller late step settles the weights
 * instead of letting Adam's noise decide the final accuracy. */
typedef struct lr_decay {
  double base, gamma;
} lr_decay;

static int decay_on_epoch_start(loom_callback *cb, loom_runner *runner) {
  const lr_decay *d = loom_callback_data(cb);
  double lr = d->base;
  for (int e = 1; e < loom_runner_epoch(runner); e++)
    lr *= d->gamma;
  loom_optimizer_set_lr(loom_runner_optimizer(runner), lr);
  /* The epoch metrics were started before this callback: log the new rate. */
  return loom_metrics_set(loom_runner_epoch_metrics(runner), "lr", lr);
}

static const loom_callback_ops decay_ops = {.type = "lr_decay", .on_epoch_start = decay_on_epoch_start};

static int workers; /* threads preparing batches: --workers */

static loom_loader *open_loader(const char *dir, bool train) {
  /* Standardised with the training set's pixel mean and std. */
  loom_dataset *ds = loom_normalize_dataset_create(loom_fashion_mnist_open(dir, train), 0.2860f, 0.3530f);
  if (!ds)
    return NULL;
  loom_loader_options o = {.batch_size = 128, .shuffle = train, .workers = workers};
  return loom_loader_create(ds, &o);
}

static int usage(const char *prog, int code) {
  fprintf(code ? stderr : stdout,
          "usage: %s [--epochs N] [--logdir DIR] [--data DIR] [--seed S] [--resume WHAT] [--workers N]\n"
          "          [--dist auto|local|mpi] [--device DEV] [--overwrite]\n"
          "  --epochs N    epochs to train (default 10)\n"
          "  --logdir DIR  where metrics.jsonl and metrics.csv go (default logs/fashion_mnist_mlp)\n"
          "  --data DIR    Fashion-MNIST IDX files (default /usr/share/datasets/fashion-mnist)\n"
          "  --seed S      seed of initialisation and shuffling (default 42)\n"
          "  --resume WHAT continue a run: a checkpoint file, or last or best in DIR/checkpoints\n"
          "  --overwrite   replace the earlier run in DIR (without it, or --resume, a DIR\n"
          "                that holds a run is refused)\n"
          "  --workers N   threads preparing batches (default 0: the training thread)\n"
          "  --dist WHAT   mpi: one rank per process mpirun starts; local: this process\n"
          "                alone; auto (default): mpi under an MPI launcher\n"
          "  --device DEV  where the model trains: cpu (default), cuda, cuda:N\n",
          prog);
  return code;
}

int main(int argc, char **argv) {
  int epochs = 10;
  unsigned long long seed = 42;
  const char *logdir = "logs/fashion_mnist_mlp", *data = "/usr/share/datasets/fashion-mnist", *resume = NULL;
  const char *device = "cpu";
  loom_dist dist = LOOM_DIST_AUTO;
  loom_run_options run = loom_run_options_defaults();
  static const struct option options[] = {{"epochs", required_argument, NULL, 'e'},
                                          {"logdir", required_argument, NULL, 'l'},
                                          {"data", required_argument, NULL, 'd'},
                                          {"seed", required_argument, NULL, 's'},
                                          {"resume", required_argument, NULL, 'r'},
                                          {"workers", required_argument, NULL, 'w'},
                                          {"dist", required_argument, NULL, 'D'},
                                          {"overwrite", no_argument, NULL, 'o'},
                                          {"device", required_argument, NULL, 'v'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  for (int c; (c = getopt_long(argc, argv, "e:l:d:s:r:w:D:h", options, NULL)) != -1;) {
    char *end = NULL;
    switch (c) {
    case 'e': epochs = (int)strtol(optarg, &end, 10); break;
    case 'l': logdir = optarg; break;
    case 'd': data = optarg; break;
    case 's': seed = strtoull(optarg, &end, 10); break;
    case 'r': resume = optarg; break;
    case 'o': run.overwrite = true; break;
    case 'v': device = optarg; break;
    case 'w': workers = (int)strtol(optarg, &end, 10); break;
    case 'D':
      if (loom_dist_parse(optarg, &dist) < 0) {
        fprintf(stderr, "%s: --dist: %s\n", argv[0], loom_last_error());
        return 2;
      }
      break;
    case 'h': return usage(argv[0], 0);
    default: return usage(argv[0], 2);
    }
    if (end && (*end || end == optarg || epochs < 1 || workers < 0)) {
      fprintf(stderr, "%s: bad value \"%s\" for --%s\n", argv[0], optarg,
              c == 'e' ? "epochs" : c == 'w' ? "workers" : "seed");
      return 2;
    }
  }

  loom_experiment *exp = loom_experiment_create("fashion_mnist_mlp");
  loom_runner *runner = loom_runner_create();
  /* Under mpirun, the ranks mpirun started (auto); else this process alone. */
  loom_comm *comm = runner ? loom_comm_for_dist(dist) : NULL;
  if (!exp || !comm) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    loom_runner_destroy(runner);
    loom_experiment_destroy(exp);
    return 1;
  }
  loom_runner_set_comm(runner, comm);
  loom_runner_set_options(runner, &run);
  bool master = loom_runner_is_master(runner);
  loom_experiment_set_seed(exp, seed);
  int rc = loom_experiment_set_logdir(exp, logdir);
  if (rc < 0) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    rc = 1;
    goto out;
  }
  /* "cuda" trains on the GPU (each rank's own under mpirun); the
   * experiment owns the backend and frees it after the model. */
  loom_backend *backend = NULL;
  if ((rc = loom_device_open(device, &backend)) == 0 && backend)
    rc = loom_experiment_own_backend(exp, backend);
  if (rc < 0) {
    fprintf(stderr, "%s: --device %s: %s\n", argv[0], device, loom_last_error());
    rc = 2;
    goto out;
  }

  const int64_t sizes[] = {784, 256, 128, 10};
  loom_adam_options adam = loom_adam_defaults(); /* lr 1e-3 */
  loom_stage *stage = rc < 0 ? NULL : loom_experiment_add_stage(exp, "train", epochs);
  if (!stage || loom_stage_set_model(stage, loom_mlp_create(sizes, 4, seed)) < 0 ||
      loom_stage_set_criterion(stage, loom_cross_entropy_create()) < 0 ||
      loom_stage_set_optimizer(stage, loom_adam_create(&adam)) < 0 ||
      loom_stage_add_loader(stage, "train", open_loader(data, true)) < 0 ||
      loom_stage_add_loader(stage, "valid", open_loader(data, false)) < 0 ||
      loom_stage_set_main_metric(stage, "valid", "accuracy", false) < 0) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    rc = 1;
    goto out;
  }

  const int topk[] = {1, 3};
  lr_decay decay = {.base = adam.lr, .gamma = 0.8};
  if (loom_experiment_add_callback(exp, loom_accuracy_callback_create(topk, 2)) < 0 ||
      loom_experiment_add_callback(exp, loom_callback_create(&decay_ops, &decay, LOOM_ORDER_SCHEDULER)) < 0 ||
      loom_experiment_add_callback(exp, loom_console_logger_create(NULL)) < 0 ||
      loom_experiment_add_callback(exp, loom_metrics_logger_create()) < 0 ||
      loom_experiment_add_callback(exp, loom_checkpoint_callback_create(NULL)) < 0 ||
      (resume && loom_runner_set_resume(runner, resume) < 0)) {
    fprintf(stderr, "error: %s\n", loom_last_error());
    rc = 1;
    goto out;
  }

  /* The run's failure is printed here, once (the console logger leaves it
   * to us); an interrupt's message says where its checkpoint went. */
  rc = loom_run_experiment(runner, exp);
  if (rc == LOOM_EINTERRUPTED && master)
    fprintf(stderr, "%s\ncontinue with: %s --logdir %s --resume last\n", loom_last_error(), argv[0], logdir);
  else if (rc < 0 && rc != LOOM_EINTERRUPTED) {
    if (!master)
      fprintf(stderr, "[rank %d] ", loom_runner_rank(runner));
    fprintf(stderr, "error: %s\n", loom_last_error());
  } else if (master)
    printf("metrics written to %s/metrics.jsonl\n", logdir);
out:
  loom_runner_destroy(runner);
  loom_experiment_destroy(exp);
  return rc == LOOM_EINTERRUPTED ? 130 : rc < 0 ? 1 : rc; /* rc > 0: an exit code set above */
}
