/* loom/experiment.h - what to run: stages, their components and callbacks.
 *
 * An experiment owns every component handed to it (models, criteria,
 * optimizers, loaders, callbacks) and destroys each once, so the same model
 * can serve several stages. A stage that sets no model, criterion, optimizer
 * or loaders uses the previous stage's. */
#ifndef LOOM_EXPERIMENT_H
#define LOOM_EXPERIMENT_H

#include "loom/api.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "loom/callback.h"
#include "loom/criterion.h"
#include "loom/data.h"
#include "loom/model.h"
#include "loom/optimizer.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_experiment loom_experiment;
typedef struct loom_stage loom_stage;

LOOM_API loom_experiment *loom_experiment_create(const char *name);
LOOM_API void loom_experiment_destroy(loom_experiment *exp);
LOOM_API const char *loom_experiment_name(const loom_experiment *exp);
LOOM_API void loom_experiment_set_seed(loom_experiment *exp, uint64_t seed);
LOOM_API uint64_t loom_experiment_seed(const loom_experiment *exp);
/* Where every stage's model runs (loom/backend.h): each stage, as it
 * starts, builds its model if nobody did, then moves it to `backend`
 * (loom_model_set_backend) unless it is there already. The runner then
 * uploads each batch to it (loom_runner_input). Borrowed: the backend must
 * outlive the experiment, whose models free their memory through it.
 * NULL (the default): each model stays where it is (host memory unless
 * moved by hand). Checkpoints do not depend on it: a run on a device
 * resumes on the CPU and the reverse. */
LOOM_API void loom_experiment_set_backend(loom_experiment *exp, loom_backend *backend);
LOOM_API loom_backend *loom_experiment_backend(const loom_experiment *exp);
/* As loom_experiment_set_backend, and the experiment destroys `backend`
 * after its models (loom_backend_cpu(), the process's, is never
 * destroyed). It owns one: another is destroyed and refused (LOOM_ESTATE). */
LOOM_API int loom_experiment_own_backend(loom_experiment *exp, loom_backend *backend);
/* Mixed precision, as Lightning's precision="bf16-mixed": while the
 * experiment runs (training and evaluation alike) the runner sets this
 * precision as the thread's autocast (loom_backend_set_autocast), so the
 * products of Linear and Conv2d layers round their operands to it and
 * accumulate in fp32; weights, gradients, optimizer state and checkpoints
 * stay fp32. Default LOOM_PRECISION_FP32. */
LOOM_API int loom_experiment_set_precision(loom_experiment *exp, loom_precision precision);
LOOM_API loom_precision loom_experiment_precision(const loom_experiment *exp);
/* Dynamic loss scaling, as torch.amp.GradScaler: the loss's gradient is
 * multiplied by `scale` before backward, so that small gradients survive
 * fp16's range; at the optimizer step the gradients are checked: any
 * Inf or NaN skips the step (the weights and optimizer state untouched,
 * no optimizer step counted, the batch's metrics kept) and multiplies
 * the scale by backoff_factor; else they are divided by the scale and
 * the step runs, and after growth_interval steps in a row without a skip
 * the scale grows by growth_factor. Once the scale is down to 1 a
 * non-finite gradient goes to the non-finite policy instead (STOP or
 * SKIP, loom/runner.h). The scale and the run of steps are
 * saved in checkpoints. Powers of two keep the unscaled gradients exactly
 * those of an unscaled run wherever nothing overflows. */
