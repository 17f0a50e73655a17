#!/usr/bin/env bash
# A borrowed GPU window, used whole in one call of the device tool:
#   bash tools/gpu_session.sh            on the GPU machine: at most 9 minutes, build included
#   bash tools/gpu_session.sh --dry-run  every stage on this CPU machine with small inputs
#                                        (CPU kernels, the emulated CUDA path, Triton's
#                                        interpreter), at most 20 minutes on 2 cores
# Options: --deadline SECONDS (whole run), --out DIR (default $OUT, else /tmp/gflops-gpu).
#
# Stages run in order of value, each under its own time cap and all under one
# deadline, so a slow or hung stage costs at most its cap; a stage that cannot
# get its minimum before the deadline is skipped and says so, and the last
# ones go first when the early ones run long. A benchmark is told its cap
# (GFLOPS_BENCH_SECONDS) and stops starting work before it, so it writes what
# it measured instead of being killed with nothing. What comes back is at most
# 8 files in the output folder:
#   summary.md     the stage table (status, seconds) and the facts to read first
#   env_build.log  GPU, versions, toolchain and link facts, build log, C++-runtime check
#   tests.log      the CUDA and Triton test cases (pytest-xdist on the GPU)
#   sanitizer.log  compute-sanitizer memcheck, racecheck, initcheck, synccheck over tools/op_driver.py
#   profile.log    benchmarks.profile_ops: what one call of each op launches and costs (gflops' kernels,
#                  then the Triton kernels')
#   bench.log      the benchmarks in their compact mode
#   train.log      short training of GFL and AutoAssign, reference ops and gflops ops
#   results.tgz    the result files (benchmarks/results layout) to unpack and commit
set -uo pipefail
DRY=0
DEADLINE=
OUTDIR=${OUT:-/tmp/gflops-gpu}
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) DRY=1 ;;
    --deadline) DEADLINE=$2; shift ;;
    --out) OUTDIR=$2; shift ;;
    *) echo "gpu_session.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$DEADLINE" ] || DEADLINE=$([ "$DRY" = 1 ] && echo 1140 || echo 540)
RESERVE=15  # for packing the results
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
cd "$(dirname "$0")/.."
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Result files go to a scratch folder, packed at the end: a dry run must never
# overwrite the committed tables with its small-input numbers.
export GFLOPS_RESULTS_DIR="$WORK/results"
mkdir -p "$GFLOPS_RESULTS_DIR"
PY=python3

if [ "$DRY" = 1 ]; then
  DEV=cpu
  # The emulated CUDA and Triton-interpreter cases of the kernels' families.
  TEST_CMD=($PY -m pytest -q -rf -p no:cacheprovider python_tests/test_losses.py python_tests/test_decode.py
            python_tests/test_boxes.py -k "emu or triton")
  TRITON_TEST_CMD=()
  DRIVER_DEV=emu
  TRAIN_ARGS=(--preset tiny --iters 4 --device cpu)
  # bench_<name> and its arguments, one a line.
  BENCHES="losses --device cpu --quick
boxes --device cpu --quick
assign --device cpu --quick
autoassign --device cpu --quick
nms --device cpu --quick"
else
  DEV=cuda
  export MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  # -k matches module names too: the emulator's files and this script's own
  # test are left out by name; only the installed Triton's binder is checked.
  TEST_CMD=(env GFLOPS_TRITON_VERSIONS= $PY -m pytest -q -rf -p no:cacheprovider -n 12 python_tests
            -k "(cuda or triton or gpu) and not emu" --ignore=python_tests/test_emulator.py
            --ignore=python_tests/test_cuda_paths.py --ignore=python_tests/test_gpu_session.py)
  # The same op tests with the Triton kernels serving torch.ops.gflops on CUDA tensors.
  TRITON_TEST_CMD=(env GFLOPS_BACKEND=triton $PY -m pytest -q -rf -p no:cacheprovider -n 8
                   python_tests/test_losses.py python_tests/test_decode.py -k cuda)
  DRIVER_DEV=cuda
  TRAIN_ARGS=(--preset small --iters 40 --device cuda)
  # The realistic sizes (--quick's tiny ones time nothing on a GPU), one size
  # each, so that compile warm-ups included each fits its cap.
  BENCHES="losses --device cuda --size coco
boxes --device cuda --size coco
assign --device cuda --budget-gib 40
autoassign --device cuda --budget-gib 40
nms --device cuda --budget-gib 40"
fi

