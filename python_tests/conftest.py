import contextlib

import pytest
import torch

import gflops
from gflops import _ops, emulation

CUDA_OK = torch.cuda.is_available() and gflops.has_cuda()
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and gflops built with CUDA")
EMU_OK, EMU_WHY = emulation.available()
needs_emu = pytest.mark.skipif(not EMU_OK, reason=f"the emulated CUDA build is unavailable: {EMU_WHY}")

# "emu": the CUDA launchers and kernels, run by the CPU emulator (gflops.emulation).
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda), pytest.param("emu", marks=needs_emu)]
ACCELERATORS = [pytest.param("cuda", marks=needs_cuda), pytest.param("emu", marks=needs_emu)]


def ops():
    """The op library the gflops functions call now (torch.ops.gflops or its emulated twin)."""
    return _ops.lib()


@pytest.fixture(params=DEVICES)
def device(request):
    """Where a test's tensors live. For "emu" they stay on the CPU and every
    gflops function and ops() is routed to the emulated CUDA library."""
    if request.param != "emu":
        yield request.param
        return
    emulation.load()
    with _ops.use("gflops_emu"):
        yield "cpu"


class Accelerator:
    """Where the CUDA kernels run: a GPU ("cuda") or the CPU emulator ("emu").
    `acc(t)` moves a tensor there; gflops calls inside `with acc:` run the CUDA kernels."""

    def __init__(self, kind):
        self.kind = kind
        self.device = "cuda" if kind == "cuda" else "cpu"
        self._stack = None

    def __call__(self, t):
        return t.to(self.device) if torch.is_tensor(t) else t

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.kind == "emu":
            self._stack.enter_context(_ops.use("gflops_emu"))
        return self

    def __exit__(self, *exc):
        self._stack.close()


@pytest.fixture(params=ACCELERATORS)
def accel(request):
    if request.param == "emu":
        emulation.load()
    return Accelerator(request.param)


@pytest.fixture
def validation():
    """Value checks on for the test (CUDA needs them on to raise), then restored."""
    before = gflops.validation_enabled()
    gflops.set_validation(True)
    yield
    gflops.set_validation(before)
