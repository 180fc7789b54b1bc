/* The sequential model's arrays to and from the host, and in checkpoints:
 * parameters, buffers and gradients staged through the host when the model
 * is on a backend; a saved model checked layer by layer before it loads. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/state.h"
#include "models/model_impl.h"

/* The model's memory and host arrays: memcpy on the host, one transfer on
 * a backend. */
static int to_host(const loom_model *m, float *host, const float *a, size_t n) {
  if (!m->built)
    return loom_error_set(LOOM_ESTATE, "copying from a model that is not built");
  return loom_array_copy(NULL, host, m->backend, a, n);
}

static int from_host(loom_model *m, float *a, const float *host, size_t n) {
  if (!m->built)
    return loom_error_set(LOOM_ESTATE, "copying into a model that is not built");
  return loom_array_copy(m->backend, a, NULL, host, n);
}

int loom_model_params_to_host(const loom_model *m, float *host) { return to_host(m, host, m->params, m->nparams); }
int loom_model_params_from_host(loom_model *m, const float *host) {
  return from_host(m, m->params, host, m->nparams);
}
int loom_model_buffers_to_host(const loom_model *m, float *host) { return to_host(m, host, m->buffers, m->nbuffers); }
int loom_model_buffers_from_host(loom_model *m, const float *host) {
  return from_host(m, m->buffers, host, m->nbuffers);
}
int loom_model_grads_to_host(const loom_model *m, float *host) { return to_host(m, host, m->grads, m->nparams); }
int loom_model_grads_from_host(loom_model *m, const float *host) {
  int rc = from_host(m, m->grads, host, m->nparams);
  if (m->built)
    m->grads_state = GRADS_UNKNOWN; /* written by the caller, never checked */
  return rc;
}

/* `a` itself for a model in host memory; else a host array of n floats,
 * holding a's values when `fill` (NULL after an error). The caller frees
 * it when it is not `a`. */
static float *host_view(const loom_model *m, float *a, size_t n, bool fill) {
  if (!m->backend)
    return a;
  float *host = malloc((n ? n : 1) * sizeof *host);
  if (!host)
    loom_error_oom("a host copy of the model's arrays");
  else if (fill && to_host(m, host, a, n) < 0) {
    free(host);
    return NULL;
  }
  return host;
}

/* A saved array of the model's, staged through the host when the model is
 * on a backend. */
static int save_array(const loom_model *m, loom_state *s, const char *key, float *a, size_t n) {
  float *host = host_view(m, a, n, true);
  int rc = host ? loom_state_set_f32_array(s, key, host, n) : loom_last_error_code();
  if (host != a)
    free(host);
  return rc;
}

static int load_array(loom_model *m, const loom_state *s, const char *key, float *a, size_t n) {
  float *host = host_view(m, a, n, false);
  int rc = host ? loom_state_get_f32_array(s, key, host, n) : loom_last_error_code();
  if (rc == 0 && host != a)
    rc = from_host(m, a, host, n);
  if (host != a)
    free(host);
  return rc;
}

int loom_model_save(const loom_model *m, loom_state *s, bool with_grads) {
  if (!m->built)
    return loom_error_set(LOOM_ESTATE, "saving a model that is not built");
  size_t len = 1;
  for (size_t i = 0; i < m->count; i++)
    len += strlen(m->layers[i].name) + 1;
  char *names = calloc(len, 1);
  int64_t *offsets = malloc((m->count + 1) * sizeof *offsets);
  int rc = (names && offsets) ? 0 : loom_error_oom("the model's layer table");
  for (size_t i = 0; rc == 0 && i < m->count; i++) {
    strcat(names, m->layers[i].name);
    strcat(names, i + 1 < m->count ? "\n" : "");
    offsets[i] = (int64_t)m->layers[i].offset;
  }
  if (rc == 0) {
    offsets[m->count] = (int64_t)m->nparams;
    rc = loom_state_set_str(s, "layers", names);
  }
  if (rc == 0)
    rc = loom_state_set_i64_array(s, "offsets", offsets, m->count + 1);
  if (rc == 0)
    rc = save_array(m, s, "params", m->params, m->nparams);
  if (rc == 0 && m->nbuffers)
    rc = save_array(m, s, "buffers", m->buffers, m->nbuffers);
  if (rc == 0 && with_grads)
    rc = save_array(m, s, "grads", m->grads, m->nparams);
  free(names);
  free(offsets);
  return rc;
}

