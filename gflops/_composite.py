"""Default kernels of the ops that one backend fuses and the others compose.

`quality_focal_loss_and_grad` returns the QFL loss and d loss / d pred. The
CPU kernel computes both in one sweep: there the exponentials and logarithms
dominate, so sharing them between the loss and the gradient pays for the
extra logits-sized write. A GPU is bound by memory traffic instead, where
writing and re-reading that buffer would cost more than recomputing the
gradient in the backward op; so every other backend (CUDA, Triton, and the
twins of the tests) computes the loss alone here and returns an empty
gradient, and autograd calls the backward op as before (gflops/_autograd.py).
"""
import torch

_libs = []


def register(ns):
    ops = getattr(torch.ops, ns)
    if not hasattr(ops, "quality_focal_loss_and_grad"):
        return
    lib = torch.library.Library(ns, "IMPL")

    def qfl_and_grad(pred, label, score, weight, beta, reduction):
        return ops.quality_focal_loss(pred, label, score, weight, beta, reduction), pred.new_empty((0,))

    lib.impl("quality_focal_loss_and_grad", qfl_and_grad, "CompositeExplicitAutograd")
    _libs.append(lib)


def fuses_qfl_gradient(ns, device):
    """Whether `ns`'s quality_focal_loss_and_grad returns the gradient on `device`."""
    return ns == "gflops" and torch.device(device).type == "cpu"
