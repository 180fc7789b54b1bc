#!/usr/bin/env bash
# scripts/gpu-check.sh: every check that needs an NVIDIA GPU, in one run on
# a lent machine, from scripts/gpu-pack.sh's .gpu/pack.tar.xz:
#   1. the device as nvidia-smi and loom see it;
#   2. the CUDA tests: the module and allocator (test_cuda, test_cuda_module),
#      every op's CUDA row against double references (test_backend_ops cuda),
#      a config on "cuda:0" (test_config_device), the fake device's runner
#      (test_device_runner, a control), and the NCCL communicator's sums on
#      the GPU, one rank (test_nccl, its bootstrap over the local
#      communicator: the machine has no MPI installation, and MPI_Init
#      would abort);
#   2b. the example MLP config for 3 epochs of 5 batches on the CPU and on
#      the GPU (their train losses within 1e-4 relative), and checkpointed
#      on the GPU after 2 epochs then resumed on the CPU (the CPU run's);
#   3. the Fashion-MNIST MLP of bench/configs/mlp.json for EPOCHS epochs
#      (default 2) and the CNN of examples/configs/fashion_mnist_cnn.json
#      for CNN_EPOCHS (1), and bench/configs/resnet18.json's ResNet-18 on
#      synthetic 3x32x32 data for RESNET_EPOCHS (2; 5120 samples, batch
#      256): loom on the CPU (not the ResNet), on the GPU in fp32 and in
#      bf16 (experiment.precision), PyTorch on the GPU in fp32 and under
#      bf16 autocast (bench/model_torch.py, TORCH_DEVICE=cuda, TORCH_AMP);
#      the median train epoch's seconds, the validation accuracy, the peak
#      device memory (dev_mem_mb) and loom's step graphs launched of each,
#      and the ratios of loom's GPU epochs to PyTorch's, fp32 and bf16.
# Each step has a time limit (STEP_LIMIT seconds, default 300; a test's
# 120), so that one that hangs on the GPU is reported and the later steps
# still run. PyTorch runs with the machine's own library path, not the
# pack's (whose libraries are the build machine's).
# Prints everything to stdout and, when $OUT is set, a copy to
# $OUT/gpu-check.log; exits non-zero if a test fails, a run differs in
# accuracy (loom CPU against GPU) by more than 2 points, or bf16 from fp32
# by more than 5. Without a GPU it
# says so and exits 77.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pack=$root/.gpu/pack.tar.xz
epochs=${EPOCHS:-2}
work=$(mktemp -d)
log=${OUT:+$OUT/gpu-check.log}
exec 3>&1 > >(tee ${log:+"$log"} >&3) 2>&1
tee_pid=$!
# On exit, tee's last lines reach the log before the script ends.
trap 'exec >&3 2>&3; wait "$tee_pid" 2>/dev/null; rm -rf "$work"' EXIT

[ -f "$pack" ] || { echo "gpu-check: no $pack; run scripts/gpu-pack.sh on the build machine first"; exit 2; }
tar -C "$work" -xJf "$pack"
# CUDA's libraries: the toolkit's, else those of the Python wheels
# (nvidia-cublas-cu13, nvidia-cuda-runtime-cu13, nvidia-cudnn-cu13: cuDNN
# loads its sub-libraries, libcudnn_*.so.9, from the same directory).
cudalib=/usr/local/cuda/lib64
# LIBRARY: the directory of the first one found, or nothing; where CUDA and
# the Python wheels live first (a search of / can take minutes there).
libdir_of() {
  local found root
  for root in /usr/local /opt /usr/lib /usr/lib64 /root /home /; do
    [ -d "$root" ] || continue
    found=$(find "$root" \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name "$1" -print -quit 2>/dev/null)
    [ -n "$found" ] && { dirname "$found"; return 0; }
  done
  return 1
}
missing=
for lib in libcublas.so.13 libcudart.so.13 libcudnn.so.9 libnccl.so.2; do
  if [ ! -e "/usr/local/cuda/lib64/$lib" ]; then
    dir=$(libdir_of "$lib") && cudalib=$cudalib:$dir || { echo "gpu-check: no $lib on this machine"; missing="$missing $lib"; }
  fi
