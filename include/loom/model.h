/* loom/model.h - layers and models.
 *
 * A model is a sequence of named layers. When it is built, every layer's
 * parameters become views into one contiguous parameter buffer, and its
 * gradients into one contiguous gradient buffer (as in llm.c): zeroing the
 * gradients is one memset, an all-reduce is one call, a checkpoint one array.
 * Gradients accumulate (+=) until loom_model_zero_grad, as in PyTorch. */
#ifndef LOOM_MODEL_H
#define LOOM_MODEL_H

#include "loom/api.h"


#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/backend.h"
#include "loom/rng.h"
#include "loom/state.h"
#include "loom/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_layer loom_layer;
typedef struct loom_model loom_model;

/* What a layer implements. Shapes exclude the batch dimension. */
typedef struct loom_layer_ops {
  const char *type;
  /* Number of float parameters (0 for none). Optional. */
  size_t (*num_params)(void *data);
  /* Number of float buffers: state that is saved but not trained (a
   * BatchNorm's running statistics). Optional. */
  size_t (*num_buffers)(void *data);
  /* How many of the parameters (the first ones) are weights that weight
   * decay may apply to; the rest are biases or normalisation scales.
   * Optional: all of them. */
  size_t (*num_decayed)(void *data);
  /* Output sample shape from the input sample shape; an error if the input
   * does not fit. */
  int (*output_shape)(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out);
  /* Receives the layer's views into the model's parameter, gradient and
   * buffer arrays. Optional. */
  void (*bind)(void *data, float *params, float *grads, float *buffers);
  /* The weights' fan-in and fan-out (a Linear's in and out features, a
   * convolution's channels times its kernel), for loom_model_init_weights.
   * Optional: layers without it keep their initialisation. */
  void (*fans)(void *data, int64_t *fan_in, int64_t *fan_out);
  /* Initialises parameters and buffers from a seeded stream. Optional. */
  void (*init)(void *data, loom_rng *rng);
  /* out is already shaped [batch, output_shape...]. `rng` is the runner's
   * stream (seeded per epoch, saved in checkpoints) in training, else NULL. */
  int (*forward)(void *data, const loom_tensor *in, loom_tensor *out, bool train, loom_rng *rng);
  /* Accumulates parameter gradients unless param_grads is false (a frozen
   * layer); writes din unless it is NULL (no trainable layer below). */
  int (*backward)(void *data, const loom_tensor *in, const loom_tensor *out, const loom_tensor *dout,
                  loom_tensor *din, bool param_grads);
  void (*destroy)(void *data);
  /* Multiply-adds of one sample's forward pass, for shapes `in` -> `out`
   * (the model summary): a weight's product and add counts one, as do a
   * pooling window's sums and a normalisation's scale-and-shift; an
   * elementwise function, a max or a copy counts 0. Optional: a layer
   * without it shows "?" in the summary. */
  int64_t (*macs)(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out);
  /* No fusion hooks: which consecutive built-in layers run as one fused
   * block is the backend's business (plan_block in loom/backend.h). A
   * layer made here runs by these ops alone. */
} loom_layer_ops;

/* `ops` is copied; `data` is owned (freed by ops->destroy, also on failure). */
LOOM_API loom_layer *loom_layer_create(const loom_layer_ops *ops, void *data);
LOOM_API void loom_layer_destroy(loom_layer *layer);
LOOM_API const char *loom_layer_type(const loom_layer *layer);
LOOM_API void *loom_layer_data(const loom_layer *layer);

/* y = x W^T + b with W [out, in] (PyTorch's layout). Initialised like
 * PyTorch's nn.Linear: Kaiming uniform, bounds 1/sqrt(in) for W and b.
 * in_features 0: taken from the input when the model is built. */
LOOM_API loom_layer *loom_linear_create(int64_t in_features, int64_t out_features, bool bias);
/* Views of a Linear layer's weight [out, in] and bias [out] (NULL if none);
 * valid once the model is built, in its backend's memory (loom_model_params). */
