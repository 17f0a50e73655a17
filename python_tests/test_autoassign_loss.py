"""The reference AutoAssign loss (reference/autoassign_loss.py) against SPEC.md
section 6: hand-worked cases, gradients, batching, padding, the no-GT batch."""
import functools
import math

import pytest
import torch

from reference.autoassign_loss import autoassign_loss, autoassign_loss_terms, center_prior, inside_gt, negative_weights
from reference.boxes import box_iou

f64 = torch.float64


def _bce1(x):  # BCE_prob(x, 1), torch's log clamp
    return -max(math.log(x), -100) if x > 0 else 100.0


def _neg(x):  # x^2 BCE_prob(x, 0)
    return x * x * min(-math.log1p(-x), 100.0) if x < 1 else x * x * 100.0


def _loss(cls, obj, d, pts, strides, gt, labels, valid=None, mu=None, sigma=None, **kw):
    C = cls.shape[-1]
    mu = torch.zeros(C, 2, dtype=f64) if mu is None else mu
    sigma = torch.ones(C, 2, dtype=f64) if sigma is None else sigma
    valid = torch.ones(labels.shape, dtype=torch.bool) if valid is None else valid
    return autoassign_loss(cls, obj, d, pts, strides, gt, labels, valid, mu, sigma, **kw)


def t(x, dtype=f64):
    return torch.tensor(x, dtype=dtype)


def test_two_points_one_gt_by_hand():
    """Two points inside one GT (centre (12, 8), stride 8): p0 predicts the GT
    exactly (GIoU 1, IoU 1), p1 a box of a third of its area inside it."""
    pts, st = t([[8.0, 8.0], [16.0, 8.0]]), t([8.0, 8.0])
    gt, lab = t([[[0.0, 0.0, 24.0, 16.0]]]), torch.tensor([[1]])
    d = t([[[8.0, 8.0, 16.0, 8.0], [8.0, 4.0, 8.0, 4.0]]])
    cls = t([[[1.5, 0.0], [-2.0, 0.0]]])  # sigmoid 0.5 for the GT's class
    obj = t([[0.0, 0.0]])
    out = _loss(cls, obj, d, pts, st, gt, lab)

    prior = math.exp(-0.5 ** 2 / 2)  # offsets (-0.5, 0) and (0.5, 0) strides
    p_pos = [0.25 * 1.0, 0.25 * math.exp(-5.0 * (1 - 1 / 3))]
    cw = [math.exp(3 * p) * prior for p in p_pos]
    bag = sum(c / sum(cw) * p for c, p in zip(cw, p_pos))
    assert out["loss_pos"].item() == pytest.approx(0.25 * _bce1(bag), rel=1e-12)
    # 1 / (1 - IoU): p0 1e12 (IoU 1, clamped), p1 1.5; normalised 1 and ~1e-24.
    t_norm = [1.0, 1e-12 / (1e12 - 1.5 + 1e-12)]
    sig = 1 / (1 + math.exp(-1.5)), 1 / (1 + math.exp(2.0))
    x = [0.5 * sig[0], 0.25 * (1 - t_norm[0]), 0.5 * sig[1], 0.25 * (1 - t_norm[1])]
    assert out["loss_neg"].item() == pytest.approx(0.75 * sum(map(_neg, x)) / max(2 * prior, 1), rel=1e-12)
    assert out["loss_center"].item() == pytest.approx(0.75 * 1 / (2 * prior), rel=1e-12)


def _nested_case(swap=False):
    """GT a [0, 0, 32, 32] holds points p (8, 8) and q (24, 24); GT b [4, 4, 20,
    20], of the same class, holds p only. q predicts a exactly (1 / (1 - IoU)
    = 1e12, clamped); p predicts [4, 4, 12, 12] (best IoU 0.25, with b)."""
    pts, st = t([[8.0, 8.0], [24.0, 24.0]]), t([8.0, 8.0])
    gt, lab = t([[[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 20.0, 20.0]]]), torch.tensor([[1, 1]])
    if swap:
        gt = gt.flip(1)
    d = t([[[4.0, 4.0, 4.0, 4.0], [24.0, 24.0, 8.0, 8.0]]])
    return pts, st, gt, lab, d


