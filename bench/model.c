/* bench/model: trains the model a config describes for a few epochs and
 * prints one machine-readable line:
 *   LOOM epoch_s=<median train-loader seconds> rss_mb=<peak RSS> valid_acc=<last>
 *        products=<kernels> rank=<r> world=<n> comm_frac=<median share of a
 *        train epoch inside collectives> steps=<train batches an epoch>
 *        [dev_mem_mb=<peak device memory>]
 * dev_mem_mb, only for a model on a CUDA backend: the most device memory
 * the CUDA caching allocators held at once from cudaMalloc (in use plus
 * cached; loom_cuda_memory_stats.peak_reserved), which is what
 * torch.cuda.max_memory_reserved reports for PyTorch (bench/model_torch.py).
 * The config's first stage runs with only the accuracy callback (no logs or
 * checkpoints) and the epochs asked for; KEY=VALUE arguments are --set
 * overrides (e.g. loaders.train.batch_size=64). Under mpirun every rank
 * trains its share (loom_comm_for_dist(LOOM_DIST_AUTO)) and prints its line.
 * DATA_DIR sets the datasets "train" and "test"'s dir (Fashion-MNIST's);
 * "-" leaves the config's datasets as they are (the synthetic ones below).
 * Usage: model CONFIG [EPOCHS] [DATA_DIR|-] [KEY=VALUE...]
 *
 * It also registers the dataset type "synthetic" (bench configs only):
 * CIFAR-like images that bench/model_torch.py makes alike, bit for bit,
 * so that both sides train on the same data without a file:
 *   {"type": "synthetic", "samples": N, "offset": 0, "classes": 10,
 *    "shape": [3, 32, 32], "seed": 0}
 * Sample i (counted from offset) has label i % classes and bytes
 * b_j = noise(i, j) + 96 template(label, j), read as b_j / 255 (the IDX
 * reader's float); noise is the top 6 bits and template the top bit of
 * SplitMix64's finaliser at (key + (k + 1) golden), k = i size + j under
 * key seed, and k = label size + j under key seed + 0x5DEECE66D. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <loom.h>

#include "backends/cpu/xsmm_gemm.h" /* which kernels ran the products, for the table */

#define MAX_EPOCHS 64

/* --- the synthetic dataset --- */

static uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static uint64_t draw(uint64_t key, uint64_t k) { return mix(key + (k + 1) * 0x9E3779B97F4A7C15ull); }

static void *synthetic(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t n, offset, classes, seed, shape[8];
  size_t ndim;
  const int64_t def_shape[] = {3, 32, 32};
  if (loom_params_int(p, "samples", LOOM_REQUIRED_INT, 1, 1 << 24, &n) < 0 ||
      loom_params_int(p, "offset", 0, 0, INT32_MAX, &offset) < 0 ||
      loom_params_int(p, "classes", 10, 1, 1 << 16, &classes) < 0 ||
      loom_params_int(p, "seed", 0, 0, INT64_MAX, &seed) < 0 ||
      loom_params_int_array(p, "shape", def_shape, 3, 1, 1 << 16, shape, 8, &ndim) < 0)
    return NULL;
  int64_t size = 1;
  for (size_t d = 0; d < ndim; d++)
    size *= shape[d];
  float *x = malloc((size_t)(n * size) * sizeof *x), *y = malloc((size_t)n * sizeof *y);
  loom_dataset *ds = NULL;
  if (x && y) {
    for (int64_t s = 0; s < n; s++) {
      const uint64_t i = (uint64_t)(offset + s), label = i % (uint64_t)classes;
      y[s] = (float)label;
      for (int64_t j = 0; j < size; j++) {
        const uint64_t noise = draw((uint64_t)seed, i * (uint64_t)size + (uint64_t)j) >> 58;
        const uint64_t tmpl = draw((uint64_t)seed + 0x5DEECE66Dull, label * (uint64_t)size + (uint64_t)j) >> 63;
        x[s * size + j] = (float)(noise + 96 * tmpl) * (1.0f / 255.0f);
      }
    }
    ds = loom_memory_dataset_create(x, y, n, (int)ndim, shape, 0, NULL);
  }
  if (!ds)
    loom_params_error(p, "samples", LOOM_ENOMEM, "%s", x && y ? loom_last_error() : "out of memory");
  free(x), free(y);
  return ds;
}

typedef struct timing {
  double train_s[MAX_EPOCHS], comm_frac[MAX_EPOCHS];
  double comm_start_s;
  int n;
  long long steps;
  double valid_acc;
} timing;

static int on_loader_start(loom_callback *cb, loom_runner *r) {
  ((timing *)loom_callback_data(cb))->comm_start_s = loom_comm_wait_seconds(loom_runner_comm(r));
  return 0;
}

static int on_loader_end(loom_callback *cb, loom_runner *r) {
  timing *t = loom_callback_data(cb);
  if (loom_runner_is_train_loader(r) && t->n < MAX_EPOCHS) {
    double s = loom_runner_loader_elapsed(r);
    t->train_s[t->n] = s;
    t->steps = (long long)loom_runner_loader_batch_step(r);
    t->comm_frac[t->n++] = s > 0 ? (loom_comm_wait_seconds(loom_runner_comm(r)) - t->comm_start_s) / s : 0;
  } else
    loom_metrics_get(loom_runner_loader_metrics(r), "accuracy", &t->valid_acc);
  return 0;
}

