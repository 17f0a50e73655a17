"""Launchers of the Triton kernels, one per op, with the ops' signatures.

Arguments go through the same C++ checks as the CPU and CUDA backends
(gflops._C.prepare_*: same errors, same contiguity and side-tensor casts);
value checks (targets in range, scores in [0, 1], positive strides) cost a
host sync and run only with gflops.set_validation(True), as on CUDA. Without
them the kernels still never index outside a row.
"""
import contextlib

import torch
import torch.autograd.profiler as _profiler
import triton.language as tl

import gflops
from . import kernels as K
from . import tiles
from .tiles import NUM_WARPS

_C = gflops._C
_ACC = {torch.float64: tl.float64}


# Whether Triton's interpreter runs these kernels: fixed when they were decorated
# (TRITON_INTERPRET=1 at their import), so read off them, not off the environment.
INTERPRETED = type(K.qfl_forward_kernel).__name__ == "InterpretedFunction"


def interpreting():
    return INTERPRETED


def _scalars(pred, *values):
    """Scalar parameters as a tensor in the accumulation dtype: a Python float
    argument would reach the kernel as float32, and float64 inputs must not round.
    Filled on the device (no host-to-device copy: CUDA graphs can capture it)."""
    t = torch.empty(len(values), dtype=_acc_torch(pred), device=pred.device)
    for i, v in enumerate(values):
        t[i:i + 1].fill_(float(v))
    return t


def _acc(pred):
    return _ACC.get(pred.dtype, tl.float32)


def _acc_torch(pred):
    return torch.float64 if pred.dtype == torch.float64 else torch.float32


def _device(t):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _launch(kernel, grid, *args, **kw):
    """kernel[grid](*args, **kw); under the profiler also a `triton::<kernel>` range, so that
    benchmarks.profile_ops counts the launches where the interpreter runs them (on a GPU the
    kernels are listed by name anyway)."""
    if _profiler._is_profiler_enabled:
        with torch.profiler.record_function(f"triton::{kernel.fn.__name__}"):
            return kernel[grid](*args, **kw)
    return kernel[grid](*args, **kw)


def _sum(partials):
    # ATen's sum of the per-program partials: deterministic (a fixed order for a given size), and
    # on the host about a third of a Triton launch (benchmarks/bench_host.py's triton_us).
    return partials.sum()


def _mean(total, divisor):
    """A summed loss divided as reduction 'mean' asks (divisor None: 'sum')."""
    return total if divisor is None else total.div_(divisor)


# ---- QFL ---------------------------------------------------------------------


def _beta(pred, beta):
    """beta as the kernels read it; with beta = 2 (BETA2) they do not, and any pointer does
    (no tensor to fill: one device op less per call)."""
    return pred if beta == 2.0 else _scalars(pred, beta)


def _qfl_blocks(cols):
    return tiles.qfl_blocks(cols, INTERPRETED)


def quality_focal_loss(pred, label, score, weight, beta, reduction, avg_factor=None):
    op = "gflops.quality_focal_loss"
    pred, label, score, weight, n, c, total, divisor = _C.prepare_qfl(pred, label, score, weight, beta, reduction,
                                                                      avg_factor, gflops.validation_enabled(), op)
    acc = _acc_torch(pred)
    if n == 0:
        return _mean(pred.new_zeros((), dtype=acc), divisor) if total else pred.new_empty((0,), dtype=acc)
    bn, bc = _qfl_blocks(c)
    grid = (tiles.cdiv(n, bn),)
    out = pred.new_empty(grid if total else (n,), dtype=acc)
    with _device(pred):
        _launch(K.qfl_forward_kernel, grid, pred, label, score, weight, out, n, c, _beta(pred, beta),
                BETA2=beta == 2.0, HAS_W=weight is not None, SUM=total, ACC=_acc(pred), BLOCK_N=bn, BLOCK_C=bc,
                WIDE=tiles.qfl_wide(n, c, bn, bc), num_warps=NUM_WARPS)
        return _mean(_sum(out), divisor) if total else out


def quality_focal_loss_backward(grad, pred, label, score, weight, beta, reduction, avg_factor=None):
    op = "gflops.quality_focal_loss_backward"
    pred, label, score, weight, n, c, total, divisor = _C.prepare_qfl(pred, label, score, weight, beta, reduction,
                                                                      avg_factor, False, op)
    grad = _C.check_loss_grad(grad, pred, n, total, divisor, op)
    out = torch.empty_like(pred)
    if out.numel() == 0:
        return out
    bn, bc = _qfl_blocks(c)
    with _device(pred):
        _launch(K.qfl_backward_kernel, (tiles.cdiv(n, bn),), grad, pred, label, score, weight, out, n, c,
                _beta(pred, beta), BETA2=beta == 2.0, HAS_W=weight is not None, GRAD_PER_ROW=not total,
                ACC=_acc(pred), BLOCK_N=bn, BLOCK_C=bc, WIDE=tiles.qfl_wide(n, c, bn, bc), num_warps=NUM_WARPS)
    return out


# ---- DFL ---------------------------------------------------------------------


def _bin_blocks(n1, op):
    return tiles.bin_blocks(n1, op, INTERPRETED)


