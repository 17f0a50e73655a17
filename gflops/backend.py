"""Which kernels serve CUDA tensors: the compiled CUDA kernels, or Triton's.

The C++ extension registers its CUDA kernels with the dispatcher when it was
built with nvcc. Otherwise (or when forced) the Triton launchers of
gflops/triton are registered for the CUDA key of the ops they cover (QFL,
DFL, integral, fused decode, forward and backward); the dispatcher remains
the only router. Ops with no Triton kernel (boxes, assignment, NMS,
AutoAssign, the GFL box branch) need the CUDA build.

GFLOPS_BACKEND=auto|cuda|triton picks at import; set_backend() switches later.
"""
import os
import warnings

import torch

from . import triton as _triton

_CHOICES = ("auto", "cuda", "triton")
_state = {"requested": "auto", "lib": None}


def _cuda_compiled():
    import gflops
    return gflops.has_cuda()


def _install_triton():
    if _state["lib"] is not None:
        return
    lib = torch.library.Library("gflops", "IMPL")
    with warnings.catch_warnings():
        # Replacing a compiled CUDA kernel is the point of forcing; the dispatcher says so.
        warnings.filterwarnings("ignore", message=r"(?s).*Overriding a previously registered kernel")
        for name, fn in _triton.launchers().items():
            lib.impl(name, fn, "CUDA")
    _state["lib"] = lib


def _remove_triton():
    lib = _state["lib"]
    if lib is not None:
        lib._destroy()  # the dispatcher falls back to the kernel registered before (the compiled one)
        _state["lib"] = None


def set_backend(name):
    """'cuda': the compiled CUDA kernels (an error if gflops was built without
    them); 'triton': the Triton kernels for the ops that have them; 'auto':
    CUDA when compiled in, else Triton when installed."""
    if name not in _CHOICES:
        raise ValueError(f"gflops.set_backend: backend must be one of {_CHOICES}, got {name!r}")
    triton_ok, why = _triton.available()
    if name == "cuda" and not _cuda_compiled():
        raise RuntimeError("gflops.set_backend('cuda'): this build of gflops has no CUDA kernels (it was built "
                           "without nvcc or without a CUDA PyTorch); use 'triton' or 'auto'")
    if name == "triton" and not triton_ok:
        raise RuntimeError(f"gflops.set_backend('triton'): {why}")
    use_triton = name == "triton" or (name == "auto" and not _cuda_compiled() and triton_ok)
    if use_triton:
        _install_triton()
    else:
        _remove_triton()
    _state["requested"] = name


def backend_info():
    """What serves each device now: {'cpu': ..., 'cuda': ..., 'requested': ...,
    'cuda_kernels_compiled': bool, 'triton': version or None, 'triton_ops': [...]}."""
    triton_ok, _ = _triton.available()
    version = None
    if triton_ok:
        try:  # pytorch-triton wheels install the module under another distribution name
            import triton
            version = triton.__version__
        except Exception as e:  # noqa: BLE001 - an unusable triton is reported, not raised
            version = f"unusable: {e}"
    if _state["lib"] is not None:
        cuda = "triton for " + ", ".join(_triton.OP_NAMES) + ("; compiled CUDA kernels for the rest"
                                                                if _cuda_compiled() else "; no kernels for the rest")
    elif _cuda_compiled():
        cuda = "compiled CUDA kernels"
    else:
        cuda = "none (no CUDA kernels compiled in and triton not installed)"
    return {"cpu": "C++ kernels", "cuda": cuda, "requested": _state["requested"],
            "cuda_kernels_compiled": _cuda_compiled(), "triton": version,
            "triton_ops": list(_triton.OP_NAMES) if triton_ok else [],
            "gpu_available": torch.cuda.is_available()}


def init_from_env():
    """GFLOPS_BACKEND at import. A value that cannot be honoured warns and falls
    back to 'auto': an environment variable set for a whole cluster must not
    stop the CPU kernels from loading."""
    name = os.environ.get("GFLOPS_BACKEND", "auto")
    try:
        set_backend(name)
    except (ValueError, RuntimeError) as e:
        warnings.warn(f"GFLOPS_BACKEND={name!r} ignored, using 'auto': {e}", RuntimeWarning, stacklevel=2)
        set_backend("auto")
