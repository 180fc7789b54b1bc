/* Repetition seeds: splitmix64 of the grid seed and the repetition, so
 * that the same grid always runs the same seeds and neighbouring
 * repetitions get unrelated streams (loom/grid.h documents the function). */
#include "loom/grid.h"

uint64_t loom_grid_seed(uint64_t grid_seed, int rep) {
  uint64_t z = grid_seed + (uint64_t)rep * UINT64_C(0x9E3779B97F4A7C15);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return (z ^ (z >> 31)) >> 1;
}
