"""The AutoAssign kernels' point tiles: each block of points walks only the
GTs that may hold one of its points, then only those that may overlap one of
their predicted boxes (csrc/cuda/autoassign_kernels.cuh). Levels several
tiles wide and tall, more GTs than one shared-memory chunk, GTs that hold
only the points at a tile's edge, a best IoU that comes from a GT far from
the point, predicted boxes too wild to cull with: every term and gradient
as the reference's, and on the emulator the counts of what the tiles kept."""
import contextlib

import pytest
import torch

import gflops
from gflops import _ops, emulation
from conftest import emu_counters
from reference.autoassign_loss import autoassign_loss_terms as ref_terms
from reference.gfl import anchors
from test_autoassign_fused import _compare, _run

# Level 0: 3 tile rows (8 rows each) x 3 tile columns (32 columns each), both partial.
WIDE = [(20, 70), (10, 35), (5, 18), (3, 9), (2, 5)]
KEPT_INSIDE, KEPT_IOU, TILES, TILES_INSIDE = range(4)  # gf::cuda::AaCensus


def census(device):
    """The best-IoU kernel's counts once the block ends, on the emulator
    (empty elsewhere: the results are still checked)."""
    return emu_counters("set_autoassign_census")


@contextlib.contextmanager
def culls_off():
    """The kernels' full loops over GTs, for the block (their test hook):
    the oracle the culled loops must equal bit for bit, NaN included."""
    mods = [gflops._C] + ([emulation.load()] if _ops.lib() is torch.ops.gflops_emu else [])
    for m in mods:
        m.set_autoassign_cull(False)
    try:
        yield
    finally:
        for m in mods:
            m.set_autoassign_cull(True)


def assert_same_as_full_loops(args, shapes=WIDE):
    """Outputs and gradients of the culled kernels equal the full loops'."""
    got = _run(gflops.autoassign_loss_terms, args, shapes)
    with culls_off():
        full = _run(gflops.autoassign_loss_terms, args, shapes)
    for x, y in zip(list(got[0]) + list(got[1]), list(full[0]) + list(full[1])):
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
    return got


def wide_case(B=2, G=300, C=5, counts=(300, 257), seed=0, size=40, dev="cpu", shapes=WIDE, dist=12.0):
    g = torch.Generator().manual_seed(seed)
    pts, st, _, _ = anchors(shapes, "cpu", dtype=torch.float64)
    P = pts.shape[0]
    extent = torch.tensor([shapes[0][1] * 8, shapes[0][0] * 8], dtype=torch.float64)
    xy = torch.rand(B, G, 2, generator=g, dtype=torch.float64) * extent
    wh = torch.rand(B, G, 2, generator=g, dtype=torch.float64) ** 2 * size + 2
    gt = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    lab = torch.randint(0, C, (B, G), generator=g)
    valid = torch.arange(G)[None] < torch.tensor(counts)[:, None]
    valid[:, 5::7] = False  # holes inside the chunks too
    if G > 256:  # the same class on both sides of the chunk edge, overlapping: the later GT's weight wins
        gt[:, 256] = gt[:, 255] + 1.0
        lab[:, 256] = lab[:, 255]
    lab[~valid] = -1
    cls = torch.randn(B, P, C, generator=g, dtype=torch.float64) * 2
    obj = torch.randn(B, P, generator=g, dtype=torch.float64)
    d = torch.rand(B, P, 4, generator=g, dtype=torch.float64) * dist + 0.5
    mu = torch.randn(C, 2, generator=g, dtype=torch.float64) * 0.3
    sigma = torch.rand(C, 2, generator=g, dtype=torch.float64) + 0.6
    return [x.to(dev) for x in (cls, obj, d, pts, st, gt, lab, valid, mu, sigma)]


