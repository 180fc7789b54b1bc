/* Replays fuzz inputs through a target's LLVMFuzzerTestOneInput without
 * libFuzzer: `fuzz_replay_T DIR_OR_FILE...` runs every file (directories
 * one level deep, in name order), so each corpus is a regression suite in
 * the normal build (tests/fuzz/CMakeLists.txt). LOOM_FUZZ_VERBOSE=1 prints
 * each input's last loom error. */
#include <dirent.h>
#include <sys/stat.h>

#include "fuzz.h"

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  return 0;
}

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: cannot open\n", path);
    return -1;
  }
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *data = malloc(n ? (size_t)n : 1);
  size_t got = fread(data, 1, (size_t)n, f);
  fclose(f);
  loom_error_clear();
  LLVMFuzzerTestOneInput(data, got);
  free(data);
  if (getenv("LOOM_FUZZ_VERBOSE")) /* what each input came to: the last error, if any */
    printf("%s: %s\n", path, loom_last_error());
  return 0;
}

static int no_dots(const struct dirent *e) { return e->d_name[0] != '.'; }

int main(int argc, char **argv) {
  LLVMFuzzerInitialize(&argc, &argv);
  int files = 0, bad = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) < 0) {
      fprintf(stderr, "%s: no such file or directory\n", argv[i]);
      bad++;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      bad += replay_file(argv[i]) < 0, files++;
      continue;
    }
    struct dirent **names;
    int n = scandir(argv[i], &names, no_dots, alphasort);
    for (int k = 0; k < n; k++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], names[k]->d_name);
      bad += replay_file(path) < 0, files++;
      free(names[k]);
    }
    free(names);
  }
  printf("replayed %d inputs\n", files);
  return bad || files == 0 ? 1 : 0;
}
