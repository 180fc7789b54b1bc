/* The sequential model: layers in order, one parameter buffer, one gradient
 * buffer, activations kept for the backward pass and reused across batches.
 * Consecutive built-in layers that the backend fuses run as one block
 * (loom_backend_plan_block): the model describes its layers to the backend
 * when it first runs on it and matches no layer types itself. A model
 * lives in host memory unless moved to a backend (loom_model_set_backend):
 * it is built and initialised on the host, then its buffers and
 * activations are made on the backend and the layers bound to them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/array.h"
#include "core/error_internal.h"
#include "models/layer_internal.h"
#include "models/model_impl.h"


loom_model *loom_model_create(void) {
  loom_model *m = calloc(1, sizeof *m);
  if (!m)
    loom_error_oom("a model");
  else
    m->train = true;
  return m;
}

/* n floats of `b`'s memory (NULL: zeroed host memory). */
static float *array_alloc(loom_backend *b, size_t n) {
  if (b)
    return loom_backend_alloc(b, (n ? n : 1) * sizeof(float));
  float *p = calloc(n ? n : 1, sizeof *p);
  if (!p)
    loom_error_oom("the model's parameters");
  return p;
}

static void array_free(loom_backend *b, float *p) {
  if (b)
    loom_backend_free(b, p);
  else
    free(p);
}

int loom_array_copy(loom_backend *to, float *dst, loom_backend *from, const float *src, size_t n) {
  const size_t bytes = n * sizeof(float);
  if (!from && !to)
    return memcpy(dst, src, bytes), 0;
  if (!from || !to)
    return from ? loom_backend_to_host(from, dst, src, bytes) : loom_backend_from_host(to, dst, src, bytes);
  float *host = malloc(bytes ? bytes : 1);
  int rc = host ? loom_backend_to_host(from, host, src, bytes) : loom_error_oom("staging the model's arrays");
  if (rc == 0)
    rc = loom_backend_from_host(to, dst, host, bytes);
  free(host);
  return rc;
}

static void drop_blocks(loom_model *m) {
  for (size_t i = 0; i < m->count; i++) {
    entry *e = &m->layers[i];
    loom_backend_plan_destroy(m->planned_on, e->plan);
    e->plan = NULL, e->head = i, e->block = 1, e->kept = 0;
  }
  m->planned = false, m->planned_on = NULL;
}

void loom_model_destroy(loom_model *m) {
  if (!m)
    return;
  drop_blocks(m);
  for (size_t i = 0; i < m->count; i++) {
    loom_layer_destroy(m->layers[i].layer);
    loom_tensor_destroy(m->layers[i].out);
    loom_tensor_destroy(m->layers[i].dout);
    free(m->layers[i].name);
  }
  free(m->layers);
  array_free(m->backend, m->params);
  array_free(m->backend, m->grads);
  array_free(m->backend, m->buffers);
  free(m);
}

int loom_model_set_frozen(loom_model *m, const char *layer, bool frozen) {
  for (size_t i = 0; i < m->count; i++) {
    if (strcmp(m->layers[i].name, layer) == 0) {
      m->layers[i].frozen = frozen;
      return 0;
    }
  }
  return loom_error_set(LOOM_EINVAL, "the model has no layer \"%s\"", layer);
}

void loom_model_unfreeze_all(loom_model *m) {
  for (size_t i = 0; i < m->count; i++)
    m->layers[i].frozen = false;
}

bool loom_model_is_frozen(const loom_model *m, const char *layer) {
  for (size_t i = 0; i < m->count; i++)
    if (strcmp(m->layers[i].name, layer) == 0)
      return m->layers[i].frozen;
  return false;
}

int loom_model_add(loom_model *m, const char *name, loom_layer *layer) {
  if (!layer)
    return loom_error_wrap(loom_last_error_code() ? loom_last_error_code() : LOOM_EINVAL,
                           "loom_model_add(\"%s\"): no layer", name ? name : "?");
  int rc = 0;
  if (m->built)
    rc = loom_error_set(LOOM_ESTATE, "loom_model_add(\"%s\"): the model is already built", name);
  else if (!name || !*name)
    rc = loom_error_set(LOOM_EINVAL, "loom_model_add: a layer needs a name");
  else if (loom_model_find_layer(m, name))
    rc = loom_error_set(LOOM_EINVAL, "loom_model_add: layer name \"%s\" is taken; names are unique", name);
  else
    rc = loom_array_reserve((void **)&m->layers, &m->cap, m->count + 1, sizeof *m->layers, "a model layer");
  char *copy = rc == 0 ? strdup(name) : NULL;
  if (rc == 0 && !copy)
    rc = loom_error_oom("a layer name");
  if (rc < 0) {
    loom_layer_destroy(layer);
    return rc;
  }
  m->layers[m->count] = (entry){.name = copy, .layer = layer, .head = m->count, .block = 1};
  m->count++;
  return 0;
}

