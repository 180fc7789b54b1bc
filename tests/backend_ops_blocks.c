/* test_backend_ops: BatchNorm, and the fused blocks around it against their
 * layers run one by one. */
#include "backend_ops.h"

/* --- BatchNorm --- */

/* Training or evaluation forward and backward in double: y, the running
 * statistics after, dx (through the batch statistics in training), and
 * dgamma, dbeta added to g0. */
static void batchnorm_ref(const loom_batchnorm_desc *d, bool train, int64_t n, const float *x, const float *p,
                          const float *run, const float *dy, const float *g0, double *y, double *run_after, double *dx,
                          double *g) {
  const int64_t C = d->c, S = d->spatial, M = n * S;
  for (int64_t c = 0; c < C; c++) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++)
        mean += x[(i * C + c) * S + s];
    mean /= (double)M;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++)
        var += (x[(i * C + c) * S + s] - mean) * (x[(i * C + c) * S + s] - mean);
    var /= (double)M;
    run_after[c] = train ? (1 - d->momentum) * run[c] + d->momentum * mean : run[c];
    run_after[C + c] = train ? (1 - d->momentum) * run[C + c] + d->momentum * var * (double)M / (double)(M - 1)
                             : run[C + c];
    if (!train)
      mean = run[c], var = run[C + c];
    const double invstd = 1 / sqrt(var + d->eps), gamma = p[c];
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++) {
        const int64_t k = (i * C + c) * S + s;
        const double xhat = (x[k] - mean) * invstd;
        y[k] = gamma * xhat + p[C + c];
        sum_dy += dy[k], sum_dy_xhat += dy[k] * xhat;
      }
    g[c] = g0[c] + sum_dy_xhat, g[C + c] = g0[C + c] + sum_dy;
    for (int64_t i = 0; i < n; i++)
      for (int64_t s = 0; s < S; s++) {
        const int64_t k = (i * C + c) * S + s;
        const double xhat = (x[k] - mean) * invstd;
        dx[k] = train ? gamma * invstd * (dy[k] - sum_dy / (double)M - xhat * sum_dy_xhat / (double)M)
                      : gamma * invstd * dy[k];
      }
  }
}

