"""Greedy NMS and the detector's multiclass post-process (SPEC.md section 7)."""
import torch

from .boxes import box_iou
from .decode import decode_distribution, distance2bbox


def _pairs(values):
    return values.tolist() if isinstance(values, torch.Tensor) else values


def _order(scores):
    """Indices by descending score; equal scores keep the lower index first."""
    return torch.sort(-scores, stable=True).indices


def nms(boxes, scores, iou_threshold, idxs=None):
    """Keep a box unless its IoU with an already kept box (of the same idxs
    value, when idxs is given) is > iou_threshold. Returns kept indices
    (int64) sorted by descending score. A box whose score is NaN is never
    kept and suppresses nothing. IoUs are computed in float32 (float64 for
    float64 boxes) and compared with the threshold in that dtype."""
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = _order(scores)
    order = order[~torch.isnan(scores[order])]
    b = boxes[order] if boxes.dtype == torch.float64 else boxes[order].float()
    suppress = box_iou(b, b) > iou_threshold
    if idxs is not None:
        lab = idxs[order]
        suppress &= lab[:, None] == lab[None, :]
    suppress = suppress.cpu()
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= ~suppress[i, i + 1:]
    return order[keep.to(order.device)]


def batched_nms(boxes, scores, idxs, iou_threshold):
    """NMS within each value of idxs (class), merged and sorted by score.
    Boxes of different classes never suppress each other: the classes are
    compared, not moved apart by a coordinate offset (an offset of class x
    span changes float32 coordinates, and with them the IoUs)."""
    return nms(boxes, scores, iou_threshold, idxs)


def multiclass_nms(cls_scores, bbox_preds, points, strides, level_sizes, image_shapes, score_thr=0.05,
                   nms_pre=1000, iou_threshold=0.6, max_per_img=100, min_bbox_size=0.0, scale_factors=None,
                   reg_max=16, decode=None, nms_fn=batched_nms, score_factors=None):
    """The GFL post-process over a batch (gflops.multiclass_nms's signature,
    plus the decode and NMS functions to use).

    cls_scores (B, N, C) logits; bbox_preds (B, N, 4 * (reg_max + 1)); points
    (N, 2) and strides (N,) of the anchors, level by level (level_sizes);
    image_shapes: (H, W) per image for clamping; decode(pred, points, strides,
    max_shape) -> boxes (default: reference decode_distribution). Boxes whose
    width or height is not > min_bbox_size are dropped before NMS, measured in
    original image pixels when scale_factors ((sx, sy) per image) are given,
    as MMDetection measures them after rescaling. Returns padded boxes (B,
    max_per_img, 4), scores (B, max_per_img), labels (B, max_per_img) (-1 for
    padding) and counts (B,).

    score_factors (B, N) logits, when given (AutoAssign's objectness): the
    candidates are still chosen by sigma(class) alone, and then scored
    sigma(class) * sigma(factor), as MMDetection does (no re-threshold).
    """
    if decode is None:
        def decode(pred, pts, st, shape):
            return decode_distribution(pred, pts, st, reg_max, (float(shape[0]), float(shape[1])))
    image_shapes = [(float(h), float(w)) for h, w in _pairs(image_shapes)]
    scale_factors = None if scale_factors is None else [(float(x), float(y)) for x, y in _pairs(scale_factors)]
    B, N, C = cls_scores.shape
    device = cls_scores.device
    dtype = torch.float64 if cls_scores.dtype == torch.float64 else torch.float32
    out_boxes = torch.zeros(B, max_per_img, 4, device=device, dtype=dtype)
    out_scores = torch.zeros(B, max_per_img, device=device, dtype=dtype)
    out_labels = torch.full((B, max_per_img), -1, dtype=torch.long, device=device)
    counts = torch.zeros(B, dtype=torch.long, device=device)
    for b in range(B):
        boxes_l, scores_l, labels_l = [], [], []
        start = 0
        for n_l in level_sizes:
            sl = slice(start, start + n_l)
            start += n_l
            scores = cls_scores[b, sl].to(dtype).sigmoid().flatten()
            keep = scores > score_thr
            flat = torch.nonzero(keep).squeeze(1)
            s = scores[flat]
            if s.numel() > nms_pre:
                top = _order(s)[:nms_pre]
                flat, s = flat[top], s[top]
            anchor = flat // C
            if score_factors is not None:
                s = s * score_factors[b, sl][anchor].to(dtype).sigmoid()
            boxes = decode(bbox_preds[b, sl][anchor], points[sl][anchor], strides[sl][anchor],
                           image_shapes[b])
            boxes_l.append(boxes.to(dtype))
            scores_l.append(s)
            labels_l.append(flat % C)
        boxes, scores, labels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)
        sx, sy = scale_factors[b] if scale_factors is not None else (1.0, 1.0)
        big = ((boxes[:, 2] - boxes[:, 0]) / sx > min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) / sy > min_bbox_size)
        boxes, scores, labels = boxes[big], scores[big], labels[big]
        kept = nms_fn(boxes, scores, labels, iou_threshold)[:max_per_img]
        k = kept.numel()
        out_boxes[b, :k], out_scores[b, :k], out_labels[b, :k] = boxes[kept], scores[kept], labels[kept]
        counts[b] = k
    return out_boxes, out_scores, out_labels, counts


def distance_multiclass_nms(cls_scores, distances, score_factors, points, level_sizes, image_shapes, score_thr=0.05,
                            nms_pre=1000, iou_threshold=0.6, max_per_img=100, min_bbox_size=0.0, scale_factors=None,
                            batched_nms=batched_nms):
    """The post-process of heads that predict (l, t, r, b) distances in pixels
    and an objectness logit per point (AutoAssign, FCOS): multiclass_nms with
    distances (B, N, 4) decoded as points -/+ distances (clipped to the
    image) and score_factors (B, N) applied after candidate selection."""
    def decode(pred, pts, st, shape):
        return distance2bbox(pts.to(pred.dtype), pred, shape)

    strides = torch.ones(points.shape[0], dtype=points.dtype, device=points.device)
    return multiclass_nms(cls_scores, distances, points, strides, level_sizes, image_shapes, score_thr, nms_pre,
                          iou_threshold, max_per_img, min_bbox_size, scale_factors, decode=decode,
                          nms_fn=batched_nms, score_factors=score_factors)
