/* Each batch onto a device model's backend.
 *
 * On a backend with asynchronous uploads (loom_backend_can_upload_async:
 * pinned host memory, a copy stream, loom_upload slots) the loader's batch
 * buffers are pinned host memory and each batch is copied on the copy
 * stream by its loader's batch_ready hook, in the thread that made it (a
 * worker, ahead of the loop), into device tensors of its loader slot, kept
 * across batches: the loop only makes the compute stream wait for the
 * batch's copy. Slot k of the loader is upload slot k here, so a slot's
 * device memory and pinned buffer are refilled only after the loop has
 * released the batch they held (loom_runner_upload_done, before the next
 * loom_loader_next lets a worker refill the slot), and the copy of batch
 * b + K overlaps the compute of batch b.
 *
 * Elsewhere (a device backend without them, or a loader with hooks of its
 * own) the batch is copied from the loader's host tensors after
 * on_batch_start, into two device tensors the runner keeps. A model on the
 * CPU reads the loader's tensors as they are, and its loaders get no hooks. */
#include "runners/runner_impl.h"

#include <stdlib.h>

typedef struct upload_slot {
  loom_upload *upload;
  loom_tensor *x, *y;        /* on the backend, a full batch's capacity */
  const loom_tensor *host_x; /* the loader's tensor the slot's last upload copied */
} upload_slot;

/* One loader's hooks and slots. */
typedef struct uploader {
  loom_loader *loader;
  loom_backend *backend;
  int num_slots;
  upload_slot *slots;
} uploader;

struct loom_uploads {
  uploader **list;
  size_t count;
  uploader *batch_owner; /* the batch's slot, until loom_runner_upload_done */
  upload_slot *batch_slot;
};

static void *pinned_alloc(void *user, size_t bytes) { return loom_backend_host_alloc(((uploader *)user)->backend, bytes); }
static void pinned_free(void *user, void *ptr) { loom_backend_host_free(((uploader *)user)->backend, ptr); }

static size_t bytes_of(const loom_tensor *t) { return (size_t)loom_tensor_numel(t) * sizeof(float); }

/* In the thread that made the batch: its copy into the slot's device
 * tensors starts (the slot's previous batch was released before the loader
 * let this one into the slot). */
static int batch_ready(void *user, const loom_tensor *x, const loom_tensor *y, int slot) {
  uploader *u = user;
  upload_slot *s = &u->slots[slot];
  /* Within the capacity made for a full batch: nothing is allocated. */
  int rc = loom_tensor_resize(s->x, loom_tensor_ndim(x), loom_tensor_shape(x));
  if (rc == 0)
    rc = loom_tensor_resize(s->y, loom_tensor_ndim(y), loom_tensor_shape(y));
  const loom_upload_copy copies[2] = {{loom_tensor_data(s->x), loom_tensor_data(x), bytes_of(x)},
                                      {loom_tensor_data(s->y), loom_tensor_data(y), bytes_of(y)}};
  if (rc == 0)
    rc = loom_backend_upload_start(u->backend, s->upload, copies, 2);
  if (rc < 0)
    return loom_error_wrap(rc, "uploading into slot %d on backend \"%s\"", slot, loom_backend_name(u->backend));
  s->host_x = x;
  return 0;
}

/* Releases every slot of u: nothing of the copy stream or the compute
 * reads them after, so the loader may refill them (a batch made and never
 * used included). The first error. */
static int release_all(uploader *u) {
  int rc = 0;
  for (int i = 0; i < u->num_slots; i++) {
    int e = u->slots[i].upload ? loom_backend_upload_release(u->backend, u->slots[i].upload) : 0;
    rc = rc < 0 ? rc : e;
    u->slots[i].host_x = NULL;
  }
  return rc;
}

/* Takes the hooks off the loader (its pinned buffers go back through them)
 * and frees the slots. */
static void uploader_free(uploader *u) {
  if (!u)
    return;
  release_all(u);
  if (u->loader && loom_loader_get_hooks(u->loader)->user == u)
    loom_loader_set_hooks(u->loader, NULL); /* between epochs: cannot fail */
  for (int i = 0; u->slots && i < u->num_slots; i++) {
    loom_backend_upload_destroy(u->backend, u->slots[i].upload);
    loom_tensor_destroy(u->slots[i].x);
    loom_tensor_destroy(u->slots[i].y);
  }
  free(u->slots);
  free(u);
}

