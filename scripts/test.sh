#!/usr/bin/env bash
# Installs what loom needs, builds it, and runs the whole test suite twice:
# a Release build (with the example trained for 10 epochs and its accuracy
# checked), then a build with AddressSanitizer and UndefinedBehaviorSanitizer;
# then each fuzz target for a short fixed budget (clang, libFuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."

# clang and libFuzzer too: the fuzz stage below needs them.
LOOM_FUZZ_DEPS=1 ./scripts/install-deps.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

# The sanitizer build skips the 10-epoch accuracy run (a 1-epoch smoke run
# of the example on the real data takes its place).
cmake -S . -B build-sanitize -DCMAKE_BUILD_TYPE=Debug -DLOOM_SANITIZE=ON \
  -DLOOM_BUILD_BENCH=OFF -DLOOM_TEST_EXAMPLE_ACCURACY=OFF
cmake --build build-sanitize -j"$jobs"
(cd build-sanitize && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$jobs")

# Every fuzz target for 15 s on its corpus (7 targets: under 2 minutes of
# fuzzing), built with clang, ASan and UBSan in build-fuzz/; a crash, leak or
# undefined behaviour fails CI (docs/reliability.md, "Fuzzing").
./scripts/fuzz.sh all 15
