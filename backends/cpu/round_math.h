/* Rounding a float to bf16 or fp16 (kept as a float): autocast's operand
 * rounding (loom_backend_round), shared by the CPU's loop (round.c) and
 * the CUDA kernel (backends/cuda/kernels.cu), so that both round alike,
 * bit for bit. Plain C that nvcc compiles for the device too; integer
 * arithmetic, so the FPU's rounding mode plays no part except in FP16's
 * subnormals (one addition, round-to-nearest as everywhere in loom). */
#ifndef LOOM_BACKENDS_CPU_ROUND_MATH_H
#define LOOM_BACKENDS_CPU_ROUND_MATH_H

#include <stdint.h>
#include <string.h>

#include "loom/backend.h"

#ifdef __CUDACC__
#define LOOM_RHD __host__ __device__
#else
#define LOOM_RHD
#endif

static inline LOOM_RHD uint32_t loom_float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

static inline LOOM_RHD float loom_bits_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
#endif
}

/* The magnitude bits u (sign cleared) of a finite float, rounded to the
 * nearest multiple of 2^drop ulps, ties to even: adding half less one,
 * plus the kept part's lowest bit, carries exactly when rounding up does
 * (and into the exponent when the mantissa overflows). */
static inline LOOM_RHD uint32_t loom_round_bits(uint32_t u, int drop) {
  const uint32_t half = (1u << (drop - 1)) - 1;
  u += half + ((u >> drop) & 1u);
  return u & ~((1u << drop) - 1u);
}

/* bf16: fp32's exponent, 7 mantissa bits; a float too large rounds to an
 * infinity by the carry; NaN stays NaN. */
static inline LOOM_RHD float loom_round_bf16(float x) {
  const uint32_t u = loom_float_bits(x), mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u)
    return x;
  return loom_bits_float((u & 0x80000000u) | loom_round_bits(mag, 16));
}

/* fp16: 5 exponent bits, 10 mantissa bits, largest 65504, normals from
 * 2^-14, subnormals in steps of 2^-24. From 65520 (halfway to 2^16) up:
 * an infinity. */
static inline LOOM_RHD float loom_round_fp16(float x) {
  const uint32_t u = loom_float_bits(x), sign = u & 0x80000000u, mag = u & 0x7fffffffu;
  if (mag > 0x7f800000u)
    return x;
  if (mag >= 0x477ff000u) /* 65520 */
    return loom_bits_float(sign | 0x7f800000u);
  if (mag >= 0x38800000u) /* 2^-14: 13 of the 23 mantissa bits go */
    return loom_bits_float(sign | loom_round_bits(mag, 13));
  /* Below 2^-14, a multiple of 2^-24: 0.5's ulp is 2^-24, so the sum
   * rounds there and the difference is exact. */
  const float a = loom_bits_float(mag);
  const float r = (a + 0.5f) - 0.5f;
  return loom_bits_float(sign | loom_float_bits(r));
}

static inline LOOM_RHD float loom_round_to(loom_precision p, float x) {
  return p == LOOM_PRECISION_BF16 ? loom_round_bf16(x) : p == LOOM_PRECISION_FP16 ? loom_round_fp16(x) : x;
}

/* x rounded to p (bf16 or fp16) as that format's 16 bits: what a device
 * stores for autocast's products (gemm_lowp). bf16 is the rounded float's
 * upper half (a NaN kept one: its payload may lie below bit 16); fp16's
 * fields are the rounded float's, rebiased (a subnormal is its count of
 * 2^-24 steps, exact). */
static inline LOOM_RHD uint16_t loom_lowp_bits(loom_precision p, float x) {
  const uint32_t u = loom_float_bits(loom_round_to(p, x)), mag = u & 0x7fffffffu;
  const uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  if (p == LOOM_PRECISION_BF16)
    return (uint16_t)(mag > 0x7f800000u ? (u >> 16) | 0x0040u : u >> 16);
  if (mag >= 0x7f800000u)
    return (uint16_t)(sign | (mag > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (mag >= 0x38800000u) /* a normal: fp32's exponent less 127, plus 15 */
    return (uint16_t)(sign | (((mag >> 23) - 112u) << 10) | ((mag >> 13) & 0x3ffu));
  return (uint16_t)(sign | (uint16_t)(loom_bits_float(mag) * 16777216.0f));
}

#endif
