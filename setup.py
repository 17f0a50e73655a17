"""Ahead-of-time build of gflops._C: `pip install --no-build-isolation -e .`

CPU kernels always; CUDA kernels when a GPU and nvcc are usable or FORCE_CUDA=1.
TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0"; MAX_JOBS limits parallel compiles.
torch is deliberately not in install_requires: a dependency range would let
pip replace the installed (CPU or CUDA) torch with another build.
"""
import importlib.util
import os
from pathlib import Path

from setuptools import setup

try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
except ImportError as e:
    raise SystemExit(
        "gflops builds against the torch that is already installed, and this build cannot see one "
        f"({e}). Install torch first, then build without an isolated environment:\n"
        "    pip install --no-build-isolation -e .") from None

_spec = importlib.util.spec_from_file_location("gflops_ext", Path(__file__).parent / "gflops" / "_ext.py")
_ext = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ext)

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
with_cuda = _ext.want_cuda()
cpp, cu = _ext.sources()
cpp = [os.path.relpath(p) for p in cpp]
cu = [os.path.relpath(p) for p in cu]

if with_cuda:
    ext = CUDAExtension(
        "gflops._C",
        cpp + cu,
        define_macros=[("GFLOPS_WITH_CUDA", None)],
        extra_compile_args={"cxx": _ext.CXX_FLAGS, "nvcc": _ext.NVCC_FLAGS},
        extra_link_args=_ext.ld_flags(),
    )
else:
    ext = CppExtension("gflops._C", cpp, extra_compile_args={"cxx": _ext.CXX_FLAGS},
                       extra_link_args=_ext.ld_flags())

setup(
    name="gflops",
    version="0.1.0",
    description="Fused CUDA/C++ kernels for GFL-family dense object detectors",
    packages=["gflops", "gflops.triton", "reference"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    python_requires=">=3.10",
)
