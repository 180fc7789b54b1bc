#!/usr/bin/env bash
# scripts/gpu-check.sh: every check that needs an NVIDIA GPU, in one run on
# a lent machine, from scripts/gpu-pack.sh's .gpu/pack.tar.xz:
#   1. the device as nvidia-smi and loom see it;
#   2. the CUDA tests: the module and allocator (test_cuda, test_cuda_module),
#      every op's CUDA row against double references (test_backend_ops cuda),
#      a config on "cuda:0" (test_config_device), the fake device's runner
#      (test_device_runner, a control);
#   3. the Fashion-MNIST MLP (examples/configs/fashion_mnist_mlp.json): EPOCHS epochs
#      (default 2) with --device cpu and --device cuda, seconds per epoch
#      and validation accuracy of each, as a table.
# Prints everything to stdout and, when $OUT is set, a copy to
# $OUT/gpu-check.log; exits non-zero if a test fails or a run differs in
# accuracy by more than 2 points. Without a GPU it says so and exits 77.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pack=$root/.gpu/pack.tar.xz
epochs=${EPOCHS:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log=${OUT:+$OUT/gpu-check.log}
exec > >(tee ${log:+"$log"}) 2>&1

[ -f "$pack" ] || { echo "gpu-check: no $pack; run scripts/gpu-pack.sh on the build machine first"; exit 2; }
tar -C "$work" -xJf "$pack"
# CUDA's libraries: the toolkit's, else those of the Python wheels.
cudalib=/usr/local/cuda/lib64
if [ ! -e "$cudalib/libcublas.so.13" ]; then
  found=$(find / -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -1)
  [ -n "$found" ] && cudalib=$(dirname "$found"):$(dirname "$(find / -name 'libcudart.so.13' -not -path '/proc/*' 2>/dev/null | head -1)")
fi
export LD_LIBRARY_PATH=$work/lib:$cudalib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LOOM_CUDA_MODULE=$work/lib/libloom_cuda.so
bin=$work/bin

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here: nothing to check"
  exit 77
fi

failed=0
check() { # NAME COMMAND...: runs it, records a failure
  echo "== $1"
  shift
  "$@"
  local rc=$?
  [ $rc -eq 0 ] || { echo "gpu-check: FAILED ($rc): $*"; failed=1; }
}
check "test_cuda" "$bin/test_cuda"
check "test_cuda_module" "$bin/test_cuda_module" found
check "test_backend_ops cuda" "$bin/test_backend_ops" cuda
check "test_config_device" "$bin/test_config_device" "$work/configs"
check "test_device_runner (fake device, a control)" "$bin/test_device_runner"

echo "== Fashion-MNIST MLP, $epochs epochs"
run_mlp() { # DEVICE: prints "seconds_per_epoch accuracy"
  local dir=$work/run-$1
  "$bin/loom" run "$root/examples/configs/fashion_mnist_mlp.json" --device "$1" --logdir "$dir" \
    --set "stages.train.num_epochs=$epochs" --set "datasets.train.dir=$work/data" \
    --set "datasets.test.dir=$work/data" >"$dir.out" 2>&1 || { cat "$dir.out" >&2; return 1; }
  python3 - "$dir/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if r.get("loader") == "train"]
valid = [r for r in rows if r.get("loader") == "valid"]
# the first epoch holds the warm-up (CUDA's context, cuBLAS's plans): the rest
t = [r["time_s"] for r in train[1:]] or [train[0]["time_s"]]
print("%.3f %.4f" % (sum(t) / len(t), valid[-1]["metrics"]["accuracy"]))
EOF
}
cpu=$(run_mlp cpu) || failed=1
gpu=$(run_mlp cuda) || failed=1
printf '%-8s %14s %10s\n' device "train s/epoch" accuracy
# shellcheck disable=SC2086 # each holds two fields
printf '%-8s %14s %10s\n' cpu ${cpu:-- -} cuda ${gpu:-- -}
if [ -n "${cpu:-}" ] && [ -n "${gpu:-}" ]; then
  python3 -c "import sys; c,g=map(float,sys.argv[1:3]); a,b=map(float,sys.argv[3:5]); print('speed-up %.1fx' % (c/g)); sys.exit(abs(a-b) > 0.02)" \
    ${cpu%% *} ${gpu%% *} ${cpu##* } ${gpu##* } || { echo "gpu-check: accuracies differ by more than 2 points"; failed=1; }
fi
exit $failed
