"""gflops.autoassign_loss_terms (the fused AutoAssign loss op) against
reference/autoassign_loss.py, on the CPU kernels and the CUDA kernels (a GPU,
or the CPU emulator: `device` "emu"): every term and every gradient, on
random and adversarial cases; gradcheck, opcheck, torch.compile, bad inputs."""
import pytest
import torch

import gflops
from gflops import _ops, emulation
from conftest import needs_emu, poisoned_memory
from reference.autoassign_loss import autoassign_loss, autoassign_loss_terms as ref_terms
from reference.gfl import anchors

SHAPES = [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]


def case(B=2, C=4, G=6, seed=0, dtype=torch.float64, counts=(6, 3), shapes=SHAPES, spread=0.7, size=60, dev="cpu"):
    g = torch.Generator().manual_seed(seed)
    pts, st, _, _ = anchors(shapes, "cpu", dtype=dtype)
    P = pts.shape[0]
    extent = torch.tensor([shapes[0][1] * 8, shapes[0][0] * 8], dtype=dtype)
    xy = torch.rand(B, G, 2, generator=g, dtype=dtype) * extent * spread
    wh = torch.rand(B, G, 2, generator=g, dtype=dtype) * size + 4
    gt = torch.cat([xy, xy + wh], -1)
    lab = torch.randint(0, C, (B, G), generator=g)
    valid = torch.arange(G)[None] < torch.tensor(counts)[:, None]
    lab[~valid] = -1
    cls = torch.randn(B, P, C, generator=g, dtype=dtype) * 2
    obj = torch.randn(B, P, generator=g, dtype=dtype)
    d = torch.rand(B, P, 4, generator=g, dtype=dtype) * 30 + 0.5
    mu = torch.randn(C, 2, generator=g, dtype=dtype) * 0.3
    sigma = torch.rand(C, 2, generator=g, dtype=dtype) + 0.6
    return [x.to(dev) for x in (cls, obj, d, pts, st, gt, lab, valid, mu, sigma)]


