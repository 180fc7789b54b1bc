/* Datasets in HDF5 files: read in blocks of samples on demand through an
 * LRU cache, converted to float by HDF5, several files as one index. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "core/hdf5_quiet.h"
#include "loom/data.h"

typedef struct part {
  char *path;
  hid_t file, x, y;
  int64_t start, n; /* its samples in the global index */
  off_t size;       /* the file's length when opened; 0 for a memory image */
} part;

typedef struct block {
  int64_t id;
  float *x, *y;
  struct block *newer, *older; /* LRU list */
} block;

typedef struct h5ds {
  part *parts;
  int num_parts;
  int64_t n, sample_size, target_size, block_len, max_blocks, num_blocks, cached;
  int sample_ndim, target_ndim;
  int64_t sample_shape[LOOM_MAX_DIMS], target_shape[LOOM_MAX_DIMS];
  double scale;
  block **table; /* by block id */
  block *newest, *oldest;
  uv_mutex_t mu; /* the cache; HDF5 itself serialises its calls */
} h5ds;


/* "a, b, c": the datasets at the root of a file, for messages. */
static void names_in(hid_t file, char *buf, size_t size) {
  H5G_info_t info;
  buf[0] = '\0';
  if (H5Gget_info(file, &info) < 0)
    return;
  for (hsize_t i = 0; i < info.nlinks && i < 16; i++) {
    char name[128];
    if (H5Lget_name_by_idx(file, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof name, H5P_DEFAULT) >= 0)
      snprintf(buf + strlen(buf), size - strlen(buf), "%s%s", i ? ", " : "", name);
  }
}

/* Whether every chunk of a chunked dataset (or the storage of another)
 * was written: unwritten storage reads as fill values. */
static bool fully_allocated(hid_t dset, int ndim, const hsize_t *dims) {
  hid_t dcpl = H5Dget_create_plist(dset);
  if (dcpl < 0)
    return false;
  bool full = false;
  if (H5Pget_layout(dcpl) == H5D_CHUNKED) {
    hsize_t chunk[LOOM_MAX_DIMS], want = 1, have = 0;
    full = H5Pget_chunk(dcpl, LOOM_MAX_DIMS, chunk) == ndim;
    for (int i = 0; full && i < ndim; i++) {
      hsize_t along = chunk[i] ? (dims[i] + chunk[i] - 1) / chunk[i] : 0;
      want = along && want > ((hsize_t)1 << 48) / along ? ((hsize_t)1 << 48) + 1 : want * along; /* saturates */
    }
    hid_t space = H5Dget_space(dset);
    full = full && space >= 0 && H5Dget_num_chunks(dset, space, &have) >= 0 && have >= want;
    if (space >= 0)
      H5Sclose(space);
  } else {
    H5D_space_status_t status;
    hsize_t values = 1;
    for (int i = 0; i < ndim; i++)
      values *= dims[i];
    full = values == 0 || (H5Dget_space_status(dset, &status) >= 0 && status == H5D_SPACE_STATUS_ALLOCATED);
  }
  H5Pclose(dcpl);
  return full;
}

/* Opens a named dataset of numbers; *dims gets its shape. */
static int open_numeric(part *p, const char *name, hid_t *out, int *ndim, hsize_t *dims) {
  if (!H5Lexists(p->file, name, H5P_DEFAULT) || (*out = H5Dopen2(p->file, name, H5P_DEFAULT)) < 0) {
    char have[512];
    names_in(p->file, have, sizeof have);
    return loom_error_set(LOOM_EFORMAT, "%s has no dataset \"%s\" (it has: %s)", p->path, name, have[0] ? have : "none");
  }
  hid_t type = H5Dget_type(*out), space = H5Dget_space(*out);
  H5T_class_t cls = H5Tget_class(type);
  *ndim = H5Sget_simple_extent_ndims(space);
  if (*ndim > 0)
    H5Sget_simple_extent_dims(space, dims, NULL);
  H5Tclose(type);
  H5Sclose(space);
  if (cls != H5T_INTEGER && cls != H5T_FLOAT)
    return loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" does not hold numbers", p->path, name);
  if (*ndim < 1 || *ndim > LOOM_MAX_DIMS)
    return loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" has %d dimensions; loom reads 1 (samples) to %d", p->path,
                          name, *ndim, LOOM_MAX_DIMS);
  /* Storage HDF5 never allocated holds no samples, only fill values: a
   * file a writer never finished (or a few bytes declaring 2^21 samples,
   * which fuzzing found preloading for minutes). Chunks are counted, not
   * bytes: compressed chunks store less than they hold. */
  if (!fully_allocated(*out, *ndim, dims))
    return loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" was never completely written (HDF5 stores only part of it); "
                          "the file is incomplete: write it again", p->path, name);
  return 0;
}

