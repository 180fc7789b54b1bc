#ifndef LOOM_CORE_HDF5_QUIET_H
#define LOOM_CORE_HDF5_QUIET_H

#include <hdf5.h>

/* HDF5 prints its error stack unless told not to, and a library must not
 * print. The handler is per thread in the thread-safe build, so it is saved
 * and restored around each use. */
typedef struct loom_h5_quiet {
  H5E_auto2_t func;
  void *data;
} loom_h5_quiet;

static inline loom_h5_quiet loom_h5_hush(void) {
  loom_h5_quiet q;
  H5Eget_auto2(H5E_DEFAULT, &q.func, &q.data);
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  return q;
}

static inline void loom_h5_unhush(loom_h5_quiet q) { H5Eset_auto2(H5E_DEFAULT, q.func, q.data); }

#endif
