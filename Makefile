# The README's two commands: `make demo` (the main job) and `make test`.
# Each installs what it needs first; torch is pinned to the CPU build on
# machines without torch (a bare `pip install torch` pulls GBs of CUDA wheels).
PY ?= python3

.PHONY: deps test-deps build demo bench test test-sanitizers cuda-compile

# What the tests need; pycocotools (scoring the demo) is left to `deps`, so that
# `make test` runs on a machine without network that lacks it (the lent GPUs).
test-deps:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@$(PY) -c "import ninja, pybind11, pytest, numpy, filelock, PIL, tqdm, matplotlib" 2>/dev/null || \
		$(PY) -m pip install -q ninja pybind11 pytest numpy filelock pillow tqdm matplotlib
	@# triton has no dependencies (no torch): its interpreter runs the Triton kernels' tests on the CPU.
	@$(PY) -c "import triton" 2>/dev/null || $(PY) -m pip install -q triton==3.9.0

deps: test-deps
	@$(PY) -c "import pycocotools" 2>/dev/null || $(PY) -m pip install -q pycocotools

build: deps
	$(PY) -m pip install --no-build-isolation -e .

demo: deps
	$(PY) -m reference.demo

bench: deps
	$(PY) -m benchmarks

test: test-deps
	$(PY) -m pytest -q

# The emulated CUDA cases (every test id with "emu") under AddressSanitizer +
# UBSan (memcheck's job), then under the shared-memory race check (racecheck's).
EMU_TESTS = python_tests/test_losses.py python_tests/test_boxes.py python_tests/test_decode.py python_tests/test_box_branch.py python_tests/test_assign.py python_tests/test_assign_grid.py python_tests/test_nms.py python_tests/test_nms_segments.py python_tests/test_multiclass_select.py \
	python_tests/test_autoassign_fused.py python_tests/test_autoassign_tiles.py python_tests/test_host_path.py \
	python_tests/test_cuda_paths.py
test-sanitizers: test-deps
	LD_PRELOAD="$$(g++ -print-file-name=libasan.so) $$(g++ -print-file-name=libstdc++.so)" \
		ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
		GFLOPS_EMU_SANITIZE=address $(PY) -m pytest -q -k emu $(EMU_TESTS)
	GFLOPS_EMU_SANITIZE=race $(PY) -m pytest -q -k emu $(EMU_TESTS)

cuda-compile:
	bash tools/check_cuda_compile.sh
