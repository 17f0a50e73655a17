"""ATSS label assignment (SPEC.md section 5), batched over padded GTs."""
import torch

from . import _ops


def atss_assign(anchors, num_level_anchors, gt_boxes, gt_labels, gt_valid=None, num_classes=80, topk=9,
                anchor_valid=None):
    """Assign anchors to padded GT boxes by ATSS; the reference detector's
    signature (reference/assign.py), so either can be swapped for the other.

    anchors (N, 4), shared by the batch and ordered level by level, with
    num_level_anchors (a list of ints) summing to N; gt_boxes (B, G, 4) in the
    anchors' dtype; gt_labels (B, G) int64/int32; gt_valid (B, G) bool (None:
    every GT valid); anchor_valid None, (N,) or (B, N) bool; topk >= 1.
    `num_classes` is the label written for background anchors (MMDetection's
    convention); pass -1 or any other value if you prefer.

    Returns, all (B, N):
      assigned_gt    int64: 0 for background, g + 1 for GT g;
      assigned_label int64: the GT's label, `num_classes` for background;
      max_iou        anchors' dtype: IoU with the assigned GT, 0 for background.
    float16/bfloat16 boxes are computed in float32. Ties: distance ties go to
    the lower anchor index, an anchor claimed by several GTs to the highest
    IoU and then the lower GT index. Fixed shapes, no host synchronisation,
    deterministic; workspace O(B*G*L*topk + B*N). Not differentiable (an
    assignment has no gradient): inputs are detached.
    """
    if gt_valid is None:
        gt_valid = torch.ones(gt_boxes.shape[:2], dtype=torch.bool, device=gt_boxes.device)
    levels = [int(n) for n in num_level_anchors]
    return _ops.lib().atss_assign(anchors.detach(), levels, gt_boxes.detach(), gt_labels, gt_valid,
                                  None if anchor_valid is None else anchor_valid, int(topk), int(num_classes))
