/* What predict and export share: a config built with trained weights, and
 * each layer's tensors under PyTorch's names. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "deploy/deploy_internal.h"
#include "loom/experiment.h"
#include "models/layer_internal.h"

int loom_deploy_build(loom_config *c, const char *resume, loom_experiment **exp, char *used, size_t used_size) {
  *exp = NULL;
  if (used && used_size)
    used[0] = '\0';
  int rc = loom_config_build(c, exp);
  if (rc < 0)
    return rc;
  loom_model *model = loom_config_model(c);
  if (!model || !loom_model_is_built(model))
    return loom_error_set(LOOM_ESTATE, "%s: the config's model is not built", loom_config_name(c));
  const char *which = resume ? resume : "best";
  if (strcmp(which, "best") != 0 && strcmp(which, "last") != 0) {
    if ((rc = loom_model_load_weights(model, which)) == 0 && used)
      snprintf(used, used_size, "%s", which);
    return rc;
  }
  char path[4096], notice[1024];
  const char *logdir = loom_experiment_logdir(*exp);
  loom_checkpoint *ck = loom_checkpoint_open_logdir(logdir, which, path, sizeof path, notice, sizeof notice);
  if (!ck)
    return loom_error_wrap(loom_last_error_code(), "no \"%s\" checkpoint to take the weights from in %s (train "
                                                   "first with loom run, or name a checkpoint file)",
                           which, logdir);
  const loom_state *s = loom_checkpoint_find(ck, "model");
  rc = s ? loom_model_load(model, s, false) : loom_error_set(LOOM_EFORMAT, "%s holds no model weights", path);
  loom_checkpoint_destroy(ck);
  if (rc < 0)
    return loom_error_wrap(rc, "loading weights from %s", path);
  if (used)
    snprintf(used, used_size, "%s", path);
  return 0;
}

static void tensor(loom_named_tensor *t, const char *layer, const char *name, const float *data, int ndim,
                   const int64_t *shape) {
  snprintf(t->name, sizeof t->name, "%s.%s", layer, name);
  t->data = data;
  t->ndim = ndim;
  memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
}

int loom_deploy_layer_tensors(loom_model *m, size_t i, loom_named_tensor *out, int *n) {
  *n = 0;
  loom_layer *layer = loom_model_layer(m, i);
  const char *name = loom_model_layer_name(m, i), *type = loom_layer_type(layer);
  size_t off, count, boff, bcount;
  loom_model_layer_params(m, i, &off, &count);
  loom_model_layer_buffers(m, i, &boff, &bcount);
  const float *p = loom_model_params(m) + off, *b = loom_model_buffers(m) + boff;
  int64_t shape[LOOM_MAX_DIMS];
  loom_layer_desc d;
  if (strcmp(type, "Linear") == 0 && count > 0) {
    loom_model_layer_output_shape(m, i, shape);
    int64_t o = shape[0], bias = loom_linear_bias(layer) ? o : 0, in = ((int64_t)count - bias) / o;
    tensor(&out[(*n)++], name, "weight", p, 2, (int64_t[]){o, in});
    if (bias)
      tensor(&out[(*n)++], name, "bias", p + o * in, 1, (int64_t[]){o});
  } else if (layer->describe && layer->describe(layer->data, &d) && d.kind == LOOM_LAYER_CONV) {
    tensor(&out[(*n)++], name, "weight", p, 4, (int64_t[]){d.conv.cout, d.conv.cin, d.conv.kh, d.conv.kw});
    if (d.conv.bias)
      tensor(&out[(*n)++], name, "bias", p + d.conv.cout * d.conv.cin * d.conv.kh * d.conv.kw, 1,
             (int64_t[]){d.conv.cout});
  } else if (layer->describe && layer->describe(layer->data, &d) && d.kind == LOOM_LAYER_BATCHNORM) {
    int64_t c = d.batchnorm.c;
    tensor(&out[(*n)++], name, "weight", p, 1, &c);
    tensor(&out[(*n)++], name, "bias", p + c, 1, &c);
    tensor(&out[(*n)++], name, "running_mean", b, 1, &c);
    tensor(&out[(*n)++], name, "running_var", b + c, 1, &c);
  } else {
    if (count)
      tensor(&out[(*n)++], name, "params", p, 1, (int64_t[]){(int64_t)count});
    if (bcount)
      tensor(&out[(*n)++], name, "buffers", b, 1, (int64_t[]){(int64_t)bcount});
  }
  return 0;
}

int loom_deploy_temp(const char *path, const char *what, char *tmp, size_t tmp_size) {
  char dir[4096];
  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir ||
      snprintf(tmp, tmp_size, "%s.tmp%ld", path, (long)getpid()) >= (int)tmp_size)
    return loom_error_set(LOOM_EINVAL, "cannot write the %s %.64s...: the path is too long", what, path);
  int rc = loom_mkdir_p(dirname(dir));
  if (rc < 0)
    return loom_error_wrap(rc, "cannot write the %s %s", what, path);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return loom_error_set(LOOM_EIO, "cannot write the %s %s: %s", what, path, strerror(errno));
  close(fd);
  return 0;
}
