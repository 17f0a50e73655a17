"""The AutoAssign loss terms (SPEC.md section 6) as one fused op, forward and backward."""
import torch

from . import _ops


def autoassign_loss_terms(cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu,
                          sigma, level_shapes=None, force_topk=False):
    """reference.autoassign_loss.autoassign_loss_terms's signature and
    results, per image (B,) each: loss_pos, loss_neg, prior_sum (the three
    differentiable w.r.t. cls_logits, obj_logits, distances, mu and sigma)
    and any_inside (bool).

    level_shapes: the (H, W) of each level, in the order of the P points.
    The points must be the grids (x * stride, y * stride), level by level,
    row-major (MMDetection's points with offset 0): the points inside a GT
    are enumerated from the box and the grid, so the work and the memory
    grow with the (point, GT) pairs inside plus P x C, never P x G. Half and
    bfloat16 logits are computed in float32; distances, points, strides,
    boxes, mu and sigma are taken in float32 (float64 for float64 logits).
    Deterministic, no host synchronisation. force_topk (off in MMDetection's
    configs) is not supported here.
    """
    fn = "gflops.autoassign_loss_terms"
    if force_topk:
        raise ValueError(f"{fn}: force_topk is not supported; reference.autoassign_loss has it")
    if level_shapes is None:
        raise ValueError(f"{fn}: level_shapes (the (H, W) of each level) is required: the points inside each GT "
                         "are enumerated from the grid")
    shapes = [int(v) for hw in level_shapes for v in hw]
    acc = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32
    out = _ops.lib().autoassign_loss_terms(cls_logits, obj_logits, distances.to(acc), points.to(acc),
                                           strides.to(acc), gt_boxes.to(acc), gt_labels, gt_valid, mu.to(acc),
                                           sigma.to(acc), shapes)
    return out[0], out[1], out[2], out[3]
