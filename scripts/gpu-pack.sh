#!/usr/bin/env bash
# scripts/gpu-pack.sh: makes what scripts/gpu-check.sh runs on a lent GPU
# machine, which has CUDA but neither loom's other libraries nor a network.
# Builds Release with -DLOOM_WITH_CUDA=ON into build-gpu/, then writes
# .gpu/pack.tar.xz (.gpu/ is in .gitignore: name it in the device tool's
# carry): the programs the check runs, libloom and its CUDA module, the
# shared libraries they load beyond glibc's and CUDA's, and Fashion-MNIST.
# Then, on the machine: scripts/gpu-check.sh (docs/backends.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build-gpu
out=$root/.gpu
data=${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}
programs=(loom bench_model test_cuda test_cuda_module test_backend_ops test_config_device test_device_runner test_nccl)

cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLOOM_WITH_CUDA=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target loom_cli loom_cuda bench_model test_cuda test_cuda_module \
  test_backend_ops test_config_device test_device_runner test_nccl >/dev/null

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/data"
for p in "${programs[@]}"; do cp "$build/bin/$p" "$stage/bin/"; done
cp -P "$build"/lib/libloom.so* "$build"/lib/libloom_cuda.so "$stage/lib/"
# What they load, less the C library's own and CUDA's (the machine's own
# driver and toolkit must serve those; cuDNN too, whose libcudnn.so.9 loads
# sub-libraries of its own version from its directory). Every library of
# glibc stays out, not only libc: libresolv.so.2 (libcurl's, through
# Kerberos) calls GLIBC_PRIVATE symbols of its own glibc, which another
# machine's libc.so.6 need not have, and then nothing linked to libloom
# would start there.
glibc='libc|libm|libdl|libpthread|librt|libresolv|libanl|libutil|libnsl|libmvec|libBrokenLocale|libthread_db|libnss_[^/.]*|ld-linux[^/]*'
for f in "$stage"/bin/* "$stage"/lib/*.so*; do ldd "$f" 2>/dev/null | awk '$3 ~ /^\// {print $3}'; done | sort -u |
  grep -Ev "/($glibc|libcuda|libcudart|libcublas[^/]*|libcudnn[^/]*|libnvidia[^/]*)\\.so" |
  grep -v "^$build/" | while read -r lib; do cp -L "$lib" "$stage/lib/"; done
# NCCL: the CUDA module loads libnccl.so.2 itself (not in ldd's list).
# gpu-check.sh uses the machine's (its CUDA directory, else a Python
# wheel's); this build machine's is 218 MB, about 70 MB compressed, more
# than the device tool's carry takes with the rest, so it is packed only
# with PACK_NCCL=1, beside the pack: .gpu/nccl.tar.xz.
if [ "${PACK_NCCL:-0}" = 1 ]; then
  nccl=$(grep -s '^LOOM_NCCL_LIBRARY:' "$build/CMakeCache.txt" | cut -d= -f2)
  if [ -n "$nccl" ] && [ -e "$nccl" ]; then
    mkdir -p "$out" && tar -C "$(dirname "$nccl")" -chJf "$out/nccl.tar.xz" libnccl.so.2
  else
    echo "gpu-pack: PACK_NCCL=1 but CMake found no libnccl here"
  fi
fi
cp "$data"/*.gz "$stage/data/"
cp -r "$root/tests/configs" "$stage/configs"
mkdir -p "$out"
tar -C "$stage" -cJf "$out/pack.tar.xz" .
echo "gpu-pack: $(du -h "$out/pack.tar.xz" | cut -f1) in $out/pack.tar.xz; on the machine: scripts/gpu-check.sh"