/* `placeholder`: an unlabelled file's targets, [0] per sample by design. */
static int check_shape(h5ds *d, part *p, const char *name, int ndim, const hsize_t *dims, bool inputs,
                       bool placeholder) {
  int *have_ndim = inputs ? &d->sample_ndim : &d->target_ndim;
  int64_t *shape = inputs ? d->sample_shape : d->target_shape;
  if (p == d->parts) {
    /* Sizes are multiplied in int64 (a block's bytes): a sample of no
     * values (a division by zero, found by fuzzing) or of more than 2^31
     * is refused here. */
    uint64_t values = 1;
    for (int i = 1; i < ndim; i++) {
      if ((dims[i] == 0 && !placeholder) || dims[i] > (1u << 31) || (values *= dims[i]) > (1u << 31))
        return loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" has %s in dimension %d; %s", p->path, name,
                              dims[i] == 0 ? "size 0" : "too many values per sample", i,
                              dims[i] == 0 ? "every dimension after the first (samples) must be at least 1"
                                           : "loom reads samples of at most 2^31 values");
      shape[i - 1] = (int64_t)dims[i];
    }
    *have_ndim = ndim - 1;
    return 0;
  }
  bool same = *have_ndim == ndim - 1;
  for (int i = 1; same && i < ndim; i++)
    same = shape[i - 1] == (int64_t)dims[i];
  return same ? 0 : loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" has another per-sample shape than in %s", p->path,
                                    name, d->parts[0].path);
}

/* Opens image `i` of the options (HDF5's core driver, no backing store),
 * under a name no file can have: the core driver would share an open
 * image of the same name. */
static hid_t open_image(const loom_hdf5_options *o, int i) {
  static _Atomic unsigned long images;
  char name[64];
  snprintf(name, sizeof name, "/dev/null/loom-hdf5-%ld-%lu", (long)getpid(), ++images);
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  bool ok = fapl >= 0 && H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0 &&
            H5Pset_file_image(fapl, (void *)o->images[i], o->image_sizes[i]) >= 0;
  hid_t file = ok ? H5Fopen(name, H5F_ACC_RDONLY, fapl) : -1;
  if (fapl >= 0)
    H5Pclose(fapl);
  return file;
}

