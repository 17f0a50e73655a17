"""The AutoAssign loss terms (SPEC.md section 6) as one fused op, forward and backward."""
import torch

from . import _ops

_EPS = 1e-12  # SPEC section 6: the clamp of the center term's prior sum
_POS_WEIGHT, _NEG_WEIGHT, _CENTER_WEIGHT = 0.25, 0.75, 0.75


def _op_args(fn, cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
             level_shapes, force_topk):
    if force_topk:
        raise ValueError(f"{fn}: force_topk is not supported; reference.autoassign_loss has it")
    if level_shapes is None:
        raise ValueError(f"{fn}: level_shapes (the (H, W) of each level) is required: the points inside each GT "
                         "are enumerated from the grid")
    shapes = [int(v) for hw in level_shapes for v in hw]
    acc = torch.float64 if cls_logits.dtype == torch.float64 else torch.float32

    def cast(t):  # no dispatch when it already is (each op call is host time on a GPU)
        return t if t.dtype == acc else t.to(acc)

    return (cls_logits, obj_logits, cast(distances), cast(points), cast(strides), cast(gt_boxes), gt_labels,
            gt_valid, cast(mu), cast(sigma), shapes)


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
    out = _ops.lib().autoassign_loss_terms(*_op_args("gflops.autoassign_loss_terms", cls_logits, obj_logits,
                                                     distances, points, strides, gt_boxes, gt_labels, gt_valid, mu,
                                                     sigma, level_shapes, force_topk))
    return out[0], out[1], out[2], out[3]


def autoassign_loss(cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                    reduce_mean=None, force_topk=False, level_shapes=None):
    """SPEC section 6's whole AutoAssign loss, dict(loss_pos, loss_neg,
    loss_center): reference.autoassign_loss.autoassign_loss's signature
    (without `autoassign_loss_terms`) and values. Without reduce_mean it is
    one op (autoassign_loss_totals: the fused terms and the batch totals on
    the device, one autograd node); with it, the fused terms above and the
    totals in as few ops as reduce_mean allows (each op is a launch and host
    time on a GPU).

    reduce_mean (distributed training: a tensor averaged over processes) is
    called once, on the 2-vector (GTs in the local batch, its prior sum).
    A batch without GTs needs no placeholder terms to keep the parameters in
    the graph (the reference's 0 * sum(...)): the fused op takes all of them
    as inputs, so every one gets a gradient (zero where the loss ignores it).
    The one difference: there the reference's placeholders turn a non-finite
    distance, objectness or prior parameter into a NaN loss; these are 0.
    """
    if reduce_mean is None:  # one op, the totals on the device: no op around it
        out = _ops.lib().autoassign_loss_totals(*_op_args("gflops.autoassign_loss", cls_logits, obj_logits,
                                                          distances, points, strides, gt_boxes, gt_labels, gt_valid,
                                                          mu, sigma, level_shapes, force_topk))
        return dict(loss_pos=out[0], loss_neg=out[1], loss_center=out[2])
    loss_pos, loss_neg, prior_sum, any_inside = autoassign_loss_terms(
        cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
        level_shapes=level_shapes, force_topk=force_topk)
    dt = loss_pos.dtype
    num_gt = gt_valid.sum(1, dtype=dt)
    norm = torch.stack((num_gt.sum(), prior_sum.detach().sum()))
    if reduce_mean is not None:
        norm = reduce_mean(norm)
    norm = norm.clamp(min=1)
    # any_inside * num_gt is num_gt or 0 exactly: the reference's where(any_inside, num_gt / p, 0 * p) to the bit,
    # gradient included (an image without points inside has p = 0, where the clamp passes no gradient).
    center = any_inside * num_gt / prior_sum.clamp(min=_EPS)
    return dict(loss_pos=_POS_WEIGHT * loss_pos.sum() / norm[0], loss_neg=_NEG_WEIGHT * loss_neg.sum() / norm[1],
                loss_center=_CENTER_WEIGHT * (center.mean() if center.numel() else center.sum()))