def _weights(pts, gt, lab, d):
    valid = torch.ones(lab.shape, dtype=torch.bool)
    pred = torch.cat([pts[None] - d[..., :2], pts[None] + d[..., 2:]], -1)
    return negative_weights(pred, gt, lab, valid, inside_gt(pts, gt, valid), 3)


def test_point_inside_two_gts_of_one_class_takes_the_highest_index():
    pts, st, gt, lab, d = _nested_case()
    assert inside_gt(pts, gt, torch.ones(1, 2, dtype=torch.bool)).tolist() == [[[True, True], [True, False]]]
    w = _weights(pts, gt, lab, d)
    # Under b (index 1, its only point) p's normalised t is 1: weight 0. Under a, p
    # has the smaller t (4/3 against 1e12): normalised ~1e-24, weight 1.
    assert w[0, 0, 1].item() == 0.0
    assert w[0, 1, 1].item() == 0.0  # q: a's largest t
    assert w[0, :, [0, 2]].eq(1).all()
    swapped = _weights(pts, *_nested_case(swap=True)[2:4], d)
    assert swapped[0, 0, 1].item() == 1.0  # a is index 1 now, and wins
    assert swapped[0, 1, 1].item() == 0.0


def test_nested_gts_loss_by_hand():
    pts, st, gt, lab, d = _nested_case()
    cls, obj = torch.zeros(1, 2, 3, dtype=f64), torch.zeros(1, 2, dtype=f64)
    out = _loss(cls, obj, d, pts, st, gt, lab)
    # GIoU of p's [4, 4, 12, 12] with a: IoU 64/1024, enclosure a; with b: 64/256, enclosure b. q fits a.
    giou = [[64 / 1024, 64 / 256], [1.0, None]]
    ctr = [(16.0, 16.0), (12.0, 12.0)]
    prior = [[math.exp(-((px - cx) / 8) ** 2 / 2) * math.exp(-((py - cy) / 8) ** 2 / 2) for cx, cy in ctr]
             for px, py in pts.tolist()]
    members = [[0, 1], [0]]  # points inside a, inside b
    loss_pos, psum = 0.0, 0.0
    for g, pts_in in enumerate(members):
        pp = [0.25 * math.exp(-5 * (1 - giou[p][g])) for p in pts_in]
        cw = [math.exp(3 * q) * prior[p][g] for q, p in zip(pp, pts_in)]
        loss_pos += _bce1(sum(c / sum(cw) * q for c, q in zip(cw, pp)))
        psum += sum(prior[p][g] for p in pts_in)
    assert out["loss_pos"].item() == pytest.approx(0.25 * loss_pos / 2, rel=1e-12)
    assert out["loss_center"].item() == pytest.approx(0.75 * 2 / psum, rel=1e-12)
    # Negative weights: 0 at (p, 1) and (q, 1), 1 elsewhere.
    assert out["loss_neg"].item() == pytest.approx(0.75 * 4 * _neg(0.25) / max(psum, 1), rel=1e-12)


def test_gt_without_points_inside():
    """A GT between the points: BCE(0, 1) = 100 for its bag, no gradient from it;
    alone in its image, the center loss is 0 and any_inside is False."""
    pts, st = t([[0.0, 0.0], [8.0, 0.0]]), t([8.0, 8.0])
    gt, lab = t([[[2.0, -2.0, 6.0, 2.0]]]), torch.tensor([[0]])
    cls = torch.randn(1, 2, 2, dtype=f64, requires_grad=True)
    obj = torch.randn(1, 2, dtype=f64, requires_grad=True)
    d = (torch.rand(1, 2, 4, dtype=f64) * 8).requires_grad_()
    mu = torch.zeros(2, 2, dtype=f64, requires_grad=True)
    sigma = torch.ones(2, 2, dtype=f64, requires_grad=True)
    valid = torch.ones(1, 1, dtype=torch.bool)
    loss_pos, loss_neg, prior_sum, any_inside = autoassign_loss_terms(cls, obj, d, pts, st, gt, lab, valid, mu, sigma)
    assert loss_pos.tolist() == [100.0] and prior_sum.tolist() == [0.0] and any_inside.tolist() == [False]
    joint = cls.sigmoid() * obj.sigmoid()[..., None]
    assert loss_neg.item() == pytest.approx(sum(_neg(x) for x in joint.flatten().tolist()), rel=1e-12)
    out = autoassign_loss(cls, obj, d, pts, st, gt, lab, valid, mu, sigma)
    assert out["loss_pos"].item() == 25.0 and out["loss_center"].item() == 0.0
    (out["loss_pos"] + out["loss_center"]).backward()
    for x in (d, mu, sigma, cls, obj):
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.eq(0).all()


