/* A residual block: y = act(main(x) + shortcut(x)), each branch a sequence
 * of layers run by their own ops (a built-in layer inside runs alone, never
 * in a fused block: the model plans blocks of its own layers only), on the
 * backend of the tensors it is given. Its parameters, gradients and buffers
 * are its inner layers', each bound to a slice of the block's part of the
 * model's arrays; its intermediate activations are its own, made on the
 * input's backend and kept from the forward for the backward. */
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

typedef struct inner {
  loom_layer *layer;
  int ndim; /* output sample shape */
  int64_t shape[LOOM_MAX_DIMS];
  loom_tensor *out, *dout; /* its activation and gradient */
} inner;

typedef struct residual {
  inner *layers; /* [0, num_main): the main branch; [num_main, count): the shortcut */
  size_t count, num_main;
  bool relu;
  int in_ndim, out_ndim;
  int64_t in_shape[LOOM_MAX_DIMS], out_shape[LOOM_MAX_DIMS];
  loom_tensor *sum, *dsum; /* before the activation, and its gradient (relu only) */
  loom_tensor *dshort;     /* the input's gradient through the shortcut */
  float *grads;            /* the block's gradients, for the finiteness report */
  size_t nparams;
} residual;

static size_t inner_params(const inner *l) { return loom_layer_num_params(l->layer); }

static size_t inner_decayed(const inner *l) {
  const loom_layer_ops *o = &l->layer->ops;
  return o->num_decayed ? o->num_decayed(l->layer->data) : inner_params(l);
}

/* Where an inner layer's parameters go in the block's slice: those that are
 * all weights first, then those that mix weights and biases, then those
 * without weights (a BatchNorm's), so that the block's decayed weights are
 * one prefix (loom_layer_ops.num_decayed). */
static int decay_rank(const inner *l) {
  const size_t np = inner_params(l), nd = inner_decayed(l);
  return np > 0 && nd >= np ? 0 : nd > 0 ? 1 : 2;
}

/* Sums that saturate at SIZE_MAX, as a layer's count that overflows does. */
static size_t add_sat(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }

static size_t res_num_params(void *data) {
  const residual *r = data;
  size_t n = 0;
  for (size_t i = 0; i < r->count; i++)
    n = add_sat(n, inner_params(&r->layers[i]));
  return n;
}

static size_t res_num_buffers(void *data) {
  const residual *r = data;
  size_t n = 0;
  for (size_t i = 0; i < r->count; i++) {
    const loom_layer_ops *o = &r->layers[i].layer->ops;
    n = add_sat(n, o->num_buffers ? o->num_buffers(r->layers[i].layer->data) : 0);
  }
  return n;
}

/* The layers whose parameters are all weights, and the weights of the first
 * that mixes them with biases: the prefix decay_rank makes. A second such
 * layer's weights fall after it, among the undecayed (docs/config.md). */
static size_t res_num_decayed(void *data) {
  const residual *r = data;
  size_t n = 0, mixed = 0;
  for (size_t i = 0; i < r->count; i++) {
    const inner *l = &r->layers[i];
    if (decay_rank(l) == 0)
      n = add_sat(n, inner_params(l));
    else if (decay_rank(l) == 1 && !mixed)
      mixed = inner_decayed(l);
  }
  return add_sat(n, mixed);
}

static void res_bind(void *data, float *params, float *grads, float *buffers) {
  residual *r = data;
  size_t off = 0, boff = 0;
  for (int rank = 0; rank < 3; rank++)
    for (size_t i = 0; i < r->count; i++) {
      inner *l = &r->layers[i];
      if (decay_rank(l) != rank)
        continue;
      if (l->layer->ops.bind)
        l->layer->ops.bind(l->layer->data, params + off, grads + off, buffers + boff);
      off += inner_params(l);
      boff += l->layer->ops.num_buffers ? l->layer->ops.num_buffers(l->layer->data) : 0;
    }
  r->grads = grads, r->nparams = off;
}

/* The inner layers in bind order (res_bind's), with their offsets. */
static bool res_inner(const void *data, size_t k, const loom_layer **layer, size_t *offset) {
  const residual *r = data;
  size_t off = 0, seen = 0;
  for (int rank = 0; rank < 3; rank++)
    for (size_t i = 0; i < r->count; i++) {
      const inner *l = &r->layers[i];
      if (decay_rank(l) != rank)
        continue;
      if (seen++ == k) {
        *layer = l->layer, *offset = off;
        return true;
      }
      off += inner_params(l);
    }
  return false;
}

static void res_init(void *data, loom_rng *rng) {
  residual *r = data;
  for (size_t i = 0; i < r->count; i++)
    if (r->layers[i].layer->ops.init)
      r->layers[i].layer->ops.init(r->layers[i].layer->data, rng);
}

