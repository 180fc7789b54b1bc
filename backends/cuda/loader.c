/* loom/backend_cuda.h's functions in libloom: the CUDA code is a module of
 * its own (module.h), loaded on the first call that needs it, so that a
 * program which never asks for a GPU never loads the CUDA libraries. The
 * module is looked for, in order: at $LOOM_CUDA_MODULE (only there, when
 * set), next to the libloom (or program, for a static libloom) holding
 * this code, then by its file name on the dynamic loader's search path.
 * It is never unloaded: the CUDA runtime cannot be, and backends made by
 * it point into it. */
#define _GNU_SOURCE /* dladdr */
#include "loom/backend_cuda.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "backends/cuda/module.h"
#include "core/backend_internal.h"
#include "core/error_internal.h"

#if LOOM_HAVE_CUDA

/* The outcome of the one load: the module's table, or the error, kept for
 * every later call (the error state is per thread). */
static _Atomic(const loom_cuda_module *) loaded;
static int load_code;
static char load_message[LOOM_ERROR_MAX];
static size_t load_len;
static uv_once_t load_once = UV_ONCE_INIT;
static uv_lib_t lib; /* one attempt at a time; the one that loads stays open */

static const loom_cuda_host host = {
    .abi = LOOM_CUDA_MODULE_ABI,
    .size = sizeof(loom_cuda_host),
    .error_set = loom_error_set,
    .last_error_code = loom_last_error_code,
    .backend_create = loom_backend_create,
    .alloc_create = loom_caching_alloc_create,
    .alloc_destroy = loom_caching_alloc_destroy,
    .alloc_get = loom_caching_alloc_get,
    .alloc_put = loom_caching_alloc_put,
    .alloc_forget_stream = loom_caching_alloc_forget_stream,
    .alloc_release = loom_caching_alloc_release,
    .alloc_stats = loom_caching_alloc_stats,
    .backend_context = loom_backend_context,
    .autocast = loom_backend_autocast,
    .op_log_length = loom_op_log_length,
    .op_log_update = loom_op_log_update,
    .op_log_dropout = loom_op_log_dropout,
};

/* Appends printf-style text to load_message, cut at its end. */
__attribute__((format(printf, 1, 2))) static void append(const char *fmt, ...) {
  if (load_len >= sizeof load_message - 1)
    return;
  va_list ap;
  va_start(ap, fmt);
  const int n = vsnprintf(load_message + load_len, sizeof load_message - load_len, fmt, ap);
  va_end(ap);
  if (n > 0)
    load_len = load_len + (size_t)n < sizeof load_message ? load_len + (size_t)n : sizeof load_message - 1;
}

/* Opens `path` and asks its entry point for the module's table: 0, or the
 * error appended to load_message, LOOM_ENOENT for a file not there and
 * LOOM_ENOTSUP for one that is and did not load (*found set). */
static int try_open(const char *path, bool *found) {
  if (uv_dlopen(path, &lib) < 0) {
    /* a bare file name was looked for on the search path: no telling */
    const bool exists = strchr(path, '/') && access(path, F_OK) == 0;
    *found |= exists;
    append(" %s (%s);", path, uv_dlerror(&lib));
    uv_dlclose(&lib);
    return exists ? LOOM_ENOTSUP : LOOM_ENOENT;
  }
  *found = true;
  loom_cuda_module_entry entry = NULL;
  if (uv_dlsym(&lib, LOOM_CUDA_MODULE_ENTRY, (void **)&entry) < 0) {
    append(" %s (not a loom CUDA module, or one of another loom version: %s);", path, uv_dlerror(&lib));
    uv_dlclose(&lib);
    return LOOM_ENOTSUP;
  }
  /* From here on the module stays loaded: the CUDA runtime it brought
   * cannot be unloaded safely. */
  const loom_cuda_module *m = entry(&host);
  if (!m || m->abi != LOOM_CUDA_MODULE_ABI || m->size != sizeof(loom_cuda_module)) {
    append(" %s (%s);", path, m ? "its interface is of another loom version" : loom_last_error());
    return LOOM_ENOTSUP;
  }
  atomic_store(&loaded, m);
  return 0;
}

/* The directory, with its '/', of the object this code is in (libloom.so,
 * or a program linked with libloom.a) into `dir`; false if none. */
