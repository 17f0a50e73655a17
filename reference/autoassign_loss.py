"""The AutoAssign loss (Zhu et al., 2020) as SPEC.md section 6 states it, in
the plain dense form: every (point, GT) pair of every image is computed, with
O(B * P * G) memory. This is the oracle for the fused kernels, not a fast path.

GTs are padded per image to the batch's largest count, and `gt_valid` (B, G)
says which ones are real. Nothing is read back to the host: the normalisers
stay on the device, and `reduce_mean` averages them over processes under DDP.

Choices where MMDetection 3.x (autoassign_head.py) leaves room:
- The GIoU of Lreg and the IoU of the negative weights are taken against the
  GT box itself. MMDetection decodes the GT back from its (l, t, r, b)
  encoding at each point, which gives the same box up to float rounding.
- A point inside several GTs of one class takes the negative weight of the
  highest GT index. MMDetection writes these weights with one advanced-index
  assignment whose outcome PyTorch leaves undefined (on the CPU the highest
  index wins); SPEC fixes the rule.
- With no GT in the local batch, loss_pos is 0 * the sum of the box
  distances of all images (MMDetection and SPEC: of image 0), so that every
  image's predictions stay in the graph; the value and gradient are 0 either way.
- N_neg is always max(reduce_mean(sum of priors), 1). SPEC's "N_neg = 1" for
  a batch without GTs is the one-process value of the same formula. Under DDP
  MMDetection also averages it over processes; a process that skipped the
  all-reduce would deadlock the others.
"""
import torch
import torch.nn.functional as F

from . import boxes

EPS = 1e-12
POS_WEIGHT, NEG_WEIGHT, CENTER_WEIGHT = 0.25, 0.75, 0.75
GIOU_WEIGHT = 5.0  # MMDetection's GIoULoss(loss_weight=5.0); here it sits inside exp(-Lreg)


def _identity(t):
    return t


