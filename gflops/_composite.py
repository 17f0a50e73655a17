"""Default kernels of the fused ops for the Triton twin (torch.ops.gflops_triton).

`quality_focal_loss_and_grad`, `distribution_focal_loss_and_grad`,
`integral_and_grad` and `decode_distribution_and_grad` return the op's
output and its derivative w.r.t. pred. Only gflops' CPU kernels compute that
derivative in the forward's sweep (csrc/cpu); every other backend returns an
empty tensor and autograd runs the backward op. The gflops library and its
emulated twin register this default in C++ (csrc/autograd.h); the Triton
twin, whose kernels are Python, registers it here.
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
