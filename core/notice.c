/* Warnings about the environment, kept for a logger to show: the library
 * itself never prints. Each key is recorded once per process. */
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "core/error_internal.h"

#define MAX_NOTICES 16

static struct {
  char key[64];
  char text[512];
} notices[MAX_NOTICES];
static size_t num_notices;
static uv_once_t once = UV_ONCE_INIT;
static uv_mutex_t lock;
static bool lock_ok; /* without a lock (the system is out of resources), notices are dropped */

static void init_lock(void) { lock_ok = uv_mutex_init(&lock) == 0; }

void loom_notice_once(const char *key, const char *fmt, ...) {
  uv_once(&once, init_lock);
  if (!lock_ok)
    return;
  uv_mutex_lock(&lock);
  bool seen = false;
  for (size_t i = 0; i < num_notices && !seen; i++)
    seen = strcmp(notices[i].key, key) == 0;
  if (!seen && num_notices < MAX_NOTICES) {
    snprintf(notices[num_notices].key, sizeof notices[num_notices].key, "%s", key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(notices[num_notices].text, sizeof notices[num_notices].text, fmt, ap);
    va_end(ap);
    num_notices++;
  }
  uv_mutex_unlock(&lock);
}

size_t loom_notice_count(void) {
  uv_once(&once, init_lock);
  if (!lock_ok)
    return 0;
  uv_mutex_lock(&lock);
  size_t n = num_notices;
  uv_mutex_unlock(&lock);
  return n;
}

/* Entries are written once and never moved, so the text outlives the lock. */
const char *loom_notice(size_t i) {
  return i < loom_notice_count() ? notices[i].text : NULL;
}
