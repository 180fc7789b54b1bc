/* bench/loader: loader throughput with a synthetic transform of ~0.2 ms per
 * sample, at 1 and 2 workers, and the data-wait fraction of an MLP epoch.
 *   LOOM_LOADER one_worker_sps=<n> two_worker_sps=<n> data_wait_frac=<f> ... affine_two_sps=<n>
 * The fixed-cost transform spins 0.2 ms; the "affine" one does arithmetic
 * calibrated to ~0.2 ms here, which the PyTorch twin repeats with tensor ops.
 * Usage: loader [SAMPLES] [DATA_DIR] */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <uv.h>

#include <loom.h>

#define SPIN_NS 200000

/* Busy work standing in for a costly per-sample transform. */
static int spin(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  (void)data, (void)x, (void)ndim, (void)shape, (void)rng;
  uint64_t until = uv_hrtime() + SPIN_NS;
  while (uv_hrtime() < until) /* the clock is read each turn: no loop to elide */
    ;
  return 0;
}

static const loom_transform_ops spin_ops = {"spin", spin, NULL};

/* The same arithmetic in both languages: `rounds` elementwise affine
 * updates of the sample, x = 0.9999 x + 0.0001. */
static int affine(void *data, float *x, int ndim, const int64_t *shape, loom_rng *rng) {
  (void)rng;
  int64_t rounds = *(const int64_t *)data, n = 1;
  for (int i = 0; i < ndim; i++)
    n *= shape[i];
  for (int64_t r = 0; r < rounds; r++)
    for (int64_t i = 0; i < n; i++)
      x[i] = x[i] * 0.9999f + 0.0001f;
  return 0;
}

static const loom_transform_ops affine_ops = {"affine", affine, NULL};

/* Rounds of `affine` that cost about 0.2 ms per 28x28 sample here. */
static int64_t calibrate(void) {
  static float x[784];
  const int64_t shape[2] = {28, 28};
  int64_t rounds = 1000;
  uint64_t t0 = uv_hrtime();
  for (int i = 0; i < 20; i++)
    affine(&rounds, x, 2, shape, NULL);
  double per_round = (double)(uv_hrtime() - t0) / (20.0 * (double)rounds);
  return (int64_t)((double)SPIN_NS / per_round);
}

static double samples_per_s(const char *dir, int workers, int64_t samples, const int64_t *rounds) {
  loom_transform *t[1] = {rounds ? loom_transform_create(&affine_ops, (void *)rounds)
                                 : loom_transform_create(&spin_ops, NULL)};
  loom_loader_options o = {.batch_size = 128, .shuffle = true, .workers = workers, .transforms = t, .num_transforms = 1};
  loom_loader *l = loom_loader_create(loom_fashion_mnist_open(dir, true), &o);
  if (!l) {
    fprintf(stderr, "bench loader: %s\n", loom_last_error());
    exit(1);
  }
  loom_epoch_plan plan = {1, 0, 1, true};
  loom_loader_start_epoch(l, &plan);
  loom_tensor *x, *y;
  int64_t seen = 0;
  uint64_t t0 = uv_hrtime();
  while (seen < samples && loom_loader_next(l, &x, &y) == 1)
    seen += loom_tensor_dim(x, 0);
  double s = (double)(uv_hrtime() - t0) * 1e-9;
  loom_loader_destroy(l);
  return (double)seen / s;
}

/* One MLP epoch (Adam, batch 128) with `workers` preparing batches. */
static int data_fraction(loom_callback *cb, loom_runner *r) {
  double *out = loom_callback_data(cb);
  if (loom_runner_is_train_loader(r))
    loom_metrics_get(loom_runner_loader_metrics(r), "time/data_fraction", out);
  return 0;
}

static double mlp_data_wait(const char *dir, int workers) {
  static double fraction;
  static const loom_callback_ops ops = {.type = "grab", .on_loader_end = data_fraction};
  const float mean = 0.2860f, std = 0.3530f;
  loom_transform *t[1] = {loom_normalize_transform_create(&mean, &std, 1)};
  loom_loader_options o = {.batch_size = 128, .shuffle = true, .workers = workers, .transforms = t, .num_transforms = 1};
  const int64_t sizes[] = {784, 256, 128, 10};
  loom_adam_options adam = loom_adam_defaults();
  loom_experiment *exp = loom_experiment_create("bench_loader");
  loom_stage *st = loom_experiment_add_stage(exp, "train", 1);
  loom_stage_set_model(st, loom_mlp_create(sizes, 4, 0));
  loom_stage_set_criterion(st, loom_cross_entropy_create());
  loom_stage_set_optimizer(st, loom_adam_create(&adam));
  loom_stage_add_loader(st, "train", loom_loader_create(loom_fashion_mnist_open(dir, true), &o));
  loom_stage_add_callback(st, loom_timer_callback_create());
  loom_stage_add_callback(st, loom_callback_create(&ops, &fraction, LOOM_ORDER_LOGGING));
  loom_runner *r = loom_runner_create();
  if (loom_run_experiment(r, exp) < 0) {
    fprintf(stderr, "bench loader: %s\n", loom_last_error());
    exit(1);
  }
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  return fraction;
}

int main(int argc, char **argv) {
  int64_t samples = argc > 1 ? atoll(argv[1]) : 10000;
  const char *dir = argc > 2 ? argv[2] : "/usr/share/datasets/fashion-mnist";
  double one = samples_per_s(dir, 1, samples, NULL), two = samples_per_s(dir, 2, samples, NULL);
  static int64_t rounds;
  rounds = calibrate();
  double one_a = samples_per_s(dir, 1, samples, &rounds), two_a = samples_per_s(dir, 2, samples, &rounds);
  double wait0 = mlp_data_wait(dir, 0), wait1 = mlp_data_wait(dir, 1);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("LOOM_LOADER one_worker_sps=%.0f two_worker_sps=%.0f data_wait_frac=%.4f data_wait_frac_no_workers=%.4f "
         "affine_rounds=%lld affine_one_sps=%.0f affine_two_sps=%.0f rss_mb=%.1f\n",
         one, two, wait1, wait0, (long long)rounds, one_a, two_a, (double)ru.ru_maxrss / 1024.0);
  return 0;
}