def _run(fn, args, shapes=SHAPES, weights=(0.7, 1.3, 0.1)):
    """The four outputs, and the gradients of a weighted sum of the three
    differentiable ones w.r.t. cls, obj, distances, mu and sigma."""
    leaves = [args[i].detach().clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
    a = list(args)
    a[0], a[1], a[2], a[8], a[9] = leaves
    out = fn(*a, level_shapes=shapes)
    B = out[0].shape[0]
    # On the outputs' device: CPU weights times CUDA outputs is an error on a GPU.
    w = [torch.linspace(weights[k], 2 * weights[k], B, dtype=out[0].dtype, device=out[0].device) for k in range(3)]
    total = sum((o * wk).sum() for o, wk in zip(out[:3], w))
    grads = torch.autograd.grad(total, leaves, allow_unused=True) if total.requires_grad else [None] * 5
    return [o.detach() for o in out], grads


def _compare(args, rtol, shapes=SHAPES, atol=0.0):
    (ro, rg), (go, gg) = _run(ref_terms, args, shapes), _run(gflops.autoassign_loss_terms, args, shapes)
    for name, x, y in zip(("loss_pos", "loss_neg", "prior_sum"), ro[:3], go[:3]):
        assert y.dtype == x.dtype, name
        torch.testing.assert_close(y, x, rtol=rtol, atol=atol, msg=name)
    assert torch.equal(ro[3], go[3])
    for name, x, y in zip(("cls", "obj", "distances", "mu", "sigma"), rg, gg):
        if x is None:
            assert y is None or y.abs().max() == 0, name
            continue
        scale = x.abs().max().clamp(min=1e-30)
        assert (y - x).abs().max() <= rtol * scale + atol, (name, ((y - x).abs().max() / scale).item())
    return ro, rg


@pytest.mark.parametrize("seed", range(3))
def test_float64_agrees_to_rounding(seed, device):
    ro, rg = _compare(case(seed=seed, dev=device), 1e-12)
    assert ro[3].tolist() == [True, True] and all(g.abs().sum() > 0 for g in rg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_logits_compute_in_float32(dtype, device):
    args = case(dtype=torch.float32, seed=5, dev=device)
    args[0], args[1] = args[0].to(dtype), args[1].to(dtype)
    _compare(args, 2e-5 if dtype == torch.float32 else 5e-5)
    out = gflops.autoassign_loss_terms(*args, level_shapes=SHAPES)
    assert all(o.dtype == torch.float32 for o in out[:3])


def test_adversarial_geometry(device):
    """A GT over nothing, a point inside many GTs of one class, tiny and
    huge GTs (beyond the image), GTs on grid lines, extreme logits."""
    args = case(B=3, C=3, G=8, counts=(8, 8, 1), seed=2, dev=device)
    gt, lab = args[5], args[6]
    gt[0] = torch.tensor([[13.0, 13.0, 14.0, 14.0],  # between grid points: no point inside
                          [0.0, 0.0, 200.0, 150.0],  # the whole image (and points on its edge are outside)
                          [-500.0, -500.0, 900.0, 900.0],  # far beyond
                          [16.0, 16.0, 48.0, 48.0], [20.0, 20.0, 44.0, 44.0], [24.0, 24.0, 40.0, 40.0],  # nested
                          [8.0, 8.0, 16.0, 16.0],  # corners on grid points: only (x, y) strictly inside count
                          [31.9, 31.9, 32.1, 32.1]], dtype=torch.float64, device=gt.device)  # tiny, one point
    lab[0] = torch.tensor([0, 1, 1, 2, 2, 2, 0, 2], device=lab.device)
    gt[1] = gt[0].flip(0)
    lab[1] = lab[0].flip(0)
    args[0][0, :10] = 30.0
    args[0][0, 10:20] = -30.0
    args[1][1, :15] = 40.0
    args[1][1, 15:30] = -40.0
    _compare(args, 1e-11)


def test_negative_weight_winners_across_class_words_and_chunks(device):
    """Points inside dozens of GTs, several of each class: the highest GT
    index of a class sets that class's negative weight (SPEC section 6).
    The classes lie in three 32-bit words of the CUDA kernels' per-point
    bits, and one class has GTs on both sides of the 256-GT chunk edge, so
    a walk in the wrong order, or one that lets every GT of a class write,
    gives other weights, losses and gradients."""
    G = 300
    args = case(B=2, C=70, G=G, counts=(300, 270), seed=13, dev=device)
    g = torch.Generator().manual_seed(3)
    centre = torch.tensor([60.0, 44.0], dtype=torch.float64) + (torch.rand(2, G, 2, generator=g) - 0.5) * 30
    half = torch.rand(2, G, 2, generator=g, dtype=torch.float64) * 40 + 10
    args[5] = torch.cat([centre - half, centre + half], -1).to(args[5].device)
    lab = torch.tensor([3, 35, 69, 64, 0, 31, 32])[torch.arange(G) % 7].repeat(2, 1)
    lab[:, 250:262] = 35  # one class across the chunk edge
    # Invalid GTs with labels in range, over the same points and above every valid index: never a winner.
    args[7][0, 280:] = False
    args[6] = lab.to(args[6].device)
    ro, _ = _compare(args, 1e-11)
    assert ro[3].tolist() == [True, True]


def test_float32_negative_term_where_the_winners_weigh_nothing(device):
    """Each point inside a GT predicts that GT's box exactly (integer
    coordinates), so t is the same at every point of a GT and its negative
    weight is exactly 0, while the logits of its class and the objectness
    are confident: at weight 1 those elements would be the largest terms
    by far. Each element enters the float32 sums once, at its own weight, so
    loss_neg and the objectness gradient keep float32 accuracy (adding the
    terms at weight 1 and taking them away again would leave their rounding,
    ~1e-4 of loss_neg and far more of those points' objectness gradient)."""
    shapes, C = [(40, 50)], 80
    pts, st, _, _ = anchors(shapes, "cpu", dtype=torch.float64)
    P = pts.shape[0]
    gt = torch.tensor([[[-4.0, -4.0, 196.0, 156.0], [196.0, -4.0, 404.0, 156.0], [-4.0, 156.0, 196.0, 324.0],
                        [196.0, 156.0, 404.0, 324.0]]], dtype=torch.float64)
    lab = torch.tensor([[3, 40, 77, 3]])
    owner = ((pts[:, 0] > 196).long() + 2 * (pts[:, 1] > 156).long())
    box = gt[0, owner]
    inside = (pts[:, 0] > box[:, 0]) & (pts[:, 1] > box[:, 1]) & (pts[:, 0] < box[:, 2]) & (pts[:, 1] < box[:, 3])
    d = torch.stack([pts[:, 0] - box[:, 0], pts[:, 1] - box[:, 1], box[:, 2] - pts[:, 0], box[:, 3] - pts[:, 1]], -1)
    cls = torch.full((1, P, C), -4.0, dtype=torch.float64)
    cls[0, inside, lab[0, owner[inside]]] = 8.0
    args = [cls, torch.full((1, P), 8.0, dtype=torch.float64), d[None].clone(), pts, st, gt, lab,
            torch.ones(1, 4, dtype=torch.bool), torch.zeros(C, 2, dtype=torch.float64),
            torch.ones(C, 2, dtype=torch.float64)]
    assert int(inside.sum()) > 1500
    (ro, rg) = _run(ref_terms, args, shapes)
    f32 = [x.float().to(device) if x.is_floating_point() else x.to(device) for x in args]
    go, gg = _run(gflops.autoassign_loss_terms, f32, shapes)
    # the winners' terms at weight 1 would be ~1e4 times what is left
    assert ro[1].item() < 2.0
    assert abs(go[1].item() - ro[1].item()) <= 2e-6 * ro[1].item()
    # float32's own error here is ~4e-5 (sigma(8) (1 - sigma(8)) in float32); the term at weight 1 less itself
    # would leave ~5e-2
    err = (gg[1].double().cpu() - rg[1]).abs().max() / rg[1].abs().max()
    assert err <= 1e-3, err.item()


def test_backward_keeps_no_points_by_classes_tensor(device):
    """The negative weights are rebuilt from t and the GTs' ranges of t, not
    kept: of what the graph saves, only the logits are as large as (B, P, C)."""
    args = case(C=40, dev=device)
    B, P, C = args[0].shape
    cls = args[0].clone().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append((x.shape, x.numel())) or x, lambda x: x):
        out = gflops.autoassign_loss_terms(cls, *args[1:], level_shapes=SHAPES)
    assert len(saved) >= 10, saved  # the op's inputs at least: the hooks saw the node's tensors
    assert [shape for shape, n in saved if n >= B * P * C] == [(B, P, C)], saved
    raw = _ops.lib().autoassign_loss_terms(*args, [v for hw in SHAPES for v in hw])
    assert raw[4].shape == (B, P) and raw[5].shape == (B, G := args[5].shape[1], 4)
    (out[0].sum() + out[1].sum()).backward()
    assert cls.grad.shape == (B, P, C)


def test_images_and_batches_without_gt(device):
    args = case(counts=(0, 0), dev=device)
    out, grads = _run(gflops.autoassign_loss_terms, args)
    ref, _ = _run(ref_terms, args)
    assert out[0].tolist() == [0.0, 0.0] and out[2].tolist() == [0.0, 0.0] and out[3].tolist() == [False, False]
    torch.testing.assert_close(out[1], ref[1], rtol=1e-12, atol=0)
    assert grads[2].abs().max() == 0 and grads[3].abs().max() == 0 and grads[4].abs().max() == 0
    for G in (0,):  # no GT slot at all
        a = case(counts=(0, 0), G=1, dev=device)
        a[5], a[6], a[7] = a[5][:, :G], a[6][:, :G], a[7][:, :G]
        _compare(a, 1e-12)
    _compare(case(counts=(4, 0), seed=7, dev=device), 1e-12)  # one image with GTs, one without
    # No class at all (so no usable GT): zeros, and nothing divides by the class count.
    a = case(counts=(0, 0), G=1, dev=device)
    a[0], a[8], a[9] = a[0][..., :0], a[8][:0], a[9][:0]
    out, grads = _run(gflops.autoassign_loss_terms, a)
    assert [o.tolist() for o in out] == [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [False, False]]
    assert grads[0].shape == a[0].shape and all(g.abs().sum() == 0 for g in grads[1:])


def test_whole_loss_matches(device):
    """autoassign_loss with the fused terms: the SPEC normalisers on top give
    the reference's losses and gradients."""
    args = case(seed=11, dev=device)
    leaves = [args[i].clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
    results = []
    for terms in (ref_terms, gflops.autoassign_loss_terms):
        a = list(args)
        a[0], a[1], a[2], a[8], a[9] = leaves
        out = autoassign_loss(*a, autoassign_loss_terms=terms, level_shapes=SHAPES)
        results.append((out, torch.autograd.grad(sum(out.values()), leaves)))
    (a, ga), (b, gb) = results
    for k in a:
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-12)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-15)


