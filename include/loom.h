/* loom.h - everything a loom program needs. */
#ifndef LOOM_H
#define LOOM_H

#include "loom/backend.h"
#include "loom/backend_cpu.h"
#include "loom/backend_cuda.h"
#include "loom/callback.h"
#include "loom/callbacks.h"
#include "loom/comm.h"
#include "loom/comm_mpi.h"
#include "loom/config.h"
#include "loom/criterion.h"
#include "loom/data.h"
#include "loom/deploy.h"
#include "loom/error.h"
#include "loom/experiment.h"
#include "loom/gradcheck.h"
#include "loom/grid.h"
#include "loom/grid_results.h"
#include "loom/metrics.h"
#include "loom/model.h"
#include "loom/optimizer.h"
#include "loom/plugin.h"
#include "loom/registry.h"
#include "loom/rng.h"
#include "loom/runner.h"
#include "loom/runner_view.h"
#include "loom/scheduler.h"
#include "loom/state.h"
#include "loom/tensor.h"
#include "loom/version.h"

#endif
