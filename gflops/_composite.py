"""Default kernels of the ops that one backend fuses and the others compose.

`quality_focal_loss_and_grad`, `distribution_focal_loss_and_grad`,
`integral_and_grad` and `decode_distribution_and_grad` return the op's
output and its derivative w.r.t. pred (for a unit incoming gradient per loss
row, distance or box side). The CPU
kernels compute both in one sweep:
there the exponentials and logarithms
dominate, so sharing them between the loss and the gradient pays for the
extra logits-sized write. A GPU is bound by memory traffic instead, where
writing and re-reading that buffer would cost more than recomputing the
gradient in the backward op; so every other backend (CUDA, Triton, and the
twins of the tests) computes the loss alone here and returns an empty
gradient, and autograd calls the backward op as before (gflops/_autograd.py).

The gradient output is autograd's to use: when pred requires grad, the
backward scales it in place (gflops.quality_focal_loss discards it).
"""
import torch

_libs = []
FUSED_OPS = ("quality_focal_loss_and_grad", "distribution_focal_loss_and_grad", "integral_and_grad",
             "decode_distribution_and_grad")


def register(ns):
    ops = getattr(torch.ops, ns)
    lib = torch.library.Library(ns, "IMPL")

    def qfl_and_grad(pred, label, score, weight, beta, reduction, avg_factor=None):
        return ops.quality_focal_loss(pred, label, score, weight, beta, reduction, avg_factor), pred.new_empty((0,))

    def dfl_and_grad(pred, target, weight, reduction, avg_factor=None):
        return ops.distribution_focal_loss(pred, target, weight, reduction, avg_factor), pred.new_empty((0,))

    def integral_and_grad(pred, reg_max):
        return ops.integral(pred, reg_max), pred.new_empty((0,))

    def decode_and_grad(pred, points, strides, reg_max, max_shape):
        return ops.decode_distribution(pred, points, strides, reg_max, max_shape), pred.new_empty((0,))

    fns = {"quality_focal_loss_and_grad": qfl_and_grad, "distribution_focal_loss_and_grad": dfl_and_grad,
           "integral_and_grad": integral_and_grad, "decode_distribution_and_grad": decode_and_grad}
    assert set(fns) == set(FUSED_OPS)
    for name, fn in fns.items():
        if hasattr(ops, name):
            lib.impl(name, fn, "CompositeExplicitAutograd")
    _libs.append(lib)


def fuses_gradient(ns, pred):
    """Whether `ns`'s *_and_grad ops return the gradient for `pred`: the CPU
    kernels, for float32/float64 logits (a 16-bit buffer would round the
    unscaled gradient, underflowing what a loss scaler multiplies up later)."""
    return ns == "gflops" and pred.device.type == "cpu" and pred.dtype in (torch.float32, torch.float64)
