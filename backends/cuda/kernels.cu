// The CUDA backend's kernels (kernels.h says the contract). Elementwise
// kernels are grid-stride loops over int64 indices, so any n runs with a
// bounded grid; reductions run in a fixed order for a given n.
#include "backends/cuda/kernels.h"

#include <cuda_runtime.h>

#include "backends/cpu/criteria_math.h"
#include "backends/cpu/round_math.h"

namespace {

constexpr int THREADS = 256;
constexpr int64_t MAX_BLOCKS = 4096; // x 256 threads, then grid-stride

unsigned blocks_for(int64_t n) {
  int64_t b = (n + THREADS - 1) / THREADS;
  return (unsigned)(b < MAX_BLOCKS ? b : MAX_BLOCKS);
}

// A reduction's first pass over n items: as many blocks as the items
// need, at most LOOM_CUDA_REDUCE_BLOCKS (1 for none: it writes zeros).
unsigned reduce_blocks(int64_t n) {
  const unsigned blocks = n > 0 ? blocks_for(n) : 1;
  return blocks < LOOM_CUDA_REDUCE_BLOCKS ? blocks : LOOM_CUDA_REDUCE_BLOCKS;
}

__device__ inline int64_t first_index() { return (int64_t)blockIdx.x * blockDim.x + threadIdx.x; }
__device__ inline int64_t stride() { return (int64_t)gridDim.x * blockDim.x; }

// Launches f<<<...>>>(args..., n) over n elements; the launch's error.
template <typename... P, typename... A>
cudaError_t launch(void (*kernel)(P...), cudaStream_t s, int64_t n, A... args) {
  if (n <= 0)
    return cudaSuccess;
  kernel<<<blocks_for(n), THREADS, 0, s>>>(args..., n);
  return cudaGetLastError();
}

// A reduction in two passes: `pass` over n items leaves one partial per
// block (a kernel taking args..., partials, n), then one block of `finish`
// adds them into out.
template <typename... P, typename... A>
cudaError_t reduce(void (*pass)(P...), void (*finish)(const double *, int, double *), cudaStream_t s, int64_t n,
                   double *partials, double *out, A... args) {
  const unsigned first = reduce_blocks(n);
  pass<<<first, THREADS, 0, s>>>(args..., partials, n);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return e;
  finish<<<1, THREADS, 0, s>>>(partials, (int)first, out);
  return cudaGetLastError();
}

__global__ void fill_rows_kernel(float *y, const float *row, int64_t cols, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    y[i] = row[i % cols];
}

// One thread per column, down the rows in order: the CPU's sums exactly.
__global__ void sum_rows_kernel(float *sum, const float *x, int64_t rows, int64_t cols) {
  for (int64_t j = first_index(); j < cols; j += stride()) {
    float acc = sum[j];
    for (int64_t i = 0; i < rows; i++)
      acc += x[i * cols + j];
    sum[j] = acc;
  }
}

// The CPU backend's definitions (backends/cpu/activations.c): NaN in, NaN
// out; ReLU's backward passes dy where its output is NaN.
__global__ void act_forward_kernel(loom_activation act, float a, const float *x, float *y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride()) {
    const float v = x[i];
    float r;
    switch (act) {
    case LOOM_ACT_RELU: r = v <= 0.0f ? 0.0f : v; break;
    case LOOM_ACT_LEAKY_RELU: r = v > 0.0f ? v : a * v; break;
    case LOOM_ACT_GELU: r = 0.5f * v * (1.0f + erff(v * 0.70710678f)); break;
    case LOOM_ACT_TANH: r = tanhf(v); break;
    default: r = 1.0f / (1.0f + expf(-v)); break; // LOOM_ACT_SIGMOID
    }
    y[i] = r;
  }
}

__global__ void act_backward_kernel(loom_activation act, float a, const float *x, const float *y, const float *dy,
                                    float *dx, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride()) {
    const float g = dy[i];
    float r;
    switch (act) {
    case LOOM_ACT_RELU: r = y[i] <= 0.0f ? 0.0f : g; break;
    case LOOM_ACT_LEAKY_RELU: r = x[i] > 0.0f ? g : a * g; break;
    case LOOM_ACT_GELU: {
      const float v = x[i];
      const float cdf = 0.5f * (1.0f + erff(v * 0.70710678f)), pdf = 0.39894228f * expf(-0.5f * v * v);
      r = g * (cdf + v * pdf);
      break;
    }
    case LOOM_ACT_TANH: r = g * (1.0f - y[i] * y[i]); break;
    default: r = g * y[i] * (1.0f - y[i]); break; // LOOM_ACT_SIGMOID
    }
    dx[i] = r;
  }
}

