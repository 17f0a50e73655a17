#!/usr/bin/env bash
# Compiles the CUDA code with nvcc on a machine without a GPU:
#  1. every csrc/cuda/*_kernels.cuh, as its own translation unit, to SASS for
#     sm_80 and sm_90 (the kernels are torch-free, so this is a full compile;
#     the inline host entry points instantiate every kernel variant), with
#     ptxas -v: tools/ptxas_report.py writes the resource table to
#     benchmarks/results/ptxas_resources.md and fails on register spills;
#  2. every launcher csrc/cuda/*.cu against the installed torch headers, for
#     sm_90. A CPU torch wheel lacks one generated header
#     (c10/cuda/impl/cuda_cmake_macros.h); an empty stand-in is supplied.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-O3 --expt-relaxed-constexpr -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)
for h in csrc/cuda/*_kernels.cuh; do
  echo "nvcc: $h (sm_80, sm_90)"
  echo "#include \"$PWD/$h\"" > "$tmp/k.cu"
  "$NVCC" -std=c++17 -c "$tmp/k.cu" -o "$tmp/k.o" "${flags[@]}" -Wno-deprecated-gpu-targets \
    -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -Xptxas -v \
    2> "$tmp/ptxas_$(basename "$h" .cuh).log" || { cat "$tmp/ptxas_$(basename "$h" .cuh).log"; exit 1; }
  test -s "$tmp/k.o"
  rm -f "$tmp/k.o"
done
python3 tools/ptxas_report.py "$tmp"/ptxas_*.log --out benchmarks/results/ptxas_resources.md
inc=$(python3 -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-I'+p for p in include_paths()))")
abi=$(python3 -c "import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))")
mkdir -p "$tmp/stub/c10/cuda/impl"
echo "#pragma once" > "$tmp/stub/c10/cuda/impl/cuda_cmake_macros.h"
for cu in csrc/cuda/*.cu; do
  echo "nvcc: $cu (sm_90, against torch headers)"
  # shellcheck disable=SC2086
  "$NVCC" -std=c++20 -x cu -c "$cu" -o "$tmp/l.o" "${flags[@]}" -I"$tmp/stub" $inc -Icsrc \
    -D_GLIBCXX_USE_CXX11_ABI="$abi" -DGFLOPS_WITH_CUDA -gencode arch=compute_90,code=sm_90 \
    -diag-suppress 3306
  test -s "$tmp/l.o"
  rm -f "$tmp/l.o"
done
echo "nvcc: all CUDA sources compiled"
