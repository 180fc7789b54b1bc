#ifndef LOOM_RUNNERS_CALLBACK_INTERNAL_H
#define LOOM_RUNNERS_CALLBACK_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/callback.h"

/* The callbacks active in one stage on one rank, sorted, with one array per
 * event holding only the callbacks that implement it. */
typedef struct loom_callback_table {
  loom_callback **all;      /* in dispatch order */
  loom_callback_info *info; /* the same, described */
  size_t count;
  loom_callback **by_event[LOOM_EVENT_COUNT];
  size_t event_count[LOOM_EVENT_COUNT];
} loom_callback_table;

/* Builds the table from `n` candidates in group order (experiment,
 * carried, stage; only their callback, source and stage are read):
 * duplicates after the first and callbacks whose node excludes `rank` are
 * dropped, the rest stable-sorted by order. */
int loom_callback_table_build(loom_callback_table *t, const loom_callback_info *candidates, size_t n, int rank);
void loom_callback_table_free(loom_callback_table *t);
/* A malloc'd copy of t->info (the public loom_*_callback_table). */
int loom_callback_table_rows(const loom_callback_table *t, loom_callback_info **rows, size_t *count);

/* Whether cb is in t. */
bool loom_callback_table_has(const loom_callback_table *t, const loom_callback *cb);
/* Whether cb handles `event` and its filter lets it hear it now. */
bool loom_callback_hears(const loom_callback *cb, loom_event event, const loom_runner *runner);

/* Fires `event` in order. Stops at the first error unless `keep_going`, in
 * which case every callback runs and the first error is returned. */
int loom_callback_table_dispatch(const loom_callback_table *t, loom_event event, loom_runner *runner,
                                 int keep_going);

/* Prints the table, one callback a line: order, name, type, node, scope and
 * the events it listens to, in dispatch order. */
void loom_callback_table_print(const loom_callback_table *t, FILE *out);

#endif