def _random_case(B=3, P=60, C=4, G=5, seed=0, dtype=f64, counts=(5, 2, 0)):
    g = torch.Generator().manual_seed(seed)
    side = int(math.ceil(math.sqrt(P)))
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pts = (torch.stack([xs.flatten(), ys.flatten()], 1)[:P] * 8).to(dtype)
    st = torch.full((P,), 8.0, dtype=dtype)
    xy = torch.rand(B, G, 2, generator=g, dtype=dtype) * side * 5
    wh = torch.rand(B, G, 2, generator=g, dtype=dtype) * side * 4 + 6
    gt = torch.cat([xy, xy + wh], -1)
    lab = torch.randint(0, C, (B, G), generator=g)
    valid = torch.arange(G)[None] < torch.tensor(counts)[:, None]
    lab[~valid] = -1
    cls = torch.randn(B, P, C, generator=g, dtype=dtype) * 2
    obj = torch.randn(B, P, generator=g, dtype=dtype)
    d = torch.rand(B, P, 4, generator=g, dtype=dtype) * 30 + 0.5
    mu = torch.randn(C, 2, generator=g, dtype=dtype) * 0.3
    sigma = torch.rand(C, 2, generator=g, dtype=dtype) + 0.6
    return cls, obj, d, pts, st, gt, lab, valid, mu, sigma


def test_gradcheck_float64():
    """Every term w.r.t. the logits, objectness, distances, mu and sigma. The
    negative weights' IoU carries no gradient by definition, so the check holds
    it at the given boxes (a moved box would move it)."""
    cls, obj, d, pts, st, gt, lab, valid, mu, sigma = _random_case(P=30, counts=(3, 1, 0))
    assert autoassign_loss_terms(cls, obj, d, pts, st, gt, lab, valid, mu, sigma)[3].tolist() == [True, True, False]
    fixed = torch.cat([pts[None] - d[..., :2], pts[None] + d[..., 2:]], -1)
    terms = functools.partial(autoassign_loss_terms, box_iou=lambda a, b: box_iou(fixed, b))
    inputs = [x.clone().requires_grad_() for x in (cls, obj, d, mu, sigma)]

    def per_image(c, o, dd, m, s):
        return terms(c, o, dd, pts, st, gt, lab, valid, m, s)[:3]

    assert torch.autograd.gradcheck(per_image, inputs)

    def totals(c, o, dd, m, s):
        out = autoassign_loss(c, o, dd, pts, st, gt, lab, valid, m, s, autoassign_loss_terms=terms)
        # loss_neg's normaliser is the detached prior sum: no gradient to mu, sigma through it
        return out["loss_pos"], out["loss_center"], out["loss_neg"] * 1
    assert torch.autograd.gradcheck(lambda c, o, dd: totals(c, o, dd, inputs[3], inputs[4]), inputs[:3])
    assert torch.autograd.gradcheck(lambda m, s: totals(inputs[0], inputs[1], inputs[2], m, s)[:2], inputs[3:])


def test_batched_equals_per_image_and_padding_is_inert():
    args = _random_case(counts=(5, 2, 0))
    cls, obj, d, pts, st, gt, lab, valid, mu, sigma = args
    batched = autoassign_loss_terms(*args)
    for b in range(3):
        g = int(valid[b].sum())
        one = autoassign_loss_terms(cls[b:b + 1], obj[b:b + 1], d[b:b + 1], pts, st, gt[b:b + 1, :g],
                                    lab[b:b + 1, :g], valid[b:b + 1, :g], mu, sigma)
        for x, y in zip(batched, one):
            torch.testing.assert_close(x[b:b + 1], y, rtol=1e-13, atol=0)
    # Garbage in the padded slots (boxes over the points, labels in range) changes nothing.
    gt2, lab2 = gt.clone(), lab.clone()
    gt2[~valid] = torch.tensor([0.0, 0.0, 60.0, 60.0], dtype=f64)
    lab2[~valid] = 1
    leaves = [x.clone().requires_grad_() for x in (cls, obj, d, mu, sigma)]
    grads = []
    for boxes, labels in ((gt, lab), (gt2, lab2)):
        c, o, dd, m, s = leaves
        out = autoassign_loss(c, o, dd, pts, st, boxes, labels, valid, m, s)
        grads.append((out, torch.autograd.grad(sum(out.values()), leaves)))
    for k in grads[0][0]:
        assert grads[0][0][k].item() == grads[1][0][k].item()
    for a, b in zip(grads[0][1], grads[1][1]):
        assert torch.equal(a, b)