static int open_part(h5ds *d, part *p, const loom_hdf5_options *o, int i) {
  int rc = o->images ? 0 : loom_refuse_directory(p->path, "HDF5");
  if (rc < 0)
    return rc;
  loom_h5_quiet q = loom_h5_hush();
  p->file = o->images ? open_image(o, i) : H5Fopen(p->path, H5F_ACC_RDONLY, H5P_DEFAULT);
  loom_h5_unhush(q);
  if (p->file < 0 && o->images)
    return loom_error_set(LOOM_EFORMAT, "%s is not a readable HDF5 file image (truncated or damaged?)", p->path);
  if (p->file < 0) {
    FILE *f = fopen(p->path, "rb");
    if (!f)
      return loom_error_set(LOOM_ENOENT, "%s: no such file", p->path);
    fclose(f);
    return loom_error_set(LOOM_EFORMAT, "%s is not a readable HDF5 file (truncated or damaged?)", p->path);
  }
  void *handle = NULL;
  struct stat st;
  if (!o->images && H5Fget_vfd_handle(p->file, H5P_DEFAULT, &handle) >= 0 && handle && fstat(*(int *)handle, &st) == 0)
    p->size = st.st_size;
  hsize_t xd[LOOM_MAX_DIMS], yd[LOOM_MAX_DIMS];
  int xn, yn;
  q = loom_h5_hush();
  rc = open_numeric(p, o->inputs, &p->x, &xn, xd);
  if (rc == 0 && o->targets)
    rc = open_numeric(p, o->targets, &p->y, &yn, yd);
  loom_h5_unhush(q);
  if (rc == 0 && !o->targets) /* unlabelled: targets of shape [0] */
    yn = 2, yd[0] = xd[0], yd[1] = 0;
  if (rc == 0 && xd[0] != yd[0])
    rc = loom_error_set(LOOM_EFORMAT, "%s: %llu samples in \"%s\" but %llu in \"%s\"; they must match", p->path,
                        (unsigned long long)xd[0], o->inputs, (unsigned long long)yd[0], o->targets);
  if (rc == 0 && xd[0] > ((hsize_t)1 << 48))
    rc = loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" declares %llu samples; loom reads at most 2^48", p->path,
                        o->inputs, (unsigned long long)xd[0]);
  if (rc == 0 && xn < 2)
    rc = loom_error_set(LOOM_EFORMAT, "%s: dataset \"%s\" has no per-sample dimensions", p->path, o->inputs);
  if (rc == 0)
    rc = check_shape(d, p, o->inputs, xn, xd, true, false);
  if (rc == 0)
    rc = check_shape(d, p, o->targets ? o->targets : "(no targets)", yn, yd, false, !o->targets);
  if (rc == 0) {
    p->start = d->n;
    p->n = (int64_t)xd[0];
    d->n += p->n;
  }
  return rc;
}

/* HDF5 reads a file that was cut short after it was opened as zeros past
 * the cut, without an error: after each read, the file must be as long as
 * it was then. */
static int still_whole(const part *p, int64_t from, int64_t count, const char *what) {
  if (!p->size)
    return 0;
  /* The open file itself: one unlinked or replaced since reads on as it was. */
  void *handle = NULL;
  struct stat st;
  if (H5Fget_vfd_handle(p->file, H5P_DEFAULT, &handle) < 0 || !handle || fstat(*(int *)handle, &st) != 0 ||
      st.st_size >= p->size)
    return 0;
  return loom_error_set(LOOM_EIO,
                        "%s: reading samples %lld..%lld of \"%s\": the file is %lld bytes, %lld when it was opened "
                        "(cut short while in use?); restore it and resume from the last checkpoint",
                        p->path, (long long)(p->start + from), (long long)(p->start + from + count - 1), what,
                        (long long)st.st_size, (long long)p->size);
}

/* Reads samples [from, from + count) of part p's dataset into out. */
static int read_rows(const part *p, hid_t dset, int64_t from, int64_t count, float *out, const char *what) {
  hid_t space = H5Dget_space(dset);
  int ndim = H5Sget_simple_extent_ndims(space);
  hsize_t dims[LOOM_MAX_DIMS], start[LOOM_MAX_DIMS] = {0}, n[LOOM_MAX_DIMS];
  H5Sget_simple_extent_dims(space, dims, NULL);
  memcpy(n, dims, sizeof n);
  start[0] = (hsize_t)from;
  n[0] = (hsize_t)count;
  H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, n, NULL);
  hid_t mem = H5Screate_simple(ndim, n, NULL);
  loom_h5_quiet q = loom_h5_hush();
  herr_t st = H5Dread(dset, H5T_NATIVE_FLOAT, mem, space, H5P_DEFAULT, out);
  loom_h5_unhush(q);
  H5Sclose(mem);
  H5Sclose(space);
  if (st < 0)
    return loom_error_set(LOOM_EIO, "%s: reading samples %lld..%lld of \"%s\" failed (truncated file?)", p->path,
                          (long long)(p->start + from), (long long)(p->start + from + count - 1), what);
  return still_whole(p, from, count, what);
}

