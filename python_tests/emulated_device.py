"""Makes the emulated CUDA device ("emu", and "triton" in Triton's CPU
interpreter) refuse what a GPU refuses: a CPU tensor mixed with a device tensor.

The emulated kernels take CPU tensors, so on a CPU machine a test that
multiplies an op's "CUDA" output by a tensor it left on the CPU passes, and
fails only on a real GPU ("Expected all tensors to be on the same device").
`EmulatedDevice`, a TorchFunctionMode active for the whole of every such
test (conftest.routed and the accel fixtures; GFLOPS_EMU_DEVICE_CHECK=0
turns it off), keeps track of where each tensor would live on a GPU:

  device ("D"): made by a factory with `device=` the test's device (EMU_DEVICE,
      a str equal to "cpu") or a device tensor's `.device`, by `.to()` of
      either, or computed from any device tensor (the op outputs included);
  host ("H"): made by a factory without a device or with another CPU device,
      by `.cpu()` / `.to("cpu")`, or computed from host tensors only;
  unknown: anything else (tensors that autograd's engine makes, those that
      torch.compile returns): never an error.

An op given a device tensor and a host tensor then raises the error a GPU
would. As on a GPU, a 0-dim host tensor may meet device tensors in torch's
own ops (a CPU scalar), host index tensors may index a device tensor, and
`copy_` copies across; gflops ops take no host tensor at all (their C++
checks want one device). `.numpy()` of a device tensor is refused as on a
GPU. A device tensor's `.device` is a torch.device("cpu") equal to every
other, so nothing that compares devices behaves differently; `.to()` and
`.cpu()` return a copy when they change a tensor's side, as on a GPU.
While dynamo traces, the mode steps aside.

Limits: the marks follow the device objects by identity, so a new one made
from them (`torch.device(device)`, `str(t.device)`) means the host, as
"cpu" would on a GPU test, and a mix it causes is reported though a GPU run
(where it would read "cuda") passes: write `device=device` or
`device=t.device`. Only the code a test runs is checked: a branch the
emulated cases skip (`if device == "cuda"`) is not."""
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves


class _EmuDeviceStr(str):
    """The `device` an "emu" test gets: "cpu" to torch and in comparisons,
    recognisable by the mode."""

    __slots__ = ()

    def __repr__(self):
        return "'cpu' (emulated CUDA)"


EMU_DEVICE = _EmuDeviceStr("cpu")
# What `.device` of a device tensor returns: equal to torch.device("cpu"), told apart by identity.
_EMU_TORCH_DEVICE = torch.device("cpu")

_ATTR = "_gflops_emu_side"  # "D" or "H" on the tensor object; absent: unknown
DEVICE, HOST = "D", "H"
OTHER = "other"  # "meta" and the like: left to the ops' own device checks, never labelled

_DEVICE_DESCR = torch.Tensor.device
_GRAD_DESCR = torch.Tensor.grad
_NO_CHECK = {torch.Tensor.copy_, torch.Tensor.__setitem__, torch.Tensor.to, torch.Tensor.cpu,
             torch.Tensor.type_as, torch.Tensor.__repr__, torch.Tensor.__format__}


class DeviceMixError(RuntimeError):
    pass


def side(t):
    if not isinstance(t, torch.Tensor) or t.is_meta:  # a meta tensor is "another device" of its own
        return None
    return getattr(t, _ATTR, None)


def _set(t, s):
    if isinstance(t, torch.Tensor) and s in (DEVICE, HOST):
        try:
            setattr(t, _ATTR, s)
        except (AttributeError, RuntimeError):  # some tensor subclasses take no attributes
            pass


def _is_emu(device):
    return device is EMU_DEVICE or device is _EMU_TORCH_DEVICE or isinstance(device, _EmuDeviceStr)


def _device_side(device):
    """The side a `device=` argument puts a new tensor on (None: no device given)."""
    if device is None:
        return None
    if _is_emu(device):
        return DEVICE
    if isinstance(device, torch.device):
        return HOST if device.type == "cpu" else OTHER
    if isinstance(device, str):
        return HOST if device.split(":")[0] == "cpu" else OTHER
    return OTHER  # an int: a CUDA ordinal


