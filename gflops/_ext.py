"""Loads the compiled library: the ahead-of-time build (gflops._C) if present,
else a just-in-time ninja build of the same sources into a cache directory."""
import hashlib
import importlib.util
import os
import sys
from pathlib import Path

import torch

_ROOT = Path(__file__).resolve().parent.parent
CSRC = _ROOT / "csrc"

# -fopenmp: at::parallel_for is header code that runs serially without it
# (the runtime is the libgomp torch already loaded). -fno-trapping-math lets
# GCC if-convert the branch-free selects in csrc/common and vectorise loops.
CXX_FLAGS = ["-O3", "-fopenmp", "-fno-trapping-math"]


def ld_flags():
    """The link flags of both builds. The C++ runtime is stated, not left to the
    toolchain: the compiler's own shared libstdc++, linked dynamically and
    recorded as NEEDED, ahead of whatever the driver or the environment would
    add after it (LDFLAGS=-static-libstdc++, a libstdc++.a first on a -L path),
    so no static copy is ever pulled in. A copy beside the one torch uses breaks
    every error message that prints a number (the first H200 run's AOT CUDA
    build: a segfault); load() checks it anyway."""
    flags = ["-fopenmp"]
    if sys.platform.startswith("linux"):
        flags += ["-Wl,--push-state,--no-as-needed,-Bdynamic", _shared_libstdcxx(), "-Wl,--pop-state"]
    return flags


def _shared_libstdcxx():
    """The path of the compiler's libstdc++.so (a conda or custom GCC keeps it in
    its own folder, off the linker's default path), else -lstdc++."""
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    try:
        path = subprocess.run([cxx, "-print-file-name=libstdc++.so"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        path = ""
    return os.path.realpath(path) if os.path.isabs(path) and os.path.exists(path) else "-lstdc++"
NVCC_FLAGS = ["-O3", "-lineinfo", "--expt-relaxed-constexpr"]


def sources():
    """(C++ sources, CUDA sources) of the extension, relative to the repo root."""
    cpp = [CSRC / n for n in ("module.cpp", "ops.cpp", "checks.cpp", "box_checks.cpp", "assign_checks.cpp",
                              "nms_checks.cpp", "autoassign_checks.cpp", "runtime_check.cpp", "autograd.cpp")]
    cpp += sorted((CSRC / "cpu").glob("*.cpp"))
    cu = sorted((CSRC / "cuda").glob("*.cu"))
    return [str(p) for p in cpp], [str(p) for p in cu]


def want_cuda():
    """CUDA kernels are built when a GPU and nvcc are usable, or FORCE_CUDA=1."""
    from torch.utils.cpp_extension import CUDA_HOME

    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and torch.cuda.is_available() and CUDA_HOME is not None


def _cache_dir(with_cuda):
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-torch{torch.__version__}"
    tag += "-cuda" if with_cuda else "-cpu"
    root = os.environ.get("GFLOPS_JIT_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gflops"
    )
    digest = hashlib.sha1(str(_ROOT).encode()).hexdigest()[:8]
    return os.path.join(root, f"{tag}-{digest}")


def _jit_build():
    from filelock import FileLock
    from torch.utils import cpp_extension

    cpp, cu = sources()
    if not (CSRC / "ops.cpp").exists():
        raise ImportError(
            f"gflops: no ahead-of-time build found and no sources at {CSRC} to JIT-build from; "
            "install with `pip install --no-build-isolation -e .` from a source checkout"
        )
    with_cuda = want_cuda()
    build_dir = _cache_dir(with_cuda)
    os.makedirs(build_dir, exist_ok=True)
    print(f"gflops: no ahead-of-time build in use; JIT-building the extension "
          f"({'CPU+CUDA' if with_cuda else 'CPU'}) in {build_dir}", file=sys.stderr)
    with FileLock(os.path.join(build_dir, "gflops.lock")):
        return cpp_extension.load(
            name="gflops_C",
            sources=cpp + (cu if with_cuda else []),
            extra_cflags=CXX_FLAGS + (["-DGFLOPS_WITH_CUDA"] if with_cuda else []),
            extra_cuda_cflags=NVCC_FLAGS + ["-DGFLOPS_WITH_CUDA"],
            extra_ldflags=ld_flags(),
            extra_include_paths=[str(CSRC)],
            build_directory=build_dir,
            with_cuda=with_cuda,
            verbose=os.environ.get("GFLOPS_VERBOSE_BUILD", "0") == "1",
        )


def check_runtime(module):
    """`module`, unless the library cannot run safely in this process (ImportError)."""
    check = getattr(module, "cxx_runtime_problem", None)
    problem = check() if check is not None else (
        "the library was built from older sources, without the C++-runtime check")
    if problem:
        raise ImportError(
            f"gflops: {problem}. Rebuild it with the C++ runtime linked dynamically: from the source "
            "checkout, `pip install --no-build-isolation --no-deps --force-reinstall -e .` (gflops' link "
            "flags ask for libstdc++.so.6; look for -static-libstdc++ in LDFLAGS/LDSHARED or a libstdc++.a "
            f"on the library path), or delete {module.__file__} to use the JIT build")
    return module


def load_file(path):
    """The built extension at `path` (AOT `_C*.so` or JIT `gflops_C.so`), loaded and checked as load() does."""
    name = Path(path).name.split(".")[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return check_runtime(module)


def load():
    """The extension module; registers the torch.ops.gflops operators."""
    module = None
    if os.environ.get("GFLOPS_FORCE_JIT", "0") != "1":
        try:
            from gflops import _C as module
        except ImportError:
            pass
    # A library that loaded but fails the check has registered its ops already:
    # no JIT fallback after it, the error says how to rebuild.
    return check_runtime(module if module is not None else _jit_build())