/* A [batch, ...] tensor on the backend for the loader's batches. */
static loom_tensor *full_batch(loom_backend *b, int64_t batch, int ndim, const int64_t *shape) {
  int64_t full[LOOM_MAX_DIMS] = {batch};
  for (int i = 0; i < ndim; i++)
    full[i + 1] = shape[i];
  return loom_tensor_create_on(b, ndim + 1, full);
}

static int uploader_make(loom_loader *l, loom_backend *b, uploader **out) {
  uploader *u = calloc(1, sizeof *u);
  int n = loom_loader_num_slots(l);
  if (!u || !(u->slots = calloc((size_t)n, sizeof *u->slots))) {
    free(u);
    return loom_error_oom("the upload slots");
  }
  u->backend = b;
  u->num_slots = n;
  const loom_dataset *ds = loom_loader_dataset(l);
  int64_t batch = loom_loader_batch_size(l);
  int rc = 0;
  for (int i = 0; rc == 0 && i < n; i++) {
    upload_slot *s = &u->slots[i];
    if ((rc = loom_backend_upload_create(b, &s->upload)) < 0)
      break;
    s->x = full_batch(b, batch, loom_dataset_sample_ndim(ds), loom_dataset_sample_shape(ds));
    s->y = full_batch(b, batch, loom_dataset_target_ndim(ds), loom_dataset_target_shape(ds));
    if (!s->x || !s->y)
      rc = loom_last_error_code();
  }
  const loom_loader_hooks hooks = {pinned_alloc, pinned_free, batch_ready, u};
  if (rc == 0 && (rc = loom_loader_set_hooks(l, &hooks)) == 0)
    u->loader = l;
  if (rc < 0) {
    uploader_free(u);
    return rc;
  }
  *out = u;
  return 0;
}

static uploader **find(loom_runner *r, const loom_loader *l) {
  for (size_t i = 0; r->uploads && i < r->uploads->count; i++)
    if (r->uploads->list[i]->loader == l)
      return &r->uploads->list[i];
  return NULL;
}

/* The backend the model's batches upload to asynchronously, or NULL. */
static loom_backend *async_backend(const loom_runner *r) {
  loom_backend *b = r->model ? loom_model_backend(r->model) : NULL;
  return b && loom_backend_device(b) != LOOM_DEVICE_CPU && loom_backend_can_upload_async(b) ? b : NULL;
}

static bool hooks_set(const loom_loader_hooks *h) { return h->alloc || h->free || h->batch_ready; }

int loom_runner_upload_attach(loom_runner *r, loom_loader *l, const char *name) {
  loom_backend *b = async_backend(r);
  uploader **at = find(r, l);
  if (at && (*at)->backend == b)
    return 0;
  if (at) { /* the model moved: these slots are another backend's */
    uploader_free(*at);
    *at = r->uploads->list[--r->uploads->count];
  }
  /* No device, or the loader's hooks are someone else's: copied per batch. */
  if (!b || hooks_set(loom_loader_get_hooks(l)))
    return 0;
  if (!r->uploads && !(r->uploads = calloc(1, sizeof *r->uploads)))
    return loom_error_oom("the runner's uploads");
  uploader **list = realloc(r->uploads->list, (r->uploads->count + 1) * sizeof *list);
  if (!list)
    return loom_error_oom("the runner's uploads");
  r->uploads->list = list;
  int rc = uploader_make(l, b, &list[r->uploads->count]);
  if (rc < 0)
    return loom_error_wrap(rc, "loader \"%s\": preparing its batches' asynchronous uploads to backend \"%s\"", name,
                           loom_backend_name(b));
  r->uploads->count++;
  return 0;
}

int loom_runner_upload_pause(loom_runner *r, loom_loader *l, int error) {
  loom_loader_end_epoch(l);
  uploader **at = find(r, l);
  if (!at)
    return error;
  if (r->uploads->batch_owner == *at)
    r->uploads->batch_owner = NULL, r->uploads->batch_slot = NULL;
  char message[LOOM_ERROR_MAX];
  if (error < 0) /* the release may fail too: the first error is the one to tell */
    snprintf(message, sizeof message, "%s", loom_last_error());
  int rc = release_all(*at);
  if (error < 0)
    return loom_error_set(error, "%s", message);
  return rc < 0 ? loom_error_wrap(rc, "releasing the upload slots of loader \"%s\"", r->loader_name ? r->loader_name : "-")
                : 0;
}