def _whole(fn, args, **kw):
    leaves = [args[i].clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
    a = list(args)
    a[0], a[1], a[2], a[8], a[9] = leaves
    out = fn(*a, level_shapes=SHAPES, **kw)
    return out, torch.autograd.grad(sum(out.values()), leaves)


@pytest.mark.parametrize("kind", ["random", "one_image_without_gt", "no_gt", "no_point_inside", "reduce_mean"])
def test_gflops_whole_loss_is_the_reference(kind, device):
    """gflops.autoassign_loss (the batch totals around the fused terms, with
    fewer ops) gives reference.autoassign_loss's losses and gradients: in
    batches without GTs (where it needs no placeholder terms: every leaf
    still gets a gradient) and with GTs that hold no point, and with a
    reduce_mean (called once, on a 2-vector, against the reference's twice)."""
    args = case(B=3, counts={"one_image_without_gt": (6, 0, 4), "no_gt": (0, 0, 0)}.get(kind, (6, 3, 5)), seed=21,
                dev=device)
    kw = {}
    if kind == "no_point_inside":  # 1 x 1 boxes between the grid points: GTs, but no point strictly inside
        args[5] = torch.cat([args[5][..., :2].floor() + 2.25, args[5][..., :2].floor() + 3.25], -1)
    if kind == "reduce_mean":  # as if another process had half these GTs and prior
        calls = []
        kw["reduce_mean"] = lambda t: calls.append(t.shape) or t * 0.75
    ref, rg = _whole(autoassign_loss, args, **kw)
    if kind == "reduce_mean":
        assert len(calls) == 2
        calls.clear()
    got, gg = _whole(gflops.autoassign_loss, args, **kw)
    for k in ("loss_pos", "loss_neg", "loss_center"):
        assert got[k].item() == pytest.approx(ref[k].item(), rel=1e-12, abs=1e-300), k
    for name, x, y in zip(("cls", "obj", "distances", "mu", "sigma"), rg, gg):
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-15, msg=name)
    if kind == "no_gt":
        assert got["loss_pos"].item() == 0 and got["loss_center"].item() == 0 and got["loss_neg"].item() > 0
        assert all(g.abs().max() == 0 for g in gg[2:]) and gg[0].abs().max() > 0
    if kind == "no_point_inside":
        assert gflops.autoassign_loss_terms(*args, level_shapes=SHAPES)[3].tolist() == [False] * 3
        assert got["loss_center"].item() == 0
    if kind == "reduce_mean":
        assert calls == [torch.Size([2])]


