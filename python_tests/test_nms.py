"""gflops.nms, batched_nms and multiclass_nms against reference/nms.py and
a plain greedy loop (nms_cases.greedy); CPU, emulated CUDA and GPU."""
import pytest
import torch

import gflops
from conftest import needs_emu, ops
from gflops import _ops, emulation
from nms_cases import clustered_boxes, degenerate_boxes, greedy, head_outputs, random_boxes
from reference import nms as ref
from reference.ops import Ops

FEATS = [(16, 20), (8, 10), (4, 5)]  # a 128 x 160 image at strides 8, 16, 32
SHAPES = [(128, 160), (100, 150), (128, 90), (60, 160)]
SCALES = [(1.0, 1.0), (2.0, 1.5), (0.5, 0.5), (1.25, 1.25)]


def _cases(k, seed):
    yield "random", random_boxes(k, seed)
    yield "clustered", clustered_boxes(k, seed)
    yield "degenerate", degenerate_boxes(k, seed)


@pytest.mark.parametrize("k", [0, 1, 2, 63, 64, 65, 300])
@pytest.mark.parametrize("thr", [0.0, 0.5, 1.0])
def test_nms_matches_reference_and_greedy(device, k, thr):
    for name, (boxes, scores) in _cases(k, k + 7):
        want = greedy(boxes, scores, thr)
        assert torch.equal(ref.nms(boxes, scores, thr), want), name
        got = gflops.nms(boxes.to(device), scores.to(device), thr).cpu()
        assert torch.equal(got, want), name


