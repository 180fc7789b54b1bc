#ifndef LOOM_RUNNERS_CALLBACK_INTERNAL_H
#define LOOM_RUNNERS_CALLBACK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/callback.h"

/* Registration sequence: ties between equal orders break by it. */
void loom_callback_set_seq(loom_callback *cb, uint64_t seq);
uint64_t loom_callback_seq(const loom_callback *cb);

/* The callbacks active in one stage on one rank, sorted, with one array per
 * event holding only the callbacks that implement it. */
typedef struct loom_callback_table {
  loom_callback **all; /* sorted by (order, seq) */
  size_t count;
  loom_callback **by_event[LOOM_EVENT_COUNT];
  size_t event_count[LOOM_EVENT_COUNT];
} loom_callback_table;

/* Builds the table from `n` candidates (duplicates ignored), dropping those
 * whose node filter excludes `rank`. */
int loom_callback_table_build(loom_callback_table *t, loom_callback *const *candidates, size_t n, int rank);
void loom_callback_table_free(loom_callback_table *t);

/* Fires `event` in order. Stops at the first error unless `keep_going`, in
 * which case every callback runs and the first error is returned. */
int loom_callback_table_dispatch(const loom_callback_table *t, loom_event event, loom_runner *runner,
                                 int keep_going);

/* Prints the table, one callback a line: order, name, type, node, scope and
 * the events it listens to, in dispatch order. */
void loom_callback_table_print(const loom_callback_table *t, FILE *out);

#endif
