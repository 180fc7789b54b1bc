#!/usr/bin/env bash
# Installs what loom needs, builds it, and runs the whole test suite twice:
# a Release build (with the example trained for 10 epochs and its accuracy
# checked, and a few tests again under valgrind), then a build with
# AddressSanitizer and UndefinedBehaviorSanitizer; then the threaded tests
# under ThreadSanitizer; then each fuzz target for a short fixed budget
# (clang, libFuzzer). The library's code is built with -Werror by gcc and
# clang (docs/reliability.md, "Checkers").
set -euo pipefail
cd "$(dirname "$0")/.."

# clang and libFuzzer too: the fuzz stage below needs them.
LOOM_FUZZ_DEPS=1 ./scripts/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DLOOM_WERROR=ON
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

# The sanitizer build skips the 10-epoch accuracy run (a 1-epoch smoke run
# of the example on the real data takes its place).
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DLOOM_SANITIZE=ON -DLOOM_WERROR=ON \
  -DLOOM_BUILD_BENCH=OFF -DLOOM_TEST_EXAMPLE_ACCURACY=OFF
cmake --build build-sanitize -j"$jobs"
(cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$jobs")

# ThreadSanitizer, built by clang: the pipeline, layer, product and optimizer
# tests with the compute pool at 1, 2 and 4 threads (label tsan). Only their
# targets are built (the library and the loom command among them).
CC=clang cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLOOM_TSAN=ON -DLOOM_WERROR=ON \
  -DLOOM_BUILD_BENCH=OFF -DLOOM_BUILD_EXAMPLES=OFF -DLOOM_TEST_EXAMPLE_ACCURACY=OFF
cmake --build build-tsan -j"$jobs" --target loom loom_cli test_pipeline test_layers test_fusions test_gemm test_optimizers
(cd build-tsan && ctest -L tsan --output-on-failure -j"$jobs")

# Every fuzz target for 15 s on its corpus (7 targets: under 2 minutes of
# fuzzing), built with clang, ASan and UBSan in build-fuzz/; a crash, leak or
# undefined behaviour fails CI (docs/reliability.md, "Fuzzing").
./scripts/fuzz.sh all 15