done
# NCCL packed beside the pack (gpu-pack.sh's PACK_NCCL=1), if the machine has none.
if [[ "$missing" == *libnccl* ]] && [ -f "$root/.gpu/nccl.tar.xz" ]; then
  mkdir -p "$work/lib" && tar -C "$work/lib" -xJf "$root/.gpu/nccl.tar.xz" && echo "gpu-check: libnccl.so.2 from .gpu/nccl.tar.xz"
fi
machine_ld_path=${LD_LIBRARY_PATH:-}
py() { LD_LIBRARY_PATH=$machine_ld_path python3 "$@"; } # Python on the machine's own libraries
export LD_LIBRARY_PATH=$work/lib:$cudalib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "gpu-check: CUDA's libraries from $cudalib" # which cuDNN and NCCL were found, for the one run there is
export LOOM_CUDA_MODULE=$work/lib/libloom_cuda.so
bin=$work/bin

echo "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here: nothing to check"
  exit 77
fi
# The pack's programs need glibc 2.36 or newer (the build machine's).
echo "C library: $(ldd --version 2>&1 | head -1)"
"$bin/loom" --help >/dev/null 2>&1 || [ $? -ne 127 ] ||
  echo "gpu-check: the packed programs do not start here: $("$bin/loom" --help 2>&1 | head -2)"
step_limit=${STEP_LIMIT:-300}

failed=0
check() { # NAME COMMAND...: runs it (120 s at most), records a failure
  echo "== $1"
  shift
  timeout -k 10 120 "$@"
  local rc=$?
  [ $rc -ne 124 ] || echo "gpu-check: $* ran past 120 s: stopped"
  [ $rc -eq 0 ] || { echo "gpu-check: FAILED ($rc): $*"; failed=1; }
}
check "test_cuda" "$bin/test_cuda"
check "test_cuda_module" "$bin/test_cuda_module" found
check "test_backend_ops cuda" "$bin/test_backend_ops" cuda
check "test_config_device" "$bin/test_config_device" "$work/configs"
check "test_device_runner (fake device, a control)" "$bin/test_device_runner"
# No launcher: the pack's libmpi has no OpenMPI installation around it
# here. 77: skipped, with its reason (NCCL did not load): said, not a failure.
echo "== test_nccl (one rank)"
NCCL_DEBUG=${NCCL_DEBUG:-WARN} timeout -k 10 120 "$bin/test_nccl"
rc=$?
[ $rc -eq 0 ] || [ $rc -eq 77 ] || { echo "gpu-check: FAILED ($rc): test_nccl"; failed=1; }

# loom run of the example MLP config on DEVICE into DIR, 5 train batches an
# epoch, EPOCHS epochs, then any further options (--resume last).
mlp_run() {
  local device=$1 dir=$2 n=$3
  shift 3
  timeout -k 10 "$step_limit" "$bin/loom" run "$root/examples/configs/fashion_mnist_mlp.json" --device "$device" --logdir "$dir" \
    --limit-batches 5 --set "stages.train.num_epochs=$n" --set "datasets.train.dir=$work/data" \
    --set "datasets.test.dir=$work/data" "$@" >"$dir.out" 2>&1 || { cat "$dir.out"; return 1; }
}
# The train loss of each epoch in DIR's metrics.jsonl, one a line.
train_losses() {
  py -c 'import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r.get("loader") == "train": print(r["metrics"]["loss"])' "$1/metrics.jsonl"
}
# Two files of numbers equal within a relative TOLERANCE, line by line.
close() {
  py -c 'import sys
a = [float(x) for x in open(sys.argv[1])]; b = [float(x) for x in open(sys.argv[2])]; tol = float(sys.argv[3])
bad = len(a) != len(b) or any(abs(x - y) > tol * max(abs(x), abs(y), 1e-30) for x, y in zip(a, b))
print("  cpu:", a); print("  gpu:", b); sys.exit(bad)' "$1" "$2" "$3"
}
runs=$work/runs
mkdir -p "$runs"
echo "== first batches: the MLP's train loss, 3 epochs of 5 batches, CPU against GPU (relative 1e-4: fp32 both)"
if mlp_run cpu "$runs/cpu" 3 && mlp_run cuda "$runs/gpu" 3; then
  train_losses "$runs/cpu" >"$runs/cpu.loss" && train_losses "$runs/gpu" >"$runs/gpu.loss"
  close "$runs/cpu.loss" "$runs/gpu.loss" 1e-4 || { echo "gpu-check: the losses differ"; failed=1; }