/* Same layers but other sizes (an MLP of other widths): name the first layer
 * whose parameter count differs, from the saved offsets, before the flat
 * parameter array's count would only say that something differs. */
static int check_layer_sizes(const loom_model *m, const loom_state *s) {
  if (loom_state_array_length(s, "offsets") != m->count + 1)
    return 0; /* no per-layer table: the array's own length check decides */
  int64_t *saved = malloc((m->count + 1) * sizeof *saved);
  int rc = saved ? loom_state_get_i64_array(s, "offsets", saved, m->count + 1) : loom_error_oom("the layer table");
  for (size_t i = 0; rc == 0 && i < m->count; i++) {
    int64_t have = (int64_t)m->layers[i].nparams;
    if (saved[i] < 0 || saved[i + 1] < saved[i]) { /* a difference that could overflow: written by no model */
      rc = loom_error_set(LOOM_EFORMAT, "the checkpoint's layer table is damaged (offsets %lld, %lld at layer \"%s\")",
                          (long long)saved[i], (long long)saved[i + 1], m->layers[i].name);
      break;
    }
    int64_t had = saved[i + 1] - saved[i];
    if (had != have)
      rc = loom_error_set(LOOM_EFORMAT,
                          "layer \"%s\" has %lld parameters in the checkpoint and %lld in this model: the checkpoint "
                          "is from a different model; use the config it was saved with, or start a new logdir",
                          m->layers[i].name, (long long)had, (long long)have);
  }
  free(saved);
  return rc;
}

static int load_state(loom_model *m, const loom_state *s, bool grads) {
  if (!m->built)
    return loom_error_set(LOOM_ESTATE, "loading into a model that is not built");
  const char *names;
  int rc = loom_state_get_str(s, "layers", &names);
  if (rc < 0)
    return rc;
  /* Same layers in the same order, or the parameters mean something else. */
  const char *p = names;
  for (size_t i = 0; i < m->count; i++) {
    size_t len = strlen(m->layers[i].name);
    if (strncmp(p, m->layers[i].name, len) != 0 || (p[len] != '\n' && p[len] != '\0'))
      return loom_error_set(LOOM_EFORMAT, "saved model has layers \"%s\" where this model has \"%s\" at position %zu",
                            names, m->layers[i].name, i);
    p += len + (p[len] == '\n');
  }
  if (*p)
    return loom_error_set(LOOM_EFORMAT, "saved model has more layers than this one (%s)", names);
  if ((rc = check_layer_sizes(m, s)) < 0)
    return rc;
  if ((rc = load_array(m, s, "params", m->params, m->nparams)) < 0)
    return rc;
  if (m->nbuffers && (rc = load_array(m, s, "buffers", m->buffers, m->nbuffers)) < 0)
    return rc;
  if (grads && loom_state_has(s, "grads")) {
    rc = load_array(m, s, "grads", m->grads, m->nparams);
    m->grads_state = GRADS_UNKNOWN; /* a saved accumulation window, never checked */
  }
  return rc;
}

int loom_model_load(loom_model *m, const loom_state *s, bool with_grads) { return load_state(m, s, with_grads); }

int loom_model_save_weights(const loom_model *m, const char *path) {
  loom_checkpoint *c = loom_checkpoint_create();
  loom_state *s = c ? loom_checkpoint_group(c, "model") : NULL;
  int rc = s ? loom_model_save(m, s, false) : LOOM_ENOMEM;
  if (rc == 0)
    rc = loom_checkpoint_write(c, path);
  loom_checkpoint_destroy(c);
  return rc;
}

int loom_model_load_weights(loom_model *m, const char *path) {
  loom_checkpoint *c = loom_checkpoint_read(path);
  if (!c)
    return loom_last_error_code();
  const loom_state *s = loom_checkpoint_find(c, "model");
  int rc = s ? load_state(m, s, false) : loom_error_set(LOOM_EFORMAT, "%s holds no model weights", path);
  loom_checkpoint_destroy(c);
  return rc < 0 ? loom_error_wrap(rc, "loading weights from %s", path) : 0;
}
