"""Autograd for the differentiable ops; each backward is an op of its own.

Gradients flow to the logits only. The QFL score, the DFL target and the
weights are constants (detectors pass them detached); gflops.losses refuses
them when they require grad rather than return a silently wrong gradient.
"""
import torch

ops = torch.ops.gflops


def _qfl_setup(ctx, inputs, output):
    pred, label, score, weight, beta, reduction = inputs
    ctx.save_for_backward(pred, label, score, weight)
    ctx.beta, ctx.reduction = beta, reduction


def _qfl_backward(ctx, grad):
    pred, label, score, weight = ctx.saved_tensors
    gp = ops.quality_focal_loss_backward(grad, pred, label, score, weight, ctx.beta, ctx.reduction)
    return gp, None, None, None, None, None


def _dfl_setup(ctx, inputs, output):
    pred, target, weight, reduction = inputs
    ctx.save_for_backward(pred, target, weight)
    ctx.reduction = reduction


def _dfl_backward(ctx, grad):
    pred, target, weight = ctx.saved_tensors
    gp = ops.distribution_focal_loss_backward(grad, pred, target, weight, ctx.reduction)
    return gp, None, None, None


torch.library.register_autograd("gflops::quality_focal_loss", _qfl_backward, setup_context=_qfl_setup)
torch.library.register_autograd("gflops::distribution_focal_loss", _dfl_backward, setup_context=_dfl_setup)