def num_tiles(shapes):
    return sum(-(-h // 8) * -(-w // 32) for h, w in shapes)


@pytest.mark.parametrize("seed", range(2))
def test_many_tiles_and_chunks_agree(seed, device):
    """Two chunks of GTs (300 and 257, holes in both), small GTs so that most
    tiles keep few of them, the same class overlapping across a chunk edge."""
    args = wide_case(seed=seed, dev=device)
    with census(device) as c:
        _compare(args, 1e-12, shapes=WIDE)
    assert_same_as_full_loops(args)
    if c:
        tiles, usable = num_tiles(WIDE), int(args[7].sum(1).max())
        assert 0 < c[TILES] <= 2 * tiles and 0 < c[TILES_INSIDE] <= c[TILES]
        # The cull keeps a small part of the GTs: the full loop would walk every usable GT in every tile.
        assert 0 < c[KEPT_INSIDE] < 0.5 * c[TILES] * usable, c
        assert 0 < c[KEPT_IOU] < 0.6 * c[TILES_INSIDE] * usable, c


def test_gts_that_hold_only_a_tile_edge(device):
    """Tiny GTs around single points on each side of tile edges (columns 31
    and 32, 63 and 64, rows 7 and 8, 15 and 16): a cull that is off by one
    point drops the only point such a GT holds."""
    args = wide_case(B=1, G=24, counts=(24,), seed=3, dev=device, size=6)
    gt, lab = args[5], args[6]
    spots = [(31, 3), (32, 3), (63, 10), (64, 10), (5, 7), (5, 8), (40, 15), (40, 16), (69, 19), (0, 0),
             (31, 7), (32, 8)]
    for k, (col, row) in enumerate(spots):
        x, y = col * 8.0, row * 8.0
        gt[0, k] = torch.tensor([x - 0.5, y - 0.5, x + 0.5, y + 0.5], dtype=gt.dtype, device=gt.device)
        lab[0, k] = k % 3
    # The same points again, by GTs that end exactly on the neighbouring point (not inside: strict test).
    for k, (col, row) in enumerate(spots):
        x, y = col * 8.0, row * 8.0
        gt[0, 12 + k] = torch.tensor([x - 8.0, y - 8.0, x + 0.25, y + 0.25], dtype=gt.dtype, device=gt.device)
        lab[0, 12 + k] = (k + 1) % 3
    _compare(args, 1e-12, shapes=WIDE)


def test_best_iou_from_a_gt_far_away(device):
    """A point inside a tiny GT whose predicted box is huge: its best IoU is
    with a large GT that holds no point of its tile (nor of the tiles near
    it), so a cull by the points alone would get the negative weights wrong."""
    args = wide_case(B=1, G=3, counts=(3,), seed=4, dev=device)
    pts, d, gt, lab = args[3], args[2], args[5], args[6]
    p = 2 * 70 + 3  # level 0, row 2, column 3: the first tile
    x, y = float(pts[p, 0]), float(pts[p, 1])
    gt[0, 0] = torch.tensor([x - 1, y - 1, x + 1, y + 1], dtype=gt.dtype, device=gt.device)
    gt[0, 1] = torch.tensor([300.0, 100.0, 560.0, 160.0], dtype=gt.dtype, device=gt.device)  # the last tile column
    gt[0, 2] = torch.tensor([x - 3, y - 3, x + 2, y + 2], dtype=gt.dtype, device=gt.device)
    lab[0] = torch.tensor([1, 1, 2], device=lab.device)
    d[0, p] = torch.tensor([10.0, 10.0, 600.0, 200.0], dtype=d.dtype, device=d.device)
    ref = ref_terms(*args, level_shapes=WIDE)
    got = gflops.autoassign_loss_terms(*args, level_shapes=WIDE)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-12, atol=0)
    # The far GT sets the weights: without it the point's IoU is its own tiny GTs'.
    alone = [a.clone() for a in args]
    alone[7][0, 1] = False
    assert not torch.allclose(gflops.autoassign_loss_terms(*alone, level_shapes=WIDE)[1], got[1], rtol=1e-6)


@pytest.mark.parametrize("wild", ["huge", "nan", "inf_gt", "inf_strip", "flat_strip"])
def test_boxes_too_wild_to_cull(wild, device):
    """Predicted boxes whose areas overflow (or are NaN), and a GT with an
    infinite side: the IoU is not provably 0 for disjoint boxes, so the tile
    keeps every GT for it: the results are the full loops' (NaN included),
    and where they are finite the reference's."""
    args = wide_case(B=2, G=40, counts=(40, 30), seed=5, dev=device, size=120)
    d, gt, pts = args[2], args[5], args[3]
    if wild == "huge":
        d[0, :200] = 1e30
    elif wild == "nan":  # a point inside a GT of image 0, in the middle tile of level 0
        p = 10 * 70 + 40
        x, y = pts[p].tolist()
        gt[0, 0] = torch.tensor([x - 9.0, y - 9.0, x + 9.0, y + 9.0], dtype=gt.dtype, device=gt.device)
        d[0, p] = float("nan")
    elif wild == "inf_gt":
        gt[1, 3, 2] = float("inf")
    elif wild == "flat_strip":  # a GT of width 0 and endless height: its area, 0 x inf, is NaN, so is every IoU
        gt[0, :, [0, 2]] = gt[0, :, [0, 2]].clamp(max=200.0)  # the other GTs far from it, on the left
        gt[0, 1] = torch.tensor([550.0, -float("inf"), 550.0, float("inf")], dtype=gt.dtype, device=gt.device)
    else:  # an endless predicted box and an endless GT, apart in x: 0 x inf makes their IoU NaN
        p = 2 * 70 + 3
        x, y = pts[p].tolist()
        gt[0, 0] = torch.tensor([x - 2.0, y - 2.0, x + 2.0, y + 2.0], dtype=gt.dtype, device=gt.device)
        gt[0, 1] = torch.tensor([401.0, -float("inf"), 405.0, float("inf")], dtype=gt.dtype, device=gt.device)
        d[0, p] = torch.tensor([1.0, float("inf"), 1.0, float("inf")], dtype=d.dtype, device=d.device)
    with census(device) as c:
        got = assert_same_as_full_loops(args)[0]
    if wild == "huge":  # the reference's BCE refuses a NaN probability: elsewhere the full loops are the oracle
        ref = ref_terms(*args, level_shapes=WIDE)
        for x, y in zip(ref[:3], got[:3]):
            torch.testing.assert_close(y, x, rtol=1e-12, atol=0)
    if wild == "nan":  # the NaN box is inside GT 0: its positive term is NaN (its IoU, by the clamps, is 0)
        assert torch.isnan(got[0][0]) and torch.isfinite(got[0][1]) and torch.isfinite(got[1]).all()
    if wild == "huge":
        assert torch.isfinite(got[1]).all()
    if wild == "flat_strip":  # kept everywhere (a GT with an infinite side is never culled): NaN in every best IoU
        assert torch.isnan(got[1][0]) and torch.isfinite(got[1][1])
    if wild == "inf_strip":  # the NaN IoU reaches the negative term of image 0
        assert torch.isnan(got[1][0]) and torch.isfinite(got[1][1])
    if c:
        assert c[KEPT_IOU] > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_many_tiles(dtype, device):
    args = [a.to(torch.float32) if a.is_floating_point() else a for a in wide_case(seed=6, G=90, counts=(90, 60),
                                                                                    dev=device)]
    args[0], args[1] = args[0].to(dtype), args[1].to(dtype)
    # The logits' gradients come back in their dtype: float16 rounds them to 2^-11 relative (one ulp here).
    _compare(args, {torch.float32: 2e-5, torch.float16: 1e-3, torch.bfloat16: 5e-5}[dtype], shapes=WIDE)
    assert_same_as_full_loops(args)
