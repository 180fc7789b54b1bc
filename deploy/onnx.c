/* The model as ONNX: each layer mapped to ONNX operators (opset 13), the
 * parameters and buffers as initializers, serialised by protobuf-c from
 * the ONNX schema (onnx.proto, compiled by protoc-c at build time). A
 * build without protobuf-c has the same API, refusing with LOOM_ENOTSUP. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error_internal.h"
#include "deploy/deploy_internal.h"
#include "loom/version.h"
#include "models/layer_internal.h"

#if LOOM_HAVE_ONNX

#include "onnx.pb-c.h"

enum { OPSET = 13, IR_VERSION = 7 };

/* Everything the model proto points to: freed at once when written. */
typedef struct builder {
  void **mem;
  size_t num_mem, cap_mem;
  Onnx__NodeProto **nodes;
  size_t num_nodes, cap_nodes;
  Onnx__TensorProto **inits;
  size_t num_inits, cap_inits;
  bool oom;
  /* The tensor the next layer reads and its loom sample shape. */
  const char *cur;
  int ndim;
  int64_t shape[LOOM_MAX_DIMS];
} builder;

/* Appends `item` to a growing array of pointers. */
static void push(builder *b, void ***items, size_t *n, size_t *cap, void *item) {
  if (!item || b->oom) {
    b->oom = true;
    return;
  }
  if (*n == *cap) {
    size_t grown = *cap ? *cap * 2 : 16;
    void **more = realloc(*items, grown * sizeof *more);
    if (!more) {
      b->oom = true;
      return;
    }
    *items = more, *cap = grown;
  }
  (*items)[(*n)++] = item;
}

static void *alloc(builder *b, size_t size) {
  void *p = calloc(1, size);
  if (!p)
    b->oom = true;
  else
    push(b, &b->mem, &b->num_mem, &b->cap_mem, p);
  return b->oom ? NULL : p;
}

