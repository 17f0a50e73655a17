"""Distribution decoding and the GFL box branch, plainly from SPEC.md sections 3-4."""
import torch
import torch.nn.functional as F

from .boxes import _overlaps
from .losses import distribution_focal_loss


def integral(pred, reg_max=16):
    x = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    bins = torch.arange(reg_max + 1, dtype=x.dtype, device=x.device)
    p = F.softmax(x.reshape(*x.shape[:-1], 4, reg_max + 1), dim=-1)
    return (p * bins).sum(-1).to(pred.dtype)


def distance2bbox(points, distances, max_shape=None):
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    if max_shape is not None:
        h, w = max_shape
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points, boxes, max_dis=None, eps=0.1):
    d = torch.stack([points[..., 0] - boxes[..., 0], points[..., 1] - boxes[..., 1],
                     boxes[..., 2] - points[..., 0], boxes[..., 3] - points[..., 1]], dim=-1)
    if max_dis is not None:
        d = d.clamp(min=0, max=max_dis - eps)
    return d


def decode_distribution(pred, points, strides, reg_max=16, max_shape=None):
    x = pred.float() if pred.dtype in (torch.float16, torch.bfloat16) else pred
    dist = integral(x, reg_max) * strides.to(x.dtype)[:, None]
    return distance2bbox(points.to(x.dtype), dist, max_shape).to(pred.dtype)


def gfl_box_branch(pred, points, strides, gt_boxes, weight, reg_max=16):
    """(sum w*(1-GIoU), sum w*DFL over the 4 sides, IoU score) as the GFL head computes them."""
    x = pred.double() if pred.dtype == torch.float64 else pred.float()
    s = strides.to(x.dtype)[:, None]
    centers = points.to(x.dtype) / s
    pred_box = distance2bbox(centers, integral(x, reg_max))
    tgt_box = gt_boxes.to(x.dtype) / s
    w = weight.to(x.dtype)
    score = _overlaps(pred_box.detach(), tgt_box, "iou", 1e-6)
    giou_sum = (w * (1 - _overlaps(pred_box, tgt_box, "giou", 1e-6))).sum()
    targets = bbox2distance(centers, tgt_box, reg_max, 0.1).reshape(-1)
    dfl = distribution_focal_loss(x.reshape(-1, reg_max + 1), targets, reduction="none").reshape(-1, 4).sum(1)
    return giou_sum, (w * dfl).sum(), score
