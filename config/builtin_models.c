/* Config constructors of the models, layers, criteria, optimizers and
 * schedules (docs/config.md lists their keys). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/criterion.h"
#include "loom/model.h"
#include "loom/optimizer.h"
#include "loom/scheduler.h"
#include "models/layer_internal.h"

#define BIG 1e300

static int64_t sample_numel(const loom_model_context *ctx) {
  int64_t n = 1;
  for (int i = 0; i < ctx->ndim; i++)
    n *= ctx->sample_shape[i];
  return n;
}

static void *mlp(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_model_context *ctx = context;
  int64_t sizes[64];
  size_t n;
  if (loom_params_int_array(p, "sizes", NULL, 0, 1, INT32_MAX, sizes, 64, &n) < 0)
    return NULL;
  if (n < 2) {
    loom_params_error(p, "sizes", LOOM_EINVAL, "needs at least 2 sizes (inputs and outputs), got %zu", n);
    return NULL;
  }
  if (ctx->ndim && sizes[0] != sample_numel(ctx)) { /* ndim 0: loom_config_validate, the data unread */
    loom_params_error(p, "sizes[0]", LOOM_ESHAPE, "%lld inputs, but the data has %lld features per sample",
                      (long long)sizes[0], (long long)sample_numel(ctx));
    return NULL;
  }
  if (!loom_params_validate_only(p))
    return loom_mlp_create(sizes, (int)n, ctx->seed);
  loom_model *m = loom_mlp_layers(sizes, (int)n);
  if (m && loom_model_plan(m, 1, &sizes[0], NULL) < 0) {
    loom_model_destroy(m);
    return NULL;
  }
  return m;
}

/* {"type": "sequential", "layers": [{"type": "linear", "out_features": 256}, ...]} */
static void *sequential(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_model_context *ctx = context;
  size_t n;
  if (loom_params_array_length(p, "layers", true, &n) < 0)
    return NULL;
  if (n == 0) {
    loom_params_error(p, "layers", LOOM_EINVAL, "expected a non-empty array of layers");
    return NULL;
  }
  loom_model *m = loom_model_create();
  for (size_t i = 0; m && i < n; i++) {
    char key[64], def_name[64];
    snprintf(key, sizeof key, "layers[%zu]", i);
    loom_params *lp;
    loom_layer *layer = NULL;
    const char *name;
    int rc = loom_params_open(p, key, true, &lp);
    if (rc == 0)
      rc = loom_params_build(lp, LOOM_KIND_LAYER, NULL, (void **)&layer);
    if (rc == 0) {
      snprintf(def_name, sizeof def_name, "%s%zu", loom_layer_type(layer), i + 1);
      for (char *c = def_name; *c; c++)
        *c = (char)(*c >= 'A' && *c <= 'Z' ? *c - 'A' + 'a' : *c);
      if ((rc = loom_params_string(lp, "name", def_name, &name)) == 0)
        rc = loom_params_check_unknown(lp);
    }
    if (rc == 0) {
      rc = loom_model_add(m, name, layer); /* takes the layer */
      if (rc < 0)
        loom_params_error(lp, "name", rc, "%s", loom_last_error()); /* a name taken, or out of memory */
    } else {
      loom_layer_destroy(layer);
    }
    loom_params_close(lp);
    if (rc < 0) {
      loom_model_destroy(m);
      return NULL;
    }
  }
  int rc = !m                              ? 0
           : loom_params_validate_only(p) ? loom_model_plan(m, ctx->ndim, ctx->sample_shape, NULL)
                                          : loom_model_build(m, ctx->ndim, ctx->sample_shape, ctx->seed);
  if (rc < 0) {
    loom_params_error(p, "layers", rc, "%s", loom_last_error()); /* a shape that does not fit, or out of memory */
    loom_model_destroy(m);
    return NULL;
  }
  return m;
}

static void *linear(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t in, out;
  bool bias;
  if (loom_params_int(p, "in_features", 0, 0, INT32_MAX, &in) < 0 ||
      loom_params_int(p, "out_features", LOOM_REQUIRED_INT, 1, INT32_MAX, &out) < 0 ||
      loom_params_bool(p, "bias", true, &bias) < 0)
    return NULL;
  return loom_linear_create(in, out, bias);
}

