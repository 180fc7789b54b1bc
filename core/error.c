/* Thread-local error messages: every thread (loader workers later) keeps its
 * own, so a failing call never overwrites another thread's report. */
#include "loom/error.h"
#include "core/error_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char message[LOOM_ERROR_MAX];
static _Thread_local int last_code;
static _Thread_local unsigned serial;

const char *loom_err_name(int code) {
  switch (code) {
  case LOOM_OK: return "LOOM_OK";
#define LOOM_ERRNO_NAME_(name, c, text) case c: return "LOOM_" #name;
    LOOM_ERRNO_MAP(LOOM_ERRNO_NAME_)
#undef LOOM_ERRNO_NAME_
  default: return "LOOM_UNKNOWN";
  }
}

const char *loom_strerror(int code) {
  switch (code) {
  case LOOM_OK: return "success";
#define LOOM_ERRNO_TEXT_(name, c, text) case c: return text;
    LOOM_ERRNO_MAP(LOOM_ERRNO_TEXT_)
#undef LOOM_ERRNO_TEXT_
  default: return "unknown error";
  }
}

int loom_error_set(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  last_code = code;
  serial++;
  return code;
}

int loom_error_wrap(int code, const char *fmt, ...) {
  char prefix[LOOM_ERROR_MAX];
  char inner[LOOM_ERROR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(inner, message, sizeof inner);
  if (inner[0])
    snprintf(message, sizeof message, "%.400s: %.600s", prefix, inner);
  else
    snprintf(message, sizeof message, "%.400s: %s", prefix, loom_strerror(code));
  last_code = code;
  serial++;
  return code;
}

const char *loom_last_error(void) { return message; }
int loom_last_error_code(void) { return last_code; }

void loom_error_clear(void) {
  message[0] = '\0';
  last_code = 0;
}

unsigned loom_error_serial(void) { return serial; }
