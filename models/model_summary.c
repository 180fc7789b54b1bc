/* The model summary (Lightning's ModelSummary), per sample: a row per layer
 * with its output shape, parameters and multiply-adds, then the totals. */
#include <inttypes.h>
#include <string.h>

#include "core/error_internal.h"
#include "models/layer_internal.h"

enum { COLUMNS = 7 };

/* "[C, H, W]" */
static void shape_text(char *out, size_t size, int ndim, const int64_t *shape) {
  size_t len = (size_t)snprintf(out, size, "[");
  for (int d = 0; d < ndim && len < size; d++)
    len += (size_t)snprintf(out + len, size - len, "%s%" PRId64, d ? ", " : "", shape[d]);
  if (len < size)
    snprintf(out + len, size - len, "]");
}

/* Layer i's cells: #, name, type, output shape, params, MACs, mode. */
static void row_cells(const loom_model *m, size_t i, char cells[COLUMNS][128]) {
  int64_t shape[LOOM_MAX_DIMS], macs = loom_model_layer_macs(m, i);
  size_t offset, count;
  loom_model_layer_params(m, i, &offset, &count);
  const char *name = loom_model_layer_name(m, i);
  snprintf(cells[0], 128, "%zu", i);
  snprintf(cells[1], 128, "%s", name);
  snprintf(cells[2], 128, "%s", loom_layer_type(loom_model_layer(m, i)));
  shape_text(cells[3], 128, loom_model_layer_output_shape(m, i, shape), shape);
  snprintf(cells[4], 128, "%zu", count);
  if (macs < 0)
    snprintf(cells[5], 128, "?");
  else
    snprintf(cells[5], 128, "%" PRId64, macs);
  snprintf(cells[6], 128, "%s", count == 0 ? "-" : loom_model_is_frozen(m, name) ? "frozen" : "trainable");
}

static void print_row(FILE *out, char cells[COLUMNS][128], const int *width) {
  for (int c = 0; c < COLUMNS; c++)
    fprintf(out, "%s%-*s", c ? " | " : "  ", c == COLUMNS - 1 ? 0 : width[c], cells[c]);
  fputc('\n', out);
}

int loom_model_print_summary(const loom_model *m, FILE *out) {
  if (!loom_model_is_built(m))
    return loom_error_set(LOOM_ESTATE, "loom_model_print_summary: the model is not built yet (its shapes are not "
                                       "known); build it, or call this from on_stage_start");
  char head[COLUMNS][128] = {"#", "name", "type", "output shape", "params", "MACs", "mode"}, cells[COLUMNS][128];
  int width[COLUMNS];
  for (int c = 0; c < COLUMNS; c++)
    width[c] = (int)strlen(head[c]);
  size_t n = loom_model_num_layers(m), trainable = 0, frozen = 0;
  int64_t macs = 0;
  bool unknown = false;
  for (size_t i = 0; i < n; i++) {
    row_cells(m, i, cells);
    for (int c = 0; c < COLUMNS; c++)
      width[c] = width[c] > (int)strlen(cells[c]) ? width[c] : (int)strlen(cells[c]);
    size_t offset, count;
    loom_model_layer_params(m, i, &offset, &count);
    *(loom_model_is_frozen(m, loom_model_layer_name(m, i)) ? &frozen : &trainable) += count;
    int64_t layer_macs = loom_model_layer_macs(m, i);
    unknown = unknown || layer_macs < 0;
    macs += layer_macs > 0 ? layer_macs : 0;
  }
  int64_t shape[LOOM_MAX_DIMS];
  char input[128];
  shape_text(input, sizeof input, loom_model_input_shape(m, shape), shape);
  fprintf(out, "model summary (per sample of shape %s):\n", input);
  print_row(out, head, width);
  for (size_t i = 0; i < n; i++) {
    row_cells(m, i, cells);
    print_row(out, cells, width);
  }
  fprintf(out, "  %zu trainable params, %zu frozen params, %zu total params\n", trainable, frozen, trainable + frozen);
  fprintf(out, "  %" PRId64 "%s multiply-adds per sample\n", macs, unknown ? " + ?" : "");
  return 0;
}