static void *relu(loom_params *p, const void *context, void *user) {
  (void)p, (void)context, (void)user;
  return loom_relu_create();
}

/* "kernel": 3 or [3, 5]; likewise stride, padding, dilation. */
static int pair(loom_params *p, const char *key, int64_t def, int64_t min, int64_t out[2]) {
  if (loom_params_is_array(p, key)) {
    size_t n;
    int rc = loom_params_int_array(p, key, NULL, 0, min, 1 << 20, out, 2, &n);
    if (rc == 0 && n != 2)
      rc = loom_params_error(p, key, LOOM_EINVAL, "expected one integer or two (height, width)");
    return rc;
  }
  int rc = loom_params_int(p, key, def, min, 1 << 20, &out[0]);
  out[1] = out[0];
  return rc;
}

static void *conv2d(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  static const char *const algorithms[] = {"auto", "im2col", "winograd", NULL}; /* as loom_conv_algorithm */
  loom_conv2d_options o = {0};
  bool bias;
  int algorithm;
  if (loom_params_int(p, "in_channels", 0, 0, 1 << 20, &o.in_channels) < 0 ||
      loom_params_int(p, "out_channels", LOOM_REQUIRED_INT, 1, 1 << 20, &o.out_channels) < 0 ||
      pair(p, "kernel", LOOM_REQUIRED_INT, 1, o.kernel) < 0 || pair(p, "stride", 1, 1, o.stride) < 0 ||
      pair(p, "padding", 0, 0, o.padding) < 0 || pair(p, "dilation", 1, 1, o.dilation) < 0 ||
      loom_params_bool(p, "bias", true, &bias) < 0 ||
      loom_params_choice(p, "algorithm", "auto", algorithms, &algorithm) < 0)
    return NULL;
  o.no_bias = !bias;
  o.algorithm = (loom_conv_algorithm)algorithm;
  return loom_conv2d_create(&o);
}

static void *pool2d(loom_params *p, bool max) {
  int64_t k, s, pad;
  if (loom_params_int(p, "kernel", LOOM_REQUIRED_INT, 1, 1 << 20, &k) < 0 ||
      loom_params_int(p, "stride", 0, 0, 1 << 20, &s) < 0 || loom_params_int(p, "padding", 0, 0, 1 << 20, &pad) < 0)
    return NULL;
  return max ? loom_maxpool2d_create(k, s, pad) : loom_avgpool2d_create(k, s, pad);
}

static void *maxpool2d(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  return pool2d(p, true);
}

static void *avgpool2d(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  return pool2d(p, false);
}

static void *global_avgpool(loom_params *p, const void *context, void *user) {
  (void)p, (void)context, (void)user;
  return loom_global_avgpool_create();
}

static void *batchnorm(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t c;
  double eps, momentum;
  if (loom_params_int(p, "num_features", LOOM_REQUIRED_INT, 1, 1 << 20, &c) < 0 ||
      loom_params_number(p, "eps", 1e-5, 1e-12, 1, &eps) < 0 ||
      loom_params_number(p, "momentum", 0.1, 0, 1, &momentum) < 0)
    return NULL;
  return loom_batchnorm_create(c, (float)eps, (float)momentum);
}

static void *dropout(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double rate;
  if (loom_params_number(p, "p", 0.5, 0, 0.999999, &rate) < 0)
    return NULL;
  return loom_dropout_create((float)rate);
}

static void *leaky_relu(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double slope;
  if (loom_params_number(p, "negative_slope", 0.01, -1e6, 1e6, &slope) < 0)
    return NULL;
  return loom_leaky_relu_create((float)slope);
}

/* The layers of the array at `key` (absent and not required: none) into
 * *out, a new array of *n the caller frees with its layers. */