/* *dst (made on `b`, or again when the model moved) := host tensor src. */
static int upload(loom_backend *b, loom_tensor **dst, const loom_tensor *src) {
  if (*dst && loom_tensor_backend(*dst) != b) {
    loom_tensor_destroy(*dst);
    *dst = NULL;
  }
  if (!*dst && !(*dst = loom_tensor_create_on(b, loom_tensor_ndim(src), loom_tensor_shape(src))))
    return loom_last_error_code();
  return loom_tensor_copy(*dst, src); /* reuses the capacity: nothing allocated per batch */
}

/* The slot of the epoch's batch `b` (from 0): b % K (loom_loader_num_slots),
 * if its last upload copied the loader's tensor x. Only that slot is read:
 * the workers may be filling the others. */
static upload_slot *slot_of(uploader *u, int64_t b, const loom_tensor *x) {
  upload_slot *s = &u->slots[b % u->num_slots];
  return s->host_x == x ? s : NULL;
}

int loom_runner_upload_batch(loom_runner *r, loom_backend *b) {
  uploader **at = find(r, r->loader);
  int rc;
  if (at && (*at)->backend == b) {
    upload_slot *s = slot_of(*at, r->loader_batch_step - 1, r->input);
    rc = s ? loom_backend_upload_wait(b, s->upload)
           : loom_error_set(LOOM_ESTATE, "no upload was started for this batch (its slot's hook did not run)");
    if (rc == 0) {
      r->uploads->batch_owner = *at, r->uploads->batch_slot = s;
      r->input = s->x;
      r->target = r->target ? s->y : NULL;
    }
  } else {
    rc = upload(b, &r->device_input, r->input);
    if (rc == 0 && r->target)
      rc = upload(b, &r->device_target, r->target);
    if (rc == 0) {
      r->input = r->device_input;
      r->target = r->target ? r->device_target : NULL;
    }
  }
  if (rc < 0)
    return loom_error_wrap(rc, "copying batch %lld of loader \"%s\" to backend \"%s\" (stage \"%s\", epoch %d)",
                           (long long)r->loader_batch_step, r->loader_name, loom_backend_name(b), r->stage->name,
                           r->epoch);
  return 0;
}

int loom_runner_upload_fix(loom_runner *r, loom_backend *b) {
  if (r->input == r->device_input)
    return 0;
  int rc = upload(b, &r->device_input, r->input);
  if (rc == 0 && r->target)
    rc = upload(b, &r->device_target, r->target);
  if (rc < 0)
    return loom_error_wrap(rc, "copying batch %lld of loader \"%s\" out of its upload slot (stage \"%s\", epoch %d)",
                           (long long)r->loader_batch_step, r->loader_name, r->stage->name, r->epoch);
  r->input = r->device_input;
  r->target = r->target ? r->device_target : NULL;
  return 0;
}

int loom_runner_upload_done(loom_runner *r) {
  struct loom_uploads *ups = r->uploads;
  if (!ups || !ups->batch_slot)
    return 0;
  upload_slot *s = ups->batch_slot;
  loom_backend *b = ups->batch_owner->backend;
  ups->batch_owner = NULL, ups->batch_slot = NULL;
  s->host_x = NULL;
  int rc = loom_backend_upload_release(b, s->upload);
  return rc < 0 ? loom_error_wrap(rc, "releasing the upload slot of batch %lld of loader \"%s\"",
                                  (long long)r->loader_batch_step, r->loader_name)
                : 0;
}

void loom_runner_upload_free(loom_runner *r) {
  if (!r->uploads)
    return;
  for (size_t i = 0; i < r->uploads->count; i++) {
    loom_loader_end_epoch(r->uploads->list[i]->loader);
    uploader_free(r->uploads->list[i]);
  }
  free(r->uploads->list);
  free(r->uploads);
  r->uploads = NULL;
}