/* e's activation and its gradient on `b` (NULL: host memory), for one
 * sample until a batch resizes them. */
static int new_activations(const entry *e, loom_backend *b, loom_tensor **out, loom_tensor **dout) {
  int64_t shape[LOOM_MAX_DIMS + 1] = {1}; /* plan() checked out_ndim */
  memcpy(shape + 1, e->out_shape, (size_t)e->out_ndim * sizeof *shape);
  *out = loom_tensor_create_on(b, e->out_ndim + 1, shape);
  *dout = loom_tensor_create_on(b, e->out_ndim + 1, shape);
  return (*out && *dout) ? 0 : loom_last_error_code() ? loom_last_error_code() : LOOM_ENOMEM;
}

/* Says how large the model is before allocating it: parameters and
 * gradients (and an optimizer's moments later) that cannot fit in this
 * machine's memory would be granted by overcommit and then kill the
 * process while being initialised. */
static int check_memory(size_t params, size_t buffers) {
  uint64_t limit = uv_get_constrained_memory(), total = uv_get_total_memory();
  if (!limit || (total && total < limit))
    limit = total;
  double need = (2.0 * (double)params + (double)buffers) * sizeof(float);
  if (limit && need > (double)limit)
    return loom_error_set(LOOM_ENOMEM, "the model has %zu parameters: %.1f GiB for them and their gradients, more "
                                       "than this machine's %.1f GiB of memory; make the layers smaller",
                          params, need / (1 << 30), (double)limit / (1 << 30));
  return 0;
}

/* The layers' shapes and sizes for samples of `sample_shape`, as a build
 * finds them (a layer made to infer its input size takes it here), with
 * *params and *buffers counted; nothing allocated. ndim 0: the samples'
 * shape is unknown, and only the sizes the layers know alone count. */
static int plan(loom_model *m, int ndim, const int64_t *sample_shape, bool may_be_unknown, size_t *params,
                size_t *buffers) {
  if (m->built)
    return loom_error_set(LOOM_ESTATE, "loom_model_build: the model is already built");
  if (m->count == 0)
    return loom_error_set(LOOM_EINVAL, "loom_model_build: the model has no layers; add some with loom_model_add");
  if (ndim < (may_be_unknown ? 0 : 1) || ndim >= LOOM_MAX_DIMS || (ndim && !sample_shape))
    return loom_error_set(LOOM_EINVAL, "loom_model_build: samples must have 1 to %d dimensions, not %d",
                          LOOM_MAX_DIMS - 1, ndim);
  int cur_ndim = ndim;
  int64_t cur[LOOM_MAX_DIMS];
  if (ndim)
    memcpy(cur, sample_shape, (size_t)ndim * sizeof *cur);
  size_t total = 0, nbuffers = 0;
  for (size_t i = 0; i < m->count; i++) {
    entry *e = &m->layers[i];
    if (ndim) {
      int rc = e->layer->ops.output_shape(e->layer->data, cur_ndim, cur, &e->out_ndim, e->out_shape);
      if (rc < 0)
        return loom_error_wrap(rc, "building layer \"%s\" (%s)", e->name, loom_layer_type(e->layer));
      if (e->out_ndim + 1 > LOOM_MAX_DIMS)
        return loom_error_set(LOOM_ESHAPE, "layer \"%s\": output has %d dimensions per sample; at most %d fit",
                              e->name, e->out_ndim, LOOM_MAX_DIMS - 1);
      cur_ndim = e->out_ndim;
      memcpy(cur, e->out_shape, (size_t)cur_ndim * sizeof *cur);
    }
    e->offset = total;
    e->nparams = loom_layer_num_params(e->layer);
    if (e->nparams > SIZE_MAX / (4 * sizeof(float)) - total)
      return loom_error_set(LOOM_EINVAL, "building layer \"%s\" (%s): the model's parameter count overflows", e->name,
                            loom_layer_type(e->layer));
    total += e->nparams;
    e->buffer_offset = nbuffers;
    nbuffers += e->layer->ops.num_buffers ? e->layer->ops.num_buffers(e->layer->data) : 0;
  }
  *params = total, *buffers = nbuffers;
  return check_memory(total, nbuffers);
}

