"""Inputs and an independent oracle for the NMS tests."""
import numpy as np
import torch

from reference.gfl import anchors


def random_boxes(k, seed, canvas=200.0, max_size=60.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g, dtype=torch.float64) * canvas
    wh = torch.rand(k, 2, generator=g, dtype=torch.float64) * max_size
    return torch.cat([xy, xy + wh], 1).to(dtype), torch.rand(k, generator=g, dtype=torch.float64).to(dtype)


def clustered_boxes(k, seed, clusters=8, dtype=torch.float32):
    """Boxes jittered around a few centres: long chains of suppression."""
    g = torch.Generator().manual_seed(seed)
    centre = torch.rand(clusters, 4, generator=g, dtype=torch.float64) * 100
    centre[:, 2:] = centre[:, :2] + 20 + centre[:, 2:] * 0.3
    which = torch.randint(0, clusters, (k,), generator=g)
    boxes = centre[which] + torch.randn(k, 4, generator=g, dtype=torch.float64) * 2
    return boxes.to(dtype), torch.rand(k, generator=g, dtype=torch.float64).to(dtype)


def degenerate_boxes(k, seed, dtype=torch.float32):
    """Identical, zero-width, zero-height, inverted and point boxes, equal scores."""
    boxes, _ = random_boxes(k, seed, canvas=50, max_size=30, dtype=torch.float64)
    kind = torch.arange(k) % 6
    boxes[kind == 1, 2] = boxes[kind == 1, 0]                       # zero width
    boxes[kind == 2, 3] = boxes[kind == 2, 1]                       # zero height
    boxes[kind == 3] = boxes[kind == 3][:, [2, 3, 0, 1]]            # inverted
    if k:
        boxes[kind == 4] = boxes[0].clone()                         # identical to box 0
    boxes[kind == 5, 2:] = boxes[kind == 5, :2].clone()             # a point
    scores = (torch.arange(k) % 4).to(torch.float64) / 4            # many exact ties
    return boxes.to(dtype), scores.to(dtype)


def _hits(b, area, i, thr, eps, zero):
    iw = np.maximum(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]), zero)
    ih = np.maximum(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]), zero)
    inter = iw * ih
    return inter / np.maximum(area[i] + area - inter, eps) > thr


def greedy(boxes, scores, thr, idxs=None):
    """Plain greedy NMS, as SPEC.md section 7 states it, in numpy: IoUs in
    float32 (float64 for float64 boxes), one kept box after another."""
    dt = np.float64 if boxes.dtype == torch.float64 else np.float32
    b = boxes.to(torch.float64 if dt == np.float64 else torch.float32).numpy()
    s = scores.double().numpy()
    order = [i for i in np.argsort(-s, kind="stable") if not np.isnan(s[i])]
    thr, eps, zero = dt(thr), dt(1e-6), dt(0)
    with np.errstate(invalid="ignore"):
        area = np.maximum(b[:, 2] - b[:, 0], zero) * np.maximum(b[:, 3] - b[:, 1], zero)
    lab = None if idxs is None else idxs.numpy()
    removed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if removed[i]:
            continue
        with np.errstate(invalid="ignore"):  # infinite boxes: inf - inf is NaN, as in torch
            hit = _hits(b, area, i, thr, eps, zero)
        keep.append(i)
        if lab is not None:
            hit &= lab == lab[i]
        removed |= hit
    return torch.tensor(keep, dtype=torch.long)


def head_outputs(batch, feats, classes, seed, dtype=torch.float32, mean=-2.0, std=2.0, reg_max=16):
    """Raw GFL head outputs over the anchors of `feats` (feature map sizes)."""
    g = torch.Generator().manual_seed(seed)
    pdt = torch.float64 if dtype == torch.float64 else torch.float32
    points, strides, _, sizes = anchors(feats, "cpu", dtype=pdt)
    n = points.shape[0]
    cls = torch.randn(batch, n, classes, generator=g, dtype=torch.float64) * std + mean
    reg = torch.randn(batch, n, 4 * (reg_max + 1), generator=g, dtype=torch.float64) * 2
    return cls.to(dtype), reg.to(dtype), points, strides, sizes
