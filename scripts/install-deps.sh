#!/usr/bin/env bash
# Installs what loom needs to build, test and run its example on Debian 12
# (python3 runs the layering check of the test suite; with python3-protobuf and
# protobuf-compiler it decodes the TensorBoard files the HParams tests check).
# Idempotent: packages already present are skipped by apt. Needs root or sudo.
set -euo pipefail

packages=(
  build-essential cmake pkg-config python3
  zlib1g-dev libuv1-dev libjansson-dev libhdf5-dev hdf5-tools
  libcmocka-dev libopenblas-dev libopenmpi-dev openmpi-bin
  dataset-fashion-mnist
  python3-protobuf protobuf-compiler
  protobuf-c-compiler libprotobuf-c-dev python3-onnx python3-numpy
)
# protobuf-c and python3-onnx (which installs onnx.proto) build ONNX export
# (loom export --onnx); test_export_onnx checks it with python3-onnx, the
# graph rebuilt in numpy, and also in PyTorch when python3-torch is there
# (LOOM_BENCH_DEPS=1 below installs it, 1 GB: the numpy twin suffices).
# libxsmm runs the matrix products on AVX-512 CPUs; Debian packages it for amd64 only,
# and elsewhere loom builds without it (OpenBLAS for every product).
if [ "$(dpkg --print-architecture)" = amd64 ]; then
  packages+=(libxsmm-dev)
fi
# Benchmarks compare against PyTorch; only install it when asked.
if [ "${LOOM_BENCH_DEPS:-0}" = 1 ]; then
  packages+=(python3 python3-torch python3-numpy)
fi

# The fuzz targets (scripts/fuzz.sh) need clang and its libFuzzer runtime.
if [ "${LOOM_FUZZ_DEPS:-0}" = 1 ]; then
  packages+=(clang libclang-rt-dev)
fi

# The checkers (docs/reliability.md, "Checkers"): clang builds the library with
# -Werror and ThreadSanitizer; valgrind (with glibc's symbols) runs the tests
# labelled valgrind.
packages+=(clang libclang-rt-dev valgrind libc6-dbg)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
  sudo=sudo
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
  -o DPkg::Lock::Timeout=600 "${missing[@]}"
