/* A device backend for tests, for machines without a GPU: .device is
 * LOOM_DEVICE_CUDA, its memory one malloc'd arena, and the pointers it
 * hands out are TAGGED (the real address + 2^62, non-canonical on x86-64):
 * any host dereference of device memory by loom code (a memcpy, a memset,
 * a CPU kernel, a loop over parameters) faults at once, with a stack under
 * ASan. Every op takes the tag off, checks that each pointer lies inside a
 * live allocation of the arena for the extent the op touches (so host
 * memory, or a freed or overrun buffer, handed to a device op is caught
 * too: the message names the op and the operand, then abort), and calls
 * the CPU backend's op on the real addresses: results are the CPU's, bit
 * for bit. Plans wrap the CPU's plans (a plan made elsewhere is caught).
 * It counts the transfers and the ops that hand a result to the host, so
 * tests can bound the synchronisations a step makes.
 *
 * Its asynchronous uploads (loom_upload, loom/backend.h) copy at once but
 * check the cycle a copy stream needs, aborting with a message: an upload
 * only from pinned memory it handed out (host_alloc), never into a slot
 * the compute may still read (no upload_release since its upload_wait),
 * never again before the slot's release (its host memory may be refilled
 * only then; the release checks that memory is unchanged), and no op, copy
 * or free touching an upload's destination before its upload_wait.
 *
 * Its step graphs (loom/backend.h, "Step graphs"; off with FAKE_NO_GRAPHS)
 * emulate CUDA's: between graph_begin and graph_end its ops check their
 * operands and run nothing (nor are counted), graph_end keeps the captured
 * log's length, and graph_launch runs the NEW log through its own ops, so a
 * replayed step is that step's ops run once, bit for bit the op-by-op run.
 * Memory an op takes for itself (gemm_lowp's copies, as CUDA's) comes from
 * the arena; under a capture the graph keeps it until it is destroyed, so
 * the core's later allocations may land elsewhere, as on a GPU. */
#ifndef LOOM_TEST_FAKE_DEVICE_H
#define LOOM_TEST_FAKE_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <loom/backend.h>

typedef struct fake_device fake_device;

typedef struct fake_device_counts {
  int64_t to_host;      /* to_host calls: each waits for the device on a real one */
  int64_t from_host;    /* from_host calls */
  int64_t host_results; /* ops whose result lands on the host (a sync each): sum_squares,
                         * all_finite, gemm_checked (the losses' sums and topk_hits's
                         * counts stay on the device: reading them is a to_host) */
  int64_t ops;          /* every op, host results included (not the memory calls) */
  int64_t updates;      /* the optimizers' update ops (sgd/adam/rmsprop_update, update_ranges) */
  int64_t live;         /* allocations not freed */
  int64_t plans;        /* plans not destroyed */
  int64_t uploads;      /* upload_start calls (asynchronous uploads, each of a slot's copies) */
  int64_t upload_waits; /* upload_wait calls */
  int64_t pinned;       /* pinned host blocks (host_alloc) not freed */
  int64_t upload_slots; /* upload slots not destroyed */
  int64_t captures;     /* graph_end calls: step graphs captured (their ops checked, not run) */
  int64_t launches;     /* graph_launch calls: each runs the new log's ops (counted in ops) */
  int64_t graphs;       /* graphs not destroyed */
  int64_t lowp_gemms;   /* gemm_lowp calls run (autocast's products in the format) */
  int64_t scratch;      /* blocks of the ops' own memory not given back (a graph keeps what its capture took) */
} fake_device_counts;

/* A fake device of `arena_bytes` of memory, named "fake"; *dev (if not
 * NULL) is its handle for the calls below, valid until the backend is
 * destroyed. Aborts if the arena cannot be had. */
loom_backend *fake_device_create(size_t arena_bytes, fake_device **dev);
/* The same, without the topk_hits slot when !topk_hits (a backend that
 * lacks an optional op). */
loom_backend *fake_device_create_ex(size_t arena_bytes, bool topk_hits, fake_device **dev);
/* The same without the slots named in `missing`. */
#define FAKE_NO_TOPK_HITS 1u
#define FAKE_NO_UPLOAD 2u /* the seven asynchronous upload slots: batches go through from_host */
#define FAKE_NO_GRAPHS 4u /* the four step graph slots: every logged step runs op by op */
#define FAKE_NO_LOWP 8u   /* gemm_lowp: autocast's products on rounded fp32 copies */
loom_backend *fake_device_create_without(size_t arena_bytes, unsigned missing, fake_device **dev);
fake_device_counts fake_device_counts_of(fake_device *dev);
/* Zeroes the counts (not `live` and `plans`). */
void fake_device_reset_counts(fake_device *dev);
/* The nth op run from now (1: the next; not counting captured ones) fails
 * with LOOM_EIO and a message naming it; 0: none fails. */
void fake_device_fail_op(fake_device *dev, int64_t nth);
/* The nth op run under a capture from now (1: the next) refuses it with
 * LOOM_ENOTSUP, as a CUDA call that cannot be captured; 0: none. */
void fake_device_refuse_capture(fake_device *dev, int64_t nth);
/* The nth upload_start from now (1: the next) fails with LOOM_EIO and a
 * message; 0: none fails. */
void fake_device_fail_upload(fake_device *dev, int64_t nth);
/* Whether p is a (tagged) address of this device's memory. */
bool fake_device_owns(fake_device *dev, const void *p);
/* The host address behind p, for test code that plays a device-aware
 * library (tests/device_comm.c): aborts as an op does unless p and the
 * `bytes` after it lie in one live allocation of this device. */
void *fake_device_memory(fake_device *dev, const char *op, const void *p, size_t bytes);
/* Whether a step graph is being captured (between graph_begin and
 * graph_end): such a library then records, as NCCL under CUDA's stream
 * capture does, and runs nothing. */
bool fake_device_capturing(fake_device *dev);

#endif