int loom_model_plan(loom_model *m, int ndim, const int64_t *sample_shape, size_t *num_params) {
  size_t params = 0, buffers;
  int rc = plan(m, ndim, sample_shape, true, &params, &buffers);
  if (num_params)
    *num_params = params;
  return rc;
}

/* Each layer bound to its part of the model's arrays. */
static void bind_layers(loom_model *m) {
  for (size_t i = 0; i < m->count; i++) {
    entry *e = &m->layers[i];
    if (e->layer->ops.bind)
      e->layer->ops.bind(e->layer->data, m->params + e->offset, m->grads + e->offset, m->buffers + e->buffer_offset);
  }
}

int loom_model_build(loom_model *m, int ndim, const int64_t *sample_shape, uint64_t seed) {
  size_t total, buffers;
  int rc = plan(m, ndim, sample_shape, false, &total, &buffers);
  if (rc < 0)
    return rc;
  m->in_ndim = ndim;
  memcpy(m->in_shape, sample_shape, (size_t)ndim * sizeof *sample_shape);
  for (size_t i = 0; i < m->count; i++)
    if ((rc = new_activations(&m->layers[i], NULL, &m->layers[i].out, &m->layers[i].dout)) < 0)
      return rc;
  /* Built and initialised in host memory (the layers' init writes there),
   * then moved to the backend asked for, if any. */
  loom_backend *backend = m->backend;
  m->backend = NULL;
  m->params = calloc(total ? total : 1, sizeof *m->params);
  m->grads = calloc(total ? total : 1, sizeof *m->grads);
  m->grads_state = GRADS_FINITE;
  m->buffers = calloc(buffers ? buffers : 1, sizeof *m->buffers);
  if (!m->params || !m->grads || !m->buffers)
    return loom_error_oom("the model's parameters");
  m->nparams = total;
  m->nbuffers = buffers;
  loom_rng rng;
  loom_rng_seed(&rng, seed, 0, loom_rng_stream_id("init"));
  bind_layers(m);
  for (size_t i = 0; i < m->count; i++) {
    entry *e = &m->layers[i];
    if (e->layer->ops.init)
      e->layer->ops.init(e->layer->data, &rng);
  }
  m->built = true;
  return backend ? loom_model_set_backend(m, backend) : 0;
}

/* The built model's arrays and activations on `to` (NULL: host memory),
 * copied, and the layers bound there; nothing changes on failure but the
 * plans, which are made again where the model next runs. */
static int move(loom_model *m, loom_backend *to) {
  drop_blocks(m);
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < m->count; i++) {
    const loom_layer *l = m->layers[i].layer;
    if (l->release && (rc = l->release(l->data)) < 0)
      rc = loom_error_wrap(rc, "layer \"%s\"", m->layers[i].name);
  }
  float **const arrays[3] = {&m->params, &m->grads, &m->buffers};
  const size_t len[3] = {m->nparams, m->nparams, m->nbuffers};
  float *moved[3] = {NULL, NULL, NULL};
  for (int k = 0; rc == 0 && k < 3; k++)
    rc = !(moved[k] = array_alloc(to, len[k])) ? (loom_last_error_code() ? loom_last_error_code() : LOOM_ENOMEM)
                                                : loom_array_copy(to, moved[k], m->backend, *arrays[k], len[k]);
  loom_tensor **acts = rc == 0 ? calloc(2 * m->count, sizeof *acts) : NULL;
  if (rc == 0 && !acts)
    rc = loom_error_oom("the model's activations");
  for (size_t i = 0; rc == 0 && i < m->count; i++)
    rc = new_activations(&m->layers[i], to, &acts[2 * i], &acts[2 * i + 1]);
  for (int k = 0; k < 3; k++) {
    float *gone = rc == 0 ? *arrays[k] : moved[k];
    array_free(rc == 0 ? m->backend : to, gone);
    if (rc == 0)
      *arrays[k] = moved[k];
  }
  for (size_t i = 0; acts && i < m->count; i++) {
    entry *e = &m->layers[i];
    if (rc == 0) {
      loom_tensor *out = e->out, *dout = e->dout;
      e->out = acts[2 * i], e->dout = acts[2 * i + 1];
      acts[2 * i] = out, acts[2 * i + 1] = dout;
    }
    loom_tensor_destroy(acts[2 * i]), loom_tensor_destroy(acts[2 * i + 1]);
  }
  free(acts);
  if (rc < 0)
    return rc;
  m->backend = to;
  m->last_input = NULL; /* its activations are gone: a backward needs a new forward */
  bind_layers(m);
  return 0;
}

