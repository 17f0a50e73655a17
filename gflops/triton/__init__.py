"""The Triton backend of the loss and decoding ops (QFL, DFL, integral,
fused decode; forward and backward).

It serves CUDA tensors when the CUDA kernels are not compiled in (a pip
PyTorch with triton but no nvcc), or when forced (gflops.set_backend), and
is the peer the CUDA kernels are benchmarked against. See gflops/backend.py
for the routing.

`load_twin()` registers torch.ops.gflops_triton: the same schemas, the Triton
launchers as the CUDA kernels and, under Triton's interpreter
(TRITON_INTERPRET=1, set before the kernels are first imported), as the CPU
kernels too, with gflops' fake kernels and autograd. `gflops._ops.use(
"gflops_triton")` routes the public functions to it: that is how the tests
run the Triton kernels on a machine without a GPU.
Its autograd is gflops' own C++ one (csrc/autograd.h), registered when the
ops are defined.
"""
import importlib.util
import os

import torch

NAMESPACE = "gflops_triton"
# The ops with Triton kernels (launch.OPS holds their launchers).
OP_NAMES = ("quality_focal_loss", "quality_focal_loss_backward", "distribution_focal_loss",
            "distribution_focal_loss_backward", "integral", "integral_backward", "decode_distribution",
            "decode_distribution_backward")
# Each differentiable op's twin that may return its gradient from the forward (never here: the
# default kernel returns the plain op and an empty buffer, and autograd runs the backward op).
FUSED_OPS = ("quality_focal_loss_and_grad", "distribution_focal_loss_and_grad", "integral_and_grad",
             "decode_distribution_and_grad")
_twin = None


def available():
    """(True, "") when triton can be imported, else (False, why)."""
    if importlib.util.find_spec("triton") is None:
        return False, "the triton package is not installed"
    return True, ""


def launchers():
    """{op name: launcher}; triton itself is imported at the first call, not
    when gflops is imported (and TRITON_INTERPRET is read then)."""
    def lazy(name):
        def launcher(*args):
            from .launch import OPS
            return OPS[name](*args)
        launcher.__name__ = f"triton_{name}"
        return launcher
    return {name: lazy(name) for name in OP_NAMES}


def load_twin():
    """Registers (once) and returns torch.ops.gflops_triton."""
    global _twin
    if _twin is not None:
        return getattr(torch.ops, NAMESPACE)
    ok, why = available()
    if not ok:
        raise RuntimeError(f"gflops.triton: {why}")
    from .. import _C, _fake
    from .launch import OPS, interpreting

    lib = torch.library.Library(NAMESPACE, "DEF")
    for name in (*OPS, *FUSED_OPS):
        schema = str(getattr(torch.ops.gflops, name).default._schema)
        lib.define(schema.split("::", 1)[1])
    for name, fn in OPS.items():
        lib.impl(name, fn, "CUDA")
        if interpreting():
            lib.impl(name, fn, "CPU")
    _fake.register(NAMESPACE)
    # Autograd and the *_and_grad ops' defaults (the plain op, no gradient buffer) in C++, as gflops'.
    _C.register_triton_autograd()
    _twin = lib
    return getattr(torch.ops, NAMESPACE)


def interpreter_requested():
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
