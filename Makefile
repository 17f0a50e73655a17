# The README's two commands: `make demo` (the main job) and `make test`.
# Each installs what it needs first; torch is pinned to the CPU build on
# machines without torch (a bare `pip install torch` pulls GBs of CUDA wheels).
PY ?= python3

.PHONY: deps build demo bench test cuda-compile

deps:
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@$(PY) -c "import ninja, pybind11, pytest, numpy, filelock, pycocotools, PIL, tqdm, matplotlib" 2>/dev/null || \
		$(PY) -m pip install -q ninja pybind11 pytest numpy filelock pycocotools pillow tqdm matplotlib

build: deps
	$(PY) -m pip install --no-build-isolation -e .

demo: deps
	$(PY) -m reference.demo

bench: deps
	$(PY) -m benchmarks

test: deps
	$(PY) -m pytest -q

cuda-compile:
	bash tools/check_cuda_compile.sh