def test_batch_without_gt_is_zero_but_connected():
    cls, obj, d, pts, st, gt, lab, valid, mu, sigma = _random_case(counts=(0, 0, 0))
    leaves = [x.clone().requires_grad_() for x in (cls, obj, d, mu, sigma)]
    for G in (5, 0):  # padded GTs only, and no GT slot at all
        c, o, dd, m, s = leaves
        out = autoassign_loss(c, o, dd, pts, st, gt[:, :G], lab[:, :G], valid[:, :G], m, s)
        assert out["loss_pos"].item() == 0.0 and out["loss_center"].item() == 0.0
        joint = c.sigmoid() * o.sigmoid()[..., None]
        expect = 0.75 * sum(_neg(x) for x in joint.flatten().tolist())  # neg_w = 1, N_neg = 1
        assert out["loss_neg"].item() == pytest.approx(expect, rel=1e-12)
        grads = torch.autograd.grad(out["loss_pos"] + out["loss_center"], [dd, o, m, s])
        assert all(g is not None and g.eq(0).all() for g in grads)


def test_float32_and_half_inputs_compute_in_float32():
    args = _random_case(dtype=torch.float32)
    out = autoassign_loss(*args)
    half = autoassign_loss(args[0].half(), args[1].half(), *args[2:])
    ref = autoassign_loss(*(a.double() if a.is_floating_point() else a for a in args))
    for k in out:
        assert out[k].dtype == half[k].dtype == torch.float32
        assert out[k].item() == pytest.approx(ref[k].item(), rel=1e-5)
        assert half[k].item() == pytest.approx(ref[k].item(), rel=2e-2)


def test_normalisers_go_through_reduce_mean():
    """Under DDP, N_pos and N_neg are means over processes: here a fake world
    where the other process has twice this one's GTs and prior."""
    args = _random_case(counts=(5, 2, 0))
    base = autoassign_loss(*args)
    out = autoassign_loss(*args, reduce_mean=lambda x: x * 1.5)
    assert out["loss_pos"].item() == pytest.approx(base["loss_pos"].item() / 1.5, rel=1e-12)
    assert out["loss_neg"].item() == pytest.approx(base["loss_neg"].item() / 1.5, rel=1e-12)
    assert out["loss_center"].item() == base["loss_center"].item()