LOOM_API float *loom_linear_weight(loom_layer *layer);
LOOM_API float *loom_linear_bias(loom_layer *layer);
/* max(x, 0), NaN-propagating as PyTorch's: relu(NaN) = NaN, and the
 * gradient passes where the output is not <= 0 (threshold_backward). */
LOOM_API loom_layer *loom_relu_create(void);
/* max(x, slope x). */
LOOM_API loom_layer *loom_leaky_relu_create(float slope);
/* x Phi(x), the exact (erf) form. */
LOOM_API loom_layer *loom_gelu_create(void);
LOOM_API loom_layer *loom_tanh_create(void);
LOOM_API loom_layer *loom_sigmoid_create(void);
/* [N, ...] -> [N, prod(...)]. */
LOOM_API loom_layer *loom_flatten_create(void);
/* Conv2d over [C, H, W] samples (PyTorch's layout and initialisation);
 * `algorithm` as loom_conv_algorithm (loom/backend.h) says. */
typedef struct loom_conv2d_options {
  int64_t in_channels;  /* 0: taken from the input when built */
  int64_t out_channels;
  int64_t kernel[2];
  int64_t stride[2];   /* 0: 1 */
  int64_t padding[2];
  int64_t dilation[2]; /* 0: 1 */
  bool no_bias;
  loom_conv_algorithm algorithm;
} loom_conv2d_options;
LOOM_API loom_layer *loom_conv2d_create(const loom_conv2d_options *options);
/* Pooling windows over [C, H, W]; stride 0 means the kernel size. Average
 * pooling counts padding in the divisor, as PyTorch does by default. A NaN
 * in a max window is its max (the last NaN gets the gradient), as in
 * PyTorch's max_pool2d. */
LOOM_API loom_layer *loom_maxpool2d_create(int64_t kernel, int64_t stride, int64_t padding);
LOOM_API loom_layer *loom_avgpool2d_create(int64_t kernel, int64_t stride, int64_t padding);
/* [C, H, W] -> [C]: the mean of each channel. */
LOOM_API loom_layer *loom_global_avgpool_create(void);
/* BatchNorm1d/2d over [C] or [C, H, W] samples: gamma and beta trained,
 * running mean and variance kept as buffers (PyTorch: eps 1e-5,
 * momentum 0.1). */
LOOM_API loom_layer *loom_batchnorm_create(int64_t channels, float eps, float momentum);
/* Inverted dropout with drop probability p in training (mask from the
 * model's stream, loom_model_set_rng); the identity in evaluation. */
LOOM_API loom_layer *loom_dropout_create(float p);
/* A residual block, torchvision's BasicBlock and Bottleneck: y =
 * act(main(x) + shortcut(x)), where main is `layers` run in order and the
 * shortcut is `shortcut` run in order (num_shortcut 0: the identity), act
 * ReLU when `relu`, else none. The two branches must give the same shape
 * (checked when the model is built, naming both). The block takes every
 * layer given, also on failure. Its parameters and buffers are its inner
 * layers', main branch first, each a slice of the block's part of the
 * model's arrays (checkpoints, optimizers and loom_model_set_backend see
 * one layer): those that are all weights first, so that weight decay's
 * prefix (num_decayed) covers them; with more than one inner layer that
 * mixes weights and a bias (a Conv2d or Linear with bias), only the first
 * one's weights are in that prefix. Inner layers run by their own ops on
 * the input's backend, never fused; loom_model_init_weights reaches them
 * (naming the block names them all). */
LOOM_API loom_layer *loom_residual_create(loom_layer *const *layers, size_t num_layers, loom_layer *const *shortcut,
                                          size_t num_shortcut, bool relu);

