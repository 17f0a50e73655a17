"""The CUDA multiclass_nms selection spread over chunks of (anchor, class)
pairs (csrc/cuda/nms_kernels.cuh: per-chunk histograms of the score bits,
one digit decided per (image, level) a pass, per-chunk counts, compaction
in flat order). A test hook shrinks the chunk so that small levels span many
chunks: ties at the threshold score across chunk edges, nms_pre above and
below the candidates, every dtype (float64: 8 passes), an image without
candidates. The results must equal the CPU kernel's and be the same bits at
every chunk size."""
import contextlib

import pytest
import torch

import gflops
from conftest import Accelerator, needs_emu
from gflops import emulation
from nms_cases import head_outputs
from test_nms import FEATS, SHAPES, SCALES, assert_same_detections


@contextlib.contextmanager
def chunk(accel, pairs):
    mods = [gflops._C] + ([emulation.load()] if accel.kind == "emu" else [])
    for m in mods:
        m.set_multiclass_chunk(pairs)
    try:
        yield
    finally:
        for m in mods:
            m.set_multiclass_chunk(16384)


def _both(accel, cls, reg, points, strides, sizes, pairs, **kw):
    b = cls.shape[0]
    shapes, scales = torch.tensor(SHAPES[:b]), torch.tensor(SCALES[:b])
    want = gflops.multiclass_nms(cls, reg, points, strides, sizes, shapes, scale_factors=scales, **kw)
    with chunk(accel, pairs), accel:
        got = gflops.multiclass_nms(*(accel(t) for t in (cls, reg, points, strides)), sizes, accel(shapes),
                                    scale_factors=accel(scales), **kw)
    return tuple(t.cpu() for t in got), want


# iou_threshold=1.0 suppresses nothing and max_per_img holds every slot, so
# the outputs are the candidates themselves: a wrong cut shows.
ALL = dict(iou_threshold=1.0, max_per_img=5000)
KWS = [dict(nms_pre=1000, **ALL),  # level 0 cut (~1300 candidates), levels 1 and 2 all: one call
       dict(nms_pre=40, **ALL), dict(nms_pre=1, **ALL), dict(score_thr=0.3, nms_pre=2000, **ALL),
       dict(nms_pre=7, max_per_img=5), dict()]


@pytest.mark.parametrize("pairs", [300, 777, 16384])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_chunks_match_the_cpu_kernel(accel, pairs, dtype):
    cls, reg, points, strides, sizes = head_outputs(3, FEATS, 6, seed=8, dtype=dtype)
    cls[2] = -9.0  # no candidate
    for kw in KWS:
        got, want = _both(accel, cls, reg, points, strides, sizes, pairs, **kw)
        assert_same_detections(got, want, dtype)


@pytest.mark.parametrize("pairs", [256, 300, 1000])
def test_ties_across_chunk_edges(accel, pairs):
    """Logits on a coarse grid: thousands of equal scores, so the nms_pre-th
    score ties across many chunks and only flat order decides which tie is
    a candidate."""
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 5, seed=9)
    cls = (cls * 2).round() / 2
    reg = (reg * 2).round() / 2
    for kw in [dict(nms_pre=100), dict(nms_pre=333, iou_threshold=1.0, max_per_img=400), dict(nms_pre=1)]:
        got, want = _both(accel, cls, reg, points, strides, sizes, pairs, **kw)
        assert_same_detections(got, want, torch.float32)
        base, _ = _both(accel, cls, reg, points, strides, sizes, 16384, **kw)
        for x, y in zip(got, base):
            assert torch.equal(x, y)


@pytest.mark.parametrize("nms_pre", [10, 700])
def test_every_score_equal(accel, nms_pre):
    """Every pair ties: the first nms_pre pairs of each level in flat order,
    so with 700 the selection crosses chunk edges by the equal counts alone."""
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 4, seed=2)
    cls.fill_(0.0)
    for pairs in (256, 500):
        got, want = _both(accel, cls, reg, points, strides, sizes, pairs, nms_pre=nms_pre, iou_threshold=1.0,
                          max_per_img=800)
        assert_same_detections(got, want, torch.float32)
        assert got[2][0, :4].tolist() == [0, 1, 2, 3]


@needs_emu
def test_chunks_independent_of_block_order():
    """The selection's blocks in any order give the same bits (the level's
    last chunk fills the empty slots; counts added by atomics)."""
    m = emulation.load()
    acc = Accelerator("emu")
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 5, seed=9)
    cls = (cls * 2).round() / 2
    want = gflops.multiclass_nms(cls, reg, points, strides, sizes, torch.tensor(SHAPES[:2]), nms_pre=333,
                                 max_per_img=400, iou_threshold=1.0)
    try:
        for shuffle, seed in [(True, 1), (True, 2), (True, 3)]:
            m.set_block_order(shuffle, seed)
            got, _ = _both(acc, cls, reg, points, strides, sizes, 300, nms_pre=333, max_per_img=400,
                           iou_threshold=1.0)
            base, _ = _both(acc, cls, reg, points, strides, sizes, 16384, nms_pre=333, max_per_img=400,
                            iou_threshold=1.0)
            for x, y in zip(got, base):
                assert torch.equal(x, y)
            assert_same_detections(got, want, torch.float32)
    finally:
        m.set_block_order(False, 0)


def test_float64_keys_equal_in_their_top_32_bits(accel):
    """float64 scores that differ only below their top 32 bits at the cut,
    some exactly equal: only the last four radix passes tell them apart."""
    cls, reg, points, strides, sizes = head_outputs(2, FEATS, 6, seed=10, dtype=torch.float64)
    g = torch.Generator().manual_seed(11)
    cls[:, :320] = -9.0  # level 0: only the group below is a candidate
    group = torch.randperm(320 * 6, generator=g)[:600]
    offsets = torch.randint(0, 400, (600,), generator=g).double() * 1e-12  # ~200 exact ties among them
    cls[:, :320].view(2, -1)[:, group] = 0.3 + offsets
    for pairs in (300, 16384):
        got, want = _both(accel, cls, reg, points, strides, sizes, pairs, nms_pre=250, **ALL)
        assert_same_detections(got, want, torch.float64)
        assert (got[3] > 250).all()


def test_empty_level_between_others(accel):
    feats = [(16, 20), (0, 10), (4, 5)]
    cls, reg, points, strides, sizes = head_outputs(2, feats, 5, seed=12)
    assert sizes[1] == 0
    for pairs in (256, 16384):
        got, want = _both(accel, cls, reg, points, strides, sizes, pairs, nms_pre=100, **ALL)
        assert_same_detections(got, want, torch.float32)


def test_chunk_hook_is_checked():
    for m in [gflops._C] + ([emulation.load()] if emulation.available() else []):
        with pytest.raises(RuntimeError, match="positive number of pairs, got 0"):
            m.set_multiclass_chunk(0)
