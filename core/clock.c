#include "core/clock.h"

#include <uv.h>

uint64_t loom_now_ns(void) { return uv_hrtime(); }
