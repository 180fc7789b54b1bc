/* A warning when OpenBLAS runs generic kernels on a CPU that has better
 * ones: where the hypervisor hides the CPU model, OpenBLAS cannot tell the
 * family and falls back to Prescott's SSE3 kernels, 2-5x slower. */
#include "backends/cpu/gemm.h"

#include <cblas.h>
#include <strings.h>

#include "core/error_internal.h"

/* OpenBLAS's x86 cores whose sgemm kernels use AVX2 or AVX-512. */
static const char *const fast_cores[] = {"haswell",  "zen",        "skylakex",       "cooperlake",
                                         "sapphirerapids", "excavator", "skylake"};

static bool fast_core(const char *name) {
  for (size_t i = 0; i < sizeof fast_cores / sizeof fast_cores[0]; i++)
    if (strcasecmp(name, fast_cores[i]) == 0)
      return true;
  return false;
}

void loom_gemm_check_kernels(void) {
#if defined(__x86_64__) || defined(__i386__)
  const char *core = openblas_get_corename();
  if (!core || fast_core(core))
    return;
  __builtin_cpu_init();
  const char *isa = __builtin_cpu_supports("avx512f") ? "AVX-512" : __builtin_cpu_supports("avx2") ? "AVX2" : NULL;
  if (!isa)
    return;
  loom_notice_once("openblas-core",
                   "OpenBLAS runs its generic %s kernels on a CPU with %s (the CPU model is probably hidden from "
                   "this machine), so matrix products run 2-5x slower than they could; set OPENBLAS_CORETYPE=%s "
                   "in the environment (or Haswell if that one gives wrong results here: bench/run peak checks)",
                   core, isa, isa[3] == '-' ? "SkylakeX" : "Haswell");
#endif
}
