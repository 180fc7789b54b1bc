/* loom/error.h - error codes and messages.
 *
 * Every fallible loom call returns 0 (or a positive count) on success and a
 * negative LOOM_E* code on failure. Constructors return NULL on failure. In
 * both cases the failing call leaves a message on the calling thread that
 * says what went wrong, where, and what to do: loom_last_error(). */
#ifndef LOOM_ERROR_H
#define LOOM_ERROR_H

#include "loom/api.h"

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One table generates the enum, loom_err_name and loom_strerror. */
#define LOOM_ERRNO_MAP(X)                                                  \
  X(ENOMEM, -1, "out of memory")                                           \
  X(EINVAL, -2, "invalid argument")                                        \
  X(EIO, -3, "input/output error")                                         \
  X(ENOENT, -4, "no such file or directory")                               \
  X(EFORMAT, -5, "malformed data")                                         \
  X(ESHAPE, -6, "shape mismatch")                                          \
  X(ECALLBACK, -7, "callback failed")                                      \
  X(ENONFINITE, -8, "non-finite value")                                    \
  X(EINTERRUPTED, -9, "interrupted")                                       \
  X(ESTATE, -10, "call not valid in this state")                           \
  X(ECOMM, -11, "communication failure")                                   \
  X(ENOTSUP, -12, "not supported")                                         \
  X(EBUSY, -13, "in use by another run")                                  \
  X(EEXIST, -14, "already exists")

typedef enum loom_errno {
  LOOM_OK = 0,
#define LOOM_ERRNO_ENUM_(name, code, text) LOOM_##name = code,
  LOOM_ERRNO_MAP(LOOM_ERRNO_ENUM_)
#undef LOOM_ERRNO_ENUM_
} loom_errno;

/* "LOOM_EIO", or "LOOM_UNKNOWN" for a code not in the table. */
LOOM_API const char *loom_err_name(int code);
/* A short description of the code, e.g. "input/output error". */
LOOM_API const char *loom_strerror(int code);

/* Records `code` and a printf-style message for the calling thread and
 * returns `code`, so that `return loom_error_set(LOOM_EIO, ...)` reads well.
 * User callbacks and datasets call it to report their own failures. */
LOOM_API int loom_error_set(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prefixes the calling thread's message with more context ("while X: ...")
 * and returns `code`. */
LOOM_API int loom_error_wrap(int code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The message and code last recorded on the calling thread ("" and 0 if
 * none). The string stays valid until the next loom call on this thread. */
LOOM_API const char *loom_last_error(void);
LOOM_API int loom_last_error_code(void);
LOOM_API void loom_error_clear(void);

/* Warnings loom has about its environment, such as a matrix-product library
 * running slow generic kernels, each recorded once per process. The library
 * never prints them: the console logger shows new ones when an experiment
 * starts. loom_notice(i) is the i-th (NULL past the count); the strings stay
 * valid for the life of the process. */
LOOM_API size_t loom_notice_count(void);
LOOM_API const char *loom_notice(size_t i);

#ifdef __cplusplus
}
#endif
#endif
