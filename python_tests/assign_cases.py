"""ATSS problems shared by the assignment tests and benchmark: grid anchors
of an FPN (reference.gfl.anchors) and padded GT batches, random and adversarial."""
import torch

from reference.gfl import anchors as fpn_anchors

SMALL_LEVELS = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # 341 anchors, two levels under topk=9


def grid(levels=SMALL_LEVELS, dtype=torch.float32):
    """(anchors (N, 4), num_level_anchors) of feature maps (h, w) at strides 8, 16, ..."""
    _, _, boxes, sizes = fpn_anchors(levels, "cpu", dtype=dtype if dtype == torch.float64 else torch.float32)
    return boxes.to(dtype), list(sizes)


def random_gts(batch, num_gt, extent=128.0, seed=0, dtype=torch.float32, valid_p=0.8, num_classes=5):
    """gt_boxes (B, G, 4), labels (B, G), valid (B, G): boxes of 2..extent px over the extent x extent image."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num_gt, 2, generator=g) * extent
    wh = torch.rand(batch, num_gt, 2, generator=g) * extent * 0.6 + 2
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    labels = torch.randint(0, num_classes, (batch, num_gt), generator=g)
    valid = torch.rand(batch, num_gt, generator=g) < valid_p
    return boxes.to(dtype), labels, valid


def adversarial_gts(dtype=torch.float32):
    """One image's GTs (G, 4), labels, valid, built to hit every rule of SPEC section 5 on SMALL_LEVELS."""
    gts = [
        [4, 4, 20, 20],          # centre (12, 12) on an anchor-centre midpoint: 4-way distance and IoU ties
        [4, 4, 20, 20],          # its duplicate: every claim ties, the lower GT index wins
        [9, 9, 11, 11],          # tiny, between anchor centres: no candidate's centre inside
        [40, 40, 40, 40],        # zero area
        [30, 30, 30, 70],        # zero width
        [-500, -500, 900, 900],  # far bigger than the image
        [300, 300, 360, 340],    # outside the image
        [60, 60, 100, 100],      # ordinary
        [64, 20, 96, 52],        # overlaps the next one: shared anchors, claims by IoU
        [56, 28, 104, 44],
        [-4, -4, 4, 4],          # centre on an anchor corner of the image
        [120, 0, 128, 128],      # thin strip along the edge
        [0, 0, 128, 128],        # the whole image
        [32, 32, 64, 64],        # padding (made invalid below)
    ]
    labels = list(range(len(gts)))
    valid = [True] * (len(gts) - 1) + [False]
    return (torch.tensor(gts, dtype=torch.float32).to(dtype), torch.tensor(labels), torch.tensor(valid))


def cell_grid(shapes, per_cell=1, irregular=False, dtype=torch.float32):
    """(anchors (N, 4), sizes) of grid levels with `per_cell` square anchors a cell
    (sides 8, 12, 16, ... x stride), row-major as detectors lay them out. With
    `irregular`, column j sits at 8j + j(j+1)/2 (rows likewise): still a grid
    (the centres' order is all the window search assumes), no longer uniform.
    Integer centres and sides, so every anchor of a cell has the same centre."""
    boxes, sizes = [], []
    for level, (h, w) in enumerate(shapes):
        s = 8 * 2**level
        place = (lambda n: torch.arange(n) * s + torch.arange(n) * (torch.arange(n) + 1) // 2) if irregular \
            else (lambda n: torch.arange(n) * s)
        ys, xs = torch.meshgrid(place(h), place(w), indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()], 1).to(torch.float64)
        half = torch.tensor([4 * s + 2 * s * c for c in range(per_cell)], dtype=torch.float64)
        c = centres[:, None, :].expand(-1, per_cell, 2)
        hb = half[None, :, None]
        boxes.append(torch.cat([c - hb, c + hb], -1).reshape(-1, 4))
        sizes.append(h * w * per_cell)
    return torch.cat(boxes).to(dtype), sizes
