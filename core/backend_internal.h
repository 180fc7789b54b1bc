/* What libloom's own backends see of loom_backend beyond loom/backend.h. */
#ifndef LOOM_CORE_BACKEND_INTERNAL_H
#define LOOM_CORE_BACKEND_INTERNAL_H

#include "loom/backend.h"

/* The context a backend was made with, and (if ops is not NULL) its table:
 * a backend's module tells its own backends apart by the table's slots
 * (the NCCL communicator finds the CUDA backend's stream so). */
void *loom_backend_context(const loom_backend *backend, const loom_backend_ops **ops);

/* Where the backend keeps its op logs' graphs (core/op_log.c's). */
struct loom_log_cache **loom_backend_log_cache(loom_backend *backend);

#endif