def _acc(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def inside_gt(points, gt_boxes, gt_valid):
    """(B, P, G): the point lies strictly inside a valid GT: min(l, t, r, b) > 0."""
    px, py = points[None, :, None, 0], points[None, :, None, 1]
    x1, y1, x2, y2 = (gt_boxes[:, None, :, k] for k in range(4))
    ltrb = torch.stack([px - x1, py - y1, x2 - px, y2 - py], -1)
    return (ltrb.amin(-1) > 0) & gt_valid[:, None, :]


def center_prior(points, strides, gt_boxes, gt_labels, mu, sigma):
    """(B, P, G) raw prior, before the inside mask: per axis, the Gaussian
    exp(-((pt - ctr) / stride - mu[lab])^2 / (2 sigma[lab]^2)), times over x, y."""
    ctr = (gt_boxes[..., :2] + gt_boxes[..., 2:]) / 2
    offset = (points[None, :, None, :] - ctr[:, None, :, :]) / strides[None, :, None, None]
    lab = gt_labels.clamp(min=0)
    m, s = mu[lab][:, None], sigma[lab][:, None]
    return torch.exp(-(offset - m) ** 2 / (2 * s ** 2)).prod(-1)


def negative_weights(pred, gt_boxes, gt_labels, gt_valid, inside, num_classes, box_iou=boxes.box_iou):
    """(B, P, C) neg_w: 1, except at (p, lab_g) for the points p inside g,
    where it is 1 - the min-max normalised 1 / (1 - IoU) over g's points. The
    IoU is the point's best over all valid GTs of its image (no gradient). A
    point inside several GTs of one class takes the highest GT index's weight."""
    B, P, G = inside.shape
    ones = torch.ones(B, P, num_classes, dtype=pred.dtype, device=pred.device)
    if G == 0:
        return ones
    with torch.no_grad():
        iou = torch.where(gt_valid[:, None, :], box_iou(pred.detach(), gt_boxes).to(pred.dtype), 0)
        t = (1 / (1 - iou.amax(2, keepdim=True)).clamp(min=EPS)).expand(B, P, G)
        t_min = torch.where(inside, t, torch.inf).amin(1, keepdim=True)
        t_max = torch.where(inside, t, -torch.inf).amax(1, keepdim=True)
        t_norm = torch.where(inside, (t - t_min + EPS) / (t_max - t_min + EPS), 0)
        # For each (point, class): 1 + the highest GT index of that class containing the point, 0 for none.
        gt_index = torch.arange(1, G + 1, device=pred.device).expand(B, P, G)
        lab = gt_labels.clamp(min=0)[:, None, :].expand(B, P, G)
        winner = torch.zeros(B, P, num_classes, dtype=torch.long, device=pred.device)
        winner = winner.scatter_reduce(2, lab, torch.where(inside, gt_index, 0), "amax")
        return torch.where(winner > 0, 1 - t_norm.gather(2, (winner - 1).clamp(min=0)), ones)


def force_topk_inside(inside, raw_prior, gt_valid, k=9):
    """MMDetection's force_topk (off in its configs): a valid GT with no point
    inside gets the k points of highest raw prior over all levels instead."""
    empty = gt_valid & ~inside.any(1)
    top = raw_prior.topk(min(k, raw_prior.shape[1]), dim=1).indices
    forced = torch.zeros_like(inside).scatter(1, top, True)
    return inside | (forced & empty[:, None, :])


def autoassign_loss_terms(cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu,
                          sigma, box_iou=boxes.box_iou, giou_loss=boxes.giou_loss, force_topk=False,
                          level_shapes=None):
    """The per-image sums of SPEC section 6, each (B,):
    loss_pos (the bag BCE summed over valid GTs), loss_neg (x^2 BCE(x, 0)
    summed over points and classes), prior_sum (the masked center prior
    summed over points and GTs; differentiable w.r.t. mu and sigma) and
    any_inside (bool: some point lies inside some GT).

    cls_logits (B, P, C), obj_logits (B, P), distances (B, P, 4) (l, t, r, b)
    in pixels, points (P, 2), strides (P,), gt_boxes (B, G, 4), gt_labels (B,
    G), gt_valid (B, G), mu and sigma (C, 2). Computed in float32 (float64 for
    float64 logits). box_iou and giou_loss are SPEC section 4's, swappable
    for gflops's. force_topk: see force_topk_inside (SPEC section 6).
    level_shapes (the grid of each level) is unused here: gflops's fused op
    enumerates the points inside each GT from it.
    """
    dt = _acc(cls_logits)
    cls, obj, d = cls_logits.to(dt), obj_logits.to(dt), distances.to(dt)
    pts, st, gt = points.to(dt), strides.to(dt), gt_boxes.to(dt)
    valid, lab = gt_valid.bool(), gt_labels.long().clamp(min=0)
    B, P, C = cls.shape
    G = gt.shape[1]
    pred = torch.cat([pts[None] - d[..., :2], pts[None] + d[..., 2:]], -1)
    inside = inside_gt(pts, gt, valid)
    raw = center_prior(pts, st, gt, lab, mu.to(dt), sigma.to(dt))
    if force_topk:
        inside = force_topk_inside(inside, raw.detach(), valid)
    prior = raw * inside
    joint = cls.sigmoid() * obj.sigmoid()[..., None]

    # Positive: a bag of the points inside each GT, weighted by confidence and prior.
    pair_pred = pred[:, :, None, :].expand(B, P, G, 4).reshape(-1, 4)
    pair_gt = gt[:, None, :, :].expand(B, P, G, 4).reshape(-1, 4)
    l_reg = GIOU_WEIGHT * giou_loss(pair_pred, pair_gt, reduction="none").to(dt).reshape(B, P, G)
    p_pos = joint.gather(2, lab[:, None, :].expand(B, P, G)) * torch.exp(-l_reg)
    cw = torch.exp(3 * p_pos) * prior
    w = cw / cw.sum(1, keepdim=True).clamp(min=EPS)
    bag = (w * p_pos).sum(1)
    bce = F.binary_cross_entropy(bag, torch.ones_like(bag), reduction="none")
    loss_pos = torch.where(valid, bce, 0).sum(1)

    # Negative: every (point, class), the GT's own class down-weighted where the box fits.
    x = joint * negative_weights(pred, gt, lab, valid, inside, C, box_iou)
    loss_neg = (x ** 2 * F.binary_cross_entropy(x, torch.zeros_like(x), reduction="none")).sum((1, 2))
    return loss_pos, loss_neg, prior.sum((1, 2)), inside.flatten(1).any(1)


def autoassign_loss(cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma,
                    reduce_mean=_identity, autoassign_loss_terms=autoassign_loss_terms, force_topk=False,
                    level_shapes=None):
    """dict(loss_pos, loss_neg, loss_center): the per-image terms (from
    `autoassign_loss_terms`, a function of that signature: reference/ops.py
    passes the ops namespace's) with SPEC section 6's batch normalisers and
    weights. reduce_mean averages a tensor over processes."""
    extra = dict(force_topk=True) if force_topk else {}
    if level_shapes is not None:
        extra["level_shapes"] = level_shapes
    loss_pos, loss_neg, prior_sum, any_inside = autoassign_loss_terms(
        cls_logits, obj_logits, distances, points, strides, gt_boxes, gt_labels, gt_valid, mu, sigma, **extra)
    dt = loss_pos.dtype
    num_gt = gt_valid.sum(1).to(dt)
    n_pos = reduce_mean(num_gt.sum()).clamp(min=1)
    n_neg = reduce_mean(prior_sum.detach().sum()).clamp(min=1)
    center = torch.where(any_inside, num_gt / prior_sum.clamp(min=EPS), 0 * prior_sum)
    # No GT in the local batch: zeros that keep the box, objectness and prior parameters in the graph.
    has_gt = gt_valid.any()
    loss_pos = torch.where(has_gt, POS_WEIGHT * loss_pos.sum() / n_pos, 0 * distances.to(dt).sum())
    dummy = 0 * obj_logits[:1].to(dt).sigmoid().sum() + 0 * mu.to(dt).sum() + 0 * sigma.to(dt).sum()
    loss_center = torch.where(has_gt, CENTER_WEIGHT * center.mean(), dummy) if center.numel() else dummy
    return dict(loss_pos=loss_pos, loss_neg=NEG_WEIGHT * loss_neg.sum() / n_neg, loss_center=loss_center)