static int layer_list(loom_params *p, const char *key, bool required, loom_layer ***out, size_t *n) {
  *out = NULL;
  int rc = loom_params_array_length(p, key, required, n);
  if (rc == 0 && required && *n == 0)
    rc = loom_params_error(p, key, LOOM_EINVAL, "expected a non-empty array of layers");
  if (rc == 0 && *n && !(*out = calloc(*n, sizeof **out)))
    rc = loom_params_error(p, key, LOOM_ENOMEM, "out of memory");
  for (size_t i = 0; rc == 0 && i < *n; i++) {
    char item[64];
    snprintf(item, sizeof item, "%s[%zu]", key, i);
    rc = loom_params_component(p, item, LOOM_KIND_LAYER, NULL, true, (void **)&(*out)[i]);
  }
  if (rc < 0) {
    for (size_t i = 0; *out && i < *n; i++)
      loom_layer_destroy((*out)[i]);
    free(*out);
    *out = NULL;
  }
  return rc;
}

/* {"type": "residual", "layers": [...], "shortcut": [...] (absent or []:
 * the identity), "activation": "relu" (null: none)} */
static void *residual(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  static const char *const acts[] = {"relu", NULL};
  int act = 0;
  const bool no_act = json_is_null(json_object_get(loom_params_object(p), "activation"));
  if (no_act)
    loom_params_known(p, "activation");
  loom_layer **main = NULL, **shortcut = NULL;
  size_t num_main = 0, num_shortcut = 0;
  if ((!no_act && loom_params_choice(p, "activation", "relu", acts, &act) < 0) ||
      layer_list(p, "layers", true, &main, &num_main) < 0 ||
      layer_list(p, "shortcut", false, &shortcut, &num_shortcut) < 0) {
    for (size_t i = 0; i < num_main && main; i++)
      loom_layer_destroy(main[i]);
    free(main);
    return NULL;
  }
  loom_layer *block = loom_residual_create(main, num_main, shortcut, num_shortcut, !no_act);
  free(main), free(shortcut);
  return block;
}

static void *flatten(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_flatten_create(); }
static void *gelu(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_gelu_create(); }
static void *tanh_layer(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_tanh_create(); }
static void *sigmoid(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_sigmoid_create(); }

static void *cross_entropy(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double smoothing, w[4096];
  size_t n = 0;
  if (loom_params_number(p, "label_smoothing", 0, 0, 1, &smoothing) < 0 ||
      (loom_params_has(p, "weights") && loom_params_number_array(p, "weights", NULL, 0, w, 4096, &n) < 0))
    return NULL;
  float weights[4096];
  for (size_t i = 0; i < n; i++) {
    if (!(w[i] >= 0)) {
      loom_params_error(p, "weights", LOOM_EINVAL, "class weight %zu is %g; weights are >= 0", i, w[i]);
      return NULL;
    }
    weights[i] = (float)w[i];
  }
  loom_cross_entropy_options o = {(float)smoothing, n ? weights : NULL, (int64_t)n};
  return loom_cross_entropy_create_ex(&o);
}

static void *bce_with_logits(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_bce_with_logits_create(); }
static void *mse(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_mse_create(); }
static void *l1(loom_params *p, const void *c, void *u) { (void)p, (void)c, (void)u; return loom_l1_create(); }

static void *smooth_l1(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double beta;
  if (loom_params_number(p, "beta", 1.0, 1e-12, 1e300, &beta) < 0)
    return NULL;
  return loom_smooth_l1_create((float)beta);
}

static void *sgd(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_sgd_options o = {0};
  if (loom_params_number(p, "lr", NAN, 0, BIG, &o.lr) < 0 || loom_params_number(p, "momentum", 0, 0, 1, &o.momentum) < 0 ||
      loom_params_number(p, "dampening", 0, 0, 1, &o.dampening) < 0 ||
      loom_params_number(p, "weight_decay", 0, 0, BIG, &o.weight_decay) < 0 ||
      loom_params_bool(p, "nesterov", false, &o.nesterov) < 0)
    return NULL;
  return loom_sgd_create(&o);
}

/* Adam's keys; AdamW takes the same with its own default decay. */
static void *adam_family(loom_params *p, loom_adam_options o,
                         loom_optimizer *(*create)(const loom_adam_options *)) {
  double betas[2];
  size_t n;
  const double def[2] = {o.beta1, o.beta2};
  if (loom_params_number(p, "lr", o.lr, 0, BIG, &o.lr) < 0 ||
      loom_params_number_array(p, "betas", def, 2, betas, 2, &n) < 0 ||
      loom_params_number(p, "eps", o.eps, 0, 1, &o.eps) < 0 ||
      loom_params_number(p, "weight_decay", o.weight_decay, 0, BIG, &o.weight_decay) < 0)
    return NULL;
  if (n != 2 || !(betas[0] >= 0 && betas[0] < 1) || !(betas[1] >= 0 && betas[1] < 1)) {
    loom_params_error(p, "betas", LOOM_EINVAL, "expected two numbers in [0, 1)");
    return NULL;
  }
  o.beta1 = betas[0];
  o.beta2 = betas[1];
  return create(&o);
}