SUMMARY="$OUTDIR/summary.md"
{
  echo "# gflops GPU session $(date -u +%Y-%m-%dT%H:%MZ)$([ "$DRY" = 1 ] && echo ' (dry run on the CPU)')"
  echo
  commit=$(git rev-parse --short HEAD 2>/dev/null) && ! git diff --quiet 2>/dev/null && commit+=" + uncommitted changes"
  echo "deadline ${DEADLINE}s, commit ${commit:-unknown (no git here)}"
  echo
  echo "| stage | status | seconds | note |"
  echo "|---|---|---|---|"
} > "$SUMMARY"

left() { echo $((DEADLINE - SECONDS - RESERVE)); }

# stage NAME CAP MIN LOG CMD...: CMD under `timeout`, capped by CAP and by the
# deadline; a row in the summary; the command's status is returned.
stage() {
  local name=$1 cap=$2 min=$3 log="$OUTDIR/$4"
  shift 4
  local budget
  budget=$(left)
  if [ "$budget" -lt "$min" ]; then
    echo "| $name | skipped | 0 | ${budget}s left before the deadline, needs ${min}s |" >> "$SUMMARY"
    return 125
  fi
  [ "$cap" -gt "$budget" ] && cap=$budget
  printf '\n===== %s (cap %ss, %ss into the session) =====\n' "$name" "$cap" "$SECONDS" >> "$log"
  local t0=$SECONDS rc start
  start=$(($(wc -l < "$log") + 1))
  # Through bash, so that CMD may be one of the exported stage functions below.
  GFLOPS_STAGE_CAP=$cap timeout -k 5 "$cap" bash -c '"$@"' stage "$@" >> "$log" 2>&1 < /dev/null
  rc=$?
  local status=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then status="timed out at ${cap}s"
  elif [ $rc -ne 0 ]; then status="failed (exit $rc)"; fi
  local note
  note=$(tail -n +"$start" "$log" | grep -E "passed|failed|error|ERROR|FAIL|Traceback" | tail -1 | tr '|' '/' |
         cut -c1-160)
  echo "| $name | $status | $((SECONDS - t0)) | $note |" >> "$SUMMARY"
  return $rc
}

# --- 1. environment and toolchain: what the next link fault needs -------------
env_facts() {
  if [ "$DRY" = 1 ]; then echo "no GPU: dry run"; else nvidia-smi; fi
  $PY - <<'EOF'
import os, platform, sys, sysconfig
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
for mod in ("triton", "torchvision", "setuptools", "numpy"):
    try:
        print(mod, __import__(mod).__version__)
    except Exception as e:
        print(mod, "-", type(e).__name__)
for var in ("CC", "CXX", "LDSHARED", "LDCXXSHARED", "CFLAGS", "LDFLAGS"):
    print(f"sysconfig {var} = {sysconfig.get_config_var(var)!r}")
for var in ("CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS", "LDSHARED", "LDCXXSHARED", "CUDA_HOME",
            "LIBRARY_PATH", "LD_LIBRARY_PATH"):
    print(f"env {var} = {os.environ.get(var)!r}")
from torch.utils.cpp_extension import CUDA_HOME, library_paths
print("CUDA_HOME", CUDA_HOME, "library_paths(cuda)", library_paths("cuda") if CUDA_HOME else "-")
EOF
  g++ --version | head -1
  ld --version | head -1
  command -v nvcc >/dev/null && nvcc --version | tail -2
  echo "g++ libstdc++.so: $(g++ -print-file-name=libstdc++.so)  libstdc++.a: $(g++ -print-file-name=libstdc++.a)"
  nproc
}

# --- 2. the build, as a user does it, and its C++ runtime ----------------------
build() {
  if [ "$DRY" = 1 ]; then
    # The JIT build (the AOT build is CI's, tools/check_cxx_runtime.py on it too).
    $PY -c "import gflops, gflops._ext as e; print('built', e.load().__file__, 'cuda', gflops.has_cuda())" || return 1
    lib=$($PY -c "import gflops._ext as e; print(e.load().__file__)" 2>/dev/null)
  else
    # The whole verbose log goes to env_build.log as it is written: a build cut
    # at its cap still leaves its compile and link lines there.
    $PY -m pip install -v --no-index --no-build-isolation --no-deps -e . 2>&1
    local rc=$?
    [ $rc -eq 0 ] || return $rc
    lib=$(ls gflops/_C*.so | head -1)
  fi
  # The link facts before anything that may refuse the library.
  readelf -d "$lib" | grep -E "NEEDED|RPATH|RUNPATH"
  echo "std:: symbols defined: $(nm -D --defined-only "$lib" | grep -c ' _ZNS')"
  $PY tools/check_cxx_runtime.py "$lib" || return 1
  [ "$DRY" = 1 ] || $PY -c "import gflops; assert gflops.has_cuda(), 'CUDA kernels not built'"
}

