/* loom/api.h - LOOM_API marks what libloom exports: exactly the functions
 * the public headers declare. Everything else is built with hidden
 * visibility (tests/check_exports.py compares the two). */
#ifndef LOOM_API_H
#define LOOM_API_H

#if defined(__GNUC__) || defined(__clang__)
#define LOOM_API __attribute__((visibility("default")))
#else
#define LOOM_API
#endif

#endif