static char *str(builder *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *str(builder *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  char *s = alloc(b, (size_t)n + 1);
  if (s) {
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
  }
  return s;
}

static Onnx__AttributeProto *attr(builder *b, const char *name, Onnx__AttributeProto__AttributeType type) {
  Onnx__AttributeProto *a = alloc(b, sizeof *a);
  if (a) {
    onnx__attribute_proto__init(a);
    a->name = str(b, "%s", name);
    a->has_type = true, a->type = type;
  }
  return a;
}

static Onnx__AttributeProto *attr_int(builder *b, const char *name, int64_t v) {
  Onnx__AttributeProto *a = attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
  if (a)
    a->has_i = true, a->i = v;
  return a;
}

static Onnx__AttributeProto *attr_float(builder *b, const char *name, float v) {
  Onnx__AttributeProto *a = attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
  if (a)
    a->has_f = true, a->f = v;
  return a;
}

static Onnx__AttributeProto *attr_ints(builder *b, const char *name, size_t n, const int64_t *v) {
  Onnx__AttributeProto *a = attr(b, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
  int64_t *copy = alloc(b, n * sizeof *copy);
  if (a && copy) {
    memcpy(copy, v, n * sizeof *copy);
    a->n_ints = n, a->ints = copy;
  }
  return a;
}

/* A node `op` reading inputs[0, nin) into `output`. */
static void node(builder *b, const char *op, const char *name, const char *const *inputs, size_t nin, const char *output,
                 Onnx__AttributeProto *const *attrs, size_t nattrs) {
  Onnx__NodeProto *n = alloc(b, sizeof *n);
  char **in = alloc(b, (nin ? nin : 1) * sizeof *in), **out = alloc(b, sizeof *out);
  Onnx__AttributeProto **at = alloc(b, (nattrs ? nattrs : 1) * sizeof *at);
  if (b->oom)
    return;
  onnx__node_proto__init(n);
  for (size_t i = 0; i < nin; i++)
    in[i] = str(b, "%s", inputs[i]);
  out[0] = str(b, "%s", output);
  for (size_t i = 0; i < nattrs; i++)
    at[i] = attrs[i];
  n->n_input = nin, n->input = in;
  n->n_output = 1, n->output = out;
  n->n_attribute = nattrs, n->attribute = at;
  n->name = str(b, "%s", name);
  n->op_type = str(b, "%s", op);
  push(b, (void ***)&b->nodes, &b->num_nodes, &b->cap_nodes, n);
}

/* One node from the current tensor to `output`, which becomes current. */
static void step(builder *b, const char *op, const char *output, Onnx__AttributeProto *const *attrs, size_t nattrs) {
  node(b, op, output, &b->cur, 1, output, attrs, nattrs);
  b->cur = output;
}

static Onnx__TensorProto *tensor(builder *b, const char *name, int ndim, const int64_t *dims, int32_t type) {
  Onnx__TensorProto *t = alloc(b, sizeof *t);
  int64_t *d = alloc(b, (ndim ? (size_t)ndim : 1) * sizeof *d);
  if (b->oom)
    return NULL;
  onnx__tensor_proto__init(t);
  if (ndim)
    memcpy(d, dims, (size_t)ndim * sizeof *d);
  t->n_dims = (size_t)ndim, t->dims = d;
  t->has_data_type = true, t->data_type = type;
  t->name = str(b, "%s", name);
  push(b, (void ***)&b->inits, &b->num_inits, &b->cap_inits, t);
  return t;
}

/* A float initializer over `data` (borrowed until the file is written). */
static void init_float(builder *b, const char *name, int ndim, const int64_t *dims, const float *data) {
  Onnx__TensorProto *t = tensor(b, name, ndim, dims, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT);
  int64_t n = 1;
  for (int k = 0; k < ndim; k++)
    n *= dims[k];
  if (t)
    t->n_float_data = (size_t)n, t->float_data = (float *)data;
}

static void init_scalar(builder *b, const char *name, float v) {
  float *data = alloc(b, sizeof *data);
  if (data) {
    *data = v;
    init_float(b, name, 0, NULL, data);
  }
}

static void init_int64(builder *b, const char *name, int64_t n, const int64_t *values) {
  Onnx__TensorProto *t = tensor(b, name, 1, &n, ONNX__TENSOR_PROTO__DATA_TYPE__INT64);
  int64_t *copy = alloc(b, (size_t)n * sizeof *copy);
  if (t && copy) {
    memcpy(copy, values, (size_t)n * sizeof *copy);
    t->n_int64_data = (size_t)n, t->int64_data = copy;
  }
}

/* [N, H, W] -> [N, 1, H, W]: loom's convolutions and pools read a 2-d
 * sample as one channel. */
static void channels(builder *b, const char *layer) {
  if (b->ndim != 2)
    return;
  const char *axes = str(b, "%s.unsqueeze_axes", layer);
  init_int64(b, axes, 1, (int64_t[]){1});
  const char *in[2] = {b->cur, axes}, *out = str(b, "%s.unsqueezed", layer);
  node(b, "Unsqueeze", out, in, 2, out, NULL, 0);
  b->cur = out;
}

/* [N, ...] -> [N, prod(...)] when the sample has more than one dimension. */
static void flat(builder *b, const char *layer, const char *output) {
  if (b->ndim == 1 && !output)
    return;
  Onnx__AttributeProto *a[] = {attr_int(b, "axis", 1)};
  step(b, "Flatten", output ? output : str(b, "%s.flat", layer), a, 1);
}

static void gelu(builder *b, const char *layer, const char *out) {
  /* x * 0.5 * (1 + erf(x / sqrt(2))): opset 13 has no Gelu. */
  const char *x = b->cur, *k[3] = {str(b, "%s.sqrt2", layer), str(b, "%s.one", layer), str(b, "%s.half", layer)};
  init_scalar(b, k[0], sqrtf(2.0f));
  init_scalar(b, k[1], 1.0f);
  init_scalar(b, k[2], 0.5f);
  const char *t[4] = {str(b, "%s.div", layer), str(b, "%s.erf", layer), str(b, "%s.add", layer), str(b, "%s.mul", layer)};
  node(b, "Div", t[0], (const char *[]){x, k[0]}, 2, t[0], NULL, 0);
  node(b, "Erf", t[1], &t[0], 1, t[1], NULL, 0);
  node(b, "Add", t[2], (const char *[]){t[1], k[1]}, 2, t[2], NULL, 0);
  node(b, "Mul", t[3], (const char *[]){x, t[2]}, 2, t[3], NULL, 0);
  node(b, "Mul", out, (const char *[]){t[3], k[2]}, 2, out, NULL, 0);
  b->cur = out;
}

static void activation(builder *b, const loom_layer_desc *d, const char *layer, const char *out) {
  switch (d->act.act) {
  case LOOM_ACT_RELU: step(b, "Relu", out, NULL, 0); break;
  case LOOM_ACT_LEAKY_RELU: step(b, "LeakyRelu", out, (Onnx__AttributeProto *[]){attr_float(b, "alpha", d->act.param)}, 1); break;
  case LOOM_ACT_TANH: step(b, "Tanh", out, NULL, 0); break;
  case LOOM_ACT_SIGMOID: step(b, "Sigmoid", out, NULL, 0); break;
  case LOOM_ACT_GELU: gelu(b, layer, out); break;
  default: break; /* every loom_activation is above */
  }
}

static void conv(builder *b, const loom_conv_desc *c, const loom_named_tensor *t, int nt, const char *layer,
                 const char *out) {
  channels(b, layer);
  Onnx__AttributeProto *a[] = {attr_ints(b, "kernel_shape", 2, (int64_t[]){c->kh, c->kw}),
                               attr_ints(b, "strides", 2, (int64_t[]){c->sh, c->sw}),
                               attr_ints(b, "pads", 4, (int64_t[]){c->ph, c->pw, c->ph, c->pw}),
                               attr_ints(b, "dilations", 2, (int64_t[]){c->dh, c->dw}), attr_int(b, "group", 1)};
  const char *in[3] = {b->cur, t[0].name, nt > 1 ? t[1].name : NULL};
  node(b, "Conv", out, in, nt > 1 ? 3 : 2, out, a, 5);
  b->cur = out;
}

static void pool(builder *b, const loom_pool_desc *p, const char *layer, const char *out) {
  channels(b, layer);
  if (p->mode == LOOM_POOL_GLOBAL_AVG) {
    step(b, "GlobalAveragePool", str(b, "%s.pooled", layer), NULL, 0);
    b->ndim = 3; /* [N, C, 1, 1] -> loom's [N, C] */
    flat(b, layer, out);
    return;
  }
  Onnx__AttributeProto *a[] = {attr_ints(b, "kernel_shape", 2, (int64_t[]){p->k, p->k}),
                               attr_ints(b, "strides", 2, (int64_t[]){p->s, p->s}),
                               attr_ints(b, "pads", 4, (int64_t[]){p->p, p->p, p->p, p->p}),
                               attr_int(b, "count_include_pad", 1)};
  if (p->mode == LOOM_POOL_MAX)
    step(b, "MaxPool", out, a, 3);
  else
    step(b, "AveragePool", out, a, 4);
}

/* Layer i's operators, from b->cur to `out`. */
static int layer(builder *b, loom_model *m, size_t i, const char *out) {
  loom_layer *l = loom_model_layer(m, i);
  const char *name = loom_model_layer_name(m, i), *type = loom_layer_type(l);
  loom_named_tensor t[LOOM_LAYER_MAX_TENSORS];
  int nt;
  loom_deploy_layer_tensors(m, i, t, &nt);
  for (int k = 0; k < nt; k++)
    init_float(b, t[k].name, t[k].ndim, t[k].shape, t[k].data);
  loom_layer_desc d;
  bool described = l->describe && l->describe(l->data, &d);
  if (strcmp(type, "Linear") == 0) {
    flat(b, name, NULL);
    const char *in[3] = {b->cur, t[0].name, nt > 1 ? t[1].name : NULL};
    node(b, "Gemm", out, in, nt > 1 ? 3 : 2, out, (Onnx__AttributeProto *[]){attr_int(b, "transB", 1)}, 1);
    b->cur = out;
  } else if (strcmp(type, "Flatten") == 0) {
    flat(b, name, out);
  } else if (strcmp(type, "Dropout") == 0) {
    step(b, "Identity", out, NULL, 0);
  } else if (described && d.kind == LOOM_LAYER_ACT) {
    activation(b, &d, name, out);
  } else if (described && d.kind == LOOM_LAYER_CONV) {
    conv(b, &d.conv, t, nt, name, out);
  } else if (described && d.kind == LOOM_LAYER_POOL) {
    pool(b, &d.pool, name, out);
  } else if (described && d.kind == LOOM_LAYER_BATCHNORM) {
    const char *in[5] = {b->cur, t[0].name, t[1].name, t[2].name, t[3].name};
    node(b, "BatchNormalization", out, in, 5, out,
         (Onnx__AttributeProto *[]){attr_float(b, "epsilon", d.batchnorm.eps),
                                    attr_float(b, "momentum", 1.0f - d.batchnorm.momentum)},
         2);
    b->cur = out;
  } else {
    return loom_error_set(LOOM_ENOTSUP, "layer \"%s\" (%s) has no ONNX mapping; loom exports Linear, Conv2d, the "
                                        "pools, BatchNorm, Flatten, Dropout and the activations",
                          name, type);
  }
  b->ndim = loom_model_layer_output_shape(m, i, b->shape);
  return b->oom ? loom_error_oom("the ONNX graph") : 0;
}

/* A float tensor [N, shape...] with N named "N". */
static Onnx__ValueInfoProto *value_info(builder *b, const char *name, int ndim, const int64_t *shape) {
  Onnx__ValueInfoProto *v = alloc(b, sizeof *v);
  Onnx__TypeProto *tp = alloc(b, sizeof *tp);
  Onnx__TypeProto__Tensor *tt = alloc(b, sizeof *tt);
  Onnx__TensorShapeProto *sp = alloc(b, sizeof *sp);
  Onnx__TensorShapeProto__Dimension **dims = alloc(b, (size_t)(ndim + 1) * sizeof *dims);
  for (int k = 0; k <= ndim && !b->oom; k++) {
    Onnx__TensorShapeProto__Dimension *d = dims[k] = alloc(b, sizeof *d);
    if (!d)
      break;
    onnx__tensor_shape_proto__dimension__init(d);
    if (k == 0)
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM, d->dim_param = str(b, "N");
    else
      d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE, d->dim_value = shape[k - 1];
  }
  if (b->oom)
    return NULL;
  onnx__tensor_shape_proto__init(sp);
  sp->n_dim = (size_t)ndim + 1, sp->dim = dims;
  onnx__type_proto__tensor__init(tt);
  tt->has_elem_type = true, tt->elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, tt->shape = sp;
  onnx__type_proto__init(tp);
  tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE, tp->tensor_type = tt;
  onnx__value_info_proto__init(v);
  v->name = str(b, "%s", name), v->type = tp;
  return v;
}

static void builder_free(builder *b) {
  for (size_t i = 0; i < b->num_mem; i++)
    free(b->mem[i]);
  free(b->mem);
  free(b->nodes);
  free(b->inits);
}

static int write_packed(const Onnx__ModelProto *model, const char *path) {
  size_t size = onnx__model_proto__get_packed_size(model);
  uint8_t *buf = malloc(size ? size : 1);
  if (!buf)
    return loom_error_oom("the ONNX file");
  onnx__model_proto__pack(model, buf);
  char tmp[4200];
  int rc = loom_deploy_temp(path, "ONNX model", tmp, sizeof tmp);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  FILE *f = fopen(tmp, "wb");
  bool ok = f && fwrite(buf, 1, size, f) == size;
  if (f && fclose(f) != 0)
    ok = false;
  if (!ok || rename(tmp, path) < 0) {
    rc = loom_error_set(LOOM_EIO, "cannot write the ONNX model %s: %s", path, strerror(errno));
    unlink(tmp);
  }
  free(buf);
  return rc;
}

bool loom_onnx_available(void) { return true; }

int loom_export_onnx(loom_model *m, const char *path) {
  if (!m || !path || !loom_model_is_built(m))
    return loom_error_set(LOOM_EINVAL, "loom_export_onnx: needs a built model and a file name");
  builder b = {.cur = "input"};
  b.ndim = loom_model_input_shape(m, b.shape);
  Onnx__ValueInfoProto *input = value_info(&b, "input", b.ndim, b.shape);
  int rc = 0;
  size_t n = loom_model_num_layers(m);
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = layer(&b, m, i, i + 1 == n ? "output" : loom_model_layer_name(m, i));
  Onnx__ValueInfoProto *output = rc == 0 ? value_info(&b, "output", b.ndim, b.shape) : NULL;
  if (rc == 0 && b.oom)
    rc = loom_error_oom("the ONNX graph");
  if (rc < 0)
    rc = loom_error_wrap(rc, "exporting ONNX to %s", path);
  if (rc == 0) {
    Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
    graph.name = "loom";
    graph.n_node = b.num_nodes, graph.node = b.nodes;
    graph.n_initializer = b.num_inits, graph.initializer = b.inits;
    graph.n_input = 1, graph.input = &input;
    graph.n_output = 1, graph.output = &output;
    Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT, *opsets = &opset;
    opset.domain = "", opset.has_version = true, opset.version = OPSET;
    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    model.has_ir_version = true, model.ir_version = IR_VERSION;
    model.n_opset_import = 1, model.opset_import = &opsets;
    model.producer_name = "loom", model.producer_version = LOOM_VERSION;
    model.graph = &graph;
    rc = write_packed(&model, path); /* its errors name the file */
  }
  builder_free(&b);
  return rc;
}

#else /* no protobuf-c: the same API, refusing */

bool loom_onnx_available(void) { return false; }

int loom_export_onnx(loom_model *m, const char *path) {
  (void)m;
  return loom_error_set(LOOM_ENOTSUP, "cannot export %s: this loom was built without ONNX export (it needs "
                                      "protobuf-c and the ONNX schema: install protobuf-c-compiler, libprotobuf-c-dev "
                                      "and python3-onnx, as scripts/install-deps.sh does, and rebuild)",
                        path ? path : "ONNX");
}

#endif
