/* loom/backend_cpu.h - the CPU backend: host memory, every op of
 * loom/backend.h on the in-layer thread pool, OpenBLAS and libxsmm. */
#ifndef LOOM_BACKEND_CPU_H
#define LOOM_BACKEND_CPU_H

#include "loom/api.h"

#include "loom/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The process's CPU backend: created on first use, never destroyed (do not
 * pass it to loom_backend_destroy). NULL only if that first allocation
 * failed, with loom_last_error(). */
LOOM_API loom_backend *loom_backend_cpu(void);

#ifdef __cplusplus
}
#endif
#endif
