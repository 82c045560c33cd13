#!/usr/bin/env bash
# Cross-builds the custom-op library and the kernel self-test for aarch64 (the portable variant is
# the only one there) and runs the self-test under qemu. Needs Debian's g++-aarch64-linux-gnu and
# qemu-user (installed when missing and running as root) and the onnxruntime headers of a build tree.
#   bash tools/check_aarch64.sh [ORT_HEADER_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
headers="${1:-${ORT_INCLUDE_DIR:-$(dirname "$(ls build/*/ort-headers/onnxruntime_c_api.h | head -n 1)")}}"
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu qemu-user >/dev/null
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c++17 -O2 -Wall -Wextra -Werror -Wno-psabi -fPIC -I"$headers" -Icsrc)
kernel_units=(csrc/kernels/scratch.cc csrc/kernels/dispatch.cc csrc/kernels/kernel_portable.cc csrc/formats/*.cc)
for f in "${kernel_units[@]}" csrc/op/sparse_gemm_op.cc csrc/op/register.cc; do
  aarch64-linux-gnu-g++ "${flags[@]}" -c "$f" -o "$out/$(basename "$f").o"
done
aarch64-linux-gnu-g++ -shared -o "$out/libonnx_prune_ops.so" "$out"/*.o -Wl,--version-script=csrc/op/exports.map
echo "aarch64 library built: exports $(aarch64-linux-gnu-nm -D --defined-only "$out/libonnx_prune_ops.so" | awk '{print $3}' | tr '\n' ' ')"
unit_objects=()
for f in "${kernel_units[@]}"; do unit_objects+=("$out/$(basename "$f").o"); done
aarch64-linux-gnu-g++ "${flags[@]}" -static tools/kernel_selftest.cc "${unit_objects[@]}" -o "$out/kernel_selftest"
qemu-aarch64 "$out/kernel_selftest"