else
  failed=1
fi
echo "== step graphs: the same GPU run op by op (--no-graphs): the same losses, bit for bit"
if [ -s "$runs/gpu.loss" ] && mlp_run cuda "$runs/nographs" 3 --no-graphs; then
  train_losses "$runs/nographs" >"$runs/nographs.loss"
  close "$runs/gpu.loss" "$runs/nographs.loss" 0 || { echo "gpu-check: a run with step graphs differs from one without"; failed=1; }
else
  failed=1
fi
# The runs' warnings (loom's notices): a step that could not be captured
# runs op by op and says so only there, and then the comparison above
# holds without a graph having run.
grep -h "warning:" "$runs/gpu.out" "$runs/nographs.out" 2>/dev/null | sort -u | sed 's/^/  /'
echo "== checkpointed on the GPU after 2 epochs, resumed on the CPU for the third: the CPU run's losses (1e-4)"
if mlp_run cuda "$runs/resumed" 2 && mlp_run cpu "$runs/resumed" 3 --resume last; then
  train_losses "$runs/resumed" >"$runs/resumed.loss"
  close "$runs/cpu.loss" "$runs/resumed.loss" 1e-4 || { echo "gpu-check: the resumed run differs"; failed=1; }
else
  failed=1
fi

# "KEY=value ..." of a LOOM or TORCH line
field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p"; }
# compare NAME CONFIG EPOCHS DATA CPU [SET...]: loom on the CPU (CPU = cpu;
# else skipped), on the GPU in fp32 and in bf16 (experiment.precision), and
# PyTorch on the GPU; a table, loom's GPU epoch over PyTorch's, and a
# failure when loom's CPU and GPU fp32 accuracies differ by more than 2
# points, or bf16's from fp32's by more than 5.
compare() {
  local name=$1 config=$2 n=$3 data=$4 cpu=$5 loom_cpu="" loom_gpu loom_bf16 torch_gpu torch_bf16 line row
  shift 5
  echo "== $name ($config), $n epoch(s)"
  local limit=(timeout -k 10 "$step_limit")
  [ "$cpu" = cpu ] && { loom_cpu=$("${limit[@]}" "$bin/bench_model" "$config" "$n" "$data" experiment.device=cpu "$@" | grep '^LOOM') || failed=1; }
  loom_gpu=$("${limit[@]}" "$bin/bench_model" "$config" "$n" "$data" experiment.device=cuda "$@" | grep '^LOOM') || failed=1
  loom_bf16=$("${limit[@]}" "$bin/bench_model" "$config" "$n" "$data" experiment.device=cuda experiment.precision=bf16 "$@" |
    grep '^LOOM') || failed=1
  torch_gpu=$(TORCH_DEVICE=cuda "${limit[@]}" env LD_LIBRARY_PATH="$machine_ld_path" python3 "$root/bench/model_torch.py" "$name" "$n" \
    "$work/data" | grep '^TORCH') || echo "gpu-check: PyTorch's run failed (no ratio)"
  torch_bf16=$(TORCH_DEVICE=cuda TORCH_AMP=bf16 "${limit[@]}" env LD_LIBRARY_PATH="$machine_ld_path" python3 \
    "$root/bench/model_torch.py" "$name" "$n" "$work/data" | grep '^TORCH') || echo "gpu-check: PyTorch's bf16 run failed"
  printf '%-16s %14s %10s %10s %14s\n' run "train s/epoch" accuracy device_MB "graphs/logged"
  for row in "loom cpu:$loom_cpu" "loom cuda:$loom_gpu" "loom cuda bf16:$loom_bf16" "torch cuda:$torch_gpu" \
    "torch cuda bf16:$torch_bf16"; do
    line=${row#*:}
    [ -n "$line" ] || continue
    printf '%-16s %14s %10s %10s %14s\n' "${row%%:*}" "$(field epoch_s <<<"$line")" "$(field valid_acc <<<"$line")" \
      "$(field dev_mem_mb <<<"$line")" "$(field graphs <<<"$line")"
  done
  # Step graphs: every step is logged, and all but the first
  # sights of each shape launch one (loom's notices say why not).
  local launched run
  for run in "fp32:$loom_gpu" "bf16:$loom_bf16"; do
    launched=$(field graphs <<<"${run#*:}")
    [ -n "$launched" ] && [ "${launched%%/*}" -gt 0 ] ||
      { echo "gpu-check: $name ${run%%:*}: no step ran as a step graph (graphs=$launched)"; failed=1; }
  done
  local a b h t g
  a=$(field valid_acc <<<"$loom_cpu") b=$(field valid_acc <<<"$loom_gpu") h=$(field valid_acc <<<"$loom_bf16")
  if [ -z "$b" ] || [ -z "$h" ] || { [ "$cpu" = cpu ] && [ -z "$a" ]; }; then
    failed=1
    return
  fi
  [ "$cpu" = cpu ] && { py -c "import sys; sys.exit(abs(float(sys.argv[1]) - float(sys.argv[2])) > 0.02)" "$a" "$b" ||
    { echo "gpu-check: $name: loom's accuracies on the CPU and the GPU differ by more than 2 points"; failed=1; }; }
  py -c "import sys; sys.exit(abs(float(sys.argv[1]) - float(sys.argv[2])) > 0.05)" "$b" "$h" ||
    { echo "gpu-check: $name: loom's bf16 accuracy is more than 5 points from fp32's"; failed=1; }
  t=$(field epoch_s <<<"$torch_gpu") g=$(field epoch_s <<<"$loom_gpu")
  [ -n "$t" ] && py -c "import sys; print('$name: loom cuda / torch cuda epoch time: %.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$g" "$t"
  t=$(field epoch_s <<<"$torch_bf16") g=$(field epoch_s <<<"$loom_bf16")
  [ -n "$t" ] && py -c "import sys; print('$name: loom cuda bf16 / torch cuda bf16 epoch time: %.2f' % (float(sys.argv[1]) / float(sys.argv[2])))" "$g" "$t"
}
compare mlp "$root/bench/configs/mlp.json" "$epochs" "$work/data" cpu
compare cnn "$root/examples/configs/fashion_mnist_cnn.json" "${CNN_EPOCHS:-1}" "$work/data" cpu
# The ResNet-18 on synthetic 3x32x32 data (bench/run's resnet18), GPU only:
# the same samples and batch for both sides (bench/model_torch.py reads them).
export BENCH_RESNET_SAMPLES=${BENCH_RESNET_SAMPLES:-5120} BENCH_RESNET_BATCH=${BENCH_RESNET_BATCH:-256}
export BENCH_RESNET_VALID=$BENCH_RESNET_BATCH
compare resnet18 "$root/bench/configs/resnet18.json" "${RESNET_EPOCHS:-2}" - gpu \
  "datasets.train.samples=$BENCH_RESNET_SAMPLES" "datasets.test.samples=$BENCH_RESNET_VALID" \
  "loaders.train.batch_size=$BENCH_RESNET_BATCH" "loaders.valid.batch_size=$BENCH_RESNET_BATCH"
exit $failed
