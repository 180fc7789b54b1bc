/* A layer's backward against central differences of its forward (or of a
 * double-precision reference): loom/gradcheck.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error_internal.h"
#include "loom/gradcheck.h"
#include "models/layer_internal.h"

loom_gradcheck_options loom_gradcheck_defaults(void) {
  return (loom_gradcheck_options){.batch = 2, .seed = 11, .input_scale = 1};
}

typedef struct check {
  loom_layer *layer;
  const loom_gradcheck_options *o;
  loom_tensor *x, *y, *dy, *dx;
  int64_t nx, ny, np, nb;
  float *params, *grads, *buffers, *kept_buffers;
  double *xd, *pd, *rd, *yd; /* the reference's copies */
  loom_gradcheck_report rep;
  double tol;
  char failed[200];
} check;

static loom_tensor *batch_tensor(int64_t n, int ndim, const int64_t *shape) {
  int64_t full[8] = {n};
  memcpy(full + 1, shape, (size_t)ndim * sizeof *shape);
  return loom_tensor_create(ndim + 1, full);
}

/* The layer's forward into y, with the same dropout draws and running
 * statistics every time. */
static int forward(check *c) {
  if (c->nb)
    memcpy(c->buffers, c->kept_buffers, (size_t)c->nb * sizeof(float));
  loom_rng rng;
  loom_rng_seed(&rng, c->o->seed, 2, 0);
  return c->layer->ops.forward(c->layer->data, c->x, c->y, c->o->train, c->o->train ? &rng : NULL);
}

/* L = sum(out * r): from the reference in double, or the layer in float. */
static int loss(check *c, double *out) {
  double l = 0;
  if (c->o->reference) {
    c->o->reference(c->o->reference_ctx, c->xd, c->pd, c->yd, c->o->batch);
    for (int64_t i = 0; i < c->ny; i++)
      l += c->yd[i] * c->rd[i];
  } else {
    int rc = forward(c);
    if (rc < 0)
      return rc;
    const float *y = loom_tensor_data(c->y);
    for (int64_t i = 0; i < c->ny; i++)
      l += (double)y[i] * c->rd[i];
  }
  *out = l;
  return 0;
}

static void compare(check *c, const char *what, int64_t i, double got, double want) {
  double err = fabs(got - want) / fmax(1.0, fabs(want));
  if (isnan(got) || isnan(err))
    err = INFINITY;
  c->rep.checked++;
  if (err > c->rep.max_error || c->rep.checked == 1) {
    c->rep.max_error = err;
    snprintf(c->rep.worst, sizeof c->rep.worst, "%s[%lld]", what, (long long)i);
  }
  if (err > c->tol && !c->failed[0])
    snprintf(c->failed, sizeof c->failed, "%s[%lld]: the layer gives %.8g, the differences %.8g", what, (long long)i,
             got, want);
}

/* d L / d v by central differences, v one of the values behind L (the
 * float one the layer reads and, with a reference, its double copy). */
static int numeric(check *c, float *v, double *vd, double *out) {
  double h = c->o->reference ? 1e-6 : 1e-3, up = 0, down = 0;
  float keep = *v;
  double keep_d = vd ? *vd : 0;
  if (c->o->reference)
    *vd = keep_d + h;
  else
    *v = keep + (float)h;
  int rc = loss(c, &up);
  if (c->o->reference)
    *vd = keep_d - h;
  else
    *v = keep - (float)h;
  if (rc == 0)
    rc = loss(c, &down);
  *v = keep;
  if (vd)
    *vd = keep_d;
  /* The step as it landed in float (exactly h in double). */
  double step = c->o->reference ? 2 * h : (double)(keep + (float)h) - (double)(keep - (float)h);
  *out = (up - down) / step;
  return rc;
}

/* Storage the check makes: the layer's init from the seed, plus noise. */
static int own_storage(check *c) {
  c->params = calloc((size_t)c->np + 1, sizeof(float));
  c->grads = calloc((size_t)c->np + 1, sizeof(float));
  c->buffers = calloc((size_t)c->nb + 1, sizeof(float));
  if (!c->params || !c->grads || !c->buffers)
    return loom_error_oom("the gradient check's parameters");
  if (c->layer->ops.bind)
    c->layer->ops.bind(c->layer->data, c->params, c->grads, c->buffers);
  loom_rng rng;
  loom_rng_seed(&rng, c->o->seed, 0, 0);
  if (c->layer->ops.init)
    c->layer->ops.init(c->layer->data, &rng);
  for (int64_t i = 0; i < c->np; i++)
    c->params[i] += 0.3f * (2.0f * loom_rng_uniform(&rng) - 1.0f);
  return 0;
}