static void unlink_block(h5ds *d, block *b) {
  if (b->newer)
    b->newer->older = b->older;
  else
    d->newest = b->older;
  if (b->older)
    b->older->newer = b->newer;
  else
    d->oldest = b->newer;
  b->newer = b->older = NULL;
}

static void push_newest(h5ds *d, block *b) {
  b->older = d->newest;
  if (d->newest)
    d->newest->newer = b;
  d->newest = b;
  if (!d->oldest)
    d->oldest = b;
}

/* Loads block `id` (its samples may span files), evicting the oldest when
 * the cache is full. Called with the lock held. */
static int load_block(h5ds *d, int64_t id, block **out) {
  block *b;
  if (d->cached >= d->max_blocks) {
    b = d->oldest;
    unlink_block(d, b);
    d->table[b->id] = NULL;
  } else {
    b = calloc(1, sizeof *b);
    if (b) {
      b->x = malloc((size_t)(d->block_len * d->sample_size) * sizeof(float));
      b->y = malloc((size_t)(d->block_len * d->target_size + 1) * sizeof(float)); /* + 1: never malloc(0) */
    }
    if (!b || !b->x || !b->y) {
      if (b)
        free(b->x), free(b->y), free(b);
      return loom_error_oom("an HDF5 cache block");
    }
    d->cached++;
  }
  int64_t first = id * d->block_len, last = first + d->block_len < d->n ? first + d->block_len : d->n;
  int rc = 0;
  for (int i = 0; i < d->num_parts && rc == 0; i++) {
    const part *p = &d->parts[i];
    int64_t a = first > p->start ? first : p->start, e = last < p->start + p->n ? last : p->start + p->n;
    if (a >= e)
      continue;
    rc = read_rows(p, p->x, a - p->start, e - a, b->x + (a - first) * d->sample_size, "inputs");
    if (rc == 0 && d->target_size)
      rc = read_rows(p, p->y, a - p->start, e - a, b->y + (a - first) * d->target_size, "targets");
  }
  if (rc == 0 && d->scale != 1.0)
    for (int64_t k = 0; k < (last - first) * d->sample_size; k++)
      b->x[k] *= (float)d->scale;
  if (rc < 0) {
    free(b->x), free(b->y), free(b);
    d->cached--;
    return rc;
  }
  b->id = id;
  d->table[id] = b;
  push_newest(d, b);
  *out = b;
  return 0;
}

static int64_t h5_length(void *data) { return ((h5ds *)data)->n; }

static int h5_fetch(void *data, const int64_t *indices, int64_t n, float *x, float *y) {
  h5ds *d = data;
  int rc = 0;
  uv_mutex_lock(&d->mu);
  for (int64_t i = 0; i < n && rc == 0; i++) {
    int64_t k = indices[i];
    if (k < 0 || k >= d->n) {
      rc = loom_error_set(LOOM_EINVAL, "HDF5 dataset: index %lld out of range [0, %lld)", (long long)k, (long long)d->n);
      break;
    }
    int64_t id = k / d->block_len, at = k % d->block_len;
    block *b = d->table[id];
    if (b) {
      unlink_block(d, b);
      push_newest(d, b);
    } else if ((rc = load_block(d, id, &b)) < 0) {
      break;
    }
    memcpy(x + i * d->sample_size, b->x + at * d->sample_size, (size_t)d->sample_size * sizeof *x);
    memcpy(y + i * d->target_size, b->y + at * d->target_size, (size_t)d->target_size * sizeof *y);
  }
  uv_mutex_unlock(&d->mu);
  return rc;
}

