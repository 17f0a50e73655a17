"""Quality Focal Loss and Distribution Focal Loss (SPEC.md sections 1-2)."""
import torch
from torch import nn

from . import _ops

_REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(fn, reduction, avg_factor):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{fn}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if avg_factor is not None and reduction == "sum":
        raise ValueError(f"{fn}: avg_factor can not be used with reduction='sum'")


def _check_constant(fn, name, t):
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{fn}: {name} requires grad, but gflops treats it as a constant and returns no "
            f"gradient for it; pass {name}.detach()"
        )


def _op_reduction(reduction, avg_factor):
    """The op's (reduction, avg_factor): the op divides for 'mean' itself (one op,
    one autograd node), except by a tensor avg_factor (see _finish)."""
    if reduction != "mean" or avg_factor is None:
        return reduction, None
    if isinstance(avg_factor, torch.Tensor):
        return "sum", None
    return reduction, float(avg_factor)


def _finish(out, reduction, avg_factor):
    """A tensor avg_factor divides on the device, without a host sync."""
    if reduction == "mean" and isinstance(avg_factor, torch.Tensor):
        return out / avg_factor
    return out


def quality_focal_loss(pred, label, score, weight=None, beta=2.0, reduction="mean", avg_factor=None):
    """QFL of logits `pred` (N, C) against `label` (N,) int64 (C or any value
    outside [0, C) is background) and quality `score` (N,) in [0, 1].

    Returns (N,) per-anchor losses for 'none', else a scalar. Losses are
    float32 (float64 for float64 logits); the gradient has pred's dtype.
    `avg_factor` may be a number or a 0-dim tensor (no host sync)."""
    fn = "gflops.quality_focal_loss"
    _check_reduction(fn, reduction, avg_factor)
    _check_constant(fn, "score", score)
    _check_constant(fn, "weight", weight)
    op_reduction, op_avg = _op_reduction(reduction, avg_factor)
    # With pred requiring grad, the op's autograd takes the gradient from the forward sweep where
    # the backend fuses it (CPU; csrc/autograd.h).
    out = _ops.lib().quality_focal_loss(pred, label, score, weight, float(beta), op_reduction, op_avg)
    return _finish(out, reduction, avg_factor)


def distribution_focal_loss(pred, target, weight=None, reduction="mean", avg_factor=None):
    """DFL of bin logits `pred` (M, reg_max + 1) against continuous `target`
    (M,) in [0, reg_max). Shapes, dtypes and reductions as quality_focal_loss."""
    fn = "gflops.distribution_focal_loss"
    _check_reduction(fn, reduction, avg_factor)
    _check_constant(fn, "target", target)
    _check_constant(fn, "weight", weight)
    op_reduction, op_avg = _op_reduction(reduction, avg_factor)
    out = _ops.lib().distribution_focal_loss(pred, target, weight, op_reduction, op_avg)  # as quality_focal_loss
    return _finish(out, reduction, avg_factor)


class QualityFocalLoss(nn.Module):
    """Drop-in for MMDetection's QualityFocalLoss(use_sigmoid=True):
    forward(pred, (label, score), weight=None, avg_factor=None)."""

    def __init__(self, beta=2.0, loss_weight=1.0, reduction="mean"):
        super().__init__()
        _check_reduction("gflops.QualityFocalLoss", reduction, None)
        self.beta, self.loss_weight, self.reduction = beta, loss_weight, reduction

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        label, score = target
        reduction = reduction_override or self.reduction
        loss = quality_focal_loss(pred, label, score, weight, self.beta, reduction, avg_factor)
        return self.loss_weight * loss


class DistributionFocalLoss(nn.Module):
    """Drop-in for MMDetection's DistributionFocalLoss:
    forward(pred, target, weight=None, avg_factor=None)."""

    def __init__(self, loss_weight=0.25, reduction="mean"):
        super().__init__()
        _check_reduction("gflops.DistributionFocalLoss", reduction, None)
        self.loss_weight, self.reduction = loss_weight, reduction

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override or self.reduction
        loss = distribution_focal_loss(pred, target, weight, reduction, avg_factor)
        return self.loss_weight * loss
