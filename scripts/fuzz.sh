#!/usr/bin/env bash
# scripts/fuzz.sh [TARGET|all] [SECONDS] - builds loom's libFuzzer targets
# (tests/fuzz, clang, ASan + UBSan) in build-fuzz/ and runs TARGET (all of
# them, one after another, by default) for SECONDS each (default 60).
# New inputs go to build-fuzz/corpus/TARGET (the committed seed corpus in
# tests/fuzz/corpus/TARGET is read, never written); a crash is written to
# build-fuzz/artifacts/TARGET/: minimise it (fuzz_TARGET -minimize_crash=1),
# fix it, and commit it to tests/fuzz/corpus/TARGET as crash_<what>.
# Environment: FUZZ_JOBS (parallel fuzzing processes, default 1), FUZZ_ARGS
# (more libFuzzer options), CC (default clang), LOOM_NUM_THREADS (default 1). Needs clang and libFuzzer:
# LOOM_FUZZ_DEPS=1 scripts/install-deps.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
targets=(config set idx csv hdf5 checkpoint names)
target=${1:-all}
seconds=${2:-60}
build=$root/build-fuzz
if [[ $target != all && ! " ${targets[*]} " =~ " $target " ]]; then
  echo "fuzz.sh: no target \"$target\"; the targets: ${targets[*]}" >&2
  exit 2
fi
[[ $target == all ]] && run=("${targets[@]}") || run=("$target")

CC=${CC:-clang} cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Debug -DLOOM_FUZZ=ON -DLOOM_WITH_MPI=OFF -DLOOM_WITH_CUDA=OFF \
  -DLOOM_BUILD_EXAMPLES=OFF -DLOOM_BUILD_BENCH=OFF -DLOOM_TEST_EXAMPLE_ACCURACY=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${run[@]/#/fuzz_}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# One compute thread: the inputs are tiny, and a pool's threads only wait.
export LOOM_NUM_THREADS=${LOOM_NUM_THREADS:-1}
for t in "${run[@]}"; do
  mkdir -p "$build/corpus/$t" "$build/artifacts/$t"
  dict=()
  [[ -f $root/tests/fuzz/$t.dict ]] && dict=(-dict="$root/tests/fuzz/$t.dict")
  # Room for several edits (checkpoint) or datasets (hdf5) from the start.
  case $t in checkpoint | hdf5) dict+=(-max_len=512) ;; esac
  echo "== fuzz_$t for ${seconds}s"
  jobs=()
  [[ ${FUZZ_JOBS:-1} -gt 1 ]] && jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS")
  # The first corpus directory takes the finds.
  (cd "$build" && "$build/bin/fuzz_$t" -max_total_time="$seconds" -timeout=20 -rss_limit_mb=4096 \
    -print_final_stats=1 "${jobs[@]}" -artifact_prefix="$build/artifacts/$t/" "${dict[@]}" ${FUZZ_ARGS:-} \
    "$build/corpus/$t" "$root/tests/fuzz/corpus/$t")
done