static void h5_destroy(void *data) {
  h5ds *d = data;
  for (block *b = d->newest; b;) {
    block *older = b->older;
    free(b->x), free(b->y), free(b);
    b = older;
  }
  free(d->table);
  for (int i = 0; i < d->num_parts; i++) {
    part *p = &d->parts[i];
    if (p->x > 0)
      H5Dclose(p->x);
    if (p->y > 0)
      H5Dclose(p->y);
    if (p->file > 0)
      H5Fclose(p->file);
    free(p->path);
  }
  free(d->parts);
  uv_mutex_destroy(&d->mu);
  free(d);
}

static const loom_dataset_ops h5_ops = {"hdf5", h5_length, h5_fetch, h5_destroy};

loom_dataset *loom_hdf5_dataset_open(const loom_hdf5_options *o) {
  if (!o || o->num_files < 1 || !o->files || !o->inputs || o->cache_mb < 0 || o->block < 0 ||
      (o->images && !o->image_sizes)) {
    loom_error_set(LOOM_EINVAL, "HDF5 dataset: needs files, the inputs' dataset name, cache_mb >= 0 (and the "
                                "images' sizes with images)");
    return NULL;
  }
  h5ds *d = calloc(1, sizeof *d);
  if (d)
    d->parts = calloc((size_t)o->num_files, sizeof *d->parts);
  if (!d || !d->parts) {
    free(d);
    loom_error_oom("an HDF5 dataset");
    return NULL;
  }
  uv_mutex_init(&d->mu);
  d->scale = o->scale != 0 ? o->scale : 1.0;
  int rc = 0;
  for (int i = 0; i < o->num_files && rc == 0; i++) {
    part *p = &d->parts[d->num_parts++];
    p->file = p->x = p->y = -1;
    if (!(p->path = strdup(o->files[i])))
      rc = loom_error_oom("a file name");
    else
      rc = open_part(d, p, o, i);
  }
  if (rc == 0 && d->n == 0)
    rc = loom_error_set(LOOM_EFORMAT, "%s: the dataset \"%s\" has no samples", o->files[0], o->inputs);
  if (rc == 0) {
    d->sample_size = d->target_size = 1;
    for (int i = 0; i < d->sample_ndim; i++)
      d->sample_size *= d->sample_shape[i];
    for (int i = 0; i < d->target_ndim; i++)
      d->target_size *= d->target_shape[i];
    d->block_len = o->block > 0 ? o->block : 256;
    d->num_blocks = (d->n + d->block_len - 1) / d->block_len;
    int64_t block_bytes = d->block_len * (d->sample_size + d->target_size) * (int64_t)sizeof(float);
    int64_t budget = (o->cache_mb ? o->cache_mb : 256) * 1024 * 1024;
    d->max_blocks = o->preload ? d->num_blocks : budget / block_bytes > 2 ? budget / block_bytes : 2;
    if (!(d->table = calloc((size_t)d->num_blocks, sizeof *d->table)))
      rc = loom_error_oom("the HDF5 cache table");
  }
  for (int64_t id = 0; rc == 0 && o->preload && id < d->num_blocks; id++) {
    block *b;
    rc = load_block(d, id, &b);
  }
  if (rc < 0) {
    h5_destroy(d);
    return NULL;
  }
  return loom_dataset_create(&h5_ops, d, d->sample_ndim, d->sample_shape, d->target_ndim, d->target_shape);
}

/* --- writing: loom convert idx --- */

#include "loaders/idx_internal.h"

static int write_bytes(hid_t file, const char *name, const idx_array *a) {
  hsize_t dims[LOOM_MAX_DIMS], chunk[LOOM_MAX_DIMS];
  for (int i = 0; i < a->ndim; i++)
    dims[i] = chunk[i] = (hsize_t)a->dims[i];
  chunk[0] = dims[0] < 256 ? dims[0] : 256;
  hid_t space = H5Screate_simple(a->ndim, dims, NULL), plist = H5Pcreate(H5P_DATASET_CREATE);
  H5Pset_chunk(plist, a->ndim, chunk);
  hid_t d = H5Dcreate2(file, name, H5T_NATIVE_UINT8, space, H5P_DEFAULT, plist, H5P_DEFAULT);
  herr_t st = d < 0 ? -1 : H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, a->bytes);
  if (d >= 0)
    H5Dclose(d);
  H5Pclose(plist);
  H5Sclose(space);
  return st < 0 ? -1 : 0;
}