def test_gradcheck_float64(device):
    args = case(B=2, C=3, G=3, counts=(3, 2), shapes=[(4, 5), (2, 3)], seed=3, size=25, dev=device)
    shapes = [(4, 5), (2, 3)]

    def fn(cls, obj, mu, sigma):
        a = list(args)
        a[0], a[1], a[8], a[9] = cls, obj, mu, sigma
        return gflops.autoassign_loss_terms(*a, level_shapes=shapes)[:3]

    inputs = [args[i].clone().requires_grad_() for i in (0, 1, 8, 9)]
    assert fn(*inputs)[2].min() > 0
    # The emulated kernels take the fast (random projection) check: the full
    # one runs on the CPU kernels, and the two agree to rounding elsewhere.
    fast = _ops.lib() is not torch.ops.gflops
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=fast)

    # The distances move the GIoU (loss_pos) but the negative weights' IoU carries no gradient by definition.
    def fn_d(d):
        a = list(args)
        a[2] = d
        out = gflops.autoassign_loss_terms(*a, level_shapes=shapes)
        return out[0], out[2]

    assert torch.autograd.gradcheck(fn_d, [args[2].clone().requires_grad_()], fast_mode=fast)


def test_gradcheck_whole_loss_float64(device):
    """gflops.autoassign_loss without reduce_mean is one op (the terms and
    the batch totals, autoassign_loss_totals) with a backward of its own."""
    shapes = [(4, 5), (2, 3)]
    args = case(B=3, C=3, G=3, counts=(3, 0, 2), shapes=shapes, seed=3, size=25, dev=device)

    def fn(cls, obj, d, mu, sigma, keys=("loss_pos", "loss_neg", "loss_center")):
        a = list(args)
        a[0], a[1], a[2], a[8], a[9] = cls, obj, d, mu, sigma
        out = gflops.autoassign_loss(*a, level_shapes=shapes)
        return tuple(out[k] for k in keys)

    inputs = [args[i].clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
    # One node, the totals op's: not the terms op's, nor the ops of a Python sum around it.
    terms_node = gflops.autoassign_loss_terms(inputs[0], *args[1:], level_shapes=shapes)[0].grad_fn.name()
    nodes = {o.grad_fn.name() for o in fn(*inputs)}
    assert len(nodes) == 1 and "AutoAssign" in nodes.pop() != terms_node
    fast = _ops.lib() is not torch.ops.gflops
    assert torch.autograd.gradcheck(lambda *x: fn(*x, keys=("loss_pos", "loss_center")), inputs, fast_mode=fast)
    # loss_neg has no gradient w.r.t. the distances (the negative weights' IoU) nor mu and sigma (N_neg takes the
    # prior detached) by definition, though its value moves with them.
    assert torch.autograd.gradcheck(lambda c, o: fn(c, o, *inputs[2:], keys=("loss_neg",)), inputs[:2],
                                    fast_mode=fast)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_whole_loss_low_precision_logits(dtype, device):
    """The whole loss with float32 or bfloat16 logits (computed in float32)
    against the reference on the same logit values in float64."""
    args = case(B=3, counts=(6, 0, 5), seed=23, dtype=torch.float32, dev=device)
    args[0], args[1] = args[0].to(dtype), args[1].to(dtype)
    exact = [x.double() if x.is_floating_point() else x for x in args]
    ref, rg = _whole(autoassign_loss, exact)
    got, gg = _whole(gflops.autoassign_loss, args)
    assert all(v.dtype == torch.float32 for v in got.values())
    for k in ref:
        assert got[k].item() == pytest.approx(ref[k].item(), rel=2e-5), k
    for name, x, y in zip(("cls", "obj", "distances", "mu", "sigma"), rg, gg):
        tol = 2e-5 if y.dtype == torch.float32 else 8e-3  # the logits' gradients come back in their dtype
        assert (y.double() - x).abs().max() <= tol * x.abs().max() + 1e-9, name


def test_whole_loss_center_prior_below_the_clamp(device):
    """Points inside GTs whose center prior underflows to 0 (a tiny sigma):
    loss_center = G / 1e-12, and the clamp passes no gradient to mu and
    sigma there (torch's mask), where dividing by the prior would give NaN."""
    args = case(B=2, counts=(6, 3), seed=29, dev=device)
    args[9] = torch.full_like(args[9], 1e-3)
    assert gflops.autoassign_loss_terms(*args, level_shapes=SHAPES)[2].max() == 0
    ref, rg = _whole(autoassign_loss, args)
    got, gg = _whole(gflops.autoassign_loss, args)
    assert got["loss_center"].item() == pytest.approx(ref["loss_center"].item(), rel=1e-12) and ref[
        "loss_center"].item() > 1e12
    for name, x, y in zip(("cls", "obj", "distances", "mu", "sigma"), rg, gg):
        assert torch.isfinite(y).all(), name
        torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-15, msg=name)