/* BENCH_LOSSES set: each train batch's loss, on stderr (bench/run resnet18). */
static int on_batch_end(loom_callback *cb, loom_runner *r) {
  (void)cb;
  if (loom_runner_is_train_loader(r) && getenv("BENCH_LOSSES"))
    fprintf(stderr, "LOOM_LOSS %.4f\n", loom_runner_batch_loss(r));
  return 0;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof v[0], by_value);
  return v[n / 2];
}

/* The dev_mem_mb and graphs (steps, training and evaluation, launched as
 * step graphs, of those logged) fields for the experiment's backend: "" on
 * the CPU. Read before the experiment goes, with its backend and the
 * allocator's counts. Each device's peak is summed: a process trains on
 * one. */
static void device_fields(const loom_experiment *exp, char *out, size_t size) {
  const loom_backend *b = loom_experiment_backend(exp);
  out[0] = '\0';
  if (!b || loom_backend_device(b) != LOOM_DEVICE_CUDA)
    return;
  int count = 0;
  size_t peak = 0;
  loom_cuda_device_count(&count);
  for (int d = 0; d < count; d++) {
    loom_cuda_memory_stats st;
    if (loom_cuda_memory_stats_get(d, &st) == 0)
      peak += st.peak_reserved;
  }
  const loom_graph_counts g = loom_backend_graph_counts(b);
  snprintf(out, size, " dev_mem_mb=%.1f graphs=%lld/%lld", (double)peak / (1024.0 * 1024.0), (long long)g.launches,
           (long long)g.logs);
}

static int setup(loom_config *c, int epochs, const char *dir, char **sets, int num_sets, timing *t,
                 loom_experiment **exp) {
  static const loom_callback_ops ops = {
      .type = "bench_timer", .on_loader_start = on_loader_start, .on_loader_end = on_loader_end,
      .on_batch_end = on_batch_end};
  char set[1024];
  const char *const fixed[] = {"experiment.logdir=/tmp/loom-bench", "stages.train.callbacks=[{\"type\": \"accuracy\"}]"};
  for (size_t i = 0; i < 2; i++)
    if (loom_config_set(c, fixed[i]) < 0)
      return -1;
  snprintf(set, sizeof set, "stages.train.num_epochs=%d", epochs);
  if (loom_config_set(c, set) < 0)
    return -1;
  const char *const datasets[] = {"train", "test"};
  for (size_t i = 0; strcmp(dir, "-") != 0 && i < 2; i++) {
    snprintf(set, sizeof set, "datasets.%s.dir=%s", datasets[i], dir);
    if (loom_config_set(c, set) < 0)
      return -1;
  }
  for (int i = 0; i < num_sets; i++)
    if (loom_config_set(c, sets[i]) < 0)
      return -1;
  if (loom_config_build(c, exp) < 0)
    return -1;
  return loom_stage_add_callback(loom_experiment_stage(*exp, 0),
                                 loom_callback_create(&ops, t, LOOM_ORDER_LOGGING));
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: model CONFIG [EPOCHS] [DATA_DIR] [KEY=VALUE...]\n");
    return 2;
  }
  int epochs = argc > 2 ? atoi(argv[2]) : 3;
  const char *dir = argc > 3 ? argv[3] : "/usr/share/datasets/fashion-mnist";
  if (epochs < 1 || epochs > MAX_EPOCHS)
    epochs = 3;
  static timing t;
  loom_experiment *exp = NULL;
  if (loom_register(LOOM_KIND_DATASET, "synthetic", synthetic, NULL) < 0) {
    fprintf(stderr, "bench model: %s\n", loom_last_error());
    return 1;
  }
  loom_config *c = loom_config_load(argv[1]);
  int rc = c ? setup(c, epochs, dir, argv + 4, argc > 4 ? argc - 4 : 0, &t, &exp) : -1;
  int rank = 0, world = 1;
  char dev_mem[128] = "";
  if (rc == 0) {
    loom_comm *comm = loom_comm_for_dist(LOOM_DIST_AUTO);
    loom_runner *r = comm ? loom_runner_create() : NULL;
    if (!r) {
      loom_comm_destroy(comm);
      rc = -1;
    } else {
      rank = loom_comm_rank(comm), world = loom_comm_size(comm);
      loom_runner_set_comm(r, comm); /* the runner owns it */
      rc = loom_run_experiment(r, exp);
      loom_runner_destroy(r);
      device_fields(exp, dev_mem, sizeof dev_mem);
    }
  }
  if (rc < 0)
    fprintf(stderr, "bench model: %s\n", loom_last_error());
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  if (rc < 0)
    return 1;
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double epoch_s = median(t.train_s, t.n), comm_frac = median(t.comm_frac, t.n);
  printf("LOOM epoch_s=%.4f rss_mb=%.1f valid_acc=%.4f products=%s rank=%d world=%d comm_frac=%.4f steps=%lld%s\n",
         epoch_s, (double)ru.ru_maxrss / 1024.0, t.valid_acc, loom_xsmm_active() ? "libxsmm-avx512" : "openblas", rank,
         world, comm_frac, t.steps, dev_mem);
  return 0;
}