# --- 4. compute-sanitizer over a small driver of every op ------------------------
sanitize() {
  local tool=$1
  if [ "$DRY" = 1 ]; then
    # compute-sanitizer needs a GPU: the emulated path's own checks run the driver.
    echo "dry run: tools/op_driver.py --device emu in place of compute-sanitizer $tool"
    $PY tools/op_driver.py --device "$DRIVER_DEV"
    return
  fi
  local sani
  sani=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
  [ -n "$sani" ] || { echo "compute-sanitizer not found"; return 3; }
  # Without the caching allocator every tensor is its own allocation, so an
  # access past a tensor's end (memcheck) or into recycled memory (initcheck)
  # cannot hide inside a cached block. racecheck is the slow one: float32 only.
  local dtypes=()
  [ "$tool" = memcheck ] || [ "$tool" = initcheck ] || dtypes=(--dtypes float32)
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sani" --tool "$tool" --error-exitcode 9 \
    $PY tools/op_driver.py --device "$DRIVER_DEV" "${dtypes[@]}"
}

bench() {
  # Told four fifths of its cap, a benchmark starts nothing after that and
  # writes what it measured (benchmarks/harness.py, attempt).
  local b=$1
  shift
  GFLOPS_BENCH_SECONDS=$((GFLOPS_STAGE_CAP * 4 / 5)) $PY -m benchmarks.bench_$b "$@"
}

train_runs() {
  local m ops
  local -a TRAIN_ARGS
  read -r -a TRAIN_ARGS <<< "$TRAIN_ARGS_STR"
  # Each run under a quarter of the stage, so that all four reach the table.
  local each=$((GFLOPS_STAGE_CAP / 4))
  for m in gfl autoassign; do
    for ops in reference gflops; do
      timeout "$each" $PY -m reference.train --model $m --ops $ops --quiet --log-interval 1 "${TRAIN_ARGS[@]}" \
        --work-dir "$WORK/train/$m-$ops" || echo "train $m $ops failed: exit $?"
    done
  done
  $PY tools/train_table.py "$GFLOPS_RESULTS_DIR/train_$DEVTAG.md" "$WORK"/train/*
}

export -f env_facts build sanitize bench train_runs
export DRY PY WORK DRIVER_DEV

stage environment 20 5 env_build.log env_facts
if ! stage build 200 40 env_build.log build; then
  echo "| (rest) | skipped | 0 | nothing to run without a working build |" >> "$SUMMARY"
else
  DEVTAG=$($PY -c "import torch; from benchmarks.harness import device_tag; print(device_tag(torch.device('$DEV')))")
  export DEVTAG
  TRAIN_ARGS_STR="${TRAIN_ARGS[*]}"
  export TRAIN_ARGS_STR
  stage tests $([ "$DRY" = 1 ] && echo 420 || echo 110) 30 tests.log "${TEST_CMD[@]}"
  [ ${#TRITON_TEST_CMD[@]} -gt 0 ] && stage tests-triton-backend 40 20 tests.log "${TRITON_TEST_CMD[@]}"
  for tool in memcheck racecheck initcheck synccheck; do
    stage "sanitizer $tool" 30 15 sanitizer.log sanitize "$tool"
    [ "$DRY" = 1 ] && break  # one emulated pass stands for all four
  done
  stage profile 40 15 profile.log $PY -m benchmarks.profile_ops --device "$DEV" $([ "$DRY" = 1 ] && echo --quick) \
    --out "$GFLOPS_RESULTS_DIR"
  # The Triton kernels' own profile (on the dry run: the interpreter).
  stage profile-triton 20 10 profile.log env $([ "$DRY" = 1 ] && echo TRITON_INTERPRET=1) $PY -m benchmarks.profile_ops \
    --backend triton --device "$DEV" $([ "$DRY" = 1 ] && echo --quick) --out "$GFLOPS_RESULTS_DIR"
  while read -r b args; do
    # shellcheck disable=SC2086
    stage "bench_$b" 40 15 bench.log bench "$b" $args
  done <<< "$BENCHES"
  stage train 80 30 train.log train_runs
fi

# Result tables, then the stage table's tail: what to read first.
tar czf "$OUTDIR/results.tgz" -C "$GFLOPS_RESULTS_DIR" . 2>/dev/null
{
  echo
  echo "finished ${SECONDS}s after the start; result files in results.tgz:"
  tar tzf "$OUTDIR/results.tgz" | grep -v '/$' | sed 's/^/    /'
  grep -h -E "^  (PASS|FAIL)" "$OUTDIR/env_build.log" 2>/dev/null
} >> "$SUMMARY"
cat "$SUMMARY"
ls "$OUTDIR"