static void check_batchnorm(loom_backend *b, loom_batchnorm_desc d, int64_t n, bool train) {
  const int64_t C = d.c, nx = n * C * d.spatial;
  float *x = malloc((size_t)nx * sizeof *x), *y = malloc((size_t)nx * sizeof *y), *dy = malloc((size_t)nx * sizeof *dy),
        *dx = malloc((size_t)nx * sizeof *dx), p[2 * 8], run[2 * 8], g[2 * 8];
  double *want = malloc((size_t)nx * sizeof *want), *dwant = malloc((size_t)nx * sizeof *dwant), run_want[2 * 8],
         g_want[2 * 8];
  fill(x, nx, 21), fill(dy, nx, 22), fill(p, 2 * C, 23), fill(run, 2 * C, 24), fill(g, 2 * C, 25);
  for (int64_t i = 0; i < nx; i++)
    x[i] = 3.0f * x[i] + (float)(i / d.spatial % C); /* channels of different means */
  for (int64_t c = 0; c < C; c++)
    p[c] += 1.5f, run[C + c] = 0.5f + fabsf(run[C + c]); /* gamma away from 0, a positive variance */
  batchnorm_ref(&d, train, n, x, p, run, dy, g, want, run_want, dwant, g_want);
  loom_plan *plan;
  assert_int_equal(loom_backend_batchnorm_plan(b, &d, &plan), 0);
  float *d_x = upload(b, x, nx), *d_y = upload(b, y, nx), *d_dy = upload(b, dy, nx), *d_dx = upload(b, dx, nx),
        *d_p = upload(b, p, 2 * C), *d_run = upload(b, run, 2 * C), *d_g = upload(b, g, 2 * C);
  assert_int_equal(loom_backend_batchnorm_forward(b, plan, train, d_x, d_p, d_p + C, d_run, d_run + C, d_y, n), 0);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, d_g, d_g + C, d_dx, n), 0);
  download(b, y, d_y, nx), download(b, dx, d_dx, nx), download(b, run, d_run, 2 * C), download(b, g, d_g, 2 * C);
  print_message("%s batchnorm c%lld spatial %lld n%lld train %d\n", loom_backend_name(b), (long long)C,
                (long long)d.spatial, (long long)n, train);
  close_all("batchnorm forward", y, want, NULL, nx, 1e-5);
  close_all("batchnorm running statistics", run, run_want, NULL, 2 * C, 1e-6);
  close_all("batchnorm backward dx", dx, dwant, NULL, nx, 1e-4);
  close_all("batchnorm backward dgamma, dbeta", g, g_want, NULL, 2 * C, (double)nx * 1e-6);
  /* Frozen gamma and beta: dx alone, overwriting what was there (NaN). */
  float g_before[2 * 8];
  for (int64_t i = 0; i < nx; i++)
    dx[i] = NAN;
  float *d_dx2 = upload(b, dx, nx);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, NULL, NULL, d_dx2, n), 0);
  download(b, dx, d_dx2, nx), download(b, g_before, d_g, 2 * C);
  close_all("batchnorm backward dx alone", dx, dwant, NULL, nx, 1e-4);
  assert_memory_equal(g, g_before, 2 * (size_t)C * sizeof *g);
  /* No input gradient: dgamma and dbeta alone, added to the first
   * backward's (the reference from those). */
  batchnorm_ref(&d, train, n, x, p, run, dy, g_before, want, run_want, dwant, g_want);
  assert_int_equal(loom_backend_batchnorm_backward(b, plan, d_x, d_p, d_p + C, d_dy, d_g, d_g + C, NULL, n), 0);
  download(b, g, d_g, 2 * C);
  close_all("batchnorm backward dgamma, dbeta alone", g, g_want, NULL, 2 * C, (double)nx * 1e-6);
  loom_backend_free(b, d_dx2);
  loom_backend_plan_destroy(b, plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_y), loom_backend_free(b, d_dy), loom_backend_free(b, d_dx),
      loom_backend_free(b, d_p), loom_backend_free(b, d_run), loom_backend_free(b, d_g);
  free(x), free(y), free(dy), free(dx), free(want), free(dwant);
}

void test_batchnorm(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  /* [C] samples (BatchNorm1d), planes shorter and longer than 8 lanes */
  static const loom_batchnorm_desc shapes[] = {{3, 1, 1e-5f, 0.1f}, {2, 5, 1e-5f, 0.1f}, {4, 37, 1e-3f, 0.3f}};
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_BATCHNORM_FORWARD, LOOM_OP_BATCHNORM_BACKWARD); i < nb; i++)
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
      for (int train = 0; train < 2; train++)
        check_batchnorm(b[i], shapes[s], shapes[s].spatial == 1 ? 16 : 4, train);
}

/* --- blocks --- */

/* A block against its layers run one by one through the backend's own ops:
 * outputs, gradients and running statistics bit for bit. Layers: [Conv2d]
 * BatchNorm [ReLU] [pool]. `first`: the block's backward from that layer
 * (1: the convolution frozen and below the lowest trainable layer). */
typedef struct block_case {
  bool conv, relu;
  int pool; /* -1: none, else a loom_pool_mode */
  loom_conv_algorithm algorithm;
  int first;
} block_case;

