/* TensorBoard event files written directly, shared by the tensorboard
 * logger and the grid's sweep summary: protocol buffers encoded by hand
 * into growing buffers, TFRecord framing (length, masked CRC-32C), and
 * Event { wall_time = 1, step = 2, file_version = 3, summary = 5 } around
 * them. The HParams plugin's messages are in callbacks/hparams.h. */
#ifndef LOOM_CALLBACKS_TFEVENT_H
#define LOOM_CALLBACKS_TFEVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* A message being encoded. Appends never fail: an allocation failure sets
 * `failed`, which loom_tfevents_write reports. Zero-initialise; free with
 * loom_pb_free. */
typedef struct loom_pb {
  uint8_t *b;
  size_t n, cap;
  bool failed;
} loom_pb;

void loom_pb_free(loom_pb *m);
void loom_pb_varint_field(loom_pb *m, int field, uint64_t v);
void loom_pb_double_field(loom_pb *m, int field, double v);
void loom_pb_float_field(loom_pb *m, int field, float v);
void loom_pb_bytes_field(loom_pb *m, int field, const void *p, size_t n);
void loom_pb_string_field(loom_pb *m, int field, const char *s);
/* `inner` as a length-delimited field; a failed inner fails m. */
void loom_pb_message_field(loom_pb *m, int field, const loom_pb *inner);

typedef struct loom_tfevents {
  FILE *f;
  char path[4096];
} loom_tfevents;

/* Creates dir (and parents) and a new events file in it, never an old one
 * reopened: events.out.tfevents.<time>.<host>.<pid>.<k>.loom, k counting
 * files of one process within one second. Writes the file_version event. */
int loom_tfevents_create(loom_tfevents *t, const char *dir);
/* One Event at `step` holding `summary` (a Summary message). */
int loom_tfevents_write_summary(loom_tfevents *t, int64_t step, const loom_pb *summary);
/* Summary.Value { tag = 1, simple_value = 2 }. */
int loom_tfevents_write_scalar(loom_tfevents *t, const char *tag, double value, int64_t step);
int loom_tfevents_flush(loom_tfevents *t);
/* Closes the file (no-op when none is open). */
int loom_tfevents_close(loom_tfevents *t);

#endif
