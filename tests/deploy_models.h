/* The models test_deploy and export_onnx_fixture predict and export: an MLP
 * over 2-d samples and a small CNN with BatchNorm and pooling, with every
 * parameter and buffer set to deterministic values unlike their
 * initialisation (BatchNorm's running statistics included). */
#ifndef LOOM_TESTS_DEPLOY_MODELS_H
#define LOOM_TESTS_DEPLOY_MODELS_H

#include <stdint.h>
#include <stdlib.h>

#include <loom.h>

/* Values in [-scale, scale) from a small LCG. */
static inline void deploy_fill(float *x, size_t n, uint32_t seed, float scale) {
  uint32_t s = seed * 2654435761u + 1u;
  for (size_t i = 0; i < n; i++) {
    s = s * 1664525u + 1013904223u;
    x[i] = ((float)(s >> 8) / 16777216.0f * 2.0f - 1.0f) * scale;
  }
}

/* Parameters in [-0.5, 0.5), buffers (running mean, variance) in [0.5, 1.5). */
static inline void deploy_randomize(loom_model *m, uint32_t seed) {
  deploy_fill(loom_model_params(m), loom_model_num_params(m), seed, 0.5f);
  float *b = loom_model_buffers(m);
  deploy_fill(b, loom_model_num_buffers(m), seed + 1, 0.5f);
  for (size_t i = 0; i < loom_model_num_buffers(m); i++)
    b[i] += 1.0f;
}

static inline const int64_t *deploy_mlp_shape(void) {
  static const int64_t shape[2] = {3, 4};
  return shape;
}

/* [3, 4] -> Linear(12, 8) GELU Dropout Linear(8, 6) LeakyReLU
 *           Linear(6, 3, no bias) Sigmoid */
static inline loom_model *deploy_mlp(void) {
  loom_model *m = loom_model_create();
  loom_model_add(m, "fc1", loom_linear_create(12, 8, true));
  loom_model_add(m, "gelu1", loom_gelu_create());
  loom_model_add(m, "drop1", loom_dropout_create(0.5f));
  loom_model_add(m, "fc2", loom_linear_create(8, 6, true));
  loom_model_add(m, "leaky2", loom_leaky_relu_create(0.1f));
  loom_model_add(m, "fc3", loom_linear_create(6, 3, false));
  loom_model_add(m, "sig3", loom_sigmoid_create());
  if (loom_model_build(m, 2, deploy_mlp_shape(), 1) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  deploy_randomize(m, 11);
  return m;
}

static inline const int64_t *deploy_cnn_shape(void) {
  static const int64_t shape[2] = {8, 8};
  return shape;
}

/* [8, 8] -> Conv(1->4, 3x3, pad 1) BatchNorm ReLU MaxPool(2)
 *           Conv(4->4, 3x3, stride 2, pad 1, no bias) BatchNorm Tanh
 *           AvgPool(2, stride 1, pad 1) Conv(4->6, 1x1) GlobalAvgPool
 *           BatchNorm1d Dropout Linear(6, 5) */
static inline loom_model *deploy_cnn(void) {
  loom_model *m = loom_model_create();
  loom_model_add(m, "conv1", loom_conv2d_create(&(loom_conv2d_options){.out_channels = 4, .kernel = {3, 3}, .padding = {1, 1}}));
  loom_model_add(m, "bn1", loom_batchnorm_create(4, 1e-5f, 0.1f));
  loom_model_add(m, "relu1", loom_relu_create());
  loom_model_add(m, "pool1", loom_maxpool2d_create(2, 2, 0));
  loom_model_add(m, "conv2", loom_conv2d_create(&(loom_conv2d_options){.out_channels = 4, .kernel = {3, 3}, .stride = {2, 2},
                                                                       .padding = {1, 1}, .no_bias = true}));
  loom_model_add(m, "bn2", loom_batchnorm_create(4, 1e-3f, 0.1f));
  loom_model_add(m, "tanh2", loom_tanh_create());
  loom_model_add(m, "pool2", loom_avgpool2d_create(2, 1, 1));
  loom_model_add(m, "conv3", loom_conv2d_create(&(loom_conv2d_options){.out_channels = 6, .kernel = {1, 1}}));
  loom_model_add(m, "gap", loom_global_avgpool_create());
  loom_model_add(m, "bn3", loom_batchnorm_create(6, 1e-5f, 0.1f));
  loom_model_add(m, "drop", loom_dropout_create(0.25f));
  loom_model_add(m, "fc", loom_linear_create(6, 5, true));
  if (loom_model_build(m, 2, deploy_cnn_shape(), 2) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  deploy_randomize(m, 22);
  return m;
}

#endif