__global__ void mul_kernel(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    y[i] = a[i] * b[i];
}

__global__ void add_kernel(const float *a, const float *b, float *y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    y[i] = a[i] + b[i];
}

// loom/backend.h's counter rule: SplitMix64's finaliser, top 24 bits.
__device__ inline float counter_uniform(uint64_t key, uint64_t i) {
  uint64_t z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return (float)(z >> 40) * 0x1.0p-24f;
}

__device__ inline void dropout_at(uint64_t key, float p, float keep, const float *x, float *y, float *mask, int64_t i) {
  const float m = counter_uniform(key, (uint64_t)i) < p ? 0.0f : keep;
  mask[i] = m;
  y[i] = x[i] * m;
}

__global__ void dropout_kernel(uint64_t key, float p, float keep, const float *x, float *y, float *mask, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    dropout_at(key, p, keep, x, y, mask, i);
}

// The key in device memory: a step graph's, rewritten before each launch.
__global__ void dropout_key_kernel(const uint64_t *key, float p, float keep, const float *x, float *y, float *mask,
                                   int64_t n) {
  const uint64_t k = *key;
  for (int64_t i = first_index(); i < n; i += stride())
    dropout_at(k, p, keep, x, y, mask, i);
}

__global__ void scale_kernel(float *x, float a, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    x[i] *= a;
}

__global__ void round_kernel(loom_precision p, const float *x, float *y, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    y[i] = loom_round_to(p, x[i]);
}

__global__ void to_lowp_kernel(loom_precision p, const float *x, int64_t cols, int64_t ld, uint16_t *dst, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    dst[i] = loom_lowp_bits(p, x[i / cols * ld + i % cols]);
}

__global__ void clamp_kernel(float *x, float limit, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride()) {
    const float v = x[i];
    x[i] = v > limit ? limit : (v < -limit ? -limit : v);
  }
}

// A block's THREADS values summed in shared memory, in a fixed tree. The
// first barrier lets a kernel call it twice: every thread has read the
// last call's part[0] before it is written again.
__device__ double block_sum(double v) {
  __shared__ double part[THREADS];
  __syncthreads();
  part[threadIdx.x] = v;
  __syncthreads();
  for (int half = THREADS / 2; half > 0; half /= 2) {
    if ((int)threadIdx.x < half)
      part[threadIdx.x] += part[threadIdx.x + half];
    __syncthreads();
  }
  return part[0];
}

__global__ void sum_squares_kernel(const float *x, double *partials, int64_t n) {
  double acc = 0.0;
  for (int64_t i = first_index(); i < n; i += stride())
    acc += (double)x[i] * (double)x[i];
  double total = block_sum(acc);
  if (threadIdx.x == 0)
    partials[blockIdx.x] = total;
}

// One block adds the first pass's `count` partials.
__global__ void sum_partials_kernel(const double *partials, int count, double *out) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x)
    acc += partials[i];
  double total = block_sum(acc);
  if (threadIdx.x == 0)
    *out = total;
}

// The criteria, in backends/cpu/criteria_math.h's arithmetic (the CPU's).
// Cross-entropy: a thread per row; each block's rows summed in a fixed
// tree into partials[block] (the loss) and partials[gridDim.x + block]
// (the weights). A target that is no class makes both NaN.
__global__ void xent_forward_kernel(const float *logits, const float *targets, const float *weights, float smoothing,
                                    int64_t c, float *probs, double *partials, int64_t n) {
  double loss = 0.0, wsum = 0.0;
  for (int64_t i = first_index(); i < n; i += stride()) {
    const double lse = loom_softmax_row(logits + i * c, probs + i * c, c);
    if (!loom_is_class(targets[i], c)) {
      loss = wsum = nan("");
      continue;
    }
    const int64_t y = (int64_t)targets[i];
    loss += loom_xent_row(logits + i * c, lse, y, weights, smoothing, c);
    wsum += loom_class_weight(weights, y);
  }
  const double block_loss = block_sum(loss);
  const double block_weight = block_sum(wsum);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = block_loss;
    partials[gridDim.x + blockIdx.x] = block_weight;
  }
}