static void check_block(loom_backend *b, block_case bc, bool train) {
  const int64_t n = 3, cin = 2, C = 3, H = 6, W = 6, S = H * W;
  loom_conv_desc cd = {.cin = cin, .h = H, .w = W, .cout = C, .oh = H, .ow = W, .kh = 3, .kw = 3, .sh = 1, .sw = 1,
                       .ph = 1, .pw = 1, .dh = 1, .dw = 1, .bias = true, .algorithm = bc.algorithm};
  loom_pool_desc pd = {.mode = (loom_pool_mode)(bc.pool < 0 ? 0 : bc.pool), .c = C, .h = H, .w = W, .oh = 3, .ow = 3,
                       .k = 2, .s = 2};
  if (pd.mode == LOOM_POOL_GLOBAL_AVG)
    pd.oh = pd.ow = 1;
  loom_layer_desc layers[4];
  int count = 0, conv = -1, relu = -1, pool = -1;
  if (bc.conv)
    layers[conv = count++] = (loom_layer_desc){.kind = LOOM_LAYER_CONV, .conv = cd};
  const int bn = count++;
  layers[bn] = (loom_layer_desc){.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {C, S, 1e-5f, 0.1f}};
  if (bc.relu)
    layers[relu = count++] = (loom_layer_desc){.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}};
  if (bc.pool >= 0)
    layers[pool = count++] = (loom_layer_desc){.kind = LOOM_LAYER_POOL, .pool = pd};
  loom_block block;
  assert_int_equal(loom_backend_plan_block(b, layers, count, &block), 0);
  if (block.count < 2) { /* the backend fuses none of these: nothing to compare */
    assert_null(block.plan);
    return;
  }
  assert_int_equal(block.count, count);
  assert_true(block.kept >> (count - 1) & 1);

  const int64_t in_c = bc.conv ? cin : C, nx = n * in_c * S, nc = n * C * S, ny = n * C * pd.oh * pd.ow;
  const int64_t nw = C * cin * 9, np = bc.conv ? nw + C : 0, nout = bc.pool >= 0 ? ny : nc;
  float *x = malloc((size_t)nx * sizeof *x), *dout = malloc((size_t)nout * sizeof *dout), cp[64], bnp[6], run[6];
  fill(x, nx, 26), fill(dout, nout, 27), fill(cp, np, 28), fill(bnp, 6, 29), fill(run, 6, 30);
  for (int c = 0; c < 3; c++)
    run[3 + c] = 0.5f + fabsf(run[3 + c]);
  /* Both runs: a, the layers apart; b, the block. Buffers: per layer
   * output and its gradient, the parameters' gradients, running stats. */
  float *h_out[2], *h_dx[2], *h_conv_y[2], *h_conv_dy[2], h_cg[2][64], h_bg[2][6], h_run[2][6];
  float *d_x = upload(b, x, nx), *d_dout = upload(b, dout, nout), *d_cp = upload(b, cp, np > 0 ? np : 1),
        *d_bnp = upload(b, bnp, 6);
  for (int run_k = 0; run_k < 2; run_k++) {
    float *zeros = calloc((size_t)(nc > nx ? nc : nx), sizeof *zeros);
    float *d_run = upload(b, run, 6), *d_cg = upload(b, zeros, np > 0 ? np : 1), *d_bg = upload(b, zeros, 6);
    float *d_cy = upload(b, zeros, nc), *d_cdy = upload(b, zeros, nc), *d_bny = upload(b, zeros, nc),
          *d_bndy = upload(b, zeros, nc), *d_ry = upload(b, zeros, nc), *d_rdy = upload(b, zeros, nc),
          *d_py = upload(b, zeros, ny), *d_dx = upload(b, zeros, nx);
    const float *bn_in = bc.conv ? d_cy : d_x;
    float *out = bc.pool >= 0 ? d_py : bc.relu ? d_ry : d_bny;
    float *dx = bc.first == 0 ? d_dx : NULL;
    if (run_k == 0) {
      loom_plan *cplan = NULL, *bplan = NULL, *pplan = NULL;
      if (bc.conv) {
        assert_int_equal(loom_backend_conv_plan(b, &cd, &cplan), 0);
        assert_int_equal(loom_backend_conv_forward(b, cplan, d_x, d_cp, d_cp + nw, d_cy, n), 0);
      }
      assert_int_equal(loom_backend_batchnorm_plan(b, &layers[bn].batchnorm, &bplan), 0);
      assert_int_equal(loom_backend_batchnorm_forward(b, bplan, train, bn_in, d_bnp, d_bnp + 3, d_run, d_run + 3,
                                                      d_bny, n), 0);
      if (bc.relu)
        assert_int_equal(loom_backend_act_forward(b, LOOM_ACT_RELU, 0, d_bny, d_ry, nc), 0);
      if (bc.pool >= 0) {
        assert_int_equal(loom_backend_pool_plan(b, &pd, &pplan), 0);
        assert_int_equal(loom_backend_pool_forward(b, pplan, bc.relu ? d_ry : d_bny, d_py, n), 0);
        assert_int_equal(loom_backend_pool_backward(b, pplan, d_dout, bc.relu ? d_rdy : d_bndy, n), 0);
      }
      const float *g = bc.pool >= 0 ? (bc.relu ? d_rdy : d_bndy) : d_dout;
      if (bc.relu) {
        assert_int_equal(loom_backend_act_backward(b, LOOM_ACT_RELU, 0, d_bny, d_ry, g, d_bndy, nc), 0);
        g = d_bndy;
      }
      assert_int_equal(loom_backend_batchnorm_backward(b, bplan, bn_in, d_bnp, d_bnp + 3, g, d_bg, d_bg + 3,
                                                       bc.conv ? (bc.first == 0 ? d_cdy : NULL) : dx, n), 0);
      if (bc.conv && bc.first == 0)
        assert_int_equal(loom_backend_conv_backward(b, cplan, d_x, d_cp, d_cdy, d_cg, d_cg + nw, dx, n), 0);
      loom_backend_plan_destroy(b, cplan), loom_backend_plan_destroy(b, bplan), loom_backend_plan_destroy(b, pplan);
    } else {
      loom_block_io io[4] = {{0}};
      if (bc.conv)
        io[conv] = (loom_block_io){.params = d_cp, .grads = bc.first == 0 ? d_cg : NULL, .y = d_cy, .dy = d_cdy};
      io[bn] = (loom_block_io){.params = d_bnp, .grads = d_bg, .buffers = d_run};
      if (bc.relu)
        io[relu] = (loom_block_io){0};
      if (bc.pool >= 0)
        io[pool] = (loom_block_io){0};
      for (int k = 0; k < count; k++)
        if (!(block.kept >> k & 1))
          io[k].y = io[k].dy = NULL; /* never touched */
      io[count - 1].y = out, io[count - 1].dy = d_dout;
      assert_int_equal(loom_backend_block_forward(b, block.plan, train, d_x, io, n), 0);
      assert_int_equal(loom_backend_block_backward(b, block.plan, bc.first, d_x, io, dx, n), 0);
    }
    h_out[run_k] = malloc((size_t)nout * sizeof(float)), h_dx[run_k] = malloc((size_t)nx * sizeof(float));
    h_conv_y[run_k] = malloc((size_t)nc * sizeof(float)), h_conv_dy[run_k] = malloc((size_t)nc * sizeof(float));
    download(b, h_out[run_k], out, nout), download(b, h_dx[run_k], d_dx, nx);
    download(b, h_conv_y[run_k], d_cy, nc), download(b, h_conv_dy[run_k], d_cdy, nc);
    if (np)
      download(b, h_cg[run_k], d_cg, np);
    download(b, h_bg[run_k], d_bg, 6), download(b, h_run[run_k], d_run, 6);
    float *all[] = {d_run, d_cg, d_bg, d_cy, d_cdy, d_bny, d_bndy, d_ry, d_rdy, d_py, d_dx};
    for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
      loom_backend_free(b, all[k]);
    free(zeros);
  }
  print_message("%s block conv %d (alg %d) relu %d pool %d first %d train %d: %d layers\n", loom_backend_name(b),
                bc.conv, (int)bc.algorithm, bc.relu, bc.pool, bc.first, train, block.count);
  assert_memory_equal(h_out[0], h_out[1], (size_t)nout * sizeof(float));
  assert_memory_equal(h_dx[0], h_dx[1], (size_t)nx * sizeof(float));
  assert_memory_equal(h_conv_y[0], h_conv_y[1], (size_t)nc * sizeof(float));
  assert_memory_equal(h_conv_dy[0], h_conv_dy[1], (size_t)nc * sizeof(float));
  if (np)
    assert_memory_equal(h_cg[0], h_cg[1], (size_t)np * sizeof(float));
  assert_memory_equal(h_bg[0], h_bg[1], sizeof h_bg[0]);
  assert_memory_equal(h_run[0], h_run[1], sizeof h_run[0]);
  loom_backend_plan_destroy(b, block.plan);
  loom_backend_free(b, d_x), loom_backend_free(b, d_dout), loom_backend_free(b, d_cp), loom_backend_free(b, d_bnp);
  for (int k = 0; k < 2; k++)
    free(h_out[k]), free(h_dx[k]), free(h_conv_y[k]), free(h_conv_dy[k]);
  free(x), free(dout);
}

