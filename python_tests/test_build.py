"""The two build paths and the library switches."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gflops

ROOT = Path(__file__).resolve().parent.parent


def _import_gflops(env_extra):
    env = dict(os.environ, **env_extra)
    code = "import gflops, torch; print(gflops.has_cuda(), hasattr(torch.ops.gflops, 'quality_focal_loss'))"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1800)


def test_has_cuda_is_bool():
    assert isinstance(gflops.has_cuda(), bool)
    if torch.version.cuda is None:  # a CPU-only torch cannot have CUDA kernels built against it
        assert not gflops.has_cuda()


def test_forced_jit_build_says_so_once():
    r = _import_gflops({"GFLOPS_FORCE_JIT": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("JIT-building") == 1
    assert r.stdout.split()[1] == "True"


def test_ops_registered():
    for name in ("quality_focal_loss", "quality_focal_loss_backward",
                 "distribution_focal_loss", "distribution_focal_loss_backward"):
        assert hasattr(torch.ops.gflops, name)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("gflops::quality_focal_loss", "CPU")
    if gflops.has_cuda():
        assert torch._C._dispatch_has_kernel_for_dispatch_key("gflops::quality_focal_loss", "CUDA")


@pytest.mark.skipif(os.environ.get("GFLOPS_EXPECT_AOT") != "1",
                    reason="set GFLOPS_EXPECT_AOT=1 after `pip install --no-build-isolation -e .` (CI does)")
def test_ahead_of_time_build_in_use():
    code = "import gflops, gflops._ext as e; m = e.load(); print(m.__name__, gflops.has_cuda())"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "gflops._C" and "JIT-building" not in r.stderr


def _checker(lib):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "check_cxx_runtime.py"), lib], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)


def test_loaded_library_uses_the_process_cxx_runtime():
    lib = gflops._ext.load()
    assert lib.cxx_runtime_problem() == ""
    r = _checker(lib.__file__)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") == 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF link flags")
def test_runtime_checks_fail_on_a_static_cxx_runtime(tmp_path):
    # The JIT build's objects relinked the broken way on purpose: libstdc++
    # static, as in the first H200 run's AOT CUDA library.
    from torch.utils.cpp_extension import TORCH_LIB_PATH

    objs = sorted(Path(gflops._ext._cache_dir(False)).glob("*.o"))
    if not objs:
        pytest.skip("no JIT-built objects to relink (the JIT build has not run in this cache)")
    lib = tmp_path / "gflops_C.so"
    link = subprocess.run(["c++", *map(str, objs), "-shared", "-fopenmp", "-static-libstdc++", f"-L{TORCH_LIB_PATH}",
                           "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python", "-o", str(lib)],
                          capture_output=True, text=True, timeout=600)
    assert link.returncode == 0, link.stderr
    r = _checker(str(lib))
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.count("FAIL") == 4, r.stdout
    assert "carries its own copy of the C++ runtime" in r.stdout
    # The project's link flags, added to the same broken request, give a sound library.
    fixed = tmp_path / "fixed" / "gflops_C.so"
    fixed.parent.mkdir()
    link = subprocess.run(["c++", *map(str, objs), "-shared", "-static-libstdc++", *gflops._ext.ld_flags(),
                           f"-L{TORCH_LIB_PATH}", "-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python", "-o", str(fixed)],
                          capture_output=True, text=True, timeout=600)
    assert link.returncode == 0, link.stderr
    r = _checker(str(fixed))
    assert r.returncode == 0, r.stdout + r.stderr