// One block adds two runs of `count` partials: out[0] and out[1].
__global__ void sum_two_partials_kernel(const double *partials, int count, double *out) {
  double a = 0.0, b = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    a += partials[i];
    b += partials[count + i];
  }
  const double ta = block_sum(a);
  const double tb = block_sum(b);
  if (threadIdx.x == 0)
    out[0] = ta, out[1] = tb;
}

// A logit's gradient per thread (the unweighted case as the CPU's: p scale - scale).
__global__ void xent_backward_kernel(const float *probs, const float *targets, const float *weights, float smoothing,
                                     float scale, int64_t c, float *d, int64_t n) {
  for (int64_t k = first_index(); k < n; k += stride()) {
    const int64_t i = k / c, j = k % c, y = (int64_t)targets[i];
    if (smoothing == 0.0f && !weights)
      d[k] = probs[k] * scale - (j == y ? scale : 0.0f);
    else
      d[k] = loom_xent_grad(probs[k], loom_xent_wq(weights, y, smoothing, c), weights, j, y, smoothing, c, scale);
  }
}

__global__ void loss_forward_kernel(loom_pointwise_loss loss, float beta, const float *out, const float *target,
                                    double *partials, int64_t n) {
  double acc = 0.0;
  for (int64_t i = first_index(); i < n; i += stride())
    acc += loom_pointwise_value(loss, beta, out[i], target[i]);
  const double total = block_sum(acc);
  if (threadIdx.x == 0)
    partials[blockIdx.x] = total;
}

__global__ void loss_backward_kernel(loom_pointwise_loss loss, float beta, const float *out, const float *target,
                                     float scale, float *dout, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    dout[i] = loom_pointwise_grad(loss, beta, out[i], target[i]) * scale;
}

// A sample per thread; a handful of atomics per sample (a batch is small).
__global__ void topk_hits_kernel(const float *scores, const float *targets, int64_t c, loom_cuda_topk k,
                                 unsigned long long *hits, unsigned long long *bad, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride()) {
    if (!loom_is_class(targets[i], c)) {
      atomicMin(bad, (unsigned long long)i);
      continue;
    }
    const int64_t rank = loom_class_rank(scores + i * c, c, (int64_t)targets[i]);
    for (int j = 0; j < k.nk; j++)
      if (rank < k.ks[j])
        atomicAdd(&hits[j], 1ull);
  }
}

// From the exponent bits, as the CPU's: all set is Inf or NaN.
__global__ void nonfinite_kernel(const float *x, int *flag, int64_t n) {
  bool bad = false;
  for (int64_t i = first_index(); i < n; i += stride())
    bad |= (__float_as_uint(x[i]) & 0x7f800000u) == 0x7f800000u;
  if (__syncthreads_or(bad) && threadIdx.x == 0)
    *flag = 1;
}

__global__ void nonfinite_f64_kernel(const double *x, int *flag, int64_t n) {
  for (int64_t i = first_index(); i < n; i += stride())
    if (!isfinite(x[i]))
      *flag = 1;
}

__global__ void set_if_kernel(const int *flag, float *x, float value) {
  if (*flag)
    x[0] = value;
}

// The updates of backends/cpu/optim.c, statement for statement, one
// element each; the kernels below run them over one range or several.
__device__ inline void sgd_at(const loom_cuda_sgd &k, float *p, const float *g, float *buf, int64_t i) {
  if (!k.momentum) {
    p[i] -= k.lr * (g[i] + k.wd * p[i]);
    return;
  }
  const float d = g[i] + k.wd * p[i];
  buf[i] = k.first ? d : k.mu * buf[i] + k.damp * d;
  p[i] -= k.lr * (k.nesterov ? d + k.mu * buf[i] : buf[i]);
}