int loom_model_set_backend(loom_model *m, loom_backend *backend) {
  loom_backend *to = backend == loom_backend_cpu() ? NULL : backend;
  if (to == m->backend)
    return 0;
  if (!m->built) { /* the build moves it */
    m->backend = to;
    return 0;
  }
  int rc = move(m, to);
  return rc < 0 ? loom_error_wrap(rc, "moving the model to backend \"%s\"",
                                  to ? loom_backend_name(to) : "cpu")
                : 0;
}

loom_backend *loom_model_backend(const loom_model *m) { return m->backend ? m->backend : loom_backend_cpu(); }

/* Whether t's memory is where the model's is: the model's backend's, or
 * host memory for a model there. */
static bool beside(const loom_model *m, const loom_tensor *t) {
  return m->backend ? t->backend == m->backend
                    : !t->backend || loom_backend_device(t->backend) == LOOM_DEVICE_CPU;
}

static int elsewhere(const loom_model *m, const char *fn, const char *what, const loom_tensor *t) {
  char where[96] = "in host memory";
  if (t->backend)
    snprintf(where, sizeof where, "on backend \"%s\"", loom_backend_name(t->backend));
  return loom_error_set(LOOM_EINVAL, "%s: the %s is %s and the model on backend \"%s\"; copy the %s to the model's "
                                     "backend (loom_tensor_copy into a tensor of loom_tensor_create_on("
                                     "loom_model_backend(model), ...)) or move the model (loom_model_set_backend)",
                        fn, what, where, loom_backend_name(loom_model_backend(m)), what);
}

bool loom_model_is_built(const loom_model *m) { return m->built; }

static int check_input(const loom_model *m, const loom_tensor *x) {
  bool ok = x->ndim == m->in_ndim + 1;
  for (int i = 0; ok && i < m->in_ndim; i++)
    ok = x->shape[i + 1] == m->in_shape[i];
  /* A model built for flat features takes any sample of that many elements. */
  if (!ok && m->in_ndim == 1)
    ok = x->ndim >= 1 && loom_per_sample(x) == m->in_shape[0];
  if (ok)
    return 0;
  char got[96];
  return loom_error_set(LOOM_ESHAPE, "model input %s does not match the shape it was built for "
                                     "([batch] + %d sample dims, first %lld)",
                        loom_tensor_shape_str(x, got, sizeof got), m->in_ndim, (long long)m->in_shape[0]);
}

/* The blocks on `backend`: from each layer, as many layers as the backend
 * fuses with it (most a block's kept mask can tell of). */
static int plan_blocks(loom_model *m, loom_backend *backend) {
  drop_blocks(m);
  /* Under autocast the layers round their products' operands one by one
   * (a fused block would not): no blocks. */
  m->planned_autocast = loom_autocast_applies(backend);
  loom_layer_desc *d = calloc(m->count, sizeof *d);
  if (!d)
    return loom_error_oom("the model's layer descriptors");
  for (size_t i = 0; i < m->count; i++) {
    const loom_layer *l = m->layers[i].layer;
    if (!l->describe || !l->describe(l->data, &d[i]))
      d[i] = (loom_layer_desc){.kind = LOOM_LAYER_OTHER};
  }
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < m->count; i += (size_t)m->layers[i].block) {
    const size_t left = m->count - i;
    loom_block b = {0};
    if (d[i].kind != LOOM_LAYER_OTHER && !m->planned_autocast &&
        (rc = loom_backend_plan_block(backend, d + i, left < 32 ? (int)left : 32, &b)) < 0)
      rc = loom_error_wrap(rc, "planning the fused block at layer \"%s\"", m->layers[i].name);
    entry *e = &m->layers[i];
    e->plan = b.plan, e->kept = b.kept, e->block = b.count > 1 ? b.count : 1;
    for (int k = 1; k < e->block; k++)
      m->layers[i + (size_t)k].head = i;
  }
  free(d);
  m->planned_on = backend, m->planned = true; /* also on failure: drop_blocks frees what was made */
  m->planned_precision = loom_backend_autocast();
  return rc;
}

