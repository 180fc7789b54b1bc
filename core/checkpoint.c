/* Checkpoints in HDF5: one group per state, scalars as attributes, arrays
 * as datasets, the list of states and a content CRC-32 on the root. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/array.h"
#include "core/checkpoint_dir.h"
#include "core/error_internal.h"
#include "core/fs.h"
#include "core/hdf5_quiet.h"
#include "core/state_internal.h"

#define MAGIC "loom-checkpoint"
#define FORMAT 1

/* The user block: the first 512 bytes of a checkpoint, which HDF5 leaves to
 * its user (H5Pset_userblock) and never parses. loom keeps a CRC-32 of the
 * rest of the file there, checked before libhdf5 sees a byte, because HDF5
 * itself crashes and over-reads on damaged files. Little-endian:
 *    0  UB_MAGIC, NUL-padded to 16 bytes
 *   16  u32  the block's layout version (UB_VERSION)
 *   20  u32  CRC-32 (zlib) of bytes [512, end)
 *   24  u64  the file's length
 * and zeros to 512. Files written before the block (an HDF5 signature at
 * byte 0) still load, with only the content checksum. */
#define UB_SIZE 512
#define UB_MAGIC "loom-ckpt-block"
#define UB_VERSION 1
static const unsigned char HDF5_SIGNATURE[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

typedef struct named_state {
  char *name;
  loom_state *state;
} named_state;

struct loom_checkpoint {
  named_state *groups;
  size_t count, cap;
};

loom_checkpoint *loom_checkpoint_create(void) {
  loom_checkpoint *c = calloc(1, sizeof *c);
  if (!c)
    loom_error_oom("a checkpoint");
  return c;
}

void loom_checkpoint_destroy(loom_checkpoint *c) {
  if (!c)
    return;
  for (size_t i = 0; i < c->count; i++) {
    free(c->groups[i].name);
    loom_state_destroy(c->groups[i].state);
  }
  free(c->groups);
  free(c);
}

const loom_state *loom_checkpoint_find(const loom_checkpoint *c, const char *group) {
  for (size_t i = 0; i < c->count; i++)
    if (strcmp(c->groups[i].name, group) == 0)
      return c->groups[i].state;
  return NULL;
}

loom_state *loom_checkpoint_group(loom_checkpoint *c, const char *group) {
  loom_state *s = (loom_state *)loom_checkpoint_find(c, group);
  if (s)
    return s;
  if (!*group || strchr(group, '\n') || group[0] == '/' ||
      loom_array_reserve((void **)&c->groups, &c->cap, c->count + 1, sizeof *c->groups, "a checkpoint group") < 0) {
    if (loom_last_error_code() != LOOM_ENOMEM)
      loom_error_set(LOOM_EINVAL, "checkpoint group name \"%s\" is empty, starts with '/' or has a newline", group);
    return NULL;
  }
  char *name = strdup(group);
  s = loom_state_create();
  if (!name || !s) {
    free(name);
    loom_state_destroy(s);
    loom_error_oom("a checkpoint group");
    return NULL;
  }
  c->groups[c->count++] = (named_state){name, s};
  return s;
}

loom_checkpoint *loom_checkpoint_copy(const loom_checkpoint *c) {
  loom_checkpoint *copy = loom_checkpoint_create();
  int rc = copy ? 0 : LOOM_ENOMEM;
  for (size_t i = 0; rc == 0 && i < c->count; i++) {
    loom_state *to = loom_checkpoint_group(copy, c->groups[i].name);
    rc = to ? loom_state_copy(to, c->groups[i].state) : LOOM_ENOMEM;
  }
  if (rc < 0) {
    loom_checkpoint_destroy(copy);
    return NULL;
  }
  return copy;
}

size_t loom_checkpoint_num_groups(const loom_checkpoint *c) { return c->count; }
const char *loom_checkpoint_group_name(const loom_checkpoint *c, size_t i) {
  return i < c->count ? c->groups[i].name : NULL;
}

/* --- content checksum: groups and keys in sorted order, so that the order
 * HDF5 hands them back in does not matter --- */

static int by_name(const void *a, const void *b) {
  return strcmp(((const named_state *)a)->name, ((const named_state *)b)->name);
}

static int by_key(const void *a, const void *b) {
  return strcmp((*(const loom_state_entry *const *)a)->key, (*(const loom_state_entry *const *)b)->key);
}

static uint32_t crc_bytes(uint32_t crc, const void *p, size_t n) {
  while (n > 0) {
    uInt chunk = n > (1u << 30) ? (1u << 30) : (uInt)n;
    crc = (uint32_t)crc32(crc, p, chunk);
    p = (const char *)p + chunk;
    n -= chunk;
  }
  return crc;
}

static int content_crc(const loom_checkpoint *c, uint32_t *out) {
  named_state *groups = malloc((c->count ? c->count : 1) * sizeof *groups);
  if (!groups)
    return loom_error_oom("a checksum");
  if (c->count) /* c->groups is NULL in a checkpoint with no groups */
    memcpy(groups, c->groups, c->count * sizeof *groups);
  qsort(groups, c->count, sizeof *groups, by_name);
  uint32_t crc = (uint32_t)crc32(0, NULL, 0);
  int rc = 0;
  for (size_t g = 0; g < c->count && rc == 0; g++) {
    const loom_state *s = groups[g].state;
    const loom_state_entry **sorted = malloc((s->count ? s->count : 1) * sizeof *sorted);
    if (!sorted) {
      rc = loom_error_oom("a checksum");
      break;
    }
    for (size_t i = 0; i < s->count; i++)
      sorted[i] = &s->entries[i];
    qsort(sorted, s->count, sizeof *sorted, by_key);
    crc = crc_bytes(crc, groups[g].name, strlen(groups[g].name) + 1);
    for (size_t i = 0; i < s->count; i++) {
      const loom_state_entry *e = sorted[i];
      crc = crc_bytes(crc, e->key, strlen(e->key) + 1);
      uint8_t type = (uint8_t)e->type;
      crc = crc_bytes(crc, &type, 1);
      if (e->type == LOOM_VALUE_I64)
        crc = crc_bytes(crc, &e->i64, sizeof e->i64);
      else if (e->type == LOOM_VALUE_F64)
        crc = crc_bytes(crc, &e->f64, sizeof e->f64);
      else if (e->type == LOOM_VALUE_STR)
        crc = crc_bytes(crc, e->str, strlen(e->str) + 1);
      else
        crc = crc_bytes(crc, e->data, e->n * loom_value_size(e->type));
    }
    free(sorted);
  }
  free(groups);
  *out = crc;
  return rc;
}


/* --- writing --- */

static hid_t string_type(size_t len) {
  hid_t t = H5Tcopy(H5T_C_S1);
  H5Tset_size(t, len + 1);
  H5Tset_strpad(t, H5T_STR_NULLTERM);
  return t;
}

static int write_attr(hid_t loc, const char *name, hid_t type, const void *value) {
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = H5Acreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = attr < 0 ? -1 : H5Awrite(attr, type, value);
  if (attr >= 0)
    H5Aclose(attr);
  H5Sclose(space);
  return st < 0 ? -1 : 0;
}

static int write_str_attr(hid_t loc, const char *name, const char *value) {
  hid_t t = string_type(strlen(value));
  int rc = write_attr(loc, name, t, value);
  H5Tclose(t);
  return rc;
}

static hid_t array_type(loom_value_type t) {
  return t == LOOM_VALUE_F32_ARRAY ? H5T_NATIVE_FLOAT : t == LOOM_VALUE_F64_ARRAY ? H5T_NATIVE_DOUBLE : H5T_NATIVE_INT64;
}

static int write_entry(hid_t g, const loom_state_entry *e) {
  switch (e->type) {
  case LOOM_VALUE_I64: return write_attr(g, e->key, H5T_NATIVE_INT64, &e->i64);
  case LOOM_VALUE_F64: return write_attr(g, e->key, H5T_NATIVE_DOUBLE, &e->f64);
  case LOOM_VALUE_STR: return write_str_attr(g, e->key, e->str);
  default: break;
  }
  hsize_t dims = e->n;
  hid_t space = H5Screate_simple(1, &dims, NULL);
  hid_t d = H5Dcreate2(g, e->key, array_type(e->type), space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  herr_t st = d < 0 ? -1 : (e->n ? H5Dwrite(d, array_type(e->type), H5S_ALL, H5S_ALL, H5P_DEFAULT, e->data) : 0);
  if (d >= 0)
    H5Dclose(d);
  H5Sclose(space);
  return st < 0 ? -1 : 0;
}

static int write_groups(const loom_checkpoint *c, hid_t file, const char *path) {
  uint32_t crc;
  int rc = content_crc(c, &crc);
  if (rc < 0)
    return rc;
  size_t list_len = 1;
  for (size_t i = 0; i < c->count; i++)
    list_len += strlen(c->groups[i].name) + 1;
  char *list = calloc(list_len, 1);
  if (!list)
    return loom_error_oom("the checkpoint's group list");
  for (size_t i = 0; i < c->count; i++) {
    strcat(list, c->groups[i].name);
    if (i + 1 < c->count)
      strcat(list, "\n");
  }
  int64_t format = FORMAT, crc64 = crc;
  int bad = write_str_attr(file, "loom_magic", MAGIC) | write_attr(file, "loom_format", H5T_NATIVE_INT64, &format) |
            write_attr(file, "loom_content_crc32", H5T_NATIVE_INT64, &crc64) |
            write_str_attr(file, "loom_groups", list);
  free(list);
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  for (size_t i = 0; i < c->count && !bad; i++) {
    hid_t g = H5Gcreate2(file, c->groups[i].name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) {
      bad = 1;
      break;
    }
    const loom_state *s = c->groups[i].state;
    for (size_t k = 0; k < s->count && !bad; k++)
      bad = write_entry(g, &s->entries[k]);
    H5Gclose(g);
  }
  H5Pclose(lcpl);
  return bad ? loom_error_set(LOOM_EIO, "writing checkpoint %s failed (disk full?)", path) : 0;
}

static int fsync_path(const char *path, int flags) {
  int fd = open(path, flags);
  if (fd < 0)
    return -1;
  int rc = fsync(fd);
  close(fd);
  return rc;
}

static void put_u32(unsigned char *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* The user block of a file `length` bytes long whose bytes after the block
 * have CRC-32 `crc`. */
static void fill_user_block(unsigned char *block, uint32_t crc, uint64_t length) {
  memset(block, 0, UB_SIZE);
  memcpy(block, UB_MAGIC, sizeof UB_MAGIC);
  put_u32(block + 16, UB_VERSION);
  put_u32(block + 20, crc);
  put_u32(block + 24, (uint32_t)length);
  put_u32(block + 28, (uint32_t)(length >> 32));
}

int loom_checkpoint_write_temp(const loom_checkpoint *c, const char *path, char *tmp, size_t tmp_size) {
  char dir_buf[4096], base_buf[4096];
  snprintf(dir_buf, sizeof dir_buf, "%s", path);
  snprintf(base_buf, sizeof base_buf, "%s", path);
  int n = snprintf(tmp, tmp_size, "%s/.%s.tmp.%ld", dirname(dir_buf), basename(base_buf), (long)getpid());
  if (n < 0 || (size_t)n >= tmp_size)
    return loom_error_set(LOOM_EINVAL, "checkpoint path \"%s\" is too long", path);
  /* Built in memory (loom_checkpoint_write_memory), written by loom: HDF5
   * reports no reason for a failed write, and a file it failed to close
   * crashes it when the process exits (a full disk did that). The cost:
   * the checkpoint's size in memory twice while it is saved. */
  void *image = NULL;
  size_t size = 0;
  int rc = loom_checkpoint_write_memory(c, &image, &size);
  if (rc < 0)
    return loom_error_wrap(rc, "making checkpoint %s", path);
  /* Durable before visible: the data reaches the disk before the name. */
  if (loom_write_file_durable(tmp, image, size) < 0)
    rc = loom_error_set(LOOM_EIO, "cannot write checkpoint %s: %s; check that the directory is writable and the disk "
                                  "has room",
                        tmp, strerror(errno));
  free(image);
  if (rc < 0)
    unlink(tmp);
  return rc;
}

/* A name no file can have, so HDF5's core driver neither finds one on
 * disk nor shares another open image of the same name. */
static void image_name(char *out, size_t size) {
  static _Atomic unsigned long images;
  snprintf(out, size, "/dev/null/loom-checkpoint-%ld-%lu", (long)getpid(), ++images);
}

int loom_checkpoint_write_memory(const loom_checkpoint *c, void **bytes, size_t *size) {
  *bytes = NULL;
  *size = 0;
  char name[64];
  image_name(name, sizeof name);
  loom_h5_quiet q = loom_h5_hush();
  hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
  bool ok = fcpl >= 0 && fapl >= 0 && H5Pset_userblock(fcpl, UB_SIZE) >= 0 && H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0;
  hid_t file = ok ? H5Fcreate(name, H5F_ACC_TRUNC, fcpl, fapl) : -1;
  int rc = file < 0 ? loom_error_set(LOOM_ENOMEM, "HDF5 could not create a checkpoint in memory") : 0;
  if (rc == 0)
    rc = write_groups(c, file, "(memory)");
  if (rc == 0 && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
    rc = loom_error_set(LOOM_ENOMEM, "HDF5 could not finish a checkpoint in memory");
  /* HDF5's image leaves the user block out: it is what a file holds after
   * the block, so the block goes in front. */
  ssize_t n = rc == 0 ? H5Fget_file_image(file, NULL, 0) : -1;
  if (rc == 0 && n <= 0)
    rc = loom_error_set(LOOM_ENOMEM, "HDF5 could not give a checkpoint's image");
  unsigned char *image = rc == 0 ? malloc(UB_SIZE + (size_t)n) : NULL;
  if (rc == 0 && !image)
    rc = loom_error_oom("a checkpoint in memory");
  if (rc == 0 && H5Fget_file_image(file, image + UB_SIZE, (size_t)n) != n)
    rc = loom_error_set(LOOM_ENOMEM, "HDF5 could not give a checkpoint's image");
  if (file >= 0)
    H5Fclose(file);
  if (fcpl >= 0)
    H5Pclose(fcpl);
  if (fapl >= 0)
    H5Pclose(fapl);
  loom_h5_unhush(q);
  if (rc < 0) {
    free(image);
    return rc;
  }
  fill_user_block(image, crc_bytes((uint32_t)crc32(0, NULL, 0), image + UB_SIZE, (size_t)n), UB_SIZE + (uint64_t)n);
  *bytes = image;
  *size = UB_SIZE + (size_t)n;
  return 0;
}

int loom_checkpoint_commit(const char *tmp, const char *path) {
  if (rename(tmp, path) < 0) {
    int rc = loom_error_set(LOOM_EIO, "renaming %s to %s failed: %s", tmp, path, strerror(errno));
    unlink(tmp);
    return rc;
  }
  char dir_buf[4096];
  snprintf(dir_buf, sizeof dir_buf, "%s", path);
  const char *dir = dirname(dir_buf);
  if (fsync_path(dir, O_RDONLY | O_DIRECTORY) < 0)
    return loom_error_set(LOOM_EIO, "fsync of directory %s failed: %s", dir, strerror(errno));
  return 0;
}

int loom_checkpoint_write(const loom_checkpoint *c, const char *path) {
  char tmp[4200];
  int rc = loom_checkpoint_write_temp(c, path, tmp, sizeof tmp);
  return rc < 0 ? rc : loom_checkpoint_commit(tmp, path);
}

/* --- reading --- */

/* A file says what shape its attributes have; loom reads one value each,
 * so anything else is refused before a read could overflow the buffer. */
static bool one_value(hid_t a) {
  hid_t space = H5Aget_space(a);
  hssize_t n = space < 0 ? -1 : H5Sget_simple_extent_npoints(space);
  if (space >= 0)
    H5Sclose(space);
  return n == 1;
}

/* Strings loom writes are one fixed-length value; a longer one than this is
 * no loom string (the group list of a big model is a few kilobytes). */
#define MAX_STR_ATTR (16u << 20)

static int read_str_attr(hid_t loc, const char *name, char **out) {
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0)
    return -1;
  hid_t ft = H5Aget_type(a);
  size_t size = ft < 0 ? 0 : H5Tget_size(ft);
  bool ok = ft >= 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) == 0 && size > 0 &&
            size <= MAX_STR_ATTR && one_value(a);
  char *buf = ok ? calloc(size + 1, 1) : NULL;
  hid_t mt = buf ? string_type(size) : -1;
  herr_t st = buf ? H5Aread(a, mt, buf) : -1;
  if (mt >= 0)
    H5Tclose(mt);
  if (ft >= 0)
    H5Tclose(ft);
  H5Aclose(a);
  if (st < 0) {
    free(buf);
    return -1;
  }
  *out = buf;
  return 0;
}

typedef struct reading {
  loom_state *state;
  int rc;
} reading;

static herr_t read_one_attr(hid_t loc, const char *name, const H5A_info_t *info, void *op) {
  (void)info;
  reading *r = op;
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  hid_t t = a < 0 ? -1 : H5Aget_type(a);
  H5T_class_t cls = t < 0 ? H5T_NO_CLASS : H5Tget_class(t);
  if (t >= 0)
    H5Tclose(t);
  if ((cls == H5T_INTEGER || cls == H5T_FLOAT) && !one_value(a)) {
    r->rc = LOOM_EFORMAT;
  } else if (cls == H5T_INTEGER) {
    int64_t v;
    r->rc = H5Aread(a, H5T_NATIVE_INT64, &v) < 0 ? LOOM_EFORMAT : loom_state_set_i64(r->state, name, v);
  } else if (cls == H5T_FLOAT) {
    double v;
    r->rc = H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0 ? LOOM_EFORMAT : loom_state_set_f64(r->state, name, v);
  } else if (cls == H5T_STRING) {
    char *s = NULL;
    r->rc = read_str_attr(loc, name, &s) < 0 ? LOOM_EFORMAT : loom_state_set_str(r->state, name, s);
    free(s);
  } else {
    r->rc = LOOM_EFORMAT;
  }
  if (a >= 0)
    H5Aclose(a);
  return r->rc < 0 ? -1 : 0;
}

static int read_dataset(hid_t g, const char *name, loom_state *s) {
  hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
  if (d < 0)
    return LOOM_EFORMAT;
  hid_t t = H5Dget_type(d), space = H5Dget_space(d);
  H5T_class_t cls = H5Tget_class(t);
  size_t size = H5Tget_size(t);
  hssize_t n = H5Sget_simple_extent_npoints(space);
  loom_value_type type = cls == H5T_INTEGER ? LOOM_VALUE_I64_ARRAY
                         : size == 4         ? LOOM_VALUE_F32_ARRAY
                                             : LOOM_VALUE_F64_ARRAY;
  int rc = (cls == H5T_INTEGER || cls == H5T_FLOAT) && n >= 0 ? 0 : LOOM_EFORMAT;
  /* loom writes its arrays whole, uncompressed: a dataset that declares
   * more values than the file stores is no loom array, and allocating what
   * it declares would let a few bytes of file ask for gigabytes. */
  if (rc == 0 && (size_t)n > SIZE_MAX / 8)
    rc = LOOM_EFORMAT;
  if (rc == 0 && H5Dget_storage_size(d) < (hsize_t)n * (hsize_t)size)
    rc = LOOM_EFORMAT;
  void *buf = rc == 0 ? malloc((size_t)(n ? n : 1) * loom_value_size(type)) : NULL;
  if (rc == 0 && !buf)
    rc = loom_error_oom("a checkpoint array");
  else if (rc == 0 && n && H5Dread(d, array_type(type), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0)
    rc = LOOM_EFORMAT;
  if (rc == 0)
    rc = loom_state_set_array(s, name, type, buf, (size_t)n);
  free(buf);
  H5Sclose(space);
  H5Tclose(t);
  H5Dclose(d);
  return rc;
}

static int read_group(hid_t file, const char *name, loom_state *s) {
  hid_t g = H5Gopen2(file, name, H5P_DEFAULT);
  if (g < 0)
    return LOOM_EFORMAT;
  reading r = {s, 0};
  hsize_t idx = 0;
  int rc = H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, read_one_attr, &r) < 0 ? (r.rc < 0 ? r.rc : LOOM_EFORMAT) : 0;
  H5G_info_t info;
  if (rc == 0 && H5Gget_info(g, &info) < 0)
    rc = LOOM_EFORMAT;
  for (hsize_t i = 0; rc == 0 && i < info.nlinks; i++) {
    char link[1024];
    if (H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, link, sizeof link, H5P_DEFAULT) < 0) {
      rc = LOOM_EFORMAT;
      break;
    }
    hid_t o = H5Oopen(g, link, H5P_DEFAULT);
    bool is_dataset = o >= 0 && H5Iget_type(o) == H5I_DATASET;
    if (o >= 0)
      H5Oclose(o);
    if (is_dataset) /* subgroups are other states */
      rc = read_dataset(g, link, s);
  }
  H5Gclose(g);
  return rc;
}

/* An integer attribute of one value; false if it is absent or not that. */
static bool read_i64_attr(hid_t loc, const char *name, int64_t *v) {
  hid_t a = H5Aopen(loc, name, H5P_DEFAULT);
  if (a < 0)
    return false;
  hid_t t = H5Aget_type(a);
  bool ok = t >= 0 && H5Tget_class(t) == H5T_INTEGER && one_value(a) && H5Aread(a, H5T_NATIVE_INT64, v) >= 0;
  if (t >= 0)
    H5Tclose(t);
  H5Aclose(a);
  return ok;
}

static int read_file(hid_t file, const char *path, loom_checkpoint *c) {
  char *magic = NULL, *list = NULL;
  int64_t format = 0, stored_crc = -1;
  if (read_str_attr(file, "loom_magic", &magic) < 0 || strcmp(magic, MAGIC) != 0) {
    free(magic);
    return loom_error_set(LOOM_EFORMAT, "%s is an HDF5 file but not a loom checkpoint", path);
  }
  free(magic);
  if (!read_i64_attr(file, "loom_format", &format))
    return loom_error_set(LOOM_EFORMAT, "%s has no checkpoint format number; this loom reads format %d: the file is "
                                        "damaged or not from a loom release",
                          path, FORMAT);
  if (format != FORMAT)
    return loom_error_set(LOOM_EFORMAT, "%s has checkpoint format %lld; this loom reads format %d: %s", path,
                          (long long)format, FORMAT,
                          format > FORMAT ? "it was written by a newer loom; use that loom (or newer) to read it"
                                          : "it was written by an older loom; use that loom to read it, or start a new "
                                            "logdir");
  if (!read_i64_attr(file, "loom_content_crc32", &stored_crc))
    stored_crc = -1; /* no checksum: the comparison below refuses the file */
  if (read_str_attr(file, "loom_groups", &list) < 0)
    return loom_error_set(LOOM_EFORMAT, "%s: the checkpoint's list of states is missing", path);
  int rc = 0;
  for (char *save = NULL, *name = strtok_r(list, "\n", &save); name && rc == 0; name = strtok_r(NULL, "\n", &save)) {
    loom_state *s = loom_checkpoint_group(c, name);
    int got = s ? read_group(file, name, s) : loom_last_error_code();
    if (got == LOOM_ENOMEM) /* out of memory says nothing of the file */
      rc = loom_error_wrap(got, "%s: reading the state \"%s\"", path, name);
    else if (!s || got < 0)
      rc = loom_error_set(LOOM_EFORMAT, "%s: cannot read the state \"%s\"; the file is damaged", path, name);
  }
  free(list);
  uint32_t crc;
  if (rc == 0 && (rc = content_crc(c, &crc)) == 0 && (int64_t)crc != stored_crc)
    rc = loom_error_set(LOOM_EFORMAT, "%s fails its checksum (stored %08llx, content %08x): the file is damaged",
                        path, (unsigned long long)stored_crc, crc);
  return rc;
}

/* Refuses bytes that are not a sealed loom checkpoint whose checksum holds
 * (or an HDF5 file from before the user block), before HDF5 parses them. */
static int check_user_block(const unsigned char *bytes, size_t size, const char *name) {
  if (size >= sizeof HDF5_SIGNATURE && memcmp(bytes, HDF5_SIGNATURE, sizeof HDF5_SIGNATURE) == 0)
    return 0; /* written before the block: only the content checksum */
  if (size < UB_SIZE || memcmp(bytes, UB_MAGIC, sizeof UB_MAGIC) != 0)
    return loom_error_set(LOOM_EFORMAT, "%s is not a loom checkpoint (no loom header%s)", name,
                          size < UB_SIZE ? ", and shorter than one" : "");
  uint32_t version = get_u32(bytes + 16), stored = get_u32(bytes + 20);
  uint64_t length = get_u32(bytes + 24) | (uint64_t)get_u32(bytes + 28) << 32;
  if (version != UB_VERSION)
    return loom_error_set(LOOM_EFORMAT, "%s has checkpoint header version %u; this loom reads version %d: %s", name,
                          version, UB_VERSION,
                          version > UB_VERSION ? "it was written by a newer loom; use that loom (or newer) to read it"
                                               : "the file is damaged");
  if (length != size)
    return loom_error_set(LOOM_EFORMAT, "%s is %zu bytes but was written with %llu: the file is %s", name, size,
                          (unsigned long long)length, size < length ? "truncated" : "damaged");
  uint32_t crc = crc_bytes((uint32_t)crc32(0, NULL, 0), bytes + UB_SIZE, size - UB_SIZE);
  if (crc != stored)
    return loom_error_set(LOOM_EFORMAT, "%s fails its checksum (stored %08x, file bytes %08x): the file is damaged",
                          name, stored, crc);
  return 0;
}

loom_checkpoint *loom_checkpoint_read_memory(const void *bytes, size_t size, const char *name) {
  if (check_user_block(bytes, size, name) < 0)
    return NULL;
  loom_checkpoint *c = loom_checkpoint_create();
  if (!c)
    return NULL;
  /* HDF5 parses the very bytes that were checked: an image in memory
   * (the core driver, no backing store), not the file again. The core
   * driver refuses a name that exists on disk and shares an open file of
   * the same name, so the image gets a name no file can have, its own. */
  char name_of_image[64];
  image_name(name_of_image, sizeof name_of_image);
  loom_h5_quiet q = loom_h5_hush();
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  bool ok = fapl >= 0 && H5Pset_fapl_core(fapl, 1 << 16, 0) >= 0 && H5Pset_file_image(fapl, (void *)bytes, size) >= 0;
  hid_t file = ok ? H5Fopen(name_of_image, H5F_ACC_RDONLY, fapl) : -1;
  if (fapl >= 0)
    H5Pclose(fapl);
  int rc = file < 0 ? loom_error_set(LOOM_EFORMAT, "%s is not a readable HDF5 file (truncated or damaged?)", name)
                    : read_file(file, name, c);
  if (file >= 0)
    H5Fclose(file);
  loom_h5_unhush(q);
  if (rc < 0) {
    loom_checkpoint_destroy(c);
    return NULL;
  }
  return c;
}

/* The whole file in memory: a checkpoint is read whole anyway. */
static int read_whole(const char *path, unsigned char **out, size_t *size) {
  int fd = open(path, O_RDONLY);
  if (fd < 0)
    return loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "checkpoint %s: %s", path, strerror(errno));
  struct stat st;
  int rc = fstat(fd, &st) < 0 ? loom_error_set(LOOM_EIO, "checkpoint %s: %s", path, strerror(errno)) : 0;
  if (rc == 0 && !S_ISREG(st.st_mode))
    rc = loom_error_set(LOOM_EINVAL, "checkpoint %s is not a regular file; give the path of a .h5 checkpoint", path);
  unsigned char *buf = rc == 0 ? malloc(st.st_size ? (size_t)st.st_size : 1) : NULL;
  if (rc == 0 && !buf)
    rc = loom_error_oom("reading a checkpoint");
  size_t got = 0;
  while (rc == 0 && got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      rc = loom_error_set(LOOM_EIO, "reading checkpoint %s failed: %s", path, n < 0 ? strerror(errno) : "it shrank");
    else
      got += (size_t)n;
  }
  close(fd);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *size = got;
  return 0;
}

loom_checkpoint *loom_checkpoint_read(const char *path) {
  unsigned char *bytes = NULL;
  size_t size = 0;
  if (read_whole(path, &bytes, &size) < 0)
    return NULL;
  loom_checkpoint *c = loom_checkpoint_read_memory(bytes, size, path);
  free(bytes);
  return c;
}

int loom_file_crc32(const char *path, uint32_t *out) {
  FILE *f = fopen(path, "rb");
  if (!f)
    return loom_error_set(errno == ENOENT ? LOOM_ENOENT : LOOM_EIO, "%s: %s", path, strerror(errno));
  uint32_t crc = (uint32_t)crc32(0, NULL, 0);
  unsigned char buf[1 << 16];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, f)) > 0)
    crc = (uint32_t)crc32(crc, buf, (uInt)n);
  int err = ferror(f);
  fclose(f);
  if (err)
    return loom_error_set(LOOM_EIO, "reading %s failed", path);
  *out = crc;
  return 0;
}