__device__ inline void adam_at(const loom_cuda_adam &k, float *p, const float *g, float *m, float *v, int64_t i) {
  const float gi = g[i] + k.l2 * p[i];
  p[i] *= k.shrink;
  m[i] = k.b1 * m[i] + k.c1 * gi;
  v[i] = k.b2 * v[i] + k.c2 * gi * gi;
  p[i] -= k.step_size * m[i] / (sqrtf(v[i]) * k.inv_sqrt_bc2 + k.eps);
}

__device__ inline void rmsprop_at(const loom_cuda_rmsprop &k, float *p, const float *g, float *v, float *b, float *c,
                                  int64_t i) {
  const float gi = g[i] + k.wd * p[i];
  v[i] = k.a * v[i] + k.ca * gi * gi;
  float denom;
  if (k.centered) {
    c[i] = k.a * c[i] + k.ca * gi;
    denom = sqrtf(v[i] - c[i] * c[i]) + k.eps;
  } else {
    denom = sqrtf(v[i]) + k.eps;
  }
  if (k.mu > 0.0f) {
    b[i] = k.mu * b[i] + gi / denom;
    p[i] -= k.lr * b[i];
  } else {
    p[i] -= k.lr * gi / denom;
  }
}

// A gate that is set holds an update back.
__global__ void sgd_kernel(loom_cuda_sgd k, float *p, const float *g, float *buf, int64_t n) {
  if (k.gate && *k.gate)
    return;
  for (int64_t i = first_index(); i < n; i += stride())
    sgd_at(k, p, g, buf, i);
}

__global__ void adam_kernel(loom_cuda_adam k, float *p, const float *g, float *m, float *v, int64_t n) {
  if (k.gate && *k.gate)
    return;
  for (int64_t i = first_index(); i < n; i += stride())
    adam_at(k, p, g, m, v, i);
}

__global__ void rmsprop_kernel(loom_cuda_rmsprop k, float *p, const float *g, float *v, float *b, float *c,
                               int64_t n) {
  if (k.gate && *k.gate)
    return;
  for (int64_t i = first_index(); i < n; i += stride())
    rmsprop_at(k, p, g, v, b, c, i);
}

