#include <uv.h>

#include "core/runner_impl.h"

uint64_t loom_now_ns(void) { return uv_hrtime(); }
