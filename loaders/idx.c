/* IDX files (LeCun's MNIST format), gzip'd or plain: zlib's gzread reads
 * both. Header: two zero bytes, a type byte (0x08 = unsigned byte), the
 * number of dimensions, then each dimension as a big-endian uint32. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "core/error_internal.h"
#include "core/fs.h"
#include "backends/cpu/simd.h"
#include "loom/data.h"
#include "loaders/idx_internal.h"

#define IDX_UBYTE 0x08


/* Where an IDX file's bytes come from: a file through zlib's gzread, which
 * reads gzip'd and plain files alike, or memory, inflated when it starts
 * with gzip's magic (members one after another, as gzread reads them). */
typedef struct idx_src {
  const char *name; /* for messages */
  gzFile file;
  const uint8_t *mem;
  size_t size, at; /* memory: its bytes, and how many went to the inflater or out plain */
  bool gzip, ended;
  z_stream z;
} idx_src;

static bool gzip_magic(const uint8_t *p, size_t n) { return n >= 2 && p[0] == 0x1f && p[1] == 0x8b; }

/* Up to n bytes of a memory source into buf: how many (0 at its end), or
 * -1 with the reason in *why. */
static long mem_read(idx_src *s, uint8_t *buf, unsigned n, const char **why) {
  if (!s->gzip) {
    size_t k = s->size - s->at < n ? s->size - s->at : n;
    memcpy(buf, s->mem + s->at, k);
    s->at += k;
    return (long)k;
  }
  s->z.next_out = buf, s->z.avail_out = n;
  while (s->z.avail_out && !s->ended) {
    if (s->z.avail_in == 0 && s->at < s->size) { /* zlib takes at most 4 GiB at a time */
      size_t k = s->size - s->at < (1u << 30) ? s->size - s->at : (1u << 30);
      s->z.next_in = (Bytef *)(s->mem + s->at), s->z.avail_in = (uInt)k;
      s->at += k;
    }
    int zr = inflate(&s->z, Z_NO_FLUSH);
    if (zr == Z_STREAM_END) { /* another member follows, or the end (gzread ignores what is not one) */
      if (s->z.avail_in == 0 && s->at < s->size)
        continue;
      if (gzip_magic(s->z.next_in, s->z.avail_in))
        inflateReset(&s->z);
      else
        s->ended = true;
    } else if (zr == Z_BUF_ERROR && s->z.avail_in == 0 && s->at == s->size) {
      *why = "unexpected end of file";
      return -1;
    } else if (zr != Z_OK) {
      *why = s->z.msg ? s->z.msg : "inflate failed";
      return -1;
    }
  }
  return (long)(n - s->z.avail_out);
}

/* n bytes into buf; `before` bytes of the same item came before (for the
 * message: the item's size and where the file ended). */
static int read_part(idx_src *s, void *buf, size_t n, const char *what, size_t before, size_t total) {
  size_t got = 0;
  while (got < n) {
    unsigned chunk = n - got > (1u << 30) ? (1u << 30) : (unsigned)(n - got);
    const char *why = NULL;
    int zerr = Z_OK;
    long r = s->file ? gzread(s->file, (char *)buf + got, chunk) : mem_read(s, (uint8_t *)buf + got, chunk, &why);
    if (s->file && r <= 0)
      why = gzerror(s->file, &zerr);
    if (r < 0 || (r == 0 && zerr != Z_OK && zerr != Z_STREAM_END))
      return loom_error_set(LOOM_EFORMAT, "%s: corrupt gzip stream while reading %s (%s); the file is damaged: "
                                          "reinstall or download it again",
                            s->name, what, why);
    if (r == 0)
      return loom_error_set(LOOM_EFORMAT, "%s: truncated: %s needs %zu bytes, the file ends after %zu; "
                                          "the file is incomplete: download or reinstall it",
                            s->name, what, total, before + got);
    got += (size_t)r;
  }
  return 0;
}

static int read_exact(idx_src *s, void *buf, size_t n, const char *what) { return read_part(s, buf, n, what, 0, n); }

/* The largest IDX data loom reads: 16 GiB. */
#define MAX_IDX_BYTES ((int64_t)1 << 34)

