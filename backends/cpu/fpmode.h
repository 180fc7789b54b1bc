/* The floating-point mode of a run on this thread. */
#ifndef LOOM_BACKENDS_CPU_FPMODE_H
#define LOOM_BACKENDS_CPU_FPMODE_H

/* Sets flush-to-zero and denormals-are-zero; returns the mode to restore. */
unsigned loom_cpu_fast_denormals_begin(void);
void loom_cpu_fast_denormals_end(unsigned saved);

#endif
