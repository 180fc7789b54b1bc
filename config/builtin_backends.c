/* The backends a config's experiment.device names: "cpu" and "cuda". */
#include <limits.h>

#include "config/config_internal.h"
#include "core/error_internal.h"
#include "loom/backend_cpu.h"
#include "loom/backend_cuda.h"
#include "loom/comm_mpi.h"
#include "loom/registry.h"

static void *cpu(loom_params *p, const void *context, void *user) {
  (void)context, (void)user;
  int64_t index;
  /* "cpu:0" reads as "cpu": there is one. */
  if (loom_params_int(p, "index", 0, 0, 0, &index) < 0)
    return NULL;
  loom_backend *b = loom_backend_cpu();
  if (!b)
    loom_params_error(p, NULL, loom_last_error_code(), "%s", loom_last_error());
  return b;
}

static void *cuda(loom_params *p, const void *context, void *user) {
  (void)user;
  const loom_backend_context *ctx = context;
  int64_t index;
  loom_cuda_options o = {0};
  /* No index: the rank's own GPU among its node's (0 alone), as one rank
   * per GPU wants. A typo in a key is reported before a missing GPU would
   * hide it. */
  bool given = loom_params_has(p, "index"); /* no default written back: it is each rank's own */
  index = loom_comm_local_rank();
  if ((given && loom_params_int(p, "index", 0, 0, INT_MAX, &index) < 0) ||
      loom_params_bool(p, "tf32", false, &o.tf32) < 0 ||
      loom_params_bool(p, "conv_heuristics", false, &o.conv_heuristics) < 0 || loom_params_check_unknown(p) < 0)
    return NULL;
  if (ctx && ctx->validate_only)
    return loom_backend_cpu(); /* the config may be meant for another machine */
  loom_backend *b;
  if (loom_backend_cuda_create((int)index, &o, &b) < 0) {
    int code = loom_last_error_code();
    loom_params_error(p, NULL, code, "%s%s", loom_last_error(),
                      given || code != LOOM_EINVAL ? ""
                                                   : " (with no index, each rank takes the GPU of its rank on the "
                                                     "node: run at most one rank per GPU, or give \"cuda:N\")");
    return NULL;
  }
  return b;
}

void loom_register_builtin_backends(void) {
  loom_register_builtin(LOOM_KIND_BACKEND, "cpu", cpu);
  loom_register_builtin(LOOM_KIND_BACKEND, "cuda", cuda);
}