/* The data the header promised, in a buffer grown as the data arrives: a
 * header can claim gigabytes of a file that holds a few bytes, so nothing
 * larger than twice what was actually read is ever allocated. */
static int read_data(idx_src *s, idx_array *a) {
  size_t want = (size_t)a->count, cap = 0, got = 0;
  while (got < want) {
    size_t next = cap ? (cap > want / 2 ? want : 2 * cap) : (want < ((size_t)1 << 20) ? want : (size_t)1 << 20);
    uint8_t *grown = realloc(a->bytes, next);
    if (!grown)
      return loom_error_oom("IDX data");
    a->bytes = grown, cap = next;
    int rc = read_part(s, a->bytes + got, cap - got, "the IDX data", got, want);
    if (rc < 0)
      return rc;
    got = cap;
  }
  return 0;
}

/* The header and the data of the source. */
static int read_src(idx_src *s, int want_ndim, idx_array *a) {
  uint8_t head[4];
  int rc = read_exact(s, head, 4, "the IDX header");
  if (rc == 0 && (head[0] != 0 || head[1] != 0 || head[3] != want_ndim))
    rc = loom_error_set(LOOM_EFORMAT, "%s: not an IDX file of %d dimensions (magic number 0x%02x%02x%02x%02x; "
                                      "expected 0x000008%02x)",
                        s->name, want_ndim, head[0], head[1], head[2], head[3], want_ndim);
  else if (rc == 0 && head[2] != IDX_UBYTE)
    rc = loom_error_set(LOOM_ENOTSUP, "%s: IDX element type 0x%02x; loom reads unsigned-byte (0x08) IDX files",
                        s->name, head[2]);
  a->ndim = want_ndim;
  a->count = 1;
  bool plausible = true;
  for (int i = 0; rc == 0 && i < want_ndim; i++) {
    uint8_t d[4];
    rc = read_exact(s, d, 4, "the IDX dimensions");
    a->dims[i] = ((int64_t)d[0] << 24) | ((int64_t)d[1] << 16) | ((int64_t)d[2] << 8) | d[3];
    /* Checked before it is multiplied: three 32-bit dimensions overflow int64. */
    plausible = plausible && a->dims[i] > 0 && a->count <= MAX_IDX_BYTES / a->dims[i];
    if (plausible)
      a->count *= a->dims[i];
  }
  if (rc == 0 && !plausible)
    rc = loom_error_set(LOOM_EFORMAT, "%s: implausible IDX dimensions (%lld x %lld x %lld; at most 2^34 bytes)",
                        s->name, (long long)a->dims[0], (long long)(want_ndim > 1 ? a->dims[1] : 1),
                        (long long)(want_ndim > 2 ? a->dims[2] : 1));
  if (rc == 0)
    rc = read_data(s, a);
  if (rc < 0) {
    free(a->bytes);
    a->bytes = NULL;
  }
  return rc;
}

int loom_idx_read(const char *path, int want_ndim, idx_array *a) {
  memset(a, 0, sizeof *a);
  struct stat st;
  if (stat(path, &st) < 0)
    return loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "%s: %s", path, strerror(errno));
  if (S_ISDIR(st.st_mode))
    return loom_refuse_directory(path, "IDX");
  idx_src s = {.name = path, .file = gzopen(path, "rb")};
  if (!s.file)
    return loom_error_set(LOOM_EIO, "%s: cannot open: %s", path, strerror(errno));
  /* A large buffer for large files only: zlib allocates it three times
   * over, which for a file of a few bytes cost more than the read. */
  gzbuffer(s.file, st.st_size > (1 << 18) ? 1 << 18 : 8192);
  int rc = read_src(&s, want_ndim, a);
  gzclose(s.file);
  return rc;
}

int loom_idx_read_memory(const void *bytes, size_t size, const char *name, int want_ndim, idx_array *a) {
  memset(a, 0, sizeof *a);
  idx_src s = {.name = name, .mem = bytes, .size = size, .gzip = gzip_magic(bytes, size)};
  if (s.gzip && inflateInit2(&s.z, 16 + MAX_WBITS) != Z_OK)
    return loom_error_oom("a gzip stream");
  int rc = read_src(&s, want_ndim, a);
  if (s.gzip)
    inflateEnd(&s.z);
  return rc;
}

