import contextlib
import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter on CPU tensors;
# it is chosen when the kernels are decorated, so before gflops.triton imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import gflops  # noqa: E402
from gflops import _ops, emulation  # noqa: E402
from gflops import triton as gtriton  # noqa: E402
from emulated_device import EMU_DEVICE, EmulatedDevice  # noqa: E402

CUDA_OK = torch.cuda.is_available() and gflops.has_cuda()
needs_cuda = pytest.mark.skipif(not CUDA_OK, reason="needs a GPU and gflops built with CUDA")
EMU_OK, EMU_WHY = emulation.available()
needs_emu = pytest.mark.skipif(not EMU_OK, reason=f"the emulated CUDA build is unavailable: {EMU_WHY}")

TRITON_OK, TRITON_WHY = gtriton.available()
if TRITON_OK and not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    TRITON_OK, TRITON_WHY = False, "no GPU, and TRITON_INTERPRET=0 keeps Triton's CPU interpreter off"
needs_triton = pytest.mark.skipif(not TRITON_OK, reason=f"the Triton kernels cannot run here: {TRITON_WHY}")

# "emu": the CUDA launchers and kernels, run by the CPU emulator (gflops.emulation).
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda), pytest.param("emu", marks=needs_emu)]
ACCELERATORS = [pytest.param("cuda", marks=needs_cuda), pytest.param("emu", marks=needs_emu)]
# "triton": the Triton kernels (gflops.triton), on the GPU or in Triton's interpreter.
# Only the loss and decoding ops have them, so only their tests take these lists.
TRITON = pytest.param("triton", marks=needs_triton)
KERNEL_DEVICES = DEVICES + [TRITON]
KERNEL_ACCELERATORS = ACCELERATORS + [TRITON]
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The tensors of "emu" (and of "triton" in the interpreter) live on the CPU, so a test that mixes
# them with CPU tensors passes here and fails on a GPU. Those tests get EMU_DEVICE ("cpu" to torch)
# and run under EmulatedDevice (python_tests/emulated_device.py), which makes such a mix fail here
# too. GFLOPS_EMU_DEVICE_CHECK=0 turns the check off.
EMU_DEVICE_CHECK = os.environ.get("GFLOPS_EMU_DEVICE_CHECK", "1") != "0"


def _on_the_cpu(kind):
    """True for the kinds whose "GPU" tensors are CPU tensors here."""
    return kind == "emu" or (kind == "triton" and TRITON_DEVICE == "cpu")


def emulated_device(kind):
    """The device-mixing check for the kinds whose tensors live on the CPU here (or nothing)."""
    return EmulatedDevice() if EMU_DEVICE_CHECK and _on_the_cpu(kind) else contextlib.nullcontext()


class OpCalls(TorchDispatchMode):
    """Records the gflops ops (of any twin library) run inside the block, by
    name without the namespace: tells which path autograd took."""

    def __enter__(self):
        self.names = []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ns, name = func._schema.name.split("::", 1)
        if ns.startswith("gflops"):
            self.names.append(name)
        return func(*args, **(kwargs or {}))


def ops():
    """The op library the gflops functions call now (torch.ops.gflops or its emulated twin)."""
    return _ops.lib()


def routed(kind):
    """Where a test's tensors live, with the gflops functions and ops() routed
    for the block: "emu" to the emulated CUDA library, "triton" to the Triton
    twin (torch.ops.gflops_triton)."""
    if kind == "emu":
        emulation.load()
        with _ops.use("gflops_emu"), emulated_device(kind):
            yield EMU_DEVICE
    elif kind == "triton":
        gtriton.load_twin()
        with _ops.use(gtriton.NAMESPACE), emulated_device(kind):
            yield EMU_DEVICE if _on_the_cpu(kind) else TRITON_DEVICE
    else:
        yield kind



@contextlib.contextmanager
def emu_counters(setter, n=4):
    """On the emulated CUDA library: a list that holds the n counters a
    kernel's test hook (the emulator module's `setter`) counted in the block,
    once the block ends; elsewhere it stays empty."""
    counts = []
    if _ops.lib() is not torch.ops.gflops_emu:
        yield counts
        return
    m, buf = emulation.load(), torch.zeros(n, dtype=torch.long)
    getattr(m, setter)(buf)
    try:
        yield counts
    finally:
        getattr(m, setter)(None)
    counts.extend(buf.tolist())

@pytest.fixture(params=DEVICES)
def device(request):
    yield from routed(request.param)


@pytest.fixture(params=KERNEL_DEVICES)
def kernel_device(request):
    """`device` plus "triton", for the ops that have Triton kernels."""
    yield from routed(request.param)


class Accelerator:
    """Where the CUDA kernels run: a GPU ("cuda") or the CPU emulator ("emu").
    `acc(t)` moves a tensor there; gflops calls inside `with acc:` run the CUDA kernels."""

    def __init__(self, kind):
        self.kind = kind
        self.device = EMU_DEVICE if _on_the_cpu(kind) else {"cuda": "cuda", "triton": TRITON_DEVICE}.get(kind, "cpu")
        self._stack = None

    def __call__(self, t):
        return t.to(self.device) if torch.is_tensor(t) else t

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        if self.kind in ("emu", "triton"):
            self._stack.enter_context(_ops.use("gflops_emu" if self.kind == "emu" else gtriton.NAMESPACE))
        return self

    def __exit__(self, *exc):
        self._stack.close()


def _accelerator(kind):
    if kind == "emu":
        emulation.load()
    if kind == "triton":
        gtriton.load_twin()
    return Accelerator(kind)


def _accelerated(kind):
    acc = _accelerator(kind)
    with emulated_device(kind):
        yield acc


@pytest.fixture(params=ACCELERATORS)
def accel(request):
    yield from _accelerated(request.param)


@pytest.fixture(params=KERNEL_ACCELERATORS)
def kernel_accel(request):
    """`accel` plus "triton" (the Triton kernels, compared with the CPU ones)."""
    yield from _accelerated(request.param)


@pytest.fixture
def validation():
    """Value checks on for the test (CUDA needs them on to raise), then restored."""
    before = gflops.validation_enabled()
    gflops.set_validation(True)
    yield
    gflops.set_validation(before)


@contextlib.contextmanager
def poisoned_memory():
    """Fresh tensors (torch.empty, and at::empty in the kernels' launchers) filled with NaN, or the largest
    integer: torch's deterministic mode with fill_uninitialized_memory. An output element a kernel never
    writes then shows, where otherwise it passes whenever the memory happens to hold the right value."""
    before = torch.are_deterministic_algorithms_enabled(), torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0])
        torch.utils.deterministic.fill_uninitialized_memory = before[1]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`-k emu` (make test-sanitizers) selects the tests that run the emulated
    CUDA kernels: those parametrised on "emu" match by name, and those taking
    an `emu` fixture (test_cuda_paths: the kernels' own paths) by this mark."""
    for item in items:
        if "emu" in getattr(item, "fixturenames", ()):
            item.add_marker("emu")
