"""Distribution decoding (SPEC.md section 3) and the fused GFL box branch (section 4)."""
import torch

from . import _ops
from .losses import _check_constant


def integral(pred, reg_max=16):
    """(..., 4 * (reg_max + 1)) logits -> (..., 4) expected distances (bins)."""
    # With pred requiring grad, d distances / d pred comes from the same sweep where a backend fuses it
    # (CPU; csrc/autograd.h).
    return _ops.lib().integral(pred, int(reg_max))


def _shape(max_shape):
    return None if max_shape is None else [float(max_shape[0]), float(max_shape[1])]


def decode_distribution(pred, points, strides, reg_max=16, max_shape=None):
    """Logits (..., A, 4 * (reg_max + 1)) straight to pixel boxes (..., A, 4):
    distance2bbox(points, integral(pred) * strides, max_shape) in one kernel.
    `points` (A, 2) and `strides` (A,) are shared by the leading dims;
    differentiable w.r.t. pred."""
    fn = "gflops.decode_distribution"
    _check_constant(fn, "points", points)
    _check_constant(fn, "strides", strides)
    return _ops.lib().decode_distribution(pred, points, strides, int(reg_max), _shape(max_shape))  # as integral


def gfl_box_branch(pred, points, strides, gt_boxes, weight, reg_max=16):
    """The GFL head's box losses over P positives in one kernel.

    pred (P, 4 * (reg_max + 1)) logits; points (P, 2) anchor centres and
    gt_boxes (P, 4) in pixels; strides (P,); weight (P,) box weights.
    Returns (giou_sum, dfl_sum, score): sum_p w*(1 - GIoU), sum_p w * (sum of
    the 4 sides' DFL), and the aligned IoU of the detached decoded box with
    its GT (the QFL target). Divide as SPEC section 4 says (x2.0 / W and
    x0.25 / 4 / W). Gradients flow to pred only."""
    fn = "gflops.gfl_box_branch"
    for name, t in (("points", points), ("strides", strides), ("gt_boxes", gt_boxes), ("weight", weight)):
        _check_constant(fn, name, t)
    return _ops.lib().gfl_box_branch(pred, points, strides, gt_boxes, weight, int(reg_max))


def distance2bbox(points, distances, max_shape=None):
    """(x - l, y - t, x + r, y + b), clamped to [0, W] x [0, H] with max_shape=(H, W).
    Elementwise and already one fused expression for PyTorch, so it stays in
    PyTorch; the decoding hot path is decode_distribution."""
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    if max_shape is not None:
        h, w = float(max_shape[0]), float(max_shape[1])
        x1, x2 = x1.clamp(0, w), x2.clamp(0, w)
        y1, y2 = y1.clamp(0, h), y2.clamp(0, h)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def bbox2distance(points, boxes, max_dis=None, eps=0.1):
    """Inverse of distance2bbox; with max_dis each distance is clamped to [0, max_dis - eps]."""
    d = torch.stack([points[..., 0] - boxes[..., 0], points[..., 1] - boxes[..., 1],
                     boxes[..., 2] - points[..., 0], boxes[..., 3] - points[..., 1]], dim=-1)
    if max_dis is not None:
        d = d.clamp(min=0, max=max_dis - eps)
    return d