static int run_check(check *c, int ndim, const int64_t *shape) {
  const loom_gradcheck_options *o = c->o;
  int ondim;
  int64_t oshape[8];
  int rc = c->layer->ops.output_shape(c->layer->data, ndim, shape, &ondim, oshape);
  if (rc < 0)
    return rc;
  c->x = batch_tensor(o->batch, ndim, shape), c->dx = batch_tensor(o->batch, ndim, shape);
  c->y = batch_tensor(o->batch, ondim, oshape), c->dy = batch_tensor(o->batch, ondim, oshape);
  if (!c->x || !c->dx || !c->y || !c->dy)
    return loom_error_oom("the gradient check's tensors");
  c->nx = loom_tensor_numel(c->x), c->ny = loom_tensor_numel(c->y);
  c->xd = malloc((size_t)c->nx * sizeof(double)), c->rd = malloc((size_t)c->ny * sizeof(double));
  c->yd = malloc((size_t)c->ny * sizeof(double)), c->pd = malloc(((size_t)c->np + 1) * sizeof(double));
  c->kept_buffers = malloc(((size_t)c->nb + 1) * sizeof(float));
  if (!c->xd || !c->rd || !c->yd || !c->pd || !c->kept_buffers)
    return loom_error_oom("the gradient check's values");
  if (c->nb)
    memcpy(c->kept_buffers, c->buffers, (size_t)c->nb * sizeof(float));
  loom_rng rng;
  loom_rng_seed(&rng, o->seed, 1, 0);
  float *x = loom_tensor_data(c->x), *dy = loom_tensor_data(c->dy), *dx = loom_tensor_data(c->dx);
  for (int64_t i = 0; i < c->nx; i++)
    c->xd[i] = x[i] = (float)(o->input_scale * (2.0 * loom_rng_uniform(&rng) - 1.0));
  for (int64_t i = 0; i < c->ny; i++)
    c->rd[i] = dy[i] = 2.0f * loom_rng_uniform(&rng) - 1.0f;
  for (int64_t i = 0; i < c->np; i++)
    c->pd[i] = c->params[i];
  if ((rc = forward(c)) < 0)
    return rc;
  if (o->reference) {
    c->tol = 1e-4;
    o->reference(o->reference_ctx, c->xd, c->pd, c->yd, o->batch);
    for (int64_t i = 0; i < c->ny; i++)
      compare(c, "forward", i, loom_tensor_data(c->y)[i], c->yd[i]);
  }
  c->tol = o->reference ? 2e-3 : 1e-2;
  if (c->np)
    memset(c->grads, 0, (size_t)c->np * sizeof(float));
  for (int64_t i = 0; i < c->nx; i++)
    dx[i] = NAN; /* backward must write every input gradient */
  if ((rc = c->layer->ops.backward(c->layer->data, c->x, c->y, c->dy, c->dx, true)) < 0)
    return rc;
  double want;
  for (int64_t i = 0; i < c->np && rc == 0; i++)
    if ((rc = numeric(c, &c->params[i], c->pd + i, &want)) == 0)
      compare(c, "dparam", i, c->grads[i], want);
  for (int64_t i = 0; i < c->nx && rc == 0; i++)
    if ((rc = numeric(c, &x[i], c->xd + i, &want)) == 0)
      compare(c, "dinput", i, dx[i], want);
  if (c->nb) /* the buffers as the first forward left them */
    memcpy(c->buffers, c->kept_buffers, (size_t)c->nb * sizeof(float));
  return rc;
}

int loom_layer_gradcheck(loom_layer *layer, int ndim, const int64_t *sample_shape,
                         const loom_gradcheck_options *options, loom_gradcheck_report *report) {
  loom_gradcheck_options o = options ? *options : loom_gradcheck_defaults();
  check c = {.layer = layer, .o = &o};
  if (report)
    memset(report, 0, sizeof *report);
  if (!layer || !sample_shape || ndim < 1 || ndim > 6 || o.batch < 1 || !(o.input_scale > 0))
    return loom_error_set(LOOM_EINVAL, "loom_layer_gradcheck: needs a layer, a sample shape of 1 to 6 dimensions, "
                                       "a batch >= 1 and an input scale > 0");
  /* The shapes first: a layer that takes its input size from the input
   * (in_channels 0) knows its parameter count only then. */
  int ondim;
  int64_t oshape[8];
  int rc = layer->ops.output_shape(layer->data, ndim, sample_shape, &ondim, oshape);
  if (rc < 0)
    return rc;
  c.np = (int64_t)loom_layer_num_params(layer);
  c.nb = layer->ops.num_buffers ? (int64_t)layer->ops.num_buffers(layer->data) : 0;
  bool own = !o.params;
  if (own)
    rc = own_storage(&c);
  else if ((c.np && !o.grads) || (c.nb && !o.buffers))
    rc = loom_error_set(LOOM_EINVAL, "loom_layer_gradcheck: with params given, give the grads%s the layer is bound "
                                     "to too", c.nb ? " and buffers" : "");
  else
    c.params = o.params, c.grads = o.grads, c.buffers = o.buffers;
  if (rc == 0)
    rc = run_check(&c, ndim, sample_shape);
  if (rc == 0 && c.failed[0])
    rc = loom_error_set(LOOM_EINVAL, "layer %s: gradient check failed at %s (tolerance %g, relative to max(1, |value|))",
                        loom_layer_type(layer), c.failed, c.tol);
  if (report)
    *report = c.rep;
  loom_tensor_destroy(c.x), loom_tensor_destroy(c.y), loom_tensor_destroy(c.dy), loom_tensor_destroy(c.dx);
  free(c.xd), free(c.rd), free(c.yd), free(c.pd), free(c.kept_buffers);
  if (own)
    free(c.params), free(c.grads), free(c.buffers);
  return rc;
}
