"""Box builders shared by the box and decoding tests."""
import torch


def random_boxes(*shape, scale=100.0, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(*shape, 2, generator=g) * scale
    wh = torch.rand(*shape, 2, generator=g) * scale * 0.5 + 0.5
    return torch.cat([xy, xy + wh], -1).to(device, dtype)


def adversarial_pairs(device="cpu"):
    """(a, b) aligned pairs: identical, disjoint, nested, touching, huge, tiny, degenerate."""
    a = [[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 1e4, 1e4],
         [0, 0, 1e-3, 1e-3], [5, 5, 5, 9], [3, 3, 1, 1], [0, 0, 10, 10], [2, 2, 4, 4]]
    b = [[0, 0, 10, 10], [20, 20, 30, 30], [2, 2, 5, 5], [10, 0, 20, 10], [5e3, 5e3, 1.5e4, 1.2e4],
         [5e-4, 5e-4, 2e-3, 2e-3], [0, 0, 10, 10], [0, 0, 4, 4], [0, 10, 10, 20], [0, 0, 10, 10]]
    return torch.tensor(a, device=device), torch.tensor(b, device=device)


def distribution_inputs(boxes, anchors, reg_max, device="cpu", dtype=torch.float32, seed=0):
    """Logits (boxes, anchors, 4 * (reg_max + 1)), points (anchors, 2), strides (anchors,)."""
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(boxes, anchors, 4 * (reg_max + 1), generator=g) * 2).to(device, dtype)
    strides = torch.tensor([8.0, 16.0, 32.0, 64.0, 128.0])[torch.arange(anchors) % 5].to(device)
    points = (torch.rand(anchors, 2, generator=g) * 600).to(device)
    return pred, points, strides


def branch_inputs(p, reg_max, device="cpu", dtype=torch.float32, seed=0):
    """Positives: logits (P, 4 * (reg_max + 1)), points, strides, GT boxes around the points, weights."""
    g = torch.Generator().manual_seed(seed)
    pred = (torch.randn(p, 4 * (reg_max + 1), generator=g) * 2).to(device, dtype)
    strides = torch.tensor([8.0, 16.0, 32.0, 64.0, 128.0])[torch.arange(p) % 5]
    points = torch.rand(p, 2, generator=g) * 600
    lt = torch.rand(p, 2, generator=g) * strides[:, None] * 6
    rb = torch.rand(p, 2, generator=g) * strides[:, None] * 6
    gt = torch.cat([points - lt, points + rb], 1)
    weight = torch.rand(p, generator=g)
    return pred, points.to(device), strides.to(device), gt.to(device), weight.to(device)
