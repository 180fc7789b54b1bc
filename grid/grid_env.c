/* environment.json: what a grid ran on, so that two grids' timings and
 * results can be told apart: loom's version and build, the BLAS and
 * kernels, the host and CPU, and the grid file's hash (FNV-1a, 64 bits:
 * loom links no cryptographic hash, and this one only tells versions of a
 * file apart). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "backends/cpu/xsmm_gemm.h"
#include "core/error_internal.h"
#include "grid/grid_internal.h"
#include "loom/version.h"

/* FNV-1a 64: offset basis 0xcbf29ce484222325, prime 0x100000001b3. */
static uint64_t fnv1a64(const char *data, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ (unsigned char)data[i]) * 0x100000001b3ull;
  return h;
}

static json_t *build_options(void) {
  return json_pack("{s:s, s:b, s:b, s:b}", "build_type", LOOM_BUILD_TYPE, "libxsmm", LOOM_HAVE_LIBXSMM, "mpi",
                   LOOM_HAVE_MPI, "sanitize", LOOM_SANITIZED);
}

static json_t *cpu(void) {
  uv_cpu_info_t *cpus = NULL;
  int count = 0;
  char model[256] = "unknown";
  if (uv_cpu_info(&cpus, &count) == 0 && count > 0)
    snprintf(model, sizeof model, "%s", cpus[0].model);
  uv_free_cpu_info(cpus, count);
  return json_pack("{s:s, s:i, s:i}", "model", model, "cores", count, "available", (int)uv_available_parallelism());
}

int loom_grid_write_environment(const loom_grid *g, const char *dir, const loom_grid_run_options *o, int threads) {
  char host[256] = "unknown", hash[32], when[32], path[4200];
  size_t host_len = sizeof host;
  uv_os_gethostname(host, &host_len);
  snprintf(hash, sizeof hash, "fnv1a64:%016llx", (unsigned long long)fnv1a64(g->text, g->text_len));
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  const char *blas = openblas_get_config(), *core = openblas_get_corename();
  json_t *env = json_pack("{s:s, s:o, s:{s:s, s:s, s:b}, s:s, s:o, s:s, s:s, s:O, s:s, s:i, s:i, s:s*}",
                          "loom_version", LOOM_VERSION, "build", build_options(), "blas", "openblas",
                          blas ? blas : "", "core", core ? core : "", "libxsmm_active", loom_xsmm_active(), "host",
                          host, "cpu", cpu(), "grid_file", g->path, "grid_hash", hash, "grid_options", g->cli_options,
                          "started", when, "workers", o->workers, "threads_per_worker", threads, "cpus", o->cpus);
  snprintf(path, sizeof path, "%s/environment.json", dir);
  int rc = 0;
  if (!env)
    rc = loom_error_oom("environment.json");
  else if (json_dump_file(env, path, JSON_INDENT(2)) < 0)
    rc = loom_error_set(LOOM_EIO, "cannot write %s", path);
  json_decref(env);
  return rc;
}