static bool own_dir(char *dir, size_t size) {
  Dl_info info;
  if (!dladdr((void *)(uintptr_t)&loom_backend_cuda_create, &info) || !info.dli_fname)
    return false;
  const char *slash = strrchr(info.dli_fname, '/');
  const size_t n = slash ? (size_t)(slash - info.dli_fname) + 1 : 0;
  if (!n || n >= size)
    return false;
  memcpy(dir, info.dli_fname, n);
  dir[n] = '\0';
  return true;
}

static void load(void) {
  bool found = false;
  int rc = LOOM_ENOENT;
  const char *env = getenv("LOOM_CUDA_MODULE");
  if (env && *env) { /* the user's choice, and nothing else */
    append("CUDA backend: the CUDA module that LOOM_CUDA_MODULE names did not load:");
    rc = try_open(env, &found);
  } else {
    append("CUDA backend: loom's CUDA module " LOOM_CUDA_MODULE_FILE " did not load; tried:");
    char path[4096];
    if (own_dir(path, sizeof path - sizeof LOOM_CUDA_MODULE_FILE)) {
      strcat(path, LOOM_CUDA_MODULE_FILE);
      rc = try_open(path, &found);
    }
    if (rc < 0 && !found) /* the dynamic loader's search path */
      rc = try_open(LOOM_CUDA_MODULE_FILE, &found);
  }
  if (rc == 0)
    return;
  if (load_len && load_message[load_len - 1] == ';')
    load_message[--load_len] = '\0';
  if (found)
    append(": reinstall the CUDA module of this loom, or install the CUDA libraries it names");
  else
    append(": this loom was built with CUDA but its module is missing: install " LOOM_CUDA_MODULE_FILE
           " next to libloom (make install does), or set LOOM_CUDA_MODULE to its path");
  load_code = rc;
}

/* The module, loaded on the first call; NULL if it did not load. */
static const loom_cuda_module *module_loaded(void) {
  uv_once(&load_once, load);
  return atomic_load(&loaded);
}

/* The module, or NULL with the error saying why it did not load. */
static const loom_cuda_module *module(void) {
  const loom_cuda_module *m = module_loaded();
  if (!m)
    loom_error_set(load_code, "%s", load_message);
  return m;
}

/* The module if a call loaded it, without loading it. */
static const loom_cuda_module *module_if_loaded(void) { return atomic_load(&loaded); }

#else /* !LOOM_HAVE_CUDA: no module to load */

static const loom_cuda_module *module_loaded(void) { return NULL; }

static const loom_cuda_module *module(void) {
  loom_error_set(LOOM_ENOTSUP, "CUDA backend: this loom was built without CUDA support (CMake found no CUDA "
                               "compiler, or -DLOOM_WITH_CUDA=OFF): reconfigure it with the CUDA Toolkit installed "
                               "(-DLOOM_WITH_CUDA=ON), or use the CPU backend");
  return NULL;
}

static const loom_cuda_module *module_if_loaded(void) { return NULL; }

#endif

const loom_cuda_module *loom_cuda_module_get(void) { return module(); }

bool loom_cuda_available(void) { return LOOM_HAVE_CUDA; }

int loom_cuda_device_count(int *count) {
  *count = 0;
  const loom_cuda_module *m = module_loaded();
  return m ? m->device_count(count) : 0; /* no module, no device: creating a backend says why */
}

int loom_backend_cuda_create(int device, const loom_cuda_options *options, loom_backend **out) {
  *out = NULL;
  const loom_cuda_module *m = module();
  if (!m)
    return loom_last_error_code();
  if (device < 0)
    return loom_error_set(LOOM_EINVAL, "CUDA device %d: a device index is 0 or more", device);
  return m->backend_create(device, options, out);
}

/* Whether `device` may have an allocator; false with the error. */
static bool device_index(const char *fn, int device) {
  if (device >= 0 && device < LOOM_CUDA_MAX_DEVICES)
    return true;
  loom_error_set(LOOM_EINVAL, "%s: device %d is not 0 to %d", fn, device, LOOM_CUDA_MAX_DEVICES - 1);
  return false;
}

/* Before the module is loaded no backend was made: no allocator to ask. */
int loom_cuda_memory_stats_get(int device, loom_cuda_memory_stats *stats) {
  *stats = (loom_cuda_memory_stats){0};
  if (!device_index(__func__, device))
    return LOOM_EINVAL;
  const loom_cuda_module *m = module_if_loaded();
  return m ? m->memory_stats_get(device, stats) : 0;
}

int loom_cuda_release_cached(int device) {
  if (!device_index(__func__, device))
    return LOOM_EINVAL;
  const loom_cuda_module *m = module_if_loaded();
  return m ? m->release_cached(device) : 0;
}