def distribution_focal_loss(pred, target, weight, reduction, avg_factor=None):
    op = "gflops.distribution_focal_loss"
    pred, _, target, weight, m, n1, total, divisor = _C.prepare_dfl(pred, target, weight, reduction, avg_factor,
                                                                    gflops.validation_enabled(), op)
    acc = _acc_torch(pred)
    if m == 0:
        return _mean(pred.new_zeros((), dtype=acc), divisor) if total else pred.new_empty((0,), dtype=acc)
    bm, head, tail = _bin_blocks(n1, op)
    grid = (tiles.cdiv(m, bm),)
    out = pred.new_empty(grid if total else (m,), dtype=acc)
    with _device(pred):
        _launch(K.dfl_forward_kernel, grid, pred, target, weight, out, m, n1, HAS_W=weight is not None, SUM=total,
                ACC=_acc(pred), BLOCK_M=bm, HEAD=head, TAIL=tail, WIDE=tiles.bins_wide(m, n1, bm, head, tail),
                num_warps=NUM_WARPS)
        return _mean(_sum(out), divisor) if total else out


def distribution_focal_loss_backward(grad, pred, target, weight, reduction, avg_factor=None):
    op = "gflops.distribution_focal_loss_backward"
    pred, _, target, weight, m, n1, total, divisor = _C.prepare_dfl(pred, target, weight, reduction, avg_factor,
                                                                    False, op)
    grad = _C.check_loss_grad(grad, pred, m, total, divisor, op)
    out = torch.empty_like(pred)
    if out.numel() == 0:
        return out
    bm, head, tail = _bin_blocks(n1, op)
    with _device(pred):
        _launch(K.dfl_backward_kernel, (tiles.cdiv(m, bm),), grad, pred, target, weight, out, m, n1,
                HAS_W=weight is not None, GRAD_PER_ROW=not total, ACC=_acc(pred), BLOCK_M=bm, HEAD=head, TAIL=tail,
                WIDE=tiles.bins_wide(m, n1, bm, head, tail), num_warps=NUM_WARPS)
    return out


# ---- integral and the fused decode ----------------------------------------------


def _rows_launch(kernel, args, pred, rows, n1, op, decode=None):
    """Launches an integral-family kernel over `rows` distribution rows;
    decode = (points, strides, anchors, clamp, h, w) for the fused decode."""
    bm, head, tail = _bin_blocks(n1, op)
    if decode is None:
        points, strides, anchors, clamp, h, w = pred, pred, 1, False, 0.0, 0.0
    else:
        points, strides, anchors, clamp, h, w = decode
    limits = _scalars(pred, h, w) if clamp else pred
    with _device(pred):
        _launch(kernel, (tiles.cdiv(rows, bm),), *args, rows, n1, points, strides, max(anchors, 1), limits,
                DECODE=decode is not None, CLAMP=bool(clamp), ACC=_acc(pred), BLOCK_R=bm, HEAD=head, TAIL=tail,
                WIDE=tiles.bins_wide(rows, n1, bm, head, tail), num_warps=NUM_WARPS)


def integral(pred, reg_max):
    op = "gflops.integral"
    pred, rows, n1, shape = _C.prepare_integral(pred, reg_max, op)
    out = pred.new_empty(shape)
    if rows:
        _rows_launch(K.integral_kernel, (pred, out), pred, rows, n1, op)
    return out


def integral_backward(grad, pred, reg_max):
    op = "gflops.integral_backward"
    pred, rows, n1, shape = _C.prepare_integral(pred, reg_max, op)
    grad = _C.check_grad_shape(grad, pred, shape, op)
    out = torch.empty_like(pred)
    if rows:
        _rows_launch(K.integral_backward_kernel, (grad, pred, out), pred, rows, n1, op)
    return out


def _decode_inputs(pred, points, strides, reg_max, max_shape, check, op):
    pred, rows, n1, shape, points, strides, anchors, clamp, h, w = _C.prepare_decode(
        pred, points, strides, reg_max, max_shape, check, op)
    return pred, rows, n1, shape, (points, strides, anchors, clamp, h, w)


def decode_distribution(pred, points, strides, reg_max, max_shape):
    op = "gflops.decode_distribution"
    pred, rows, n1, shape, dec = _decode_inputs(pred, points, strides, reg_max, max_shape,
                                                gflops.validation_enabled(), op)
    out = pred.new_empty(shape)
    if rows:
        _rows_launch(K.integral_kernel, (pred, out), pred, rows, n1, op, dec)
    return out


def decode_distribution_backward(grad, pred, points, strides, reg_max, max_shape):
    op = "gflops.decode_distribution_backward"
    pred, rows, n1, shape, dec = _decode_inputs(pred, points, strides, reg_max, max_shape, False, op)
    grad = _C.check_grad_shape(grad, pred, shape, op)
    out = torch.empty_like(pred)
    if rows:
        _rows_launch(K.integral_backward_kernel, (grad, pred, out), pred, rows, n1, op, dec)
    return out


OPS = {f.__name__: f for f in (quality_focal_loss, quality_focal_loss_backward, distribution_focal_loss,
                               distribution_focal_loss_backward, integral, integral_backward,
                               decode_distribution, decode_distribution_backward)}