typedef struct loom_loss_scaling {
  bool enabled;
  double init_scale;       /* > 0; GradScaler's 65536 */
  double growth_factor;    /* > 1; 2 */
  double backoff_factor;   /* in (0, 1); 0.5 */
  int64_t growth_interval; /* >= 1; 2000 */
} loom_loss_scaling;
/* GradScaler's defaults, enabled for FP16 only (bf16 has fp32's range). */
LOOM_API loom_loss_scaling loom_loss_scaling_defaults(loom_precision precision);
/* NULL: the defaults for the experiment's precision (the default). */
LOOM_API int loom_experiment_set_loss_scaling(loom_experiment *exp, const loom_loss_scaling *scaling);
LOOM_API loom_loss_scaling loom_experiment_loss_scaling(const loom_experiment *exp);
/* Where loggers write; created when the run starts. Default "logs/<name>". */
LOOM_API int loom_experiment_set_logdir(loom_experiment *exp, const char *logdir);
LOOM_API const char *loom_experiment_logdir(const loom_experiment *exp);
/* The config the experiment was built from, as JSON text (copied; NULL
 * clears). Checkpoints record it, and a resume refuses a config that
 * differs from the checkpoint's except where allowed
 * (loom_runner_allow_change). loom_config_build sets it; C programs
 * without one resume as before. */
LOOM_API int loom_experiment_set_config(loom_experiment *exp, const char *json);
LOOM_API const char *loom_experiment_config(const loom_experiment *exp); /* NULL if none */

/* Appends a stage (borrowed handle, valid while exp lives). */
LOOM_API loom_stage *loom_experiment_add_stage(loom_experiment *exp, const char *name, int num_epochs);
LOOM_API size_t loom_experiment_num_stages(const loom_experiment *exp);
LOOM_API loom_stage *loom_experiment_stage(const loom_experiment *exp, size_t i);
/* A callback for the whole experiment: experiment scope, dispatched ahead of
 * every stage's callbacks of equal order (loom/callback.h). Owned from here
 * on, also on failure. */
LOOM_API int loom_experiment_add_callback(loom_experiment *exp, loom_callback *cb);

/* Each setter hands ownership to the experiment, also on failure. */
LOOM_API int loom_stage_set_model(loom_stage *stage, loom_model *model);
LOOM_API int loom_stage_set_criterion(loom_stage *stage, loom_criterion *criterion);
LOOM_API int loom_stage_set_optimizer(loom_stage *stage, loom_optimizer *optimizer);
/* Loaders run in the order added; "train*" trains, "valid*"/"infer*" evaluate. */
LOOM_API int loom_stage_add_loader(loom_stage *stage, const char *name, loom_loader *loader);
LOOM_API int loom_stage_add_callback(loom_stage *stage, loom_callback *cb);
/* What "best" means in this stage. Default: "valid", "loss", minimize. */
LOOM_API int loom_stage_set_main_metric(loom_stage *stage, const char *valid_loader, const char *metric, bool minimize);
/* What a stage carries over from the one before, applied when it starts:
 * the optimizer's state is kept unless reset (a stage with its own
 * optimizer starts fresh anyway); weights may be loaded from "best" or
 * "last" in <logdir>/checkpoints (NULL: the model as it is); the named
 * layers are frozen during the stage, all others train. */
LOOM_API void loom_stage_set_reset_optimizer(loom_stage *stage, bool reset);
LOOM_API int loom_stage_set_load_weights(loom_stage *stage, const char *which);
LOOM_API int loom_stage_freeze(loom_stage *stage, const char *layer);
LOOM_API const char *loom_stage_name(const loom_stage *stage);
LOOM_API int loom_stage_num_epochs(const loom_stage *stage);

/* `stage` for the table of on_experiment_start/end (and of on_exception
 * outside a stage): every callback of every stage. */
#define LOOM_EXPERIMENT_EVENTS (-1)

/* The callback table stage `stage` will dispatch through on `rank` of
 * `world_size`, in dispatch order: sorted by order; at equal order the
 * experiment's callbacks, then those carried from earlier stages, then the
 * stage's own, each group in registration order; callbacks whose node
 * excludes `rank` left out. With LOOM_EXPERIMENT_EVENTS: the experiment's
 * callbacks, then each stage's in stage order, sorted the same way.
 * *rows is the caller's to free(); the names in it are the callbacks'. */
LOOM_API int loom_experiment_callback_table(const loom_experiment *exp, int stage, int rank, int world_size,
                                   loom_callback_info **rows, size_t *count);
/* Prints each stage's table (loom_experiment_callback_table) with order,
 * name, type, node, scope and events. */
LOOM_API int loom_experiment_print_callbacks(const loom_experiment *exp, int rank, int world_size, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
