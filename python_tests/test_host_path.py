"""The host path of the loss and decode functions: what one call runs.

A call of a public function is one op (its 'mean' included) and, with a
gradient, one backward op or none (CPU: the forward's buffer, scaled in
place); the 'mean' the op makes is bitwise the division of the summed loss
that autograd would make on that device. Timing is benchmarks/bench_host.py's job."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import gflops
from box_cases import random_boxes
from conftest import ops
from loss_cases import dfl_inputs, qfl_inputs


class AllOps(TorchDispatchMode):
    """Every op (ATen and gflops) dispatched below autograd inside the block, by
    name; `ours` keeps the gflops ones (of any twin library)."""

    def __enter__(self):
        self.names, self.ours = [], []
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        ns, name = func._schema.name.split("::", 1)
        self.names.append(name)
        if ns.startswith("gflops"):
            self.ours.append(name)
        return func(*args, **(kwargs or {}))


def _qfl(device, dtype=torch.float32):
    pred, label, score, weight = qfl_inputs(37, 11, device, dtype=dtype, weight=True)
    return pred, lambda p, **kw: gflops.quality_focal_loss(p, label, score, weight, **kw), "quality_focal_loss"


def _dfl(device, dtype=torch.float32):
    pred, target, weight = dfl_inputs(29, 16, device, dtype=dtype, weight=True)
    return pred, lambda p, **kw: gflops.distribution_focal_loss(p, target, weight, **kw), "distribution_focal_loss"


def _giou(device, dtype=torch.float32):
    pred = random_boxes(31, device=device, dtype=dtype, seed=1)
    target = random_boxes(31, device=device, seed=2)
    weight = torch.rand(31, device=device)
    return pred, lambda p, **kw: gflops.giou_loss(p, target, weight, **kw), "giou_loss"


LOSSES = {"qfl": _qfl, "dfl": _dfl}


def _avg(kind, device):
    # 7.3 is not a float32: a GPU's division (a multiply by the reciprocal) differs from the CPU's there.
    return {"none": None, "number": 7.3, "tensor": torch.tensor(7.3, device=device)}[kind]


def _divide(x, divisor):
    """x / divisor (a Python number) as PyTorch rounds it where the op's tensors
    live. ATen on CUDA multiplies by the reciprocal, computed in double and
    rounded to the dtype (BinaryDivTrueKernel.cu), which the CUDA kernels fold
    in: on the emulated CUDA device, whose tensors are CPU tensors, that is
    written out."""
    if ops() is torch.ops.gflops_emu:
        return x * torch.tensor(1.0 / divisor, dtype=x.dtype)
    return x / divisor


def _mean_is_the_division(case, device, avg_kind, dtype):
    pred, fn, _ = case(device, dtype)
    avg = _avg(avg_kind, device)
    divisor = pred.shape[0] if avg is None else avg
    p1, p2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    mean = fn(p1, reduction="mean", avg_factor=avg)
    summed = fn(p2, reduction="sum")
    expected = _divide(summed.detach(), divisor)
    assert mean.dtype == summed.dtype and mean.shape == ()
    assert torch.equal(mean, expected), (mean, expected)
    up = torch.tensor(1.7, dtype=mean.dtype, device=device)
    (g1,) = torch.autograd.grad(mean, p1, up)
    (g2,) = torch.autograd.grad(summed, p2, _divide(up, divisor))
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("avg_kind", ["none", "number"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mean_is_the_division_bitwise(kernel_device, loss, avg_kind, dtype):
    """reduction='mean' divides inside the op (by avg_factor, else by N): the
    loss and the gradient are bitwise those of the summed loss divided by the
    same number, as the reference computes them on that device (on CUDA the
    kernels fold the division in). (A tensor avg_factor divides after the op,
    as the reference does: test_losses' avg_factor tests.)"""
    _mean_is_the_division(LOSSES[loss], kernel_device, avg_kind, dtype)


@pytest.mark.parametrize("avg_kind", ["none", "number"])
def test_giou_mean_is_the_division_bitwise(device, avg_kind):
    _mean_is_the_division(_giou, device, avg_kind, torch.float32)


def _calls(fn, ours=False):
    with AllOps() as rec:
        out = fn()
    return out, (rec.ours if ours else rec.names)


@pytest.mark.parametrize("loss", ["qfl", "dfl", "giou"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_op_per_call(device, loss, dtype):
    """The forward is the op alone, 'mean' and avg_factor included (no division
    or other op around it); the backward runs the backward op or, where the CPU
    kernels fuse the gradient (float32/float64), no gflops op: the forward's
    buffer is scaled ('mean' included). Under this recording mode the scaling
    is an ATen op (test_traced_scaling_is_the_eager_one)."""
    pred, fn, name = {"qfl": _qfl, "dfl": _dfl, "giou": _giou}[loss](device, dtype)
    _, names = _calls(lambda: fn(pred, reduction="mean", avg_factor=3.0))
    assert names == [name]
    leaf = pred.clone().requires_grad_(True)
    out, names = _calls(lambda: fn(leaf, reduction="mean", avg_factor=3.0))
    fuses = ops() is torch.ops.gflops and device == "cpu" and dtype == torch.float32 and loss != "giou"
    assert names == [f"{name}_and_grad" if fuses else name]
    up = torch.tensor(2.0, dtype=out.dtype, device=out.device)
    _, names = _calls(lambda: torch.autograd.grad(out, leaf, up), ours=True)
    assert names == ([] if fuses else [f"{name}_backward"])


@pytest.mark.parametrize("fn", ["integral", "decode_distribution"])
def test_decode_one_op_per_call(kernel_device, fn):
    device = kernel_device
    reg_max, anchors = 16, 9
    pred = torch.randn(2, anchors, 4 * (reg_max + 1), device=device)
    points = torch.rand(anchors, 2, device=device) * 50
    strides = torch.full((anchors,), 8.0, device=device)
    call = {"integral": lambda p: gflops.integral(p, reg_max),
            "decode_distribution": lambda p: gflops.decode_distribution(p, points, strides, reg_max)}[fn]
    _, names = _calls(lambda: call(pred))
    assert names == [fn]
    leaf = pred.clone().requires_grad_(True)
    out, names = _calls(lambda: call(leaf))
    fuses = ops() is torch.ops.gflops and device == "cpu"
    assert names == [f"{fn}_and_grad" if fuses else fn]


def test_autograd_is_registered_in_cpp():
    """No Python kernel on the gflops library's Autograd key: a Python autograd
    kernel runs on every call, with or without a gradient (bench_host)."""
    for name in ("quality_focal_loss", "distribution_focal_loss", "giou_loss", "integral", "decode_distribution",
                 "gfl_box_branch", "autoassign_loss_terms", "quality_focal_loss_and_grad"):
        dump = torch._C._dispatch_dump(f"gflops::{name}")
        autograd = [line for line in dump.splitlines() if line.startswith("Autograd[alias]:")]
        assert len(autograd) == 1 and "csrc/autograd.cpp" in autograd[0], (name, dump)


def test_triton_twin_autograd_is_registered_in_cpp():
    """The Triton twin's launchers are Python, its autograd is not: the same C++
    Functions as gflops' (a Python autograd kernel made its host cost 1.3x)."""
    pytest.importorskip("triton")
    from gflops import triton as gtriton
    gtriton.load_twin()
    for name in gtriton.FUSED_OPS + tuple(op for op in gtriton.OP_NAMES if not op.endswith("_backward")):
        dump = torch._C._dispatch_dump(f"{gtriton.NAMESPACE}::{name}")
        kernels = {line.split(":", 1)[0]: line for line in dump.splitlines()}
        assert "csrc/autograd.cpp" in kernels.get("Autograd[alias]", ""), (name, dump)
        if name.endswith("_and_grad"):  # the default: the plain op and no gradient buffer
            assert "csrc/autograd.cpp" in kernels.get("CompositeExplicitAutograd[alias]", ""), (name, dump)


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_traced_scaling_is_the_eager_one(loss, reduction):
    """Under a dispatch mode (make_fx, a recording mode) the fused buffer is
    scaled by ATen ops, out of place, which the mode sees; the gradient has the
    same bits as the eager in-place scaling on the raw data."""
    pred, fn, _ = LOSSES[loss]("cpu")
    kw = {"reduction": reduction, "avg_factor": 3.0 if reduction == "mean" else None}
    grads = []
    for record in (False, True):
        leaf = pred.clone().requires_grad_(True)
        out = fn(leaf, **kw)
        up = torch.linspace(0.5, 1.5, out.numel()).reshape(out.shape)
        if record:
            (g,), names = _calls(lambda: torch.autograd.grad(out, leaf, up))
            assert "mul" in names  # the out-of-place scaling ran, where the mode sees it
        else:
            (g,) = torch.autograd.grad(out, leaf, up)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_and_grad_buffer_returned_to_the_caller_is_not_scaled(loss):
    """Called directly with pred requiring grad, a *_and_grad op hands its
    buffer to the caller too: the backward scales a copy, not the caller's."""
    if loss == "qfl":
        pred, label, score, weight = qfl_inputs(37, 11, "cpu", weight=True)
        call = lambda p: torch.ops.gflops.quality_focal_loss_and_grad(p, label, score, weight, 2.0, "sum")  # noqa: E731
    else:
        pred, target, weight = dfl_inputs(29, 16, "cpu", weight=True)
        call = lambda p: torch.ops.gflops.distribution_focal_loss_and_grad(p, target, weight, "sum")  # noqa: E731
    leaf = pred.clone().requires_grad_(True)
    out, buf = call(leaf)
    before = buf.clone()
    (g,) = torch.autograd.grad(out, leaf, torch.tensor(2.5))
    assert torch.equal(buf, before)
    assert torch.equal(g, before * 2.5)


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_no_fusion_under_saved_tensor_hooks(loss):
    """Under saved-tensor hooks (offloading, checkpointing) the forward saves
    what it needs, which the hooks can move, and the backward op runs: the
    fused buffer would be held out of their reach."""
    pred, fn, name = LOSSES[loss]("cpu")
    leaf = pred.clone().requires_grad_(True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        out, names = _calls(lambda: fn(leaf, reduction="mean"))
    assert names == [name] and packed
    _, names = _calls(lambda: torch.autograd.grad(out, leaf), ours=True)
    assert names == [f"{name}_backward"]