/* An empty sequential model. */
LOOM_API loom_model *loom_model_create(void);
LOOM_API void loom_model_destroy(loom_model *model);
/* Appends a layer; the model owns it from here on, also on failure. Names
 * must be unique ("fc1", "act1", ...). Only before loom_model_build. */
LOOM_API int loom_model_add(loom_model *model, const char *name, loom_layer *layer);
/* Checks shapes for samples of shape `sample_shape`, allocates the parameter
 * and gradient buffers and initialises the parameters from `seed`. A model
 * given to a stage unbuilt is built by the runner when the stage starts,
 * for its first loader's samples and the experiment's seed. */
LOOM_API int loom_model_build(loom_model *model, int ndim, const int64_t *sample_shape, uint64_t seed);
/* What loom_model_build would check, without allocating anything: each
 * layer's output shape for samples of `sample_shape`, the parameter count
 * (*num_params, if not NULL) and whether the parameters and their
 * gradients fit in this machine's memory (LOOM_ENOMEM naming the count
 * otherwise). The model stays unbuilt; a layer made to infer its input
 * size takes it here, as in a build. ndim 0 (sample_shape NULL): the
 * samples' shape is not known; no shape is checked and only the sizes the
 * layers know without it count (a lower bound: what a Linear or Conv2d
 * with its in_features / in_channels given holds). */
LOOM_API int loom_model_plan(loom_model *model, int ndim, const int64_t *sample_shape, size_t *num_params);
LOOM_API bool loom_model_is_built(const loom_model *model);

/* Moves the model to `backend` (loom/backend.h; NULL or loom_backend_cpu():
 * host memory, where a model starts): its parameters, gradients, buffers
 * and activations are made in the backend's memory and copied there, and
 * its layers run there, on inputs that must be there too (forward and
 * backward refuse a tensor on another backend, naming both). A model not
 * yet built is built and initialised in host memory, then moved. The
 * pointers of loom_model_params, loom_model_grads and loom_model_buffers
 * are then the backend's memory (not to be read on the host: use
 * loom_model_params_to_host and its kin). Plans are made again on the new
 * backend; a backward needs a forward there first. The backend must
 * outlive the model, or the model move off it first. On failure the model
 * stays where it was. */
LOOM_API int loom_model_set_backend(loom_model *model, loom_backend *backend);
/* Where the model's memory is and its layers run: the backend it was moved
 * to, or loom_backend_cpu() for host memory. */
LOOM_API loom_backend *loom_model_backend(const loom_model *model);

/* Initialisation schemes, as torch.nn.init's: Kaiming (He) with gain
 * sqrt(2 / (1 + negative_slope^2)) over fan_in, or fan_out for mode
 * fan_out: uniform in +-gain sqrt(3 / fan) or normal with std gain /
 * sqrt(fan); Xavier (Glorot) with `gain`: uniform in +-gain sqrt(6 /
 * (fan_in + fan_out)) or normal with std gain sqrt(2 / (fan_in + fan_out)). */
typedef enum loom_init_scheme {
  LOOM_INIT_KAIMING_UNIFORM,
  LOOM_INIT_KAIMING_NORMAL,
  LOOM_INIT_XAVIER_UNIFORM,
  LOOM_INIT_XAVIER_NORMAL,
} loom_init_scheme;

typedef struct loom_init {
  loom_init_scheme scheme;
  bool fan_out;          /* Kaiming: scale by fan_out (PyTorch's mode="fan_out") */
  double negative_slope; /* Kaiming: 0 for ReLU */
  double gain;           /* Xavier: 0 reads as 1 */
  bool zero_bias;        /* also set the layers' biases to 0 (else kept) */
} loom_init;

/* Re-initialises the weights of the built model's layers that report fans
 * (Linear, Conv2d, also inside residual blocks), or only of
 * layers[0, num_layers) (none: all), from
 * `seed`. Other parameters and buffers are left as they are. A model on a
 * device is initialised through a host copy (one transfer each way), with
 * the CPU's values. */