/* Resizes t to [n, e's output sample shape]. */
static int shape_batch(loom_tensor *t, const entry *e, int64_t n) {
  int64_t shape[LOOM_MAX_DIMS];
  shape[0] = n;
  memcpy(shape + 1, e->out_shape, (size_t)e->out_ndim * sizeof *shape);
  return loom_tensor_resize(t, e->out_ndim + 1, shape);
}

/* The memory of the block at layers[i] (its gradients in the backward). */
static int block_io(loom_model *m, size_t i, int64_t n, bool backward, const loom_tensor *dout, loom_block_io *io) {
  const entry *b = &m->layers[i];
  for (int k = 0; k < b->block; k++) {
    entry *e = &m->layers[i + (size_t)k];
    const bool kept = b->kept >> k & 1, last = k == b->block - 1;
    io[k] = (loom_block_io){.params = m->params + e->offset, .buffers = m->buffers + e->buffer_offset};
    if (backward && !e->frozen)
      io[k].grads = m->grads + e->offset;
    int rc = kept && !backward ? shape_batch(e->out, e, n) : 0;
    if (kept && backward && !last) /* the gradient between two layers of the block */
      rc = shape_batch(e->dout, e, n);
    if (rc < 0)
      return rc;
    io[k].y = kept ? e->out->data : NULL;
    /* the model's last layer: the caller's gradient (none in the forward) */
    io[k].dy = !kept ? NULL : last && i + (size_t)k == m->count - 1 ? (dout ? dout->data : NULL) : e->dout->data;
  }
  return 0;
}

int loom_model_forward(loom_model *m, const loom_tensor *x, const loom_tensor **out) {
  if (!m->built)
    return loom_error_set(LOOM_ESTATE, "loom_model_forward: build the model first (loom_model_build)");
  int rc = check_input(m, x);
  if (rc < 0)
    return rc;
  if (!beside(m, x))
    return elsewhere(m, "loom_model_forward", "input", x);
  loom_backend *backend = loom_backend_of(x);
  if ((!m->planned || m->planned_on != backend || m->planned_precision != loom_backend_autocast()) &&
      (rc = plan_blocks(m, backend)) < 0)
    return rc;
  const loom_tensor *cur = x;
  const int64_t n = x->shape[0];
  for (size_t i = 0; i < m->count; i += (size_t)m->layers[i].block) {
    entry *e = &m->layers[i], *last = e + e->block - 1;
    if (e->block > 1) {
      loom_block_io io[32];
      if ((rc = block_io(m, i, n, false, NULL, io)) < 0 ||
          (rc = loom_backend_block_forward(backend, e->plan, m->train, cur->data, io, n)) < 0)
        return loom_error_wrap(rc, "forward of layers \"%s\" to \"%s\" (fused)", e->name, last->name);
    } else {
      if ((rc = shape_batch(e->out, e, n)) < 0)
        return rc;
      if ((rc = e->layer->ops.forward(e->layer->data, cur, e->out, m->train, m->train ? m->rng : NULL)) < 0)
        return loom_error_wrap(rc, "forward of layer \"%s\"", e->name);
    }
    cur = last->out;
  }
  m->last_input = x;
  *out = cur;
  return 0;
}

/* The backward of the block at layers[h], down to layer `lowest` if it is
 * inside (no gradient below it). */
