"""The CUDA kernels, executed on the CPU.

`load()` JIT-builds (ninja) a twin of the extension from the same sources:
the CUDA launchers (csrc/cuda/*.cu) and kernels (csrc/cuda/*_kernels.cuh)
compiled by g++ against the project's CUDA emulator (csrc/emulation), which
runs the threads of a block as fibers with real barriers and warp
collectives. Its ops, torch.ops.gflops_emu.*, have the schemas of
torch.ops.gflops and take CPU tensors; `gflops._ops.use("gflops_emu")` routes
the public functions to them. This is how CI tests the CUDA code without a
GPU; it says nothing about speed.

Builds (GFLOPS_EMU_SANITIZE or `load(sanitizer=...)`):
  "none"     plain, -O2;
  "address"  AddressSanitizer + UndefinedBehaviorSanitizer (memcheck's job);
             the process must start with libasan preloaded
             (LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)");
  "race"     the shared-memory race check (racecheck's job,
             csrc/emulation/racecheck.cpp).
One build per process: the three register the same op library.
"""
import hashlib
import os
import sys
from pathlib import Path

import torch

from . import _ext

_FLAGS = {
    "none": (["-O2"], []),
    "address": (["-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                 "-fno-omit-frame-pointer"], ["-fsanitize=address,undefined"]),
    # Instrumentation only: racecheck.cpp is the runtime the inserted calls reach.
    "race": (["-O1", "-fsanitize=thread"], []),
}

_module = None


def cuda_include_dir():
    """The CUDA runtime headers (cuda_runtime.h, cuda_fp16.h, cuda_bf16.h), or None."""
    from torch.utils.cpp_extension import CUDA_HOME

    for root in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_runtime.h").exists():
            return str(Path(root) / "include")
    return None


def available():
    """(True, "") when the emulated library can be built here, else (False, why)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False, "the CUDA emulator's fibers are written for x86-64 Linux"
    if cuda_include_dir() is None:
        return False, "the CUDA runtime headers (cuda_runtime.h) are not installed"
    return True, ""


def _sources(build_dir):
    csrc = _ext.CSRC
    srcs = [csrc / "emulation" / n
            for n in ("module.cpp", "runtime.cpp", "racecheck.cpp", "selftest.cpp", "autograd.cpp")]
    srcs += [csrc / n for n in ("checks.cpp", "box_checks.cpp", "assign_checks.cpp", "nms_checks.cpp",
                                "autoassign_checks.cpp")]
    # g++ compiles each CUDA launcher as C++ through a one-line wrapper.
    for cu in sorted((csrc / "cuda").glob("*.cu")):
        wrapper = Path(build_dir) / f"emu_{cu.stem}.cpp"
        text = f'#include "{cu}"\n'
        if not wrapper.exists() or wrapper.read_text() != text:
            wrapper.write_text(text)
        srcs.append(wrapper)
    return [str(s) for s in srcs]


def load(sanitizer=None):
    """Builds (once per checkout, torch and sanitizer) and loads the emulated library."""
    global _module
    sanitizer = sanitizer or os.environ.get("GFLOPS_EMU_SANITIZE") or "none"
    if _module is not None:
        if _module.sanitizer() != sanitizer:
            raise RuntimeError(f"gflops.emulation: the {_module.sanitizer()!r} build is already loaded in this "
                               f"process; the {sanitizer!r} build needs a process of its own")
        return _module
    if sanitizer not in _FLAGS:
        raise ValueError(f"gflops.emulation: sanitizer must be one of {sorted(_FLAGS)}, got {sanitizer!r}")
    ok, why = available()
    if not ok:
        raise RuntimeError(f"gflops.emulation: cannot build the emulated CUDA library: {why}")
    if sanitizer == "address" and "libasan" not in os.environ.get("LD_PRELOAD", ""):
        raise RuntimeError("gflops.emulation: the 'address' build needs libasan loaded first: run with "
                           "LD_PRELOAD=\"$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libstdc++.so)\" "
                           "ASAN_OPTIONS=detect_leaks=0 (see `make test-sanitizers`)")
    from filelock import FileLock
    from torch.utils import cpp_extension

    cflags, ldflags = _FLAGS[sanitizer]
    digest = hashlib.sha1(str(_ext.CSRC).encode()).hexdigest()[:8]
    root = os.environ.get("GFLOPS_JIT_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gflops")
    build_dir = os.path.join(root, f"emu-{sanitizer}-py{sys.version_info.major}{sys.version_info.minor}-"
                                   f"torch{torch.__version__}-{digest}")
    os.makedirs(build_dir, exist_ok=True)
    with FileLock(os.path.join(build_dir, "build.lock")):
        module = cpp_extension.load(
            name=f"gflops_emu_{sanitizer}",
            sources=_sources(build_dir),
            extra_cflags=cflags + ["-DGF_EMULATED", "-fvisibility=hidden", "-Wno-unknown-pragmas"],
            extra_ldflags=ldflags,
            extra_include_paths=[str(_ext.CSRC), cuda_include_dir()],
            build_directory=build_dir,
            with_cuda=False,
            verbose=os.environ.get("GFLOPS_VERBOSE_BUILD", "0") == "1",
        )
    from . import _fake
    import gflops

    _fake.register("gflops_emu")  # autograd and the fused ops' defaults are in C++ (csrc/autograd.h)
    module.set_validation(gflops.validation_enabled())
    gflops._validation_listeners.append(module.set_validation)
    _module = module
    return module
