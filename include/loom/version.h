/* loom/version.h - the version of the headers a program or plugin is
 * compiled against. CMakeLists.txt checks it against the project's
 * version. */
#ifndef LOOM_VERSION_H
#define LOOM_VERSION_H

#define LOOM_VERSION_MAJOR 0
#define LOOM_VERSION_MINOR 1
#define LOOM_VERSION_PATCH 0
#define LOOM_VERSION "0.1.0"
/* Raised whenever a public struct's layout or a public function's
 * signature changes: a plugin built against another ABI is refused. */
#define LOOM_ABI_VERSION 6

#endif