static void *adam(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  return adam_family(p, loom_adam_defaults(), loom_adam_create);
}

static void *adamw(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  return adam_family(p, loom_adamw_defaults(), loom_adamw_create);
}

static void *rmsprop(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_rmsprop_options o = loom_rmsprop_defaults();
  if (loom_params_number(p, "lr", o.lr, 0, BIG, &o.lr) < 0 || loom_params_number(p, "alpha", o.alpha, 0, 1, &o.alpha) < 0 ||
      loom_params_number(p, "eps", o.eps, 0, 1, &o.eps) < 0 ||
      loom_params_number(p, "momentum", o.momentum, 0, 1, &o.momentum) < 0 ||
      loom_params_number(p, "weight_decay", o.weight_decay, 0, BIG, &o.weight_decay) < 0 ||
      loom_params_bool(p, "centered", o.centered, &o.centered) < 0)
    return NULL;
  return loom_rmsprop_create(&o);
}

static void *step_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t step;
  double gamma;
  if (loom_params_int(p, "step_size", LOOM_REQUIRED_INT, 1, INT64_MAX, &step) < 0 ||
      loom_params_number(p, "gamma", 0.1, 1e-12, BIG, &gamma) < 0)
    return NULL;
  return loom_step_lr_create(step, gamma);
}

static void *multistep_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t ms[64];
  size_t n;
  double gamma;
  if (loom_params_int_array(p, "milestones", NULL, 0, 1, INT64_MAX, ms, 64, &n) < 0 ||
      loom_params_number(p, "gamma", 0.1, 1e-12, BIG, &gamma) < 0)
    return NULL;
  loom_scheduler *s = loom_multistep_lr_create(ms, (int)n, gamma);
  if (!s)
    loom_params_error(p, "milestones", LOOM_EINVAL, "expected 1 to 64 increasing steps");
  return s;
}

static void *exponential_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double gamma;
  if (loom_params_number(p, "gamma", NAN, 1e-12, BIG, &gamma) < 0)
    return NULL;
  return loom_exponential_lr_create(gamma);
}

static void *cosine_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t warmup, total;
  double min_lr, start;
  if (loom_params_int(p, "warmup_steps", 0, 0, INT64_MAX, &warmup) < 0 ||
      loom_params_int(p, "total_steps", LOOM_REQUIRED_INT, 1, INT64_MAX, &total) < 0 ||
      loom_params_number(p, "min_lr", 0, 0, BIG, &min_lr) < 0 ||
      loom_params_number(p, "warmup_start_factor", 0, 0, 1, &start) < 0)
    return NULL;
  if (warmup >= total) {
    loom_params_error(p, "warmup_steps", LOOM_EINVAL, "must be below total_steps (%lld)", (long long)total);
    return NULL;
  }
  return loom_cosine_lr_create(warmup, total, min_lr, start);
}

static void *onecycle_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  double max_lr;
  int64_t total;
  if (loom_params_number(p, "max_lr", NAN, 0, BIG, &max_lr) < 0 ||
      loom_params_int(p, "total_steps", LOOM_REQUIRED_INT, 2, INT64_MAX, &total) < 0)
    return NULL;
  loom_onecycle_options o = loom_onecycle_defaults(max_lr, total);
  if (loom_params_number(p, "pct_start", o.pct_start, 1e-9, 1 - 1e-9, &o.pct_start) < 0 ||
      loom_params_number(p, "div_factor", o.div_factor, 1e-9, BIG, &o.div_factor) < 0 ||
      loom_params_number(p, "final_div_factor", o.final_div_factor, 1e-9, BIG, &o.final_div_factor) < 0 ||
      loom_params_bool(p, "cycle_momentum", o.cycle_momentum, &o.cycle_momentum) < 0 ||
      loom_params_number(p, "base_momentum", o.base_momentum, 0, 1, &o.base_momentum) < 0 ||
      loom_params_number(p, "max_momentum", o.max_momentum, 0, 1, &o.max_momentum) < 0)
    return NULL;
  loom_scheduler *s = loom_onecycle_lr_create(&o);
  if (!s)
    loom_params_error(p, "pct_start", LOOM_EINVAL, "pct_start x total_steps must be at least 2");
  return s;
}