LOOM_API int loom_model_init_weights(loom_model *model, const loom_init *init, const char *const *layers,
                                     size_t num_layers, uint64_t seed);

/* An MLP: Linear(sizes[0] -> sizes[1]), ReLU, ..., Linear(-> sizes[n-1]),
 * named fc1, relu1, fc2, ...; built for inputs of sizes[0] features (any
 * sample shape with that many elements is flattened). */
LOOM_API loom_model *loom_mlp_create(const int64_t *sizes, int n, uint64_t seed);

/* The random stream layers such as Dropout draw from in training (the
 * supervised runner sets the runner's epoch stream). Borrowed. */
LOOM_API void loom_model_set_rng(loom_model *model, loom_rng *rng);
/* Forward pass; *out is owned by the model and valid until the next call. */
LOOM_API int loom_model_forward(loom_model *model, const loom_tensor *input, const loom_tensor **out);
/* Backward pass from the gradient of the last forward's output. */
LOOM_API int loom_model_backward(loom_model *model, const loom_tensor *dout);
LOOM_API void loom_model_zero_grad(loom_model *model);
/* Called during every backward after each layer (or fused block) is done,
 * last layer first: the gradients from index `first` to the end are final
 * for this backward (those below are not yet written). The runner starts
 * the all-reduce of a bucket of gradients there, overlapping it with the
 * rest of backward. NULL removes it. */
LOOM_API void loom_model_on_grads_ready(loom_model *model, void (*ready)(void *ctx, size_t first), void *ctx);
LOOM_API void loom_model_set_train(loom_model *model, bool train);
LOOM_API bool loom_model_is_train(const loom_model *model);

LOOM_API size_t loom_model_num_params(const loom_model *model);
LOOM_API size_t loom_model_num_buffers(const loom_model *model);
LOOM_API float *loom_model_buffers(loom_model *model);
/* Freezing: a frozen layer keeps its parameters (the optimizer skips them)
 * and computes no parameter gradients; backward stops below the lowest
 * trainable layer. An error if no layer has that name. */
LOOM_API int loom_model_set_frozen(loom_model *model, const char *layer, bool frozen);
LOOM_API void loom_model_unfreeze_all(loom_model *model);
LOOM_API bool loom_model_is_frozen(const loom_model *model, const char *layer);
/* Gradient utilities over all parameters. */
LOOM_API void loom_model_scale_grads(loom_model *model, float scale);
LOOM_API double loom_model_grad_norm(loom_model *model);
/* True when every gradient is finite (no NaN, no Inf): what a finite
 * loom_model_grad_norm means, in one vectorised pass. */
LOOM_API bool loom_model_grads_finite(loom_model *model);
/* Whether the gradients accumulated since loom_model_zero_grad are known
 * without reading them again: true when backward checked every gradient it
 * wrote as it wrote it (the built-in layers in their products while in
 * cache, other layers right after their backward), with *finite = no Inf or
 * NaN among them. False after anything else may have written them
 * (loom_model_grads, loading them, scaling by more than 1): then
 * loom_model_grads_finite is the check. The runner's non-finite policy uses
 * it. */
LOOM_API bool loom_model_grads_checked(const loom_model *model, bool *finite);
/* As torch.nn.utils.clip_grad_norm_: rescales so the global L2 norm is at
 * most max_norm; returns the norm before clipping. A non-finite norm leaves
 * the gradients as they are (PyTorch's would scale them to 0 or NaN): the
 * caller decides, as the runner's non-finite policy does. */
LOOM_API double loom_model_clip_grad_norm(loom_model *model, double max_norm);
/* Clamps every gradient to [-limit, limit]. */
LOOM_API void loom_model_clip_grad_value(loom_model *model, float limit);
/* The model's arrays are its backend's memory (loom_model_backend): host
 * memory on the CPU, to read and write in place; on a device, pointers for
 * that backend's ops and copy calls, never to be read on the host (use
 * the copies below). loom_model_buffers is the same. */
