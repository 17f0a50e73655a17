"""ATSS label assignment, batched over a padded batch of GT boxes (SPEC.md section 5).

Written plainly: it builds the (B, G, N) distance and IoU matrices, which a
kernel would not, and it is the oracle for one.

Arithmetic, fixed so that a kernel can agree bit for bit: distances and IoUs
in the boxes' dtype (float32 for float16/bfloat16 boxes, which are upcast),
each operation rounded on its own (no fused multiply-add); the threshold
statistic t_g = mean + std in float64, summed candidate by candidate in
candidate order (level by level, nearest first), so that it does not depend
on a reduction's blocking, and so that equal IoUs give std = 0 exactly and
t_g equal to that IoU.
"""
import torch

from .boxes import box_iou


def _centers(boxes):
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], -1)


def center_distances(gt_boxes, anchors):
    """(B, G, N) distances between GT centres (B, G, 4) and anchor centres
    (N, 4), as sqrt(dx^2 + dy^2): never through a matrix-multiply expansion
    such as torch.cdist's, whose rounding reorders near-ties (SPEC section 5)."""
    delta = _centers(gt_boxes)[:, :, None, :] - _centers(anchors)[None, None, :, :]
    return (delta[..., 0] ** 2 + delta[..., 1] ** 2).sqrt()


def threshold(cand_iou, cand_ok):
    """t_g = mean + unbiased std of the IoUs of the ok candidates (B, G, K),
    in float64, accumulated candidate by candidate; returns ((B, G, 1) t_g,
    (B, G, 1) candidate count). A count under 2 leaves the std undefined: the
    caller gives that GT no positive."""
    x = cand_iou.double()
    zero = torch.zeros_like(x[..., 0])
    n = cand_ok.sum(-1).double()
    s = zero
    for k in range(x.shape[-1]):
        s = s + torch.where(cand_ok[..., k], x[..., k], zero)
    mean = s / n.clamp(min=1)
    v = zero
    for k in range(x.shape[-1]):
        d = x[..., k] - mean
        v = v + torch.where(cand_ok[..., k], d * d, zero)
    thr = mean + (v / (n - 1).clamp(min=1)).sqrt()
    return thr[..., None], n[..., None]


def atss_assign(anchors, num_level_anchors, gt_boxes, gt_labels, gt_valid, num_classes, topk=9,
                anchor_valid=None):
    """Assign anchors (N, 4) to padded GT boxes (B, G, 4).

    gt_labels (B, G) int64; gt_valid (B, G) bool; anchor_valid (N,) or (B, N)
    bool, or None for all valid. Returns
      assigned_gt (B, N) int64: 0 background, g + 1 for GT g;
      assigned_label (B, N) int64: the GT's label, `num_classes` for background;
      max_iou (B, N): IoU with the assigned GT, 0 for background.
    """
    B, G = gt_boxes.shape[:2]
    N = anchors.shape[0]
    device = anchors.device
    if G == 0:
        zeros = torch.zeros(B, N, dtype=torch.long, device=device)
        return zeros, torch.full_like(zeros, num_classes), torch.zeros(B, N, dtype=anchors.dtype, device=device)
    if anchor_valid is None:
        anchor_valid = torch.ones(B, N, dtype=torch.bool, device=device)
    elif anchor_valid.dim() == 1:
        anchor_valid = anchor_valid[None].expand(B, N)
    out_dtype = anchors.dtype
    if anchors.dtype in (torch.float16, torch.bfloat16):
        anchors = anchors.float()
    gt_boxes = gt_boxes.to(anchors.dtype)

    ious = box_iou(gt_boxes, anchors[None].expand(B, N, 4))                       # (B, G, N)
    dist = center_distances(gt_boxes, anchors)                                    # (B, G, N)
    # Invalid anchors are never candidates: NaN sorts after every distance, inf
    # included, so a valid anchor at infinite distance still comes first.
    dist = dist.masked_fill(~anchor_valid[:, None, :], float("nan"))

    cand_idx, cand_ok = [], []
    start = 0
    for n_l in num_level_anchors:
        k = min(topk, n_l)
        # Stable sort: equal distances keep the lower anchor index first.
        order = torch.sort(dist[..., start:start + n_l], dim=-1, stable=True).indices[..., :k]
        cand_idx.append(order + start)
        start += n_l
    cand_idx = torch.cat(cand_idx, -1)                                            # (B, G, K)
    cand_ok = torch.gather(anchor_valid[:, None, :].expand(B, G, N), 2, cand_idx) & gt_valid[..., None]
    cand_iou = torch.gather(ious, 2, cand_idx)

    thr, n = threshold(cand_iou, cand_ok)

    c = _centers(anchors)[cand_idx]                                               # (B, G, K, 2)
    g = gt_boxes[:, :, None, :]
    inside = torch.stack([c[..., 0] - g[..., 0], c[..., 1] - g[..., 1],
                          g[..., 2] - c[..., 0], g[..., 3] - c[..., 1]], -1).amin(-1) > 0.01
    # One candidate has no unbiased std (NaN in MMDetection): no positive.
    pos = cand_ok & (cand_iou.double() >= thr) & inside & (n > 1)

    scored = torch.full_like(ious, float("-inf"))
    scored.scatter_(2, cand_idx, torch.where(pos, cand_iou, torch.full_like(cand_iou, float("-inf"))))
    best_gt = scored.argmax(dim=1)  # the first maximum: equal IoU goes to the lower GT index
    best_iou = torch.gather(scored, 1, best_gt[:, None]).squeeze(1)
    assigned = best_iou > float("-inf")
    assigned_gt = torch.where(assigned, best_gt + 1, torch.zeros_like(best_gt))
    labels = torch.gather(gt_labels, 1, best_gt)
    assigned_label = torch.where(assigned, labels, torch.full_like(labels, num_classes))
    max_iou = torch.where(assigned, best_iou, torch.zeros_like(best_iou))
    return assigned_gt, assigned_label, max_iou.to(out_dtype)