static void *plateau_lr(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  loom_plateau_options o = loom_plateau_defaults();
  static const char *const modes[] = {"min", "max", NULL}, *const thresholds[] = {"rel", "abs", NULL};
  int mode, tmode;
  if (loom_params_choice(p, "mode", "min", modes, &mode) < 0 ||
      loom_params_number(p, "factor", o.factor, 1e-9, 1 - 1e-9, &o.factor) < 0 ||
      loom_params_int(p, "patience", o.patience, 0, INT64_MAX, &o.patience) < 0 ||
      loom_params_number(p, "threshold", o.threshold, 0, BIG, &o.threshold) < 0 ||
      loom_params_choice(p, "threshold_mode", "rel", thresholds, &tmode) < 0 ||
      loom_params_int(p, "cooldown", 0, 0, INT64_MAX, &o.cooldown) < 0 ||
      loom_params_number(p, "min_lr", 0, 0, BIG, &o.min_lr) < 0)
    return NULL;
  o.minimize = mode == 0;
  o.relative = tmode == 0;
  return loom_plateau_lr_create(&o);
}

void loom_register_builtin_models(void) {
  loom_register_builtin(LOOM_KIND_MODEL, "mlp", mlp);
  loom_register_builtin(LOOM_KIND_MODEL, "sequential", sequential);
  loom_register_builtin(LOOM_KIND_LAYER, "linear", linear);
  loom_register_builtin(LOOM_KIND_LAYER, "relu", relu);
  loom_register_builtin(LOOM_KIND_LAYER, "conv2d", conv2d);
  loom_register_builtin(LOOM_KIND_LAYER, "maxpool2d", maxpool2d);
  loom_register_builtin(LOOM_KIND_LAYER, "avgpool2d", avgpool2d);
  loom_register_builtin(LOOM_KIND_LAYER, "global_avgpool", global_avgpool);
  loom_register_builtin(LOOM_KIND_LAYER, "batchnorm", batchnorm);
  loom_register_builtin(LOOM_KIND_LAYER, "dropout", dropout);
  loom_register_builtin(LOOM_KIND_LAYER, "flatten", flatten);
  loom_register_builtin(LOOM_KIND_LAYER, "residual", residual);
  loom_register_builtin(LOOM_KIND_LAYER, "leaky_relu", leaky_relu);
  loom_register_builtin(LOOM_KIND_LAYER, "gelu", gelu);
  loom_register_builtin(LOOM_KIND_LAYER, "tanh", tanh_layer);
  loom_register_builtin(LOOM_KIND_LAYER, "sigmoid", sigmoid);
  loom_register_builtin(LOOM_KIND_CRITERION, "cross_entropy", cross_entropy);
  loom_register_builtin(LOOM_KIND_CRITERION, "bce_with_logits", bce_with_logits);
  loom_register_builtin(LOOM_KIND_CRITERION, "mse", mse);
  loom_register_builtin(LOOM_KIND_CRITERION, "l1", l1);
  loom_register_builtin(LOOM_KIND_CRITERION, "smooth_l1", smooth_l1);
  loom_register_builtin(LOOM_KIND_OPTIMIZER, "sgd", sgd);
  loom_register_builtin(LOOM_KIND_OPTIMIZER, "adam", adam);
  loom_register_builtin(LOOM_KIND_OPTIMIZER, "adamw", adamw);
  loom_register_builtin(LOOM_KIND_OPTIMIZER, "rmsprop", rmsprop);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "step", step_lr);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "multistep", multistep_lr);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "exponential", exponential_lr);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "cosine", cosine_lr);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "onecycle", onecycle_lr);
  loom_register_builtin(LOOM_KIND_SCHEDULER, "plateau", plateau_lr);
}