typedef struct idx_dataset {
  idx_array images, labels;
  int64_t sample_size;
} idx_dataset;

static int64_t idx_length(void *data) { return ((idx_dataset *)data)->labels.count; }

#define AHEAD 4

LOOM_HOT static int idx_fetch(void *data, const int64_t *indices, int64_t n, float *x, float *y) {
  const idx_dataset *d = data;
  const int64_t size = d->sample_size;
  for (int64_t i = 0; i < n; i++) {
    int64_t k = indices[i];
    if (k < 0 || k >= d->labels.count)
      return loom_error_set(LOOM_EINVAL, "IDX dataset: index %lld out of range [0, %lld)", (long long)k,
                            (long long)d->labels.count);
    /* Shuffled samples are scattered over the file's images: ask for the
     * cache lines of the one AHEAD places on while this one converts (one
     * conversion is shorter than a trip to memory). */
    for (int64_t j = i == 0 ? 1 : i + AHEAD; j <= i + AHEAD && j < n; j++)
      if (indices[j] >= 0 && indices[j] < d->labels.count)
        for (int64_t at = 0; at < size; at += 64)
          __builtin_prefetch(d->images.bytes + indices[j] * size + at);
    const uint8_t *restrict src = d->images.bytes + k * size;
    float *restrict dst = x + i * size;
    for (int64_t j = 0; j < size; j++)
      dst[j] = (float)src[j] * (1.0f / 255.0f);
    y[i] = (float)d->labels.bytes[k];
  }
  return 0;
}

static void idx_destroy(void *data) {
  idx_dataset *d = data;
  free(d->images.bytes);
  free(d->labels.bytes);
  free(d);
}

static const loom_dataset_ops idx_ops = {"idx", idx_length, idx_fetch, idx_destroy};

/* The dataset of the images and labels: each from memory when given, else from its path. */
static loom_dataset *open_idx(const void *images, size_t images_size, const void *labels, size_t labels_size,
                              const char *images_path, const char *labels_path) {
  idx_dataset *d = calloc(1, sizeof *d);
  if (!d) {
    loom_error_oom("an IDX dataset");
    return NULL;
  }
  int rc = images ? loom_idx_read_memory(images, images_size, images_path, 3, &d->images)
                  : loom_idx_read(images_path, 3, &d->images);
  if (rc == 0)
    rc = labels ? loom_idx_read_memory(labels, labels_size, labels_path, 1, &d->labels)
                : loom_idx_read(labels_path, 1, &d->labels);
  if (rc == 0 && d->images.dims[0] != d->labels.dims[0])
    rc = loom_error_set(LOOM_EFORMAT, "%s has %lld images but %s has %lld labels; they must match", images_path,
                        (long long)d->images.dims[0], labels_path, (long long)d->labels.dims[0]);
  if (rc < 0) {
    idx_destroy(d);
    return NULL;
  }
  d->sample_size = d->images.dims[1] * d->images.dims[2];
  return loom_dataset_create(&idx_ops, d, 2, d->images.dims + 1, 0, NULL);
}

loom_dataset *loom_idx_dataset_open(const char *images_path, const char *labels_path) {
  return open_idx(NULL, 0, NULL, 0, images_path, labels_path);
}

loom_dataset *loom_idx_dataset_from_memory(const void *images, size_t images_size, const void *labels,
                                           size_t labels_size) {
  static const uint8_t none;
  return open_idx(images ? images : &none, images ? images_size : 0, labels ? labels : &none,
                  labels ? labels_size : 0, "IDX images (memory)", "IDX labels (memory)");
}

loom_dataset *loom_fashion_mnist_open(const char *dir, bool train) {
  const char *prefix = train ? "train" : "t10k";
  char images[4096], labels[4096];
  snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
  snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
  loom_dataset *ds = loom_idx_dataset_open(images, labels);
  if (!ds && loom_last_error_code() == LOOM_ENOENT)
    loom_error_wrap(LOOM_ENOENT, "Fashion-MNIST not found in %s (install it with "
                                 "`apt-get install dataset-fashion-mnist`, or pass the directory that holds "
                                 "%s-images-idx3-ubyte.gz)",
                    dir, prefix);
  return ds;
}