static const char *branch_name(const residual *r, size_t i) { return i < r->num_main ? "main branch" : "shortcut"; }
static size_t branch_index(const residual *r, size_t i) { return i < r->num_main ? i : i - r->num_main; }

/* The input sample shape of inner layer i. */
static int inner_input(const residual *r, size_t i, const int64_t **shape) {
  if (i == 0 || i == r->num_main) {
    *shape = r->in_shape;
    return r->in_ndim;
  }
  *shape = r->layers[i - 1].shape;
  return r->layers[i - 1].ndim;
}

static void shape_text(char *out, size_t size, int ndim, const int64_t *shape) {
  size_t len = (size_t)snprintf(out, size, "[");
  for (int d = 0; d < ndim && len < size; d++)
    len += (size_t)snprintf(out + len, size - len, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (len < size)
    snprintf(out + len, size - len, "]");
}

static int res_output_shape(void *data, int ndim, const int64_t *in, int *out_ndim, int64_t *out) {
  residual *r = data;
  r->in_ndim = ndim;
  memcpy(r->in_shape, in, (size_t)ndim * sizeof *in);
  for (size_t i = 0; i < r->count; i++) {
    inner *l = &r->layers[i];
    const int64_t *cur;
    int cur_ndim = inner_input(r, i, &cur);
    int rc = l->layer->ops.output_shape(l->layer->data, cur_ndim, cur, &l->ndim, l->shape);
    if (rc < 0)
      return loom_error_wrap(rc, "residual block, %s layer %zu (%s)", branch_name(r, i), branch_index(r, i),
                             loom_layer_type(l->layer));
    if (l->ndim + 1 > LOOM_MAX_DIMS)
      return loom_error_set(LOOM_ESHAPE, "residual block, %s layer %zu (%s): %d dimensions per sample; at most %d fit",
                            branch_name(r, i), branch_index(r, i), loom_layer_type(l->layer), l->ndim,
                            LOOM_MAX_DIMS - 1);
  }
  const inner *main_last = &r->layers[r->num_main - 1];
  const bool identity = r->count == r->num_main;
  const int short_ndim = identity ? ndim : r->layers[r->count - 1].ndim;
  const int64_t *short_shape = identity ? in : r->layers[r->count - 1].shape;
  if (short_ndim != main_last->ndim || memcmp(short_shape, main_last->shape, (size_t)short_ndim * sizeof *in) != 0) {
    char a[128], b[128];
    shape_text(a, sizeof a, main_last->ndim, main_last->shape);
    shape_text(b, sizeof b, short_ndim, short_shape);
    return loom_error_set(LOOM_ESHAPE, "residual block: the main branch gives %s per sample but the %s gives %s; "
                                       "they are added, so they must match: %s",
                          a, identity ? "identity shortcut (the block's input)" : "shortcut", b,
                          identity ? "give the block a shortcut that makes the main branch's shape (a 1x1 Conv2d of "
                                     "its stride and out_channels, and a BatchNorm, as torchvision's downsample)"
                                   : "make the shortcut's stride and channels the main branch's");
  }
  r->out_ndim = main_last->ndim;
  memcpy(r->out_shape, main_last->shape, (size_t)r->out_ndim * sizeof *in);
  *out_ndim = r->out_ndim;
  memcpy(out, r->out_shape, (size_t)r->out_ndim * sizeof *in);
  return 0;
}

/* *t shaped [n, shape] on `backend` (NULL: host memory), made anew when it
 * was on another one: scratch whose contents do not matter. */
static int scratch(loom_tensor **t, loom_backend *backend, int64_t n, int ndim, const int64_t *shape) {
  int64_t full[LOOM_MAX_DIMS];
  full[0] = n;
  memcpy(full + 1, shape, (size_t)ndim * sizeof *shape);
  if (*t && (*t)->backend != backend) {
    loom_tensor_destroy(*t);
    *t = NULL;
  }
  if (*t)
    return loom_tensor_resize(*t, ndim + 1, full);
  *t = loom_tensor_create_on(backend, ndim + 1, full);
  return *t ? 0 : loom_last_error_code() ? loom_last_error_code() : LOOM_ENOMEM;
}

static int inner_error(const residual *r, size_t i, const char *pass, int rc) {
  return loom_error_wrap(rc, "residual block, %s of %s layer %zu (%s)", pass, branch_name(r, i), branch_index(r, i),
                         loom_layer_type(r->layers[i].layer));
}

/* Runs layers [first, end) from x; *out is the last one's output. */
static int branch_forward(residual *r, size_t first, size_t end, const loom_tensor *x, bool train, loom_rng *rng,
                          const loom_tensor **out) {
  const loom_tensor *cur = x;
  for (size_t i = first; i < end; i++) {
    inner *l = &r->layers[i];
    int rc = scratch(&l->out, x->backend, x->shape[0], l->ndim, l->shape);
    if (rc == 0)
      rc = l->layer->ops.forward(l->layer->data, cur, l->out, train, rng);
    if (rc < 0)
      return inner_error(r, i, "forward", rc);
    cur = l->out;
  }
  *out = cur;
  return 0;
}

static int res_forward(void *data, const loom_tensor *x, loom_tensor *y, bool train, loom_rng *rng) {
  residual *r = data;
  loom_backend *be = loom_backend_of(x);
  const loom_tensor *main_out, *short_out;
  int rc = branch_forward(r, 0, r->num_main, x, train, rng, &main_out);
  if (rc == 0)
    rc = branch_forward(r, r->num_main, r->count, x, train, rng, &short_out);
  if (rc < 0)
    return rc;
  if (!r->relu)
    return loom_backend_add(be, main_out->data, short_out->data, y->data, y->numel);
  if ((rc = scratch(&r->sum, x->backend, x->shape[0], r->out_ndim, r->out_shape)) < 0 ||
      (rc = loom_backend_add(be, main_out->data, short_out->data, r->sum->data, y->numel)) < 0)
    return rc;
  return loom_backend_act_forward(be, LOOM_ACT_RELU, 0.0f, r->sum->data, y->data, y->numel);
}

/* The backward of layers [first, end) from the gradient g of the last
 * one's output: parameter gradients when param_grads, and dx (the
 * gradient of x, the branch's input) unless it is NULL; then nothing below
 * the lowest layer with parameters is computed. */
static int branch_backward(residual *r, size_t first, size_t end, const loom_tensor *x, const loom_tensor *g,
                           loom_tensor *dx, bool param_grads) {
  size_t lowest = first;
  if (!dx)
    while (lowest < end && !(param_grads && inner_params(&r->layers[lowest]) > 0))
      lowest++;
  for (size_t i = end; i-- > lowest;) {
    inner *l = &r->layers[i];
    const loom_tensor *in = i > first ? r->layers[i - 1].out : x;
    loom_tensor *din = dx;
    int rc = 0;
    if (i > lowest) {
      inner *below = &r->layers[i - 1];
      rc = scratch(&below->dout, x->backend, x->shape[0], below->ndim, below->shape);
      din = below->dout;
    } else if (i > first) {
      din = NULL;
    }
    if (rc == 0)
      rc = l->layer->ops.backward(l->layer->data, in, l->out, g, din, param_grads);
    if (rc < 0)
      return inner_error(r, i, "backward", rc);
    g = din;
  }
  return 0;
}

static int res_backward(void *data, const loom_tensor *x, const loom_tensor *y, const loom_tensor *dy,
                        loom_tensor *dx, bool param_grads) {
  residual *r = data;
  loom_backend *be = loom_backend_of(x);
  const loom_tensor *g = dy;
  int rc = 0;
  if (!dx && !param_grads)
    return 0;
  if (r->relu) {
    if ((rc = scratch(&r->dsum, x->backend, x->shape[0], r->out_ndim, r->out_shape)) < 0 ||
        (rc = loom_backend_act_backward(be, LOOM_ACT_RELU, 0.0f, r->sum->data, y->data, dy->data, r->dsum->data,
                                        dy->numel)) < 0)
      return rc;
    g = r->dsum;
  }
  /* dx = the main branch's input gradient + the shortcut's (g itself for
   * the identity). */
  rc = branch_backward(r, 0, r->num_main, x, g, dx, param_grads);
  if (rc == 0 && r->count > r->num_main) {
    loom_tensor *dshort = NULL;
    if (dx && (rc = scratch(&r->dshort, x->backend, x->shape[0], r->in_ndim, r->in_shape)) == 0)
      dshort = r->dshort;
    if (rc == 0)
      rc = branch_backward(r, r->num_main, r->count, x, g, dshort, param_grads);
    if (rc == 0 && dx)
      rc = loom_backend_add(be, dx->data, dshort->data, dx->data, dx->numel);
  } else if (rc == 0 && dx) {
    rc = loom_backend_add(be, dx->data, g->data, dx->data, dx->numel);
  }
  /* The inner layers that check their gradients report only theirs: the
   * block reports all of them (loom_layer_report_grads), on the host,
   * where a check costs no wait. */
  if (rc == 0 && param_grads && r->nparams && loom_backend_device(be) == LOOM_DEVICE_CPU) {
    bool finite = false;
    if ((rc = loom_backend_all_finite(be, r->grads, (int64_t)r->nparams, &finite)) == 0)
      loom_layer_report_grads(finite);
  }
  return rc;
}

/* The inner layers' sums; the addition and the activation count 0 (an
 * elementwise function). -1 when an inner layer does not say. */
static int64_t res_macs(void *data, int ndim, const int64_t *in, int out_ndim, const int64_t *out) {
  (void)ndim, (void)in, (void)out_ndim, (void)out;
  const residual *r = data;
  int64_t total = 0;
  for (size_t i = 0; i < r->count; i++) {
    const inner *l = &r->layers[i];
    const int64_t *shape;
    int in_ndim = inner_input(r, i, &shape);
    int64_t m = l->layer->ops.macs ? l->layer->ops.macs(l->layer->data, in_ndim, shape, l->ndim, l->shape) : -1;
    if (m < 0)
      return -1;
    total += m;
  }
  return total;
}

static void drop_scratch(residual *r) {
  for (size_t i = 0; i < r->count; i++) {
    loom_tensor_destroy(r->layers[i].out), loom_tensor_destroy(r->layers[i].dout);
    r->layers[i].out = r->layers[i].dout = NULL;
  }
  loom_tensor_destroy(r->sum), loom_tensor_destroy(r->dsum), loom_tensor_destroy(r->dshort);
  r->sum = r->dsum = r->dshort = NULL;
}

/* The model moves: the inner layers let go of their plans, and the block
 * of its activations, made again on the next forward's backend. */
static int res_release(void *data) {
  residual *r = data;
  drop_scratch(r);
  for (size_t i = 0; i < r->count; i++) {
    const loom_layer *l = r->layers[i].layer;
    int rc = l->release ? l->release(l->data) : 0;
    if (rc < 0)
      return inner_error(r, i, "release", rc);
  }
  return 0;
}

static void res_destroy(void *data) {
  residual *r = data;
  if (!r)
    return;
  drop_scratch(r);
  for (size_t i = 0; i < r->count; i++)
    loom_layer_destroy(r->layers[i].layer);
  free(r->layers);
  free(r);
}

static const loom_layer_ops residual_ops = {
    .type = "Residual",
    .num_params = res_num_params,
    .num_buffers = res_num_buffers,
    .num_decayed = res_num_decayed,
    .output_shape = res_output_shape,
    .bind = res_bind,
    .init = res_init,
    .forward = res_forward,
    .backward = res_backward,
    .destroy = res_destroy,
    .macs = res_macs,
};

static void destroy_all(loom_layer *const *a, size_t n) {
  for (size_t i = 0; a && i < n; i++)
    loom_layer_destroy(a[i]);
}

/* The reason the arguments are refused, or NULL. */
static const char *refused(loom_layer *const *layers, size_t num_layers, loom_layer *const *shortcut,
                           size_t num_shortcut) {
  if (num_layers == 0 || !layers)
    return "the main branch needs at least one layer";
  if (num_shortcut && !shortcut)
    return "num_shortcut layers given as NULL";
  for (size_t i = 0; i < num_layers + num_shortcut; i++)
    if (!(i < num_layers ? layers[i] : shortcut[i - num_layers]))
      return "a layer is NULL";
  return NULL;
}

loom_layer *loom_residual_create(loom_layer *const *layers, size_t num_layers, loom_layer *const *shortcut,
                                 size_t num_shortcut, bool relu) {
  const char *bad = refused(layers, num_layers, shortcut, num_shortcut);
  residual *r = bad ? NULL : calloc(1, sizeof *r);
  inner *inners = r ? calloc(num_layers + num_shortcut, sizeof *inners) : NULL;
  if (!inners) {
    /* A NULL layer is a constructor's failure: its message is kept. */
    if (bad && loom_last_error_code() && strcmp(bad, "a layer is NULL") == 0)
      loom_error_wrap(loom_last_error_code(), "loom_residual_create: %s", bad);
    else if (bad)
      loom_error_set(LOOM_EINVAL, "loom_residual_create: %s", bad);
    else
      loom_error_oom("a residual block");
    destroy_all(layers, num_layers), destroy_all(shortcut, num_shortcut);
    free(r);
    return NULL;
  }
  for (size_t i = 0; i < num_layers + num_shortcut; i++)
    inners[i].layer = i < num_layers ? layers[i] : shortcut[i - num_layers];
  r->layers = inners, r->count = num_layers + num_shortcut, r->num_main = num_layers, r->relu = relu;
  loom_layer *layer = loom_layer_create(&residual_ops, r);
  if (layer)
    layer->release = res_release, layer->inner = res_inner;
  return layer;
}
