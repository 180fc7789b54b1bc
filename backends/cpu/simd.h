#ifndef LOOM_BACKENDS_CPU_SIMD_H
#define LOOM_BACKENDS_CPU_SIMD_H

#include <stdint.h>

/* LOOM_HOT marks elementwise loops worth compiling for several x86 levels:
 * the library is built for baseline x86-64 (SSE2) so it runs anywhere, and
 * gcc's target_clones picks the AVX2 or AVX-512 version at load time by
 * CPU features. No FMA: -std=c11 keeps contraction off, so every version
 * computes bit-identical results. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define LOOM_HOT __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LOOM_HOT
#endif

/* For helpers of LOOM_HOT functions: inlined, they are compiled for each
 * clone's instruction set rather than called at the baseline one. */
#if defined(__GNUC__)
#define LOOM_INLINE static inline __attribute__((always_inline))
#else
#define LOOM_INLINE static inline
#endif

/* Eight float lanes as a GNU vector type: one ymm register in the AVX
 * clones, two xmm in the baseline one, the same lanes and results in
 * each. Load and store through memcpy (unaligned); a vector passed by
 * value to a baseline function would change the ABI, so helpers taking
 * them are macros. */
typedef float loom_f8 __attribute__((vector_size(32)));
typedef int32_t loom_i8 __attribute__((vector_size(32)));
#define LOOM_F8_LANES 8

#endif
