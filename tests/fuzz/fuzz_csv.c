/* The CSV reader: the first byte says whether the file has a header (bit
 * 0) and which column is the target (the other bits, as a signed number:
 * -64..63, negative from the end); the rest is the file, read from memory
 * (loom_csv_dataset_from_memory: no files). A dataset that opens has every
 * sample fetched. */
#include "fuzz.h"
#include "fuzz_fetch.h"
#include "loom/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1 || size > (1 << 20))
    return 0;
  bool header = data[0] & 1;
  int target = (int8_t)data[0] >> 1;
  loom_dataset *ds = loom_csv_dataset_from_memory(data + 1, size - 1, "data.csv", target, header);
  if (!ds) {
    fuzz_expect_clean_null();
    return 0;
  }
  fuzz_fetch_all(ds);
  loom_dataset_release(ds);
  return 0;
}