def test_totals_backward_checks_its_inputs(device):
    """The totals' backward op, called directly: wrong shapes are named, with the op."""
    args = case(dev=device)
    flat = [v for hw in SHAPES for v in hw]
    out = _ops.lib().autoassign_loss_totals(*args, flat)
    g = [torch.ones((), dtype=out[0].dtype, device=out[0].device) for _ in range(3)]
    bwd = _ops.lib().autoassign_loss_totals_backward
    with pytest.raises(RuntimeError, match="autoassign_loss_totals_backward: image_stats must have shape"):
        bwd(*g, *args, out[3], out[4], out[5][:, :2], flat)
    with pytest.raises(RuntimeError, match="autoassign_loss_totals_backward: grad_neg must have shape"):
        bwd(g[0], g[1].reshape(1), g[2], *args, out[3], out[4], out[5], flat)
    with pytest.raises(RuntimeError, match="autoassign_loss_totals_backward: point_t must have shape"):
        bwd(*g, *args, out[3][:, :-1], out[4], out[5], flat)
    # gradients of another dtype are converted (and kept alive while the kernels read them)
    a = bwd(*[x.to(torch.float32) for x in g], *args, out[3], out[4], out[5], flat)
    b = bwd(*g, *args, out[3], out[4], out[5], flat)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_whole_loss_single_terms_and_empty_batch(device):
    """The gradient of one total alone (the others' gradients undefined) is
    the reference's; a batch of no images gives zeros and a backward."""
    args = case(B=3, counts=(6, 0, 4), seed=17, dev=device)
    for key in ("loss_pos", "loss_neg", "loss_center"):
        grads = []
        for fn in (autoassign_loss, gflops.autoassign_loss):
            leaves = [args[i].clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
            a = list(args)
            a[0], a[1], a[2], a[8], a[9] = leaves
            grads.append(torch.autograd.grad(fn(*a, level_shapes=SHAPES)[key], leaves, allow_unused=True))
        for x, y in zip(*grads):
            if x is None:
                assert y is None or y.abs().max() == 0, key
            else:
                torch.testing.assert_close(y, x, rtol=1e-10, atol=1e-15, msg=key)
    empty = [x[:0] if i in (0, 1, 2, 5, 6, 7) else x for i, x in enumerate(args)]
    leaves = [empty[i].clone().requires_grad_() for i in (0, 1, 2, 8, 9)]
    a = list(empty)
    a[0], a[1], a[2], a[8], a[9] = leaves
    out = gflops.autoassign_loss(*a, level_shapes=SHAPES)
    assert [v.item() for v in out.values()] == [0.0, 0.0, 0.0]
    sum(out.values()).backward()
    assert leaves[0].grad.shape == empty[0].shape and leaves[3].grad.abs().max() == 0


def test_whole_loss_dispatches_two_ops():
    """A training step's gflops.autoassign_loss (fwd+bwd, gradients None
    before it) dispatches the op and its backward and nothing else that
    computes: no casts, no totals in Python, no zero gradients filled for
    the outputs no loss uses (each would be host time and a launch on a GPU)."""
    from benchmarks.host_ops import top_level_ops
    args = case(dtype=torch.float32)
    leaves = [a.requires_grad_() if i in (0, 1, 2, 8, 9) else a for i, a in enumerate(args)]

    def step():
        out = gflops.autoassign_loss(*leaves, level_shapes=SHAPES)
        (out["loss_pos"] + out["loss_neg"] + out["loss_center"]).backward()
        for t in leaves:
            t.grad = None

    ops = top_level_ops(step)
    assert {k: v for k, v in ops.items() if k.startswith("gflops")} == {
        "gflops::autoassign_loss_totals": 1, "gflops::autoassign_loss_totals_backward": 1}, ops
    # the caller's two adds, autograd's seed and its detach of each leaf's new gradient
    assert set(ops) - {"gflops::autoassign_loss_totals", "gflops::autoassign_loss_totals_backward"} <= {
        "aten::add", "aten::ones_like", "aten::detach"}, ops


def test_deterministic_over_thread_counts():
    args = case(B=4, counts=(6, 5, 2, 6), G=6, seed=4, dtype=torch.float32)
    before = torch.get_num_threads()
    runs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(_run(gflops.autoassign_loss_terms, args))
    finally:
        torch.set_num_threads(before)
    for x, y in zip(runs[0][0] + list(runs[0][1]), runs[1][0] + list(runs[1][1])):
        assert torch.equal(x, y)


def test_opcheck(device):
    args = case(B=2, C=3, G=4, counts=(4, 1), shapes=[(4, 5), (2, 3)], seed=6, dev=device)
    flat = [4, 5, 2, 3]
    for i in (0, 1, 2, 8, 9):
        args[i] = args[i].clone().requires_grad_()
    torch.library.opcheck(_ops.lib().autoassign_loss_terms, (*args, flat))
    torch.library.opcheck(_ops.lib().autoassign_loss_totals, (*args, flat))


def test_torch_compile_fullgraph():
    args = case(B=2, C=3, G=4, counts=(4, 2), seed=8, dtype=torch.float32)

    def loss(*a):
        out = gflops.autoassign_loss_terms(*a, level_shapes=SHAPES)
        return out[0].sum() + out[1].sum() + out[2].sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    assert compiled(*args).item() == pytest.approx(loss(*args).item(), rel=1e-6)

    def whole(*a):
        return sum(gflops.autoassign_loss(*a, level_shapes=SHAPES).values())

    compiled = torch.compile(whole, fullgraph=True, backend="aot_eager")
    assert compiled(*args).item() == pytest.approx(whole(*args).item(), rel=1e-6)


@pytest.mark.parametrize("fn", [gflops.autoassign_loss_terms, gflops.autoassign_loss], ids=["terms", "whole"])
def test_bad_inputs_name_the_problem(device, validation, fn):
    args = case(dev=device)

    def call(i=None, v=None, **kw):
        a = list(args)
        if i is not None:
            a[i] = v
        return fn(*a, **{"level_shapes": SHAPES, **kw})

    with pytest.raises(ValueError, match="level_shapes"):
        fn(*args)
    with pytest.raises(ValueError, match="force_topk"):
        call(force_topk=True)
    with pytest.raises(RuntimeError, match="level_shapes .* hold 240 points but the inputs have P = 257"):
        call(level_shapes=SHAPES[:2])
    with pytest.raises(RuntimeError, match="obj_logits must have shape"):
        call(1, args[1][:, :-1])
    with pytest.raises(RuntimeError, match="distances must have shape"):
        call(2, args[2][..., :3])
    with pytest.raises(RuntimeError, match="mu must have shape"):
        call(8, args[8][:2])
    with pytest.raises(RuntimeError, match="obj_logits must have the cls_logits' dtype"):
        call(1, args[1].float())
    with pytest.raises(RuntimeError, match="gt_valid must be bool"):
        call(7, args[7].long())
    with pytest.raises(RuntimeError, match="gt_labels must be int64 or int32"):
        call(6, args[6].double())
    bad = args[6].clone()
    bad[0, 1] = 4
    with pytest.raises(RuntimeError, match=r"gt_labels of valid GTs must be in \[0, num_classes\), got 4"):
        call(6, bad)
    bad[0, 1] = -1
    with pytest.raises(RuntimeError, match="got -1"):
        call(6, bad)
    ok = args[6].clone()
    ok[1, 4] = 99  # a padded GT's label is never read
    call(6, ok)
    with pytest.raises(RuntimeError, match="cls_logits must have shape"):
        call(0, args[0][0])


@needs_emu
def _whole_as_terms(*args, **kw):
    """gflops.autoassign_loss's three totals, shaped (1,) each for _run."""
    return tuple(v.reshape(1) for v in gflops.autoassign_loss(*args, **kw).values())


@pytest.mark.parametrize("fn", [gflops.autoassign_loss_terms, _whole_as_terms], ids=["terms", "whole"])
def test_emulated_results_independent_of_block_order_and_grid(fn):
    """The CUDA kernels' results (forward and backward) do not depend on which
    block runs first or on the grid size, and equal the CPU kernels' to rounding."""
    m = emulation.load()
    args = case(B=3, counts=(6, 2, 5), seed=9, dtype=torch.float32)
    cpu = _run(fn, args)
    runs = []
    try:
        with _ops.use("gflops_emu"):
            for sms, shuffle, seed in [(1, False, 0), (5, True, 1), (2, True, 2)]:
                m.set_num_sms(sms)
                m.set_block_order(shuffle, seed)
                runs.append(_run(fn, args))
    finally:
        m.set_block_order(False, 0)
        m.set_num_sms(3)
    flat = [list(out) + list(grads) for out, grads in runs]
    for other in flat[1:]:
        for x, y in zip(flat[0], other):
            assert torch.equal(x, y)
    for x, y in zip(list(cpu[0]) + list(cpu[1]), flat[0]):
        if x.dtype == torch.bool:
            assert torch.equal(x, y)
        else:
            torch.testing.assert_close(y, x, rtol=2e-5, atol=1e-6 * float(x.abs().max()))


@needs_emu
@pytest.mark.parametrize("kind", ["gts", "no_gt", "no_point_inside", "no_class", "no_gt_slot", "no_image"])
@pytest.mark.parametrize("fn", [gflops.autoassign_loss_terms, _whole_as_terms], ids=["terms", "whole"])
def test_emulated_kernels_write_every_output_element(kind, fn):
    """Every element of every output and gradient is written by the kernels:
    with fresh memory poisoned (NaN) the emulated CUDA path gives the same
    bits (an element left unwritten passes elsewhere whenever memory is 0)."""
    emulation.load()
    args = case(B=3, counts={"no_gt": (0, 0, 0)}.get(kind, (6, 0, 5)), seed=31, dtype=torch.float32)
    if kind == "no_point_inside":
        args[5] = torch.cat([args[5][..., :2].floor() + 2.25, args[5][..., :2].floor() + 3.25], -1)
    if kind == "no_gt_slot":
        args[5], args[6], args[7] = args[5][:, :0], args[6][:, :0], args[7][:, :0]
    if kind == "no_image":
        args = [x[:0] if i in (0, 1, 2, 5, 6, 7) else x for i, x in enumerate(args)]
    if kind == "no_class":
        args[6] = torch.full_like(args[6], -1)
        args[7] = torch.zeros_like(args[7])
        args[0], args[8], args[9] = args[0][..., :0], args[8][:0], args[9][:0]
    with _ops.use("gflops_emu"):
        plain = _run(fn, args)
        with poisoned_memory():
            poisoned = _run(fn, args)
    for x, y in zip(list(plain[0]) + list(plain[1]), list(poisoned[0]) + list(poisoned[1])):
        assert (x is None and y is None) or torch.equal(x, y)


@needs_emu
def test_emulated_bad_label_without_validation_is_ignored():
    """On CUDA the label check costs a sync, so it runs only with validation
    on; without it a valid GT with a label outside [0, C) is ignored, never
    used as an index (the sanitizer runs would catch a stray access)."""
    emulation.load()
    args = case(seed=12)
    bad, ignored = list(args), list(args)
    bad[6] = args[6].clone()
    bad[6][0, 1] = 99
    ignored[7] = args[7].clone()
    ignored[7][0, 1] = False
    before = gflops.validation_enabled()
    gflops.set_validation(False)
    try:
        with _ops.use("gflops_emu"):
            got, want = _run(gflops.autoassign_loss_terms, bad), _run(gflops.autoassign_loss_terms, ignored)
    finally:
        gflops.set_validation(before)
    for x, y in zip(list(got[0]) + list(got[1]), list(want[0]) + list(want[1])):
        assert torch.equal(x, y)


def test_nan_distances_are_not_hidden(device):
    """A NaN box prediction inside a GT makes that image's positive loss NaN
    (torch's BCE would refuse the NaN probability; the clamp at -100 must not
    turn it into a finite 100)."""
    args = case(seed=13, dev=device)
    pts, gt = args[3], args[5]
    inside = ((pts[:, 0] > gt[0, 0, 0]) & (pts[:, 0] < gt[0, 0, 2]) & (pts[:, 1] > gt[0, 0, 1])
              & (pts[:, 1] < gt[0, 0, 3]))
    p = int(torch.nonzero(inside)[0, 0])
    args[2] = args[2].clone()
    args[2][0, p] = float("nan")
    out = gflops.autoassign_loss_terms(*args, level_shapes=SHAPES)
    assert torch.isnan(out[0][0]) and torch.isfinite(out[0][1])