def _to_target(args, kwargs):
    """The side `Tensor.to(...)` moves to, or "same" (dtype only), or a tensor's side."""
    if kwargs.get("device") is not None:
        return _device_side(kwargs["device"]) or "same"
    if len(args) > 1:
        a = args[1]
        if isinstance(a, torch.Tensor):
            return side(a) or "same"
        if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
            return _device_side(a) or "same"
    if "other" in kwargs and isinstance(kwargs["other"], torch.Tensor):
        return side(kwargs["other"]) or "same"
    return "same"


def _op_namespace(func):
    """"aten", "gflops_emu", ... for an op of torch.ops (packet or overload), else None."""
    module = getattr(func, "__module__", None) or ""
    return module[len("torch._ops."):] if module.startswith("torch._ops.") else None


def _name(func):
    if _op_namespace(func):
        return f"torch.ops.{func}"
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)


def _is_gflops_op(func):
    return (_op_namespace(func) or "").startswith("gflops")


class EmulatedDevice(TorchFunctionMode):
    """See the module's docstring."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.compiler.is_compiling():
            return func(*args, **kwargs)
        descr = getattr(func, "__self__", None)
        if descr is _DEVICE_DESCR:
            return _EMU_TORCH_DEVICE if side(args[0]) == DEVICE else func(*args, **kwargs)
        if descr is _GRAD_DESCR:
            g = func(*args, **kwargs)
            if side(args[0]) == DEVICE and side(g) is None:
                _set(g, DEVICE)
            return g
        if func in (torch.Tensor.numpy, torch.Tensor.__array__) and side(args[0]) == DEVICE:
            raise TypeError("can't convert an emulated-CUDA (device) tensor to numpy: on a GPU this is "
                            "'can't convert cuda:0 device type tensor to numpy'; call .cpu() first")

        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        sides = [side(t) for t in tensors]
        if func not in _NO_CHECK and DEVICE in sides and HOST in sides:
            self._check(func, args, tensors, sides)

        if func is torch.Tensor.cpu:
            target = HOST
        elif func is torch.Tensor.to:
            target = _to_target(args, kwargs)
        elif func is torch.Tensor.type_as:
            target = side(args[1]) if len(args) > 1 else None
            target = target or "same"
        elif kwargs.get("device") is not None:
            target = _device_side(kwargs["device"])
        elif not tensors:  # a factory without a device: the CPU
            target = HOST
        else:
            target = DEVICE if DEVICE in sides else (HOST if all(s == HOST for s in sides) else None)

        out = func(*args, **kwargs)
        if func in (torch.Tensor.cpu, torch.Tensor.to, torch.Tensor.type_as):
            src = side(args[0])
            if target == "same":
                target = src
            if isinstance(out, torch.Tensor) and out is args[0] and target in (DEVICE, HOST) and target != src:
                out = out.clone()  # a move: a copy, as on a GPU (never re-label the tensor moved)
            _set(out, target)
            return out
        if target in (DEVICE, HOST):
            ids = {id(t) for t in tensors}
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and (id(t) not in ids or side(t) is None):
                    _set(t, target)
        return out

    @staticmethod
    def _check(func, args, tensors, sides):
        if func is torch.Tensor.__getitem__:
            # A device tensor may be indexed by host indices; a host one not by device indices.
            if sides[0] != HOST or not any(s == DEVICE and t.dim() > 0 for t, s in zip(tensors[1:], sides[1:])):
                return
        elif not _is_gflops_op(func):
            # torch's ops take a 0-dim CPU tensor (a scalar) with CUDA tensors.
            if not any(s == HOST and t.dim() > 0 for t, s in zip(tensors, sides)):
                return
        host = next(t for t, s in zip(tensors, sides) if s == HOST)
        raise DeviceMixError(
            f"Expected all tensors to be on the same device, but found at least two devices, cuda:0 (emulated) "
            f"and cpu! ({_name(func)} got a tensor of the emulated CUDA device and a CPU tensor of shape "
            f"{tuple(host.shape)}: the test made it on the CPU, without `device=` the device under test; "
            f"this passes on the emulator only because its tensors live on the CPU - see "
            f"python_tests/emulated_device.py)")