LOOM_API float *loom_model_params(loom_model *model);
/* The gradients, to read or write: the model then no longer knows whether
 * they are finite (loom_model_grads_checked). */
LOOM_API float *loom_model_grads(loom_model *model);
/* Copies of a built model's arrays to and from host arrays (`host` holds
 * loom_model_num_params floats, or loom_model_num_buffers for the
 * buffers): one transfer on a device, a memcpy on the CPU. Writing the
 * gradients makes the model forget whether they are finite. */
LOOM_API int loom_model_params_to_host(const loom_model *model, float *host);
LOOM_API int loom_model_params_from_host(loom_model *model, const float *host);
LOOM_API int loom_model_buffers_to_host(const loom_model *model, float *host);
LOOM_API int loom_model_buffers_from_host(loom_model *model, const float *host);
LOOM_API int loom_model_grads_to_host(const loom_model *model, float *host);
LOOM_API int loom_model_grads_from_host(loom_model *model, const float *host);
LOOM_API size_t loom_model_num_layers(const loom_model *model);
/* Layer i's parameters: [*offset, *offset + *count) of the model's arrays. */
LOOM_API void loom_model_layer_params(const loom_model *model, size_t i, size_t *offset, size_t *count);
/* Layer i's buffers (loom_layer_ops.num_buffers): [*offset, *offset +
 * *count) of loom_model_buffers. */
LOOM_API void loom_model_layer_buffers(const loom_model *model, size_t i, size_t *offset, size_t *count);
/* How many of layer i's parameters (the first) weight decay may apply to. */
LOOM_API size_t loom_model_layer_decayed(const loom_model *model, size_t i);
LOOM_API loom_layer *loom_model_layer(const loom_model *model, size_t i);
LOOM_API const char *loom_model_layer_name(const loom_model *model, size_t i);
LOOM_API loom_layer *loom_model_find_layer(const loom_model *model, const char *name);
/* Once built: layer i's output sample shape (without the batch dimension)
 * into shape[0, LOOM_MAX_DIMS); returns its number of dimensions (0 for a
 * model not built, or no layer i). The input's is loom_model_input_shape. */
LOOM_API int loom_model_layer_output_shape(const loom_model *model, size_t i, int64_t *shape);
LOOM_API int loom_model_input_shape(const loom_model *model, int64_t *shape);
/* Once built: layer i's multiply-adds for one sample's forward pass (its
 * `macs` op); -1 when the layer does not say, or the model is not built. */
LOOM_API int64_t loom_model_layer_macs(const loom_model *model, size_t i);
/* Lightning's ModelSummary, per sample, for a built model: a row per layer
 * (index, name, type, output shape, parameters, multiply-adds, trainable or
 * frozen), then the totals: trainable, frozen and all parameters, and the
 * multiply-adds ("+ ?" when a layer does not say). */
LOOM_API int loom_model_print_summary(const loom_model *model, FILE *out);

/* Saves the parameters and buffers (and the gradients, which hold a partial
 * accumulation window, when with_grads) with the layer names and offsets;
 * a model on a device copies each array to the host once. What is saved
 * does not depend on the backend: a model saved on one loads on another. */
LOOM_API int loom_model_save(const loom_model *model, loom_state *state, bool with_grads);
/* Restores what loom_model_save wrote (the gradients too when with_grads
 * and saved); the layers and sizes must match. */
LOOM_API int loom_model_load(loom_model *model, const loom_state *state, bool with_grads);
/* Weights-only export for inference: a checkpoint with just "model". */
LOOM_API int loom_model_save_weights(const loom_model *model, const char *path);
/* Loads the weights from a weights file or from a full checkpoint. */
LOOM_API int loom_model_load_weights(loom_model *model, const char *path);

#ifdef __cplusplus
}
#endif
#endif
