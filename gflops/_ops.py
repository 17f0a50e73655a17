"""The op library the Python API calls: torch.ops.gflops, or, inside
`use("gflops_emu")` (tests only), its emulated-CUDA twin (gflops.emulation)."""
import contextlib

import torch

_current = None


def lib():
    return torch.ops.gflops if _current is None else _current


@contextlib.contextmanager
def use(namespace):
    """Route the gflops.* functions to torch.ops.<namespace> for the block."""
    global _current
    before = _current
    _current = getattr(torch.ops, namespace)
    try:
        yield
    finally:
        _current = before