// Several ranges in one launch: index j of the ranges' concatenation lies
// in the last range whose start is <= j (a binary search of the table).
template <typename T> __device__ inline int range_of(const T *t, int nr, int64_t j) {
  int lo = 0, hi = nr - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (t[mid].start <= j)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

__global__ void sgd_ranges_kernel(const loom_cuda_sgd_range *t, int nr, const int *gate, float *p,
                                  const float *g, float *buf, int64_t n) {
  if (gate && *gate)
    return;
  for (int64_t j = first_index(); j < n; j += stride()) {
    const int r = range_of(t, nr, j);
    sgd_at(t[r].k, p, g, buf, t[r].off + (j - t[r].start));
  }
}

__global__ void adam_ranges_kernel(const loom_cuda_adam_range *t, int nr, const int *gate, float *p,
                                   const float *g, float *m, float *v, int64_t n) {
  if (gate && *gate)
    return;
  for (int64_t j = first_index(); j < n; j += stride()) {
    const int r = range_of(t, nr, j);
    adam_at(t[r].k, p, g, m, v, t[r].off + (j - t[r].start));
  }
}

__global__ void rmsprop_ranges_kernel(const loom_cuda_rmsprop_range *t, int nr, const int *gate, float *p,
                                      const float *g, float *v, float *b, float *c, int64_t n) {
  if (gate && *gate)
    return;
  for (int64_t j = first_index(); j < n; j += stride()) {
    const int r = range_of(t, nr, j);
    rmsprop_at(t[r].k, p, g, v, b, c, t[r].off + (j - t[r].start));
  }
}

__global__ void pool_forward_kernel(loom_pool_desc d, const float *x, float *y, int32_t *argmax, int64_t total) {
  const int64_t hw = d.h * d.w, ohw = d.oh * d.ow;
  for (int64_t o = first_index(); o < total; o += stride()) {
    const float *in = x + o / ohw * hw;
    if (d.mode == LOOM_POOL_GLOBAL_AVG) {
      double sum = 0;
      for (int64_t i = 0; i < hw; i++)
        sum += in[i];
      y[o] = (float)(sum / (double)hw);
      continue;
    }
    const int64_t oy = o % ohw / d.ow, ox = o % d.ow;
    float best = 0.0f, sum = 0.0f;
    int32_t at = -1;
    for (int64_t ky = 0; ky < d.k; ky++)
      for (int64_t kx = 0; kx < d.k; kx++) {
        const int64_t iy = oy * d.s - d.p + ky, ix = ox * d.s - d.p + kx;
        if (iy < 0 || iy >= d.h || ix < 0 || ix >= d.w)
          continue; // padding: never the max, zero in the average
        const float v = in[iy * d.w + ix];
        sum += v;
        if (v > best || v != v || at < 0) // greater, or NaN: it takes the max
          best = v, at = (int32_t)(iy * d.w + ix);
      }
    if (d.mode == LOOM_POOL_MAX)
      y[o] = best, argmax[o] = at;
    else
      y[o] = sum / (float)(d.k * d.k);
  }
}

// The first output whose window (stride s, size k) reaches padded position pos.
__device__ inline int64_t first_window(int64_t pos, int64_t k, int64_t s) {
  const int64_t num = pos - k + 1;
  return num <= 0 ? 0 : (num + s - 1) / s;
}

// Each input adds the outputs whose windows hold it in increasing output
// order from 0, as the CPU's scatter over the outputs does: the same sums.
__global__ void pool_backward_kernel(loom_pool_desc d, const float *dy, const int32_t *argmax, float *dx,
                                     int64_t total) {
  const int64_t hw = d.h * d.w, ohw = d.oh * d.ow;
  for (int64_t i = first_index(); i < total; i += stride()) {
    const int64_t q = i / hw, r = i % hw, iy = r / d.w, ix = r % d.w;
    const float *g = dy + q * ohw;
    if (d.mode == LOOM_POOL_GLOBAL_AVG) {
      dx[i] = g[0] / (float)hw;
      continue;
    }
    const int64_t y0 = first_window(iy + d.p, d.k, d.s), x0 = first_window(ix + d.p, d.k, d.s);
    const int64_t y1 = min((iy + d.p) / d.s, d.oh - 1), x1 = min((ix + d.p) / d.s, d.ow - 1);
    float acc = 0.0f;
    for (int64_t oy = y0; oy <= y1; oy++)
      for (int64_t ox = x0; ox <= x1; ox++) {
        const int64_t o = oy * d.ow + ox;
        if (d.mode != LOOM_POOL_MAX)
          acc += g[o] / (float)(d.k * d.k);
        else if (argmax[q * ohw + o] == (int32_t)r)
          acc += g[o];
      }
    dx[i] = acc;
  }
}

__global__ void bn_eval_stats_kernel(const float *rm, const float *rv, float eps, float *mean, float *invstd,
                                     int64_t c) {
  for (int64_t i = first_index(); i < c; i += stride()) {
    mean[i] = rm[i];
    invstd[i] = 1.0f / sqrtf(rv[i] + eps);
  }
}

// A block per channel: its sums in a fixed tree, and dx in the CPU's
// expression (backends/cpu/batchnorm.c's bn_dx) with the batch terms zero,
// so that a NaN or an Inf in x still makes dx NaN.
__global__ void bn_eval_backward_kernel(const float *x, const float *gamma, const float *mean, const float *invstd,
                                        const float *dy, float *dgamma, float *dbeta, float *dx, int64_t n,
                                        int64_t C, int64_t S) {
  for (int64_t ch = blockIdx.x; ch < C; ch += gridDim.x) {
    const float m = mean[ch], is = invstd[ch], scale = gamma[ch] * is, mean_dy = 0.0f, k = is * 0.0f;
    double sum_dy = 0, sum_dy_xhat = 0;
    for (int64_t j = threadIdx.x; j < n * S; j += blockDim.x) {
      const int64_t at = (j / S * C + ch) * S + j % S;
      const float g = dy[at], d = x[at] - m;
      sum_dy += g;
      sum_dy_xhat += (double)(g * d);
      if (dx)
        dx[at] = scale * (g - mean_dy - d * k);
    }
    sum_dy = block_sum(sum_dy);
    sum_dy_xhat = block_sum(sum_dy_xhat);
    if (threadIdx.x == 0 && dgamma) {
      dgamma[ch] += (float)(sum_dy_xhat * is);
      dbeta[ch] += (float)sum_dy;
    }
  }
}

} // namespace

