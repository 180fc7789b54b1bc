/* --set overrides: the input's lines, each one "KEY=VALUE" as the loom
 * command passes it, applied in order to tests/configs/tiny.json, which is
 * then built (validated, not run). A line naming plugins is skipped. */
#include "fuzz.h"
#include "loom/config.h"

static char *tiny;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc, (void)argv;
  FILE *f = fopen(LOOM_FUZZ_CONFIGS "/tiny.json", "rb");
  if (!f)
    abort();
  tiny = calloc(1 << 16, 1);
  if (fread(tiny, 1, (1 << 16) - 1, f) == 0)
    abort();
  fclose(f);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > 4096)
    return 0;
  loom_config *c = loom_config_parse(tiny, LOOM_FUZZ_CONFIGS "/tiny.json");
  if (!c)
    abort();
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  int rc = 0, lines = 0;
  for (char *save = NULL, *line = strtok_r(text, "\n", &save); line && rc == 0 && lines < 8;
       line = strtok_r(NULL, "\n", &save), lines++) {
    if (strstr(line, "plugin"))
      continue;
    rc = loom_config_set(c, line);
    fuzz_expect_clean_error(rc);
  }
  if (rc == 0) {
    loom_experiment *exp = NULL;
    fuzz_expect_clean_error(loom_config_build(c, &exp));
    loom_experiment_destroy(exp);
  }
  free(text);
  loom_config_destroy(c);
  return 0;
}