def _loop_oracle(cls, obj, d, pts, st, gt, lab, valid, mu, sigma):
    """SPEC section 6 the way MMDetection's code is laid out: image by image,
    GT by GT, each GT decoded back from its (l, t, r, b) at every point, the
    negative weights written GT after GT (so the last, highest index, wins)."""
    pos, neg, center, n_gt, n_prior = [], [], [], 0, 0.0
    for b in range(cls.shape[0]):
        g_boxes, g_lab = gt[b][valid[b]], lab[b][valid[b]]
        joint = cls[b].sigmoid() * obj[b].sigmoid()[:, None]
        pred = torch.cat([pts - d[b, :, :2], pts + d[b, :, 2:]], 1)
        enc = [torch.stack([pts[:, 0] - g[0], pts[:, 1] - g[1], g[2] - pts[:, 0], g[3] - pts[:, 1]], 1)
               for g in g_boxes]
        decoded = [torch.cat([pts - e[:, :2], pts + e[:, 2:]], 1) for e in enc]
        inside = [e.min(1).values > 0 for e in enc]
        priors = []
        for g, lb, ins in zip(g_boxes, g_lab, inside):
            off = (pts - (g[:2] + g[2:]) / 2) / st[:, None]
            priors.append(torch.exp(-(off - mu[lb]) ** 2 / (2 * sigma[lb] ** 2)).prod(1) * ins)
        loss_pos = cls.new_zeros(())
        for lb, dec, pr in zip(g_lab, decoded, priors):
            p_pos = joint[:, lb] * torch.exp(-5 * (1 - box_iou(pred, dec, "giou", aligned=True)))
            w = torch.exp(3 * p_pos) * pr
            w = w / w.sum().clamp(min=1e-12)
            loss_pos = loss_pos + torch.nn.functional.binary_cross_entropy((w * p_pos).sum(), cls.new_ones(()))
        neg_w = torch.ones_like(joint)
        if len(g_boxes):
            with torch.no_grad():
                best = torch.stack([box_iou(pred, dec, aligned=True) for dec in decoded], 1).max(1).values
                for lb, ins in zip(g_lab, inside):
                    if ins.any():
                        tt = 1 / (1 - best[ins]).clamp(min=1e-12)
                        neg_w[ins, lb] = 1 - (tt - tt.min() + 1e-12) / (tt.max() - tt.min() + 1e-12)
        x = joint * neg_w
        neg.append((x ** 2 * torch.nn.functional.binary_cross_entropy(x, torch.zeros_like(x), reduction="none")).sum())
        pos.append(loss_pos)
        psum = sum((p.sum() for p in priors), cls.new_zeros(()))
        any_in = any(bool(i.any()) for i in inside)
        center.append(len(g_boxes) / psum.clamp(min=1e-12) if any_in else 0 * psum)
        n_gt += len(g_boxes)
        n_prior += float(psum.detach())
    return dict(loss_pos=0.25 * sum(pos) / max(n_gt, 1), loss_neg=0.75 * sum(neg) / max(n_prior, 1),
                loss_center=0.75 * sum(center) / len(center))


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_a_per_image_per_gt_loop(seed):
    """Random images with overlapping same-class GTs (points inside several),
    padding, an image without GT; values and gradients against the loop."""
    args = list(_random_case(B=3, P=80, C=2, G=6, seed=seed, counts=(6, 3, 0)))
    cls, obj, d, pts, st, gt, lab, valid, mu, sigma = args
    inside = inside_gt(pts, gt, valid)[0]
    same_class = lab[0][:, None].eq(lab[0][None, :]).triu(1)
    assert (inside[:, :, None] & inside[:, None, :] & same_class).any((1, 2)).sum() >= 3  # duplicates exercised
    leaves = [x.clone().requires_grad_() for x in (cls, obj, d, mu, sigma)]
    outs = []
    for fn in (autoassign_loss, _loop_oracle):
        c, o, dd, m, s = leaves
        out = fn(c, o, dd, pts, st, gt, lab, valid, m, s)
        outs.append((out, torch.autograd.grad(sum(out.values()), leaves)))
    (a, ga), (b, gb) = outs
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-12), k
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-14)


def test_force_topk_gives_empty_gts_their_best_prior_points():
    """Off in MMDetection's configs; on, a valid GT with no point inside takes
    the 9 points of highest raw prior, everywhere the inside mask is used."""
    args = list(_random_case(B=1, P=64, C=2, G=3, counts=(3,)))
    cls, obj, d, pts, st, gt, lab, valid, mu, sigma = args
    gt[0, 2] = t([13.0, 13.0, 14.0, 14.0])  # between the points of an 8 px grid
    args[5] = gt
    plain = autoassign_loss_terms(*args)
    forced = autoassign_loss_terms(*args, force_topk=True)
    raw = center_prior(pts, st, gt, lab, mu, sigma)[0, :, 2]
    assert not inside_gt(pts, gt, valid)[0, :, 2].any()
    assert forced[2].item() == pytest.approx(plain[2].item() + raw.topk(9).values.sum().item(), rel=1e-12)
    assert plain[0].item() - forced[0].item() > 50  # the empty GT's bag is no longer BCE(0, 1) = 100
    assert forced[1].item() != plain[1].item()  # its points now carry negative weights too
    full = autoassign_loss(*args, force_topk=True)
    assert full["loss_pos"].item() == pytest.approx(0.25 * forced[0].item() / 3, rel=1e-12)
