/* Flush-to-zero and denormals-are-zero while training: denormal gradients
 * and moments make epochs 3-7x slower and change nothing visible
 * (docs/performance.md). The caller's mode is restored afterwards. */
#include "backends/cpu/fpmode.h"

#if defined(__SSE__)
#include <xmmintrin.h>
#define FTZ_DAZ 0x8040u
#endif

unsigned loom_cpu_fast_denormals_begin(void) {
#if defined(__SSE__)
  unsigned csr = _mm_getcsr();
  _mm_setcsr(csr | FTZ_DAZ);
  return csr;
#else
  return 0;
#endif
}

void loom_cpu_fast_denormals_end(unsigned saved) {
#if defined(__SSE__)
  _mm_setcsr(saved);
#else
  (void)saved;
#endif
}