static int block_backward(loom_model *m, size_t h, size_t lowest, const loom_tensor *dout) {
  entry *b = &m->layers[h];
  const loom_tensor *in = h ? m->layers[h - 1].out : m->last_input;
  const int64_t n = in->shape[0];
  float *dx = NULL;
  if (h > lowest) {
    loom_tensor *din = m->layers[h - 1].dout;
    int rc = loom_tensor_resize(din, in->ndim, in->shape);
    if (rc < 0)
      return rc;
    dx = din->data;
  }
  loom_block_io io[32];
  int rc = block_io(m, h, n, true, dout, io);
  if (rc == 0)
    rc = loom_backend_block_backward(m->planned_on, b->plan, lowest > h ? (int)(lowest - h) : 0, in->data, io, dx, n);
  return rc < 0 ? loom_error_wrap(rc, "backward of layers \"%s\" to \"%s\" (fused)", b->name,
                                  m->layers[h + (size_t)b->block - 1].name)
                : 0;
}

/* A built-in layer's report (loom_layer_report_grads), for the layer the
 * model's backward is running on this thread. */
static _Thread_local struct {
  bool reported, finite;
} grad_report;

void loom_layer_report_grads(bool finite) {
  grad_report.reported = true;
  grad_report.finite = grad_report.finite && finite;
}

/* After the backward of layers[first..last]: what their gradients are,
 * from the layer's report, or else checked now, while still in cache. */
static void note_grads(loom_model *m, size_t first, size_t last) {
  const entry *lo = &m->layers[first], *hi = &m->layers[last];
  const size_t n = hi->offset + hi->nparams - lo->offset;
  if (n == 0 || m->grads_state == GRADS_NONFINITE)
    return;
  bool finite = grad_report.finite;
  if (!grad_report.reported) {
    if (m->grads_state == GRADS_UNKNOWN) /* nothing to learn that would make it known */
      return;
    finite = false;
    loom_backend_all_finite(loom_model_backend(m), m->grads + lo->offset, (int64_t)n, &finite);
  }
  if (!finite)
    m->grads_state = GRADS_NONFINITE;
}

int loom_model_backward(loom_model *m, const loom_tensor *dout) {
  if (!m->last_input)
    return loom_error_set(LOOM_ESTATE, "loom_model_backward: no forward pass to differentiate");
  const entry *last = &m->layers[m->count - 1];
  if (dout->numel != last->out->numel)
    return loom_error_set(LOOM_ESHAPE, "loom_model_backward: gradient has %lld elements, output has %lld",
                          (long long)dout->numel, (long long)last->out->numel);
  if (!beside(m, dout))
    return elsewhere(m, "loom_model_backward", "output's gradient", dout);
  /* Below the lowest trainable layer no gradient is needed at all. */
  size_t lowest = m->count;
  for (size_t i = 0; i < m->count && lowest == m->count; i++)
    if (!m->layers[i].frozen && m->layers[i].nparams > 0)
      lowest = i;
  /* On a device, checking each layer's gradients would wait for the device
   * once per layer: they are left unknown, and the step checks them all in
   * one pass and one wait (loom_optimizer_step_checked). */
  if (loom_backend_device(loom_model_backend(m)) != LOOM_DEVICE_CPU)
    m->grads_state = GRADS_UNKNOWN;
  for (size_t i = m->count; i-- > lowest;) {
    entry *e = &m->layers[i];
    grad_report.reported = false, grad_report.finite = true;
    if (m->layers[e->head].block > 1) { /* i is the block's last layer */
      int rc = block_backward(m, e->head, lowest, dout);
      if (rc < 0)
        return rc;
      note_grads(m, e->head > lowest ? e->head : lowest, i);
      if (m->ready)
        m->ready(m->ready_ctx, m->layers[e->head > lowest ? e->head : lowest].offset);
      i = e->head;
      continue;
    }
    const loom_tensor *in = i ? m->layers[i - 1].out : m->last_input;
    loom_tensor *din = NULL;
    if (i > lowest) {
      din = m->layers[i - 1].dout;
      int rc = loom_tensor_resize(din, in->ndim, in->shape);
      if (rc < 0)
        return rc;
    }
    const loom_tensor *g = i == m->count - 1 ? dout : e->dout;
    int rc = e->layer->ops.backward(e->layer->data, in, e->out, g, din, !e->frozen);
    if (rc < 0)
      return loom_error_wrap(rc, "backward of layer \"%s\"", e->name);
    if (!e->frozen)
      note_grads(m, i, i);
    if (m->ready)
      m->ready(m->ready_ctx, e->offset);
  }
  return 0;
}

void loom_model_on_grads_ready(loom_model *m, void (*ready)(void *ctx, size_t first), void *ctx) {
  m->ready = ready;
  m->ready_ctx = ctx;
}

