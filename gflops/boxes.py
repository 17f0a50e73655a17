"""Box overlaps and the GIoU loss (SPEC.md section 4)."""
import torch

from . import _ops
from .losses import _check_constant, _check_reduction, _finish, _op_reduction


def box_iou(boxes1, boxes2, mode="iou", aligned=False, eps=1e-6):
    """IoU or GIoU of (x1, y1, x2, y2) boxes: pairwise (..., N, 4) x (..., M, 4)
    -> (..., N, M), or aligned (..., 4) x (..., 4) -> (...). Degenerate boxes
    have zero area. Not differentiable (use giou_loss for a loss)."""
    fn = "gflops.box_iou"
    _check_constant(fn, "boxes1", boxes1)
    _check_constant(fn, "boxes2", boxes2)
    return _ops.lib().box_iou(boxes1, boxes2, mode, bool(aligned), float(eps))


def giou_loss(pred, target, weight=None, reduction="mean", avg_factor=None, eps=1e-6):
    """1 - GIoU(pred, target) for aligned (N, 4) boxes, differentiable w.r.t. pred;
    `weight` (N,). Reductions and avg_factor as quality_focal_loss."""
    fn = "gflops.giou_loss"
    _check_reduction(fn, reduction, avg_factor)
    _check_constant(fn, "target", target)
    _check_constant(fn, "weight", weight)
    op_reduction, op_avg = _op_reduction(reduction, avg_factor)
    out = _ops.lib().giou_loss(pred, target, weight, float(eps), op_reduction, op_avg)
    return _finish(out, reduction, avg_factor)


class GIoULoss(torch.nn.Module):
    """Drop-in for MMDetection's GIoULoss: forward(pred, target, weight=None, avg_factor=None)."""

    def __init__(self, eps=1e-6, reduction="mean", loss_weight=1.0):
        super().__init__()
        _check_reduction("gflops.GIoULoss", reduction, None)
        self.eps, self.reduction, self.loss_weight = eps, reduction, loss_weight

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        reduction = reduction_override or self.reduction
        return self.loss_weight * giou_loss(pred, target, weight, reduction, avg_factor, self.eps)
