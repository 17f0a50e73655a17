"""NMS (SPEC.md section 7): torchvision's nms and batched_nms, and the
fixed-shape, sync-free batched post-process of the GFL head."""
import torch

from . import _ops


def nms(boxes, scores, iou_threshold):
    """torchvision.ops.nms: boxes (K, 4) (x1, y1, x2, y2), scores (K,);
    returns the int64 indices of the kept boxes by descending score (equal
    scores: lower index first). A box is suppressed when its IoU with a kept
    box is > iou_threshold (in [0, 1]). A NaN score is never kept and
    suppresses nothing. The IoU is gflops.box_iou's, computed in float32
    (float64 for float64 boxes), and compared with the threshold rounded to
    that dtype (torchvision compares in float64).

    The output's length depends on the data, so on CUDA the call waits for
    the GPU to learn it (as torchvision's does); multiclass_nms is the
    fixed-shape form that never waits."""
    return _ops.lib().nms(boxes.detach(), scores.detach(), float(iou_threshold))


def batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision.ops.batched_nms: NMS within each value of idxs (K,)
    (an integer tensor: classes, images, ...), merged by descending score.
    Classes are compared inside the kernel, so unlike the coordinate-offset
    trick the IoUs are exactly those of the boxes. Same output rules as nms."""
    return _ops.lib().batched_nms(boxes.detach(), scores.detach(), idxs, float(iou_threshold))


def _per_image(values, like, what):
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return values.to(like.device)
    return torch.tensor([[float(a), float(b)] for a, b in values], dtype=torch.float64).to(like.device)


def multiclass_nms(cls_scores, bbox_preds, points, strides, level_sizes, image_shapes, score_thr=0.05,
                   nms_pre=1000, iou_threshold=0.6, max_per_img=100, min_bbox_size=0.0, scale_factors=None,
                   reg_max=16):
    """The GFL head's post-process over a padded batch, in one op with fixed
    output shapes and no host synchronisation (torch.compile(fullgraph=True)
    traces it; a CUDA graph can capture it).

    cls_scores (B, N, C) class logits and bbox_preds (B, N, 4 * (reg_max + 1))
    distribution logits of the N anchors, level by level; points (N, 2)
    anchor centres and strides (N,); level_sizes: anchors per level (a list
    of ints, at most 32 levels); image_shapes: (H, W) per image, a (B, 2)
    tensor or a list of pairs (boxes are clipped to [0, W] x [0, H]);
    scale_factors: None or (sx, sy) per image, used only to measure
    min_bbox_size in original-image pixels (boxes stay in input pixels).

    Per image and level: the (anchor, class) pairs with sigmoid(logit) >
    score_thr, at most nms_pre of them with the highest scores (ties: lower
    anchor * C + class); their boxes decoded (decode_distribution's formula)
    and clipped (rounded to the logits' dtype, as decode_distribution
    returns them); boxes whose width or height is not > min_bbox_size dropped;
    then over all levels class-aware greedy NMS at iou_threshold (classes
    compared in the kernel) in order of descending score (ties: lower flat
    index), keeping the first max_per_img. NaN logits are never candidates;
    NaN boxes fail the size test.

    Returns boxes (B, max_per_img, 4), scores (B, max_per_img) (float32, or
    float64 for float64 inputs), labels (B, max_per_img) int64 and counts (B,)
    int64; entries at and after counts[b] are padding: boxes 0, scores 0,
    labels -1. Not differentiable (inputs are detached)."""
    shapes = _per_image(image_shapes, cls_scores, "image_shapes")
    scales = _per_image(scale_factors, cls_scores, "scale_factors")
    return _ops.lib().multiclass_nms(cls_scores.detach(), bbox_preds.detach(), points.detach(), strides.detach(),
                                     [int(n) for n in level_sizes], shapes, scales, int(reg_max), float(score_thr),
                                     int(nms_pre), float(iou_threshold), int(max_per_img), float(min_bbox_size))
