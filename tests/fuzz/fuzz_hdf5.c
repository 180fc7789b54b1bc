/* The HDF5 dataset reader, structure-aware: HDF5 itself is not fuzzed (it
 * crashes on damaged files, which loom cannot fix), so the input describes
 * a valid HDF5 file, written with libhdf5 as an image in memory (the core
 * driver: no files), whose datasets have whatever ranks, shapes, types,
 * sizes and names the bytes say; then loom opens that image
 * (loom_hdf5_options.images) with options from the bytes and fetches every
 * sample. Layout of the input:
 *   u8 options: bit 0 preload, bit 1 a second file (the same again), bits 2-3 block, 4-5 cache
 *   u8 count of datasets (mod 4), then for each:
 *     u8 name (images, labels, x, images/sub), u8 type (mod 12), u8 rank (mod 5),
 *     rank x u8 dims, u8 layout (bit 0 chunked, bit 1 chunked and never written, bit 2 an attribute only)
 *   the rest: the datasets' bytes, in order, cycled. */
#include <hdf5.h>

#include "fuzz.h"
#include "fuzz_fetch.h"
#include "loom/data.h"

static hid_t type_of(uint8_t t) {
  const hid_t all[] = {H5T_NATIVE_UCHAR,  H5T_NATIVE_SCHAR,  H5T_NATIVE_SHORT,  H5T_NATIVE_USHORT,
                       H5T_NATIVE_INT,    H5T_NATIVE_UINT,   H5T_NATIVE_LLONG,  H5T_NATIVE_ULLONG,
                       H5T_NATIVE_FLOAT,  H5T_NATIVE_DOUBLE, H5T_STD_I32BE,     H5T_IEEE_F64BE};
  return all[t % (sizeof all / sizeof all[0])];
}

static const char *const names[] = {"images", "labels", "x", "images/sub"};

/* Builds the file the bytes describe in memory; false if libhdf5 refused (a
 * shape it does not take): not loom's business. *image is the caller's. */
static bool write_file(fuzz_bytes *b, void **image, size_t *image_size) {
  hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
  H5Pset_fapl_core(fapl, 1 << 16, 0);
  hid_t f = H5Fcreate("fuzz-hdf5-image", H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  H5Pclose(fapl);
  if (f < 0)
    return false;
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  H5Pset_create_intermediate_group(lcpl, 1);
  int count = fuzz_u8(b) % 4;
  bool ok = true;
  struct {
    hid_t d, type;
    size_t bytes;
  } made[4];
  int nmade = 0;
  for (int i = 0; i < count && ok; i++) {
    const char *name = names[fuzz_u8(b) % 4];
    hid_t type = type_of(fuzz_u8(b));
    int rank = fuzz_u8(b) % 5;
    hsize_t dims[4], chunk[4];
    size_t total = H5Tget_size(type);
    for (int k = 0; k < rank; k++) {
      dims[k] = fuzz_u8(b) % 9;
      chunk[k] = dims[k] ? dims[k] : 1;
      total *= dims[k];
    }
    uint8_t layout = fuzz_u8(b);
    if (layout & 4) { /* a name that is an attribute, not a dataset */
      hid_t space = H5Screate(H5S_SCALAR);
      hid_t a = H5Acreate2(f, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
      ok = a >= 0 || H5Lexists(f, name, H5P_DEFAULT) >= 0;
      if (a >= 0)
        H5Aclose(a);
      H5Sclose(space);
      continue;
    }
    if (layout & 3 && rank > 0) {
      dims[0] = layout & 2 ? (hsize_t)1 << (20 + fuzz_u8(b) % 20) : dims[0]; /* declared, never stored */
      total = layout & 2 ? 0 : total;
    }
    hid_t space = rank ? H5Screate_simple(rank, dims, NULL) : H5Screate(H5S_SCALAR);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (layout & 3 && rank > 0)
      H5Pset_chunk(dcpl, rank, chunk);
    hid_t d = H5Dcreate2(f, name, type, space, lcpl, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    H5Sclose(space);
    if (d < 0)
      continue; /* the name is taken: the file has fewer datasets */
    made[nmade].d = d, made[nmade].type = type, made[nmade++].bytes = total;
  }
  for (int i = 0; i < nmade; i++) {
    if (made[i].bytes && made[i].bytes <= (1 << 20)) {
      uint8_t *buf = malloc(made[i].bytes);
      for (size_t k = 0; k < made[i].bytes; k++)
        buf[k] = b->n ? b->p[k % b->n] : (uint8_t)k;
      ok = ok && H5Dwrite(made[i].d, made[i].type, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0;
      free(buf);
    }
    H5Dclose(made[i].d);
  }
  H5Pclose(lcpl);
  ssize_t n = ok && H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0 ? H5Fget_file_image(f, NULL, 0) : -1;
  *image = n > 0 ? malloc((size_t)n) : NULL;
  ok = *image && H5Fget_file_image(f, *image, (size_t)n) == n;
  *image_size = ok ? (size_t)n : 0;
  if (!ok) {
    free(*image);
    *image = NULL;
  }
  return H5Fclose(f) >= 0 && ok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* libhdf5 refusing the writer's shapes is not news */
  /* libhdf5's own free lists keep what it frees, without limit: the metadata
   * cache every file open allocates again (hundreds of KiB) then comes from
   * them, not from fresh pages (ASan's quarantine holds freed memory back),
   * which was most of an input's time. Only libhdf5's memory: loom's stays
   * ASan's. */
  H5set_free_list_limits(-1, -1, -1, -1, -1, -1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096)
    return 0;
  fuzz_bytes b = {data, size};
  uint8_t opt = fuzz_u8(&b);
  void *image = NULL;
  size_t image_size;
  if (!write_file(&b, &image, &image_size)) {
    free(image);
    return 0;
  }
  const char *files[2] = {"data.h5", "data.h5"};
  const void *images[2] = {image, image};
  size_t sizes[2] = {image_size, image_size};
  loom_hdf5_options o = {.files = files,
                         .num_files = opt & 2 ? 2 : 1,
                         .inputs = "images",
                         .targets = "labels",
                         .scale = 1.0 / 255,
                         .block = (opt >> 2) & 3,
                         .cache_mb = (opt >> 4) & 3,
                         .preload = opt & 1,
                         .images = images,
                         .image_sizes = sizes};
  loom_dataset *ds = loom_hdf5_dataset_open(&o);
  free(image); /* HDF5 copied it */
  if (!ds) {
    fuzz_expect_clean_null();
    return 0;
  }
  fuzz_fetch_all(ds);
  loom_dataset_release(ds);
  return 0;
}