void test_block(void **state) {
  (void)state;
  loom_backend *b[MAX_BACKENDS];
  static const block_case cases[] = {
      {.conv = true, .relu = true, .pool = LOOM_POOL_MAX, .algorithm = LOOM_CONV_IM2COL},
      {.conv = true, .relu = true, .pool = LOOM_POOL_MAX, .algorithm = LOOM_CONV_WINOGRAD},
      {.conv = true, .relu = false, .pool = -1, .algorithm = LOOM_CONV_IM2COL},
      {.conv = true, .relu = true, .pool = -1, .algorithm = LOOM_CONV_WINOGRAD},
      {.conv = true, .relu = true, .pool = LOOM_POOL_AVG, .algorithm = LOOM_CONV_IM2COL, .first = 1},
      {.conv = false, .relu = true, .pool = -1},
      {.conv = false, .relu = false, .pool = LOOM_POOL_MAX},
      {.conv = false, .relu = true, .pool = LOOM_POOL_GLOBAL_AVG},
  };
  /* a block is checked against its layers run one by one */
  for (size_t i = 0, nb = BACKENDS(b, LOOM_OP_BLOCK, LOOM_OP_CONV_FORWARD, LOOM_OP_CONV_BACKWARD, LOOM_OP_POOL_FORWARD,
                                   LOOM_OP_POOL_BACKWARD, LOOM_OP_BATCHNORM_FORWARD, LOOM_OP_BATCHNORM_BACKWARD,
                                   LOOM_OP_ACT_FORWARD, LOOM_OP_ACT_BACKWARD);
       i < nb; i++)
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
      for (int train = 1; train >= 0; train--)
        check_block(b[i], cases[c], train);
  /* What the CPU backend fuses, from the first layer given. */
  loom_layer_desc l[3] = {{.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_RELU, 0}},
                          {.kind = LOOM_LAYER_BATCHNORM, .batchnorm = {3, 4, 1e-5f, 0.1f}},
                          {.kind = LOOM_LAYER_ACT, .act = {LOOM_ACT_TANH, 0}}};
  loom_block block;
  assert_int_equal(loom_backend_plan_block(loom_backend_cpu(), l, 3, &block), 0);
  assert_int_equal(block.count, 0); /* a ReLU opens no block */
  assert_int_equal(loom_backend_plan_block(loom_backend_cpu(), l + 1, 2, &block), 0);
  assert_int_equal(block.count, 0); /* BatchNorm takes a ReLU, not a Tanh */
  assert_null(block.plan);
}
