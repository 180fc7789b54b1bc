/* A plugin whose init fails with a message of its own. */
#include <loom.h>

static int init(void) { return loom_error_set(LOOM_EIO, "its license file is missing"); }

LOOM_PLUGIN("failing", init);