void loom_model_zero_grad(loom_model *m) {
  int rc = !m->grads ? -1 : m->backend ? loom_backend_zero(m->backend, m->grads, m->nparams * sizeof *m->grads)
                                       : (memset(m->grads, 0, m->nparams * sizeof *m->grads), 0);
  m->grads_state = rc == 0 ? GRADS_FINITE : GRADS_UNKNOWN;
}

bool loom_model_grads_checked(const loom_model *m, bool *finite) {
  *finite = m->grads_state == GRADS_FINITE;
  return m->grads_state != GRADS_UNKNOWN;
}

void loom_model_grads_rewritten(loom_model *m, bool finite_kept) {
  if (!finite_kept || m->grads_state == GRADS_NONFINITE)
    m->grads_state = GRADS_UNKNOWN;
}

float *loom_model_grad_buffer(loom_model *m) { return m->grads; }

void loom_model_set_train(loom_model *m, bool train) { m->train = train; }
void loom_model_set_rng(loom_model *m, loom_rng *rng) { m->rng = rng; }
size_t loom_model_num_buffers(const loom_model *m) { return m->nbuffers; }
float *loom_model_buffers(loom_model *m) { return m->buffers; }
bool loom_model_is_train(const loom_model *m) { return m->train; }
size_t loom_model_num_params(const loom_model *m) { return m->nparams; }
float *loom_model_params(loom_model *m) { return m->params; }
float *loom_model_grads(loom_model *m) {
  m->grads_state = GRADS_UNKNOWN; /* the caller may write them */
  return m->grads;
}
size_t loom_model_num_layers(const loom_model *m) { return m->count; }
loom_layer *loom_model_layer(const loom_model *m, size_t i) { return i < m->count ? m->layers[i].layer : NULL; }
const char *loom_model_layer_name(const loom_model *m, size_t i) { return i < m->count ? m->layers[i].name : NULL; }

int loom_model_input_shape(const loom_model *m, int64_t *shape) {
  if (!m->built)
    return 0;
  memcpy(shape, m->in_shape, (size_t)m->in_ndim * sizeof *shape);
  return m->in_ndim;
}

int loom_model_layer_output_shape(const loom_model *m, size_t i, int64_t *shape) {
  if (!m->built || i >= m->count)
    return 0;
  memcpy(shape, m->layers[i].out_shape, (size_t)m->layers[i].out_ndim * sizeof *shape);
  return m->layers[i].out_ndim;
}

int64_t loom_model_layer_macs(const loom_model *m, size_t i) {
  if (!m->built || i >= m->count || !m->layers[i].layer->ops.macs)
    return -1;
  const entry *e = &m->layers[i];
  int in_ndim = i ? m->layers[i - 1].out_ndim : m->in_ndim;
  const int64_t *in = i ? m->layers[i - 1].out_shape : m->in_shape;
  return e->layer->ops.macs(e->layer->data, in_ndim, in, e->out_ndim, e->out_shape);
}

loom_plan *loom_model_block_plan(const loom_model *m, size_t i) {
  return i < m->count && m->layers[i].block > 1 ? m->layers[i].plan : NULL;
}

loom_layer *loom_model_find_layer(const loom_model *m, const char *name) {
  for (size_t i = 0; i < m->count; i++)
    if (strcmp(m->layers[i].name, name) == 0)
      return m->layers[i].layer;
  return NULL;
}

void loom_model_layer_params(const loom_model *m, size_t i, size_t *offset, size_t *count) {
  *offset = i < m->count ? m->layers[i].offset : 0;
  *count = i < m->count ? m->layers[i].nparams : 0;
}

size_t loom_model_layer_decayed(const loom_model *m, size_t i) {
  if (i >= m->count)
    return 0;
  const loom_layer *l = m->layers[i].layer;
  return l->ops.num_decayed ? l->ops.num_decayed(l->data) : m->layers[i].nparams;
}

void loom_model_layer_buffers(const loom_model *m, size_t i, size_t *offset, size_t *count) {
  *offset = *count = 0;
  if (i >= m->count)
    return;
  const loom_layer *l = m->layers[i].layer;
  *offset = m->layers[i].buffer_offset;
  *count = l->ops.num_buffers ? l->ops.num_buffers(l->data) : 0;
}
