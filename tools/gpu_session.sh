#!/usr/bin/env bash
# Everything a lent GPU is for, in one call of the device tool:
#   build the CUDA extension, run the whole suite on CUDA, compute-sanitizer
#   (memcheck, racecheck) over the CUDA tests, then the benchmarks.
# Logs and result files land in $OUT (the device tool brings them back);
# copy them into benchmarks/results/ and commit.
#   device run: bash tools/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gflops-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
{ nvidia-smi; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
time python3 -m pip install -q --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
python3 -c "import gflops; assert gflops.has_cuda(), 'CUDA kernels not built'" || exit 1
python3 -m pytest -q python_tests 2>&1 | tee "$OUT/pytest_cuda.txt" | tail -5
# The CUDA cases again with the Triton kernels serving torch.ops.gflops on CUDA tensors.
GFLOPS_BACKEND=triton python3 -m pytest -q python_tests/test_losses.py python_tests/test_decode.py -k cuda 2>&1 \
  | tee "$OUT/pytest_cuda_forced_triton.txt" | tail -3
sani=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sani" ]; then
  for tool in memcheck racecheck; do
    "$sani" --tool "$tool" --error-exitcode 9 python3 -m pytest -q -x python_tests -k "cuda" \
      > "$OUT/sanitizer_$tool.txt" 2>&1
    echo "compute-sanitizer $tool exit $?" | tee -a "$OUT/sanitizer_$tool.txt"
    tail -3 "$OUT/sanitizer_$tool.txt"
  done
else
  echo "compute-sanitizer not found" | tee "$OUT/sanitizer_missing.txt"
fi
for dt in float32 bfloat16; do
  python3 -m benchmarks.bench_losses --device cuda --dtype "$dt" 2>&1 | tail -22
done
python3 -m benchmarks.bench_boxes --device cuda 2>&1 | tail -22
python3 -m benchmarks.bench_assign --device cuda --budget-gib 40 2>&1 | tail -52
python3 -m benchmarks.bench_nms --device cuda --budget-gib 40 2>&1 | tail -24
# The detector demo needs pycocotools: carry its wheel in .whl (see the device tool's README).
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -c "import pycocotools" 2>/dev/null && python3 -m reference.demo --device cuda --preset small 2>&1 | tail -12
tar czf "$OUT/results.tgz" benchmarks/results
ls "$OUT"
