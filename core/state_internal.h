#ifndef LOOM_CORE_STATE_INTERNAL_H
#define LOOM_CORE_STATE_INTERNAL_H

#include "loom/state.h"

typedef struct loom_state_entry {
  char *key;
  loom_value_type type;
  int64_t i64;
  double f64;
  char *str;
  void *data; /* arrays */
  size_t n;
} loom_state_entry;

struct loom_state {
  loom_state_entry *entries;
  size_t count, cap;
};

const loom_state_entry *loom_state_find(const loom_state *s, const char *key);
int loom_state_set_array(loom_state *s, const char *key, loom_value_type type, const void *values, size_t n);
/* Sets every value of `from` in `to` (copies). */
int loom_state_copy(loom_state *to, const loom_state *from);
/* Bytes per element of an array type (int64 and double: 8, float: 4). */
size_t loom_value_size(loom_value_type type);

#endif