@pytest.mark.parametrize("classes", [1, 3, 80])
def test_batched_nms_matches_reference_and_greedy(device, classes):
    for name, (boxes, scores) in _cases(500, classes):
        idxs = torch.randint(0, classes, (500,), generator=torch.Generator().manual_seed(classes)) * 7 - 5
        want = greedy(boxes, scores, 0.5, idxs)
        assert torch.equal(ref.batched_nms(boxes, scores, idxs, 0.5), want), name
        got = gflops.batched_nms(boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu()
        assert torch.equal(got, want), name
        got32 = gflops.batched_nms(boxes.to(device), scores.to(device), idxs.int().to(device), 0.5).cpu()
        assert torch.equal(got32, want), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_nms_dtypes(device, dtype):
    boxes, scores = clustered_boxes(400, 3, dtype=dtype)
    want = greedy(boxes, scores, 0.4)
    assert torch.equal(gflops.nms(boxes.to(device), scores.to(device), 0.4).cpu(), want)
    # scores of another dtype than the boxes
    assert torch.equal(gflops.nms(boxes.to(device), scores.float().to(device), 0.4).cpu(),
                       greedy(boxes, scores.float(), 0.4))


def test_nms_4096(device):
    boxes, scores = random_boxes(4096, 11, canvas=400)
    assert torch.equal(gflops.nms(boxes.to(device), scores.to(device), 0.5).cpu(), greedy(boxes, scores, 0.5))


def test_nms_100k_clusters_keep_each_cluster_best():
    """100k boxes in 1000 disjoint clusters of near-identical boxes: exactly the
    best box of each cluster survives, the lowest index among equal scores."""
    g = torch.Generator().manual_seed(5)
    cell = torch.arange(1000)
    origin = torch.stack([(cell % 40) * 100.0, (cell // 40) * 100.0], 1)
    base = torch.cat([origin, origin + 50], 1)
    which = torch.randint(0, 1000, (100_000,), generator=g)
    boxes = base[which] + torch.rand(100_000, 4, generator=g)
    scores = torch.randint(0, 50, (100_000,), generator=g).float()  # many ties
    keep = gflops.nms(boxes, scores, 0.5)
    best = {}
    for i in torch.argsort(-scores, stable=True).tolist():
        best.setdefault(int(which[i]), i)
    assert keep.tolist() == sorted(best.values(), key=lambda i: (-scores[i].item(), i))


def test_nms_100k_random_matches_blocked_oracle():
    """100k random boxes of sides 40-80 on a 300 x 300 canvas, against a blocked
    torch form of the greedy loop (the kept boxes so far against 1024
    candidates at a time)."""
    boxes, scores = random_boxes(100_000, 9, canvas=300, max_size=40)
    boxes[:, 2:] += 40
    order = torch.argsort(-scores, stable=True)
    b = boxes[order]
    kept = torch.zeros(0, 4)
    keep_pos = []
    for s in range(0, len(b), 1024):
        blk = b[s:s + 1024]
        alive = ~(ref.box_iou(kept, blk) > 0.5).any(0) if len(kept) else torch.ones(len(blk), dtype=torch.bool)
        iou = ref.box_iou(blk, blk)
        for i in range(len(blk)):
            if alive[i]:
                keep_pos.append(s + i)
                alive[i + 1:] &= ~(iou[i, i + 1:] > 0.5)
        kept = b[torch.tensor(keep_pos)]
    assert torch.equal(gflops.nms(boxes, scores, 0.5), order[torch.tensor(keep_pos)])


def test_nms_nan_scores_are_never_kept(device):
    boxes, scores = random_boxes(200, 2)
    scores[::5] = float("nan")
    want = greedy(boxes, scores, 0.3)
    assert torch.equal(ref.nms(boxes, scores, 0.3), want)
    assert torch.equal(gflops.nms(boxes.to(device), scores.to(device), 0.3).cpu(), want)
    assert gflops.nms(boxes.to(device), torch.full((200,), float("nan")).to(device), 0.3).numel() == 0


def test_nms_nan_boxes_do_not_crash(device):
    boxes, scores = random_boxes(100, 2)
    boxes[::3] = float("nan")
    keep = gflops.nms(boxes.to(device), scores.to(device), 0.5).cpu()
    assert keep.numel() <= 100 and (keep >= 0).all() and (keep < 100).all()
    assert set(range(0, 100, 3)) <= set(keep.tolist())  # a NaN box overlaps nothing
    # Infinite boxes: inter = inf, union = inf + inf - inf = NaN; clamp(min=eps) keeps the NaN, so no suppression.
    inf = float("inf")
    boxes = torch.tensor([[0, 0, inf, 10], [1, 0, inf, 10], [0, 0, 5, 5.0]])
    scores = torch.tensor([1.0, 0.5, 0.2])
    want = ref.nms(boxes, scores, 0.5)
    assert want.tolist() == [0, 1, 2] and torch.equal(greedy(boxes, scores, 0.5), want)
    assert torch.equal(gflops.nms(boxes.to(device), scores.to(device), 0.5).cpu(), want)


@pytest.mark.parametrize("change,message", [
    (dict(boxes=lambda b: b[:, :3]), "boxes must have shape \\(K, 4\\)"),
    (dict(boxes=lambda b: b.long()), "boxes must be float"),
    (dict(scores=lambda s: s[:-1]), "scores must have shape \\(K,\\)"),
    (dict(scores=lambda s: s.long()), "scores must be float"),
    (dict(thr=lambda t: 1.5), "iou_threshold must be in \\[0, 1\\], got 1.5"),
    (dict(thr=lambda t: -0.1), "iou_threshold must be in \\[0, 1\\]"),
    (dict(thr=lambda t: float("nan")), "iou_threshold must be in \\[0, 1\\]"),
    (dict(idxs=lambda i: i[:-1]), "idxs must have shape \\(K,\\)"),
    (dict(idxs=lambda i: i.float()), "idxs must be an integer tensor"),
])
def test_nms_bad_inputs(device, change, message):
    boxes, scores = random_boxes(10, 1)
    args = dict(boxes=boxes, scores=scores, idxs=torch.zeros(10, dtype=torch.long), thr=0.5)
    for k, fn in change.items():
        args[k] = fn(args[k])
    t = {k: v.to(device) if torch.is_tensor(v) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=message):
        ops().batched_nms(t["boxes"], t["scores"], t["idxs"], t["thr"])
    if "idxs" not in change:
        with pytest.raises(RuntimeError, match=message):
            ops().nms(t["boxes"], t["scores"], t["thr"])


def test_nms_mixed_devices_meta():
    boxes, scores = random_boxes(10, 1)
    with pytest.raises(RuntimeError, match="is on meta"):
        gflops.nms(boxes, scores.to("meta"), 0.5)


def test_nms_opcheck(device):
    boxes, scores = clustered_boxes(100, 1)
    idxs = torch.arange(100) % 3
    torch.library.opcheck(ops().nms, (boxes.to(device), scores.to(device), 0.5))
    torch.library.opcheck(ops().batched_nms, (boxes.to(device), scores.to(device), idxs.to(device), 0.5))


# ---- the multiclass post-process -----------------------------------------------------

def _tol(dtype):
    return {torch.float64: (1e-12, 1e-9), torch.float32: (1e-6, 2e-4), torch.float16: (2e-3, 0.0),
            torch.bfloat16: (1e-2, 0.0)}[dtype]


def _canonical(boxes, scores, labels, counts):
    """Each image's detections sorted by (-score to 5 decimals, label, box): float16/bfloat16
    logits repeat exactly, and torch.sigmoid itself rounds one value two ways
    (vectorised body or scalar tail), so the reference's order among those
    equal logits is not defined; the detected set is."""
    boxes, scores, labels = boxes.clone(), scores.clone(), labels.clone()
    for b, k in enumerate(counts.tolist()):
        key = lambda i: (-round(scores[b, i].item(), 5), labels[b, i].item(), *boxes[b, i].tolist())  # noqa: E731
        rows = sorted(range(k), key=key)
        boxes[b, :k], scores[b, :k], labels[b, :k] = boxes[b, rows], scores[b, rows], labels[b, rows]
    return boxes, scores, labels, counts


def assert_same_detections(got, want, dtype):
    boxes, scores, labels, counts = (t.cpu() for t in got)
    if dtype in (torch.float16, torch.bfloat16):
        boxes, scores, labels, counts = _canonical(boxes, scores, labels, counts)
        want = _canonical(*want)
    assert torch.equal(counts, want[3])
    assert torch.equal(labels, want[2])  # labels, order and padding (-1)
    rtol, atol = _tol(dtype)
    torch.testing.assert_close(scores, want[1], rtol=rtol, atol=atol)
    torch.testing.assert_close(boxes, want[0], rtol=rtol, atol=atol)
    for b, k in enumerate(counts.tolist()):
        assert (scores[b, k:] == 0).all() and (boxes[b, k:] == 0).all() and (labels[b, k:] == -1).all()


def _run_both(device, cls, reg, points, strides, sizes, **kw):
    kw.setdefault("scale_factors", SCALES[:cls.shape[0]])
    want = ref.multiclass_nms(cls, reg, points, strides, sizes, SHAPES[:cls.shape[0]], **kw)
    t = lambda x: x.to(device)  # noqa: E731
    kw["scale_factors"] = torch.tensor(kw["scale_factors"]).to(device)
    got = gflops.multiclass_nms(t(cls), t(reg), t(points), t(strides), sizes,
                                torch.tensor(SHAPES[:cls.shape[0]]).to(device), **kw)
    return got, want


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_multiclass_matches_reference(device, dtype):
    cls, reg, points, strides, sizes = head_outputs(4, FEATS, 6, seed=1, dtype=dtype)
    cls[1] = -8.0  # an image with no candidate above score_thr
    for kw in [dict(), dict(nms_pre=40), dict(nms_pre=30, max_per_img=7, iou_threshold=0.3),
               dict(min_bbox_size=8.0, score_thr=0.2), dict(score_thr=0.0, nms_pre=5, iou_threshold=0.0),
               dict(iou_threshold=1.0, max_per_img=2000)]:  # no cut: every candidate is kept
        got, want = _run_both(device, cls, reg, points, strides, sizes, **kw)
        assert_same_detections(got, want, dtype)


def test_multiclass_huge_nms_pre(device):
    """nms_pre far above the pair count (no overflow, no huge buffer): all pairs compete."""
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    t = lambda x: x.to(device)  # noqa: E731
    args = (t(cls), t(reg), t(points), t(strides), sizes, t(torch.tensor(SHAPES[:2])))
    want = gflops.multiclass_nms(*args, nms_pre=10**6, max_per_img=300)
    for nms_pre in (2**40, 2**62):
        got = gflops.multiclass_nms(*args, nms_pre=nms_pre, max_per_img=300)
        for x, y in zip(got, want):
            assert torch.equal(x, y)


def test_multiclass_cases_are_exercised():
    """The inputs above do reach each regime: more than nms_pre candidates per
    level, more than max_per_img survivors, and an empty image."""
    cls, reg, points, strides, sizes = head_outputs(4, FEATS, 6, seed=1)
    cls[1] = -8.0
    per_level = [(cls[0, s:s + n].sigmoid() > 0.05).sum().item() for s, n in zip([0, 320, 400], sizes)]
    assert per_level[0] > 1000 and per_level[1] > 40
    _, _, _, counts = ref.multiclass_nms(cls, reg, points, strides, sizes, SHAPES, scale_factors=SCALES)
    assert counts.tolist()[1] == 0 and counts.max() == 100


def test_multiclass_ties_go_to_the_lower_flat_index(device):
    """Every logit equal: every score ties, so the kept set is decided by flat
    index alone; with nms_pre = 10 only the first 10 (anchor, class) pairs of
    each level are candidates."""
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 4, seed=2)
    cls.fill_(0.0)  # sigmoid = 0.5 exactly
    reg.fill_(0.0)  # every box is the anchor's 8-bin square
    for kw in [dict(nms_pre=10), dict(nms_pre=1000, max_per_img=50)]:
        got, want = _run_both(device, cls, reg, points, strides, sizes, **kw)
        assert_same_detections(got, want, torch.float32)
    got, _ = _run_both(device, cls, reg, points, strides, sizes, nms_pre=10, iou_threshold=1.0)
    assert got[2][0, :4].tolist() == [0, 1, 2, 3]  # anchor 0's four classes, class order


def test_multiclass_nan_logits_are_never_candidates(device):
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    cls[0, ::2] = float("nan")
    reg[1, ::3] = float("nan")  # NaN boxes fail the size test
    reg[1, 1::3, 5] = float("inf")  # so do boxes with a +inf logit (softmax is NaN there)
    reg[0, 1::4, 17:34] = -float("inf")  # and a side whose logits are all -inf
    got, want = _run_both(device, cls, reg, points, strides, sizes)
    assert_same_detections(got, want, torch.float32)
    assert not torch.isnan(got[0]).any() and not torch.isnan(got[1]).any()


def test_multiclass_cpu_and_cuda_kernels_agree(accel):
    cls, reg, points, strides, sizes = head_outputs(3, FEATS, 8, seed=4, mean=-3.0)
    shapes = torch.tensor(SHAPES[:3])
    want = gflops.multiclass_nms(cls, reg, points, strides, sizes, shapes, nms_pre=200, max_per_img=60)
    with accel:
        got = gflops.multiclass_nms(*(accel(t) for t in (cls, reg, points, strides)), sizes, accel(shapes),
                                    nms_pre=200, max_per_img=60)
    assert_same_detections(got, want, torch.float32)


def test_multiclass_empty_inputs(device):
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    t = lambda x: x.to(device)  # noqa: E731
    out = gflops.multiclass_nms(t(cls[:0]), t(reg[:0]), t(points), t(strides), sizes, t(torch.zeros(0, 2)))
    assert [tuple(o.shape) for o in out] == [(0, 100, 4), (0, 100), (0, 100), (0,)]
    out = gflops.multiclass_nms(t(cls[:, :0]), t(reg[:, :0]), t(points[:0]), t(strides[:0]), [0],
                                t(torch.tensor(SHAPES[:2])), max_per_img=5)
    assert out[3].tolist() == [0, 0] and (out[2] == -1).all()
    out = gflops.multiclass_nms(t(cls[..., :0]), t(reg), t(points), t(strides), sizes, t(torch.tensor(SHAPES[:2])))
    assert out[3].tolist() == [0, 0]


def test_multiclass_opcheck(device):
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    t = lambda x: x.to(device)  # noqa: E731
    shapes, scales = t(torch.tensor(SHAPES[:2], dtype=torch.float32)), t(torch.tensor(SCALES[:2]))
    for sc in (None, scales):
        torch.library.opcheck(ops().multiclass_nms, (t(cls), t(reg), t(points), t(strides), sizes, shapes, sc, 16,
                                                     0.05, 100, 0.6, 20, 0.0))


def test_multiclass_compile_fullgraph(device):
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    t = lambda x: x.to(device)  # noqa: E731
    cls, reg, points, strides = t(cls), t(reg), t(points), t(strides)
    shapes = t(torch.tensor(SHAPES[:2], dtype=torch.float32))

    def f(c):
        return gflops.multiclass_nms(c, reg, points, strides, sizes, shapes)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(cls)
    want = f(cls)
    # The op's own outputs, bitwise (it is deterministic); not reductions of them, which
    # inductor may sum in another order than eager.
    assert len(got) == len(want) == 4 and want[3].sum() > 0
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_multiclass_defaults_and_list_shapes():
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    a = gflops.multiclass_nms(cls, reg, points, strides, sizes, SHAPES[:2])
    b = gflops.multiclass_nms(cls, reg, points, strides, sizes, torch.tensor(SHAPES[:2]), 0.05, 1000, 0.6, 100, 0.0,
                              None, 16)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_multiclass_no_gradient_flows():
    cls, reg, points, strides, sizes = head_outputs(1, FEATS, 3, seed=3)
    out = gflops.multiclass_nms(cls.requires_grad_(), reg.requires_grad_(), points, strides, sizes, SHAPES[:1])
    assert not any(t.requires_grad for t in out)


BAD_MC = [
    (dict(cls=lambda c: c[0]), "cls_scores must have shape \\(B, N, C\\)"),
    (dict(cls=lambda c: c.long()), "cls_scores must be float"),
    (dict(reg=lambda r: r[..., :60]), "bbox_preds must have shape \\(B, N, 4 \\* \\(reg_max \\+ 1\\)\\)"),
    (dict(reg=lambda r: r.double()), "bbox_preds must have cls_scores' dtype"),
    (dict(points=lambda p: p[:, :1]), "points must have shape \\(N, 2\\)"),
    (dict(strides=lambda s: s[:-1]), "strides must have shape \\(N,\\)"),
    (dict(shapes=lambda s: s[:1]), "image_shapes must have shape \\(B, 2\\)"),
    (dict(scales=lambda s: torch.ones(2, 3)), "scale_factors must have shape \\(B, 2\\)"),
    (dict(sizes=lambda s: s[:-1]), "sum to 400 but cls_scores has N = 420"),
    (dict(sizes=lambda s: [1] * 33), "level_sizes must list 1 to 32 levels"),
    (dict(sizes=lambda s: [430, -10]), "level_sizes must be >= 0"),
    (dict(reg_max=lambda r: -1), "reg_max must be >= 0"),
    (dict(score_thr=lambda t: 1.5), "score_thr must be in \\[0, 1\\]"),
    (dict(iou_thr=lambda t: -1.0), "iou_threshold must be in \\[0, 1\\]"),
    (dict(nms_pre=lambda n: 0), "nms_pre must be >= 1"),
    (dict(max_per_img=lambda n: 0), "max_per_img must be >= 1"),
    (dict(min_size=lambda m: -1.0), "min_bbox_size must be finite and >= 0"),
]


@pytest.mark.parametrize("change,message", BAD_MC)
def test_multiclass_bad_inputs(device, change, message):
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 3, seed=3)
    args = dict(cls=cls, reg=reg, points=points, strides=strides, sizes=sizes, shapes=torch.tensor(SHAPES[:2]),
                scales=None, reg_max=16, score_thr=0.05, nms_pre=100, iou_thr=0.6, max_per_img=10, min_size=0.0)
    for k, fn in change.items():
        args[k] = fn(args[k])
    a = {k: v.to(device) if torch.is_tensor(v) else v for k, v in args.items()}
    with pytest.raises(RuntimeError, match=message):
        ops().multiclass_nms(a["cls"], a["reg"], a["points"], a["strides"], a["sizes"], a["shapes"], a["scales"],
                             a["reg_max"], a["score_thr"], a["nms_pre"], a["iou_thr"], a["max_per_img"],
                             a["min_size"])


def test_multiclass_mixed_devices_meta():
    cls, reg, points, strides, sizes = head_outputs(1, FEATS, 3, seed=3)
    with pytest.raises(RuntimeError, match="is on meta"):
        gflops.multiclass_nms(cls, reg.to("meta"), points, strides, sizes, SHAPES[:1])


def test_reference_ops_switch_takes_them():
    o = Ops("gflops")
    for name in ("nms", "batched_nms", "multiclass_nms"):
        assert getattr(o, name) is getattr(gflops, name) and o.sources[name] == "gflops"


@needs_emu
def test_emulated_results_independent_of_block_order_and_grid():
    """No result may depend on which block runs first or on the grid size."""
    m = emulation.load()
    boxes, scores = clustered_boxes(700, 4)
    idxs = torch.arange(700) % 3
    cls, reg, points, strides, sizes = head_outputs(3, FEATS, 5, seed=6)
    shapes = torch.tensor(SHAPES[:3])
    want = (greedy(boxes, scores, 0.5), greedy(boxes, scores, 0.5, idxs),
            gflops.multiclass_nms(cls, reg, points, strides, sizes, shapes, nms_pre=300, max_per_img=50))
    try:
        with _ops.use("gflops_emu"):
            for sms, shuffle, seed in [(1, False, 0), (5, True, 1), (2, True, 2)]:
                m.set_num_sms(sms)
                m.set_block_order(shuffle, seed)
                assert torch.equal(gflops.nms(boxes, scores, 0.5), want[0])
                assert torch.equal(gflops.batched_nms(boxes, scores, idxs, 0.5), want[1])
                got = gflops.multiclass_nms(cls, reg, points, strides, sizes, shapes, nms_pre=300, max_per_img=50)
                assert_same_detections(got, want[2], torch.float32)
    finally:
        m.set_block_order(False, 0)
        m.set_num_sms(3)
