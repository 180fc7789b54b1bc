/* The JSON config path: text -> parsed and validated (loom_config_validate:
 * no data read, no model allocated), then, if that passed, built
 * (datasets loaded, model built, every component constructed), never run:
 * the many inputs that fail fail fast, and the build still sees every
 * config the validation accepts. A build that passes where the validation
 * refused cannot be seen this way; test_config_validate checks that the
 * two agree on the golden cases.
 * The document stands at tests/configs/fuzz.json, so the fixtures' relative
 * paths (data/images.idx) resolve. A config naming plugins is skipped:
 * a plugin is code, not input. */
#include <jansson.h>

#include "fuzz.h"
#include "loom/config.h"

static bool names_plugins(const char *text) {
  json_t *j = json_loads(text, JSON_DECODE_ANY, NULL);
  bool has = json_is_object(j) && json_object_get(j, "plugins");
  json_decref(j);
  return has;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size > (1 << 16)) /* the size limit itself is test_cli's */
    return 0;
  char *text = malloc(size + 1);
  memcpy(text, data, size);
  text[size] = '\0';
  if (!names_plugins(text)) {
    loom_config *c = loom_config_parse(text, LOOM_FUZZ_CONFIGS "/fuzz.json");
    if (!c) {
      fuzz_expect_clean_null();
    } else {
      loom_experiment *exp = NULL;
      int rc = loom_config_validate(c);
      fuzz_expect_clean_error(rc);
      if (rc == 0)
        fuzz_expect_clean_error(loom_config_build(c, &exp));
      loom_experiment_destroy(exp);
      loom_config_destroy(c);
    }
  }
  free(text);
  return 0;
}
