/* A plugin built against another loom: version 9.1 (ABI 7). loom must
 * refuse it before running any of its code, so its init aborts. */
#include <stdlib.h>

#include <loom.h>

#undef LOOM_VERSION_MAJOR
#define LOOM_VERSION_MAJOR 9
#undef LOOM_ABI_VERSION
#define LOOM_ABI_VERSION 7

static int init(void) { abort(); }

LOOM_PLUGIN("wrong_version", init);
