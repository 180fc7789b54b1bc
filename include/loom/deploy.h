/* loom/deploy.h - using a trained model: predictions and export.
 *
 * Predictions run a model in evaluation mode (Dropout off, BatchNorm on its
 * running statistics) over a loader's samples, labelled or not, and write
 * each output with the index of its sample in the dataset. Export writes
 * the model as ONNX (opset 13) and its weights with their names, shapes and
 * dtypes beside its architecture. docs/predict-export.md shows the loom
 * command's side of both. */
#ifndef LOOM_DEPLOY_H
#define LOOM_DEPLOY_H

#include "loom/api.h"

#include <stdbool.h>

#include "loom/config.h"
#include "loom/data.h"
#include "loom/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- predictions --- */
typedef struct loom_predictions loom_predictions;

/* A predictions file, written at loom_predictions_close: "FILE.csv" a CSV
 * file (header "loader,index,output_0,...", one row per sample, outputs
 * flattened, floats with 9 significant digits so they read back exactly),
 * any other name HDF5 (per loader a group "/NAME" holding "indices" [N]
 * int64 and "outputs" [N, output shape...] float32). The file is written
 * beside `path` under a temporary name and renamed into place, its
 * directory created; a write error names the file and the system's reason. */
LOOM_API loom_predictions *loom_predictions_create(const char *path);
/* Writes the file and frees `p`; on an error nothing is left at the path
 * (an older file there is kept). */
LOOM_API int loom_predictions_close(loom_predictions *p);
/* Frees `p` without writing (NULL: nothing). */
LOOM_API void loom_predictions_discard(loom_predictions *p);
/* Samples predicted so far under `name` (0 if none). */
LOOM_API int64_t loom_predictions_count(const loom_predictions *p, const char *name);

/* Runs `model` (built; loaded with loom_model_load_weights or trained) in
 * evaluation mode over one epoch of `loader`, in its sampler's order, and
 * adds the outputs and their samples' indices to `out` under `name` (a
 * name used once per file). The model's mode is restored afterwards. The
 * loader's dataset may be unlabelled (loom_dataset_is_labelled). */
LOOM_API int loom_predict(loom_model *model, loom_loader *loader, const char *name, loom_predictions *out);

/* Which weights a command takes: "best" or "last" in the experiment's
 * logdir (loom_checkpoint_open_logdir), or a checkpoint or weights file. */
typedef struct loom_predict_options {
  const char *resume;  /* NULL: "best" */
  const char *dataset; /* an HDF5 or CSV file to predict instead of the config's infer* loaders (as
                        * loom_config_add_dataset_file reads it), or NULL */
  const char *out;     /* the predictions file: FILE.h5 or FILE.csv */
} loom_predict_options;

/* `loom predict`: builds the (loaded, not yet built) config, loads the
 * weights o->resume names into its model and predicts every infer* loader
 * the config defines (whether a stage runs it or not), or o->dataset alone
 * (as the loader "infer_dataset"), into o->out. `used` (may be NULL)
 * receives the checkpoint file read. */
LOOM_API int loom_predict_config(loom_config *config, const loom_predict_options *o, char *used, size_t used_size);

/* --- export --- */

/* Whether this build writes ONNX (it was built with protobuf-c and the
 * ONNX schema); without them loom_export_onnx fails with LOOM_ENOTSUP. */
LOOM_API bool loom_onnx_available(void);
/* The built model as an ONNX model (IR 7, opset 13): graph input "input"
 * [N, sample shape...] float, output "output", the parameters and buffers
 * as initializers named "LAYER.weight", "LAYER.bias", "LAYER.running_mean",
 * "LAYER.running_var". Linear -> Gemm (a Flatten before it for samples of
 * more than one dimension), ReLU/LeakyReLU/Tanh/Sigmoid -> their operators,
 * GELU -> its erf form, Conv2d -> Conv, the pools -> MaxPool, AveragePool
 * (count_include_pad) and GlobalAveragePool + Flatten, BatchNorm ->
 * BatchNormalization (inference: running statistics), Flatten -> Flatten,
 * Dropout -> Identity. A layer with no mapping (a user's layer type) is an
 * error naming it. */
LOOM_API int loom_export_onnx(loom_model *model, const char *path);
/* The weights as HDF5: a dataset "LAYER.NAME" per parameter and buffer
 * (the names of loom_export_onnx's initializers), float32 in its shape,
 * with attributes "layer" and "type"; and `architecture` (JSON text, e.g.
 * the resolved config's "model" section; NULL: none) as the root attribute
 * "architecture". Written atomically. */
LOOM_API int loom_export_weights(loom_model *model, const char *architecture, const char *path);
/* The architecture file written beside a weights file: JSON with "model"
 * (the config's model section, when given), "input_shape", and per layer
 * its name, type, output shape and tensors (name, shape, dtype). */
LOOM_API int loom_export_architecture(loom_model *model, const char *model_json, const char *path);

typedef struct loom_export_options {
  const char *resume;  /* as loom_predict_options: NULL "best" */
  const char *onnx;    /* FILE.onnx, or NULL */
  const char *weights; /* FILE.h5, or NULL; FILE.json beside it (the extension replaced) gets the architecture */
} loom_export_options;

/* `loom export`: builds the config, loads the weights o->resume names and
 * writes what o asks for. `used` as loom_predict_config's. */
LOOM_API int loom_export_config(loom_config *config, const loom_export_options *o, char *used, size_t used_size);

#ifdef __cplusplus
}
#endif
#endif
