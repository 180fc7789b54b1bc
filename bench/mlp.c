/* bench/mlp: trains the MLP 784-256-128-10 (Adam 1e-3, batch 128) on
 * Fashion-MNIST with loom and prints one machine-readable line:
 *   LOOM epoch_s=<median train-loader seconds> rss_mb=<peak RSS> valid_acc=<last>
 * Usage: mlp [EPOCHS] [DATA_DIR] */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <loom.h>

#define MAX_EPOCHS 64

typedef struct timing {
  double train_s[MAX_EPOCHS];
  int n;
  double valid_acc;
} timing;

static int on_loader_end(loom_callback *cb, loom_runner *r) {
  timing *t = loom_callback_data(cb);
  if (loom_runner_is_train_loader(r) && t->n < MAX_EPOCHS)
    t->train_s[t->n++] = loom_runner_loader_elapsed(r);
  else
    loom_metrics_get(loom_runner_loader_metrics(r), "accuracy", &t->valid_acc);
  return 0;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static loom_loader *loader(const char *dir, bool train) {
  loom_loader_options o = {.batch_size = 128, .shuffle = train};
  return loom_loader_create(loom_fashion_mnist_open(dir, train), &o);
}

int main(int argc, char **argv) {
  int epochs = argc > 1 ? atoi(argv[1]) : 3;
  const char *dir = argc > 2 ? argv[2] : "/usr/share/datasets/fashion-mnist";
  if (epochs < 1 || epochs > MAX_EPOCHS)
    epochs = 3;
  static timing t;
  static const loom_callback_ops ops = {.type = "bench_timer", .on_loader_end = on_loader_end};
  const int64_t sizes[] = {784, 256, 128, 10};
  loom_adam_options adam = loom_adam_defaults();
  loom_experiment *exp = loom_experiment_create("bench_mlp");
  loom_stage *st = loom_experiment_add_stage(exp, "train", epochs);
  if (loom_stage_set_model(st, loom_mlp_create(sizes, 4, 0)) < 0 ||
      loom_stage_set_criterion(st, loom_cross_entropy_create()) < 0 ||
      loom_stage_set_optimizer(st, loom_adam_create(&adam)) < 0 ||
      loom_stage_add_loader(st, "train", loader(dir, true)) < 0 ||
      loom_stage_add_loader(st, "valid", loader(dir, false)) < 0 ||
      loom_stage_add_callback(st, loom_accuracy_callback_create(NULL, 0)) < 0 ||
      loom_stage_add_callback(st, loom_callback_create(&ops, &t, LOOM_ORDER_LOGGING)) < 0) {
    fprintf(stderr, "bench mlp: %s\n", loom_last_error());
    loom_experiment_destroy(exp);
    return 1;
  }
  loom_runner *r = loom_runner_create();
  int rc = loom_run_experiment(r, exp);
  if (rc < 0)
    fprintf(stderr, "bench mlp: %s\n", loom_last_error());
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  if (rc < 0)
    return 1;
  qsort(t.train_s, (size_t)t.n, sizeof t.train_s[0], by_value);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("LOOM epoch_s=%.4f rss_mb=%.1f valid_acc=%.4f\n", t.train_s[t.n / 2], (double)ru.ru_maxrss / 1024.0,
         t.valid_acc);
  return 0;
}
