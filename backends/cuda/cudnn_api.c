/* Loading cuDNN on the first plan (cudnn_api.h). */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* as in cudnn_plan.h */

#define LOOM_CUDNN_API_DEFINE
#include "backends/cuda/cudnn_api.h"

#include <dlfcn.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "backends/cuda/context.h"

#define LIBRARY "libcudnn.so.9"

loom_cudnn_api loom_cudnn;

static uv_once_t once = UV_ONCE_INIT;
static char failure[1024]; /* empty once loaded */

/* dlopen here, not uv_dlopen: the loader searches the RUNPATH of the
 * object that calls dlopen, and the module's names where CMake found cuDNN
 * (libuv's names nothing). Kept open for the process, as the runtime is. */
static void load(void) {
  void *lib = dlopen(LIBRARY, RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    snprintf(failure, sizeof failure, "%s", dlerror());
    return;
  }
#define LOOM_CUDNN_RESOLVE(name)                                                                                     \
  if (!failure[0] && !(*(void **)&loom_cudnn.p_##name = dlsym(lib, #name)))                                       \
    snprintf(failure, sizeof failure, "%s has no %s", LIBRARY, #name);
  LOOM_CUDNN_CALLS(LOOM_CUDNN_RESOLVE)
#undef LOOM_CUDNN_RESOLVE
}

int loom_cudnn_load(void) {
  uv_once(&once, load);
  if (!failure[0])
    return 0;
  return libloom->error_set(LOOM_ENOTSUP, "CUDA backend: convolution and BatchNorm need cuDNN 9, which did "
                                          "not load (%s): install cuDNN 9 (libcudnn*.so.9, all of one version) where "
                                          "the loader finds it, e.g. with LD_LIBRARY_PATH",
                            failure);
}
