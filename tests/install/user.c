/* A user's program, built against an installed loom with pkg-config
 * (tests/install/check.cmake): writes a tiny CSV, trains on it from a JSON
 * config for two epochs, saves the weights; then asks for a CUDA backend
 * and prints what it got (the CUDA module's answer where loom has one).
 * Usage: user DIR */
#include <stdio.h>
#include <string.h>

#include <loom.h>

int main(int argc, char **argv) {
  if (argc != 2)
    return 2;
  char csv[1024], config[4096], weights[1024];
  snprintf(csv, sizeof csv, "%s/data.csv", argv[1]);
  snprintf(weights, sizeof weights, "%s/weights.h5", argv[1]);
  FILE *f = fopen(csv, "w");
  if (!f)
    return 1;
  fputs("0.1,0.2,0\n0.9,0.8,1\n0.2,0.1,0\n0.8,0.9,1\n", f);
  fclose(f);
  snprintf(config, sizeof config,
           "{\"experiment\": {\"name\": \"user\", \"seed\": 1, \"logdir\": \"%s/logs\"},"
           " \"datasets\": {\"d\": {\"type\": \"csv\", \"file\": \"%s\"}},"
           " \"loaders\": {\"train\": {\"dataset\": \"d\", \"batch_size\": 2}},"
           " \"model\": {\"type\": \"mlp\", \"sizes\": [2, 4, 2]},"
           " \"stages\": {\"train\": {\"num_epochs\": 2, \"loaders\": [\"train\"],"
           " \"criterion\": {\"type\": \"cross_entropy\"}, \"optimizer\": {\"type\": \"sgd\", \"lr\": 0.1}}}}",
           argv[1], csv);
  loom_config *c = loom_config_parse(config, "user.json");
  loom_experiment *exp = NULL;
  loom_runner *r = loom_runner_create();
  int rc = c && r ? loom_config_build(c, &exp) : -1;
  if (rc == 0)
    rc = loom_run_experiment(r, exp);
  if (rc == 0)
    rc = loom_model_save_weights(loom_runner_model(r), weights);
  if (rc == 0)
    printf("user: loom %s trained %d epochs\n", LOOM_VERSION, loom_runner_global_epoch(r));
  else
    fprintf(stderr, "user: %s\n", loom_last_error());
  loom_backend *gpu = NULL;
  if (rc == 0 && loom_backend_cuda_create(0, NULL, &gpu) == 0)
    printf("user: cuda: a backend on device 0\n");
  else if (rc == 0)
    printf("user: cuda: %s\n", loom_last_error());
  loom_backend_destroy(gpu);
  loom_runner_destroy(r);
  loom_experiment_destroy(exp);
  loom_config_destroy(c);
  return rc == 0 ? 0 : 1;
}
