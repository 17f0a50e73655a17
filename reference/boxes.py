"""Box IoU/GIoU and the GIoU loss, plainly from SPEC.md section 4."""
import torch

from .losses import _reduce


def _area(b):
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _overlaps(a, b, mode, eps):
    """IoU/GIoU of boxes a and b of one broadcast shape (..., 4)."""
    iw = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    ih = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    inter = iw * ih
    union = (_area(a) + _area(b) - inter).clamp(min=eps)
    iou = inter / union
    if mode == "iou":
        return iou
    ew = (torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])).clamp(min=0)
    eh = (torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])).clamp(min=0)
    enclose = (ew * eh).clamp(min=eps)
    return iou - (enclose - union) / enclose


def box_iou(boxes1, boxes2, mode="iou", aligned=False, eps=1e-6):
    if mode not in ("iou", "giou"):
        raise ValueError(f"mode must be 'iou' or 'giou', got {mode!r}")
    a = boxes1.float() if boxes1.dtype in (torch.float16, torch.bfloat16) else boxes1
    b = boxes2.to(a.dtype)
    if aligned:
        out = _overlaps(a, b, mode, eps)
    else:
        out = _overlaps(a[..., :, None, :], b[..., None, :, :], mode, eps)
    return out.to(boxes1.dtype)


def giou_loss(pred, target, weight=None, reduction="mean", avg_factor=None, eps=1e-6):
    p = pred.double() if pred.dtype == torch.float64 else pred.float()
    loss = 1 - _overlaps(p, target.to(p.dtype), "giou", eps)
    if weight is not None:
        loss = loss * weight.to(p.dtype)
    return _reduce(loss, reduction, avg_factor)