/* Creates out_path's directory if it is missing (mkdir -p). */
static int make_parent(const char *out_path) {
  char dir[4096];
  if (snprintf(dir, sizeof dir, "%s", out_path) >= (int)sizeof dir)
    return loom_error_set(LOOM_EINVAL, "cannot write %.64s...: the path is too long", out_path);
  char *slash = strrchr(dir, '/');
  if (!slash || slash == dir)
    return 0;
  *slash = '\0';
  int rc = loom_mkdir_p(dir);
  return rc < 0 ? loom_error_wrap(rc, "cannot write %s", out_path) : 0;
}

/* The HDF5 file of the images and labels, built in memory (the core
 * driver): HDF5 neither reports why a write failed nor survives a file it
 * could not close, so the disk is written by loom_write_file_durable. */
static int build_image(const idx_array *images, const idx_array *labels, void **image, size_t *size) {
  loom_h5_quiet q = loom_h5_hush();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  hid_t file = fapl < 0 || H5Pset_fapl_core(fapl, 1 << 20, 0) < 0
                   ? -1
                   : H5Fcreate("loom-convert", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  int rc = 0;
  if (file < 0 || write_bytes(file, "images", images) < 0 || write_bytes(file, "labels", labels) < 0 ||
      H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
    rc = loom_error_set(LOOM_EIO, "HDF5 could not build the file");
  ssize_t n = rc == 0 ? H5Fget_file_image(file, NULL, 0) : -1;
  if (rc == 0 && n <= 0)
    rc = loom_error_set(LOOM_EIO, "HDF5 could not build the file");
  if (rc == 0 && !(*image = malloc((size_t)n)))
    rc = loom_error_oom("the HDF5 file");
  if (rc == 0 && H5Fget_file_image(file, *image, (size_t)n) != n)
    rc = loom_error_set(LOOM_EIO, "HDF5 could not build the file");
  *size = (size_t)n;
  if (file >= 0)
    H5Fclose(file);
  if (fapl >= 0)
    H5Pclose(fapl);
  loom_h5_unhush(q);
  return rc;
}

/* Writes the file under a temporary name beside it, renamed into place
 * when complete; errors name out_path (the name the user gave). */
static int write_h5(const idx_array *images, const idx_array *labels, const char *out_path) {
  char tmp[4200];
  if (snprintf(tmp, sizeof tmp, "%s.tmp", out_path) >= (int)sizeof tmp)
    return loom_error_set(LOOM_EINVAL, "cannot write %.64s...: the path is too long", out_path);
  void *image = NULL;
  size_t size = 0;
  int rc = make_parent(out_path);
  if (rc == 0 && (rc = build_image(images, labels, &image, &size)) < 0)
    loom_error_wrap(rc, "cannot write %s", out_path);
  if (rc == 0 && (loom_write_file_durable(tmp, image, size) < 0 || rename(tmp, out_path) < 0)) {
    rc = loom_error_set(LOOM_EIO, "cannot write %s: %s", out_path, strerror(errno));
    unlink(tmp);
  }
  free(image);
  return rc;
}

int loom_idx_to_hdf5(const char *images_path, const char *labels_path, const char *out_path) {
  idx_array images = {0}, labels = {0};
  int rc = loom_idx_read(images_path, 3, &images);
  if (rc == 0)
    rc = loom_idx_read(labels_path, 1, &labels);
  if (rc == 0 && images.dims[0] != labels.dims[0])
    rc = loom_error_set(LOOM_EFORMAT, "%s has %lld images but %s has %lld labels", images_path,
                        (long long)images.dims[0], labels_path, (long long)labels.dims[0]);
  if (rc == 0)
    rc = write_h5(&images, &labels, out_path);
  free(images.bytes);
  free(labels.bytes);
  return rc;
}