extern "C" {

cudaError_t loom_cuda_fill_rows(cudaStream_t s, float *y, const float *row, int64_t rows, int64_t cols) {
  return cols > 0 ? launch(fill_rows_kernel, s, rows * cols, y, row, cols) : cudaSuccess;
}

cudaError_t loom_cuda_sum_rows(cudaStream_t s, float *sum, const float *x, int64_t rows, int64_t cols) {
  if (cols <= 0)
    return cudaSuccess;
  sum_rows_kernel<<<blocks_for(cols), THREADS, 0, s>>>(sum, x, rows, cols);
  return cudaGetLastError();
}

cudaError_t loom_cuda_act_forward(cudaStream_t s, loom_activation act, float param, const float *x, float *y,
                                  int64_t n) {
  return launch(act_forward_kernel, s, n, act, param, x, y);
}

cudaError_t loom_cuda_act_backward(cudaStream_t s, loom_activation act, float param, const float *x, const float *y,
                                   const float *dy, float *dx, int64_t n) {
  return launch(act_backward_kernel, s, n, act, param, x, y, dy, dx);
}

cudaError_t loom_cuda_mul(cudaStream_t s, const float *a, const float *b, float *y, int64_t n) {
  return launch(mul_kernel, s, n, a, b, y);
}

cudaError_t loom_cuda_add(cudaStream_t s, const float *a, const float *b, float *y, int64_t n) {
  return launch(add_kernel, s, n, a, b, y);
}

cudaError_t loom_cuda_dropout_forward(cudaStream_t s, uint64_t key, float p, const float *x, float *y, float *mask,
                                      int64_t n) {
  return launch(dropout_kernel, s, n, key, p, 1.0f / (1.0f - p), x, y, mask);
}

cudaError_t loom_cuda_dropout_forward_at(cudaStream_t s, const uint64_t *key, float p, const float *x, float *y,
                                         float *mask, int64_t n) {
  return launch(dropout_key_kernel, s, n, key, p, 1.0f / (1.0f - p), x, y, mask);
}

cudaError_t loom_cuda_scale(cudaStream_t s, float *x, float a, int64_t n) { return launch(scale_kernel, s, n, x, a); }

cudaError_t loom_cuda_round(cudaStream_t s, loom_precision p, const float *x, float *y, int64_t n) {
  return launch(round_kernel, s, n, p, x, y);
}

cudaError_t loom_cuda_to_lowp(cudaStream_t s, loom_precision p, const float *x, int64_t rows, int64_t cols, int64_t ld,
                              uint16_t *dst) {
  return launch(to_lowp_kernel, s, rows * cols, p, x, cols, ld, dst);
}

cudaError_t loom_cuda_clamp(cudaStream_t s, float *x, float limit, int64_t n) {
  return launch(clamp_kernel, s, n, x, limit);
}

cudaError_t loom_cuda_sum_squares(cudaStream_t s, const float *x, int64_t n, double *partials, double *out) {
  return reduce(sum_squares_kernel, sum_partials_kernel, s, n, partials, out, x);
}

cudaError_t loom_cuda_xent_forward(cudaStream_t s, const float *logits, const float *targets, const float *weights,
                                   float smoothing, int64_t n, int64_t c, float *probs, double *partials,
                                   double *out) {
  return reduce(xent_forward_kernel, sum_two_partials_kernel, s, n, partials, out, logits, targets, weights, smoothing,
                c, probs);
}

cudaError_t loom_cuda_xent_backward(cudaStream_t s, const float *probs, const float *targets, const float *weights,
                                    float smoothing, float scale, int64_t n, int64_t c, float *dlogits) {
  return launch(xent_backward_kernel, s, n * c, probs, targets, weights, smoothing, scale, c, dlogits);
}

cudaError_t loom_cuda_loss_forward(cudaStream_t s, loom_pointwise_loss loss, float beta, const float *out,
                                   const float *target, int64_t n, double *partials, double *sum) {
  return reduce(loss_forward_kernel, sum_partials_kernel, s, n, partials, sum, loss, beta, out, target);
}

cudaError_t loom_cuda_loss_backward(cudaStream_t s, loom_pointwise_loss loss, float beta, const float *out,
                                    const float *target, float scale, int64_t n, float *dout) {
  return launch(loss_backward_kernel, s, n, loss, beta, out, target, scale, dout);
}

cudaError_t loom_cuda_topk_hits(cudaStream_t s, const float *scores, const float *targets, int64_t n, int64_t c,
                                loom_cuda_topk k, unsigned long long *hits, unsigned long long *bad) {
  return launch(topk_hits_kernel, s, n, scores, targets, c, k, hits, bad);
}

cudaError_t loom_cuda_any_nonfinite(cudaStream_t s, const float *x, int64_t n, int *flag) {
  return launch(nonfinite_kernel, s, n, x, flag);
}

cudaError_t loom_cuda_any_nonfinite_f64(cudaStream_t s, const double *x, int64_t n, int *flag) {
  return launch(nonfinite_f64_kernel, s, n, x, flag);
}

cudaError_t loom_cuda_set_if(cudaStream_t s, const int *flag, float *x, float value) {
  set_if_kernel<<<1, 1, 0, s>>>(flag, x, value);
  return cudaGetLastError();
}

cudaError_t loom_cuda_sgd_update(cudaStream_t s, loom_cuda_sgd k, float *p, const float *g, float *buf, int64_t n) {
  return launch(sgd_kernel, s, n, k, p, g, buf);
}

cudaError_t loom_cuda_adam_update(cudaStream_t s, loom_cuda_adam k, float *p, const float *g, float *m, float *v,
                                  int64_t n) {
  return launch(adam_kernel, s, n, k, p, g, m, v);
}

cudaError_t loom_cuda_rmsprop_update(cudaStream_t s, loom_cuda_rmsprop k, float *p, const float *g, float *sq,
                                     float *buf, float *avg, int64_t n) {
  return launch(rmsprop_kernel, s, n, k, p, g, sq, buf, avg);
}

cudaError_t loom_cuda_sgd_ranges(cudaStream_t s, const loom_cuda_sgd_range *t, int nr, const int *gate, float *p,
                                 const float *g, float *buf, int64_t n) {
  return launch(sgd_ranges_kernel, s, n, t, nr, gate, p, g, buf);
}

cudaError_t loom_cuda_adam_ranges(cudaStream_t s, const loom_cuda_adam_range *t, int nr, const int *gate, float *p,
                                  const float *g, float *m, float *v, int64_t n) {
  return launch(adam_ranges_kernel, s, n, t, nr, gate, p, g, m, v);
}

cudaError_t loom_cuda_rmsprop_ranges(cudaStream_t s, const loom_cuda_rmsprop_range *t, int nr, const int *gate,
                                     float *p, const float *g, float *sq, float *buf, float *avg, int64_t n) {
  return launch(rmsprop_ranges_kernel, s, n, t, nr, gate, p, g, sq, buf, avg);
}

cudaError_t loom_cuda_pool_forward(cudaStream_t s, loom_pool_desc d, const float *x, float *y, int32_t *argmax,
                                   int64_t n) {
  return launch(pool_forward_kernel, s, n * d.c * d.oh * d.ow, d, x, y, argmax);
}

cudaError_t loom_cuda_pool_backward(cudaStream_t s, loom_pool_desc d, const float *dy, const int32_t *argmax,
                                    float *dx, int64_t n) {
  return launch(pool_backward_kernel, s, n * d.c * d.h * d.w, d, dy, argmax, dx);
}

cudaError_t loom_cuda_bn_eval_stats(cudaStream_t s, const float *running_mean, const float *running_var, float eps,
                                    int64_t c, float *mean, float *invstd) {
  return launch(bn_eval_stats_kernel, s, c, running_mean, running_var, eps, mean, invstd);
}

cudaError_t loom_cuda_bn_eval_backward(cudaStream_t s, const float *x, const float *gamma, const float *mean,
                                       const float *invstd, const float *dy, float *dgamma, float *dbeta, float *dx,
                                       int64_t n, int64_t c, int64_t spatial) {
  if (c <= 0)
    return cudaSuccess;
  bn_eval_backward_kernel<<<(unsigned)(c < MAX_BLOCKS ? c : MAX_BLOCKS), THREADS, 0, s>>>(
      x, gamma, mean, invstd, dy, dgamma, dbeta, dx, n, c, spatial);
  return cudaGetLastError();
}

} // extern "C"
