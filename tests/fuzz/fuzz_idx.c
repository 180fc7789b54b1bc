/* The IDX reader: the input is an image file and a label file (gzip'd or
 * plain, as the reader takes either): its first two bytes (little-endian)
 * say how many of the rest are the images, the others are the labels.
 * Both are read from memory (loom_idx_dataset_from_memory: no files); a
 * dataset that opens has every sample fetched. */
#include "fuzz.h"
#include "fuzz_fetch.h"
#include "loom/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 2 || size > (1 << 20))
    return 0;
  size_t split = (size_t)(data[0] | data[1] << 8);
  data += 2, size -= 2;
  if (split > size)
    split = size;
  loom_dataset *ds = loom_idx_dataset_from_memory(data, split, data + split, size - split);
  if (!ds) {
    fuzz_expect_clean_null();
    return 0;
  }
  fuzz_fetch_all(ds);
  loom_dataset_release(ds);
  return 0;
}
