"""CUDA batched_nms by class segments (csrc/cuda/nms_kernels.cuh): rows
grouped by class, classes of at most segment_max rows suppressed by one block
each, bigger ones through the tiled device-wide mask restricted to their
class. Both paths and their mix, several mask tiles, NaN scores inside
classes, ties across classes: every result as the plain greedy loop's, and
on the emulator the kernels each input launches."""
import contextlib

import pytest
import torch

import gflops
from conftest import Accelerator, needs_emu
from gflops import emulation
from nms_cases import clustered_boxes, degenerate_boxes, greedy, random_boxes


def emulated(accel):
    return accel.kind == "emu"


@contextlib.contextmanager
def limits(accel, segment_rows=1024, mask_bytes=32 << 20):
    """The kernels' test hooks (the largest class one block takes, the mask
    tile's budget) for the block, on the library the test runs."""
    mods = [gflops._C] + ([emulation.load()] if emulated(accel) else [])
    for m in mods:
        m.set_nms_segment_max(segment_rows)
        m.set_nms_mask_bytes(mask_bytes)
    try:
        yield
    finally:
        for m in mods:
            m.set_nms_segment_max(1024)
            m.set_nms_mask_bytes(32 << 20)


@contextlib.contextmanager
def launches(accel):
    """Names of the kernels launched in the block, on the emulator (empty elsewhere)."""
    names = []
    if not emulated(accel):
        yield names
        return
    m = emulation.load()
    m.set_launch_log(True)
    try:
        yield names
    finally:
        names.extend(r[0] for r in m.launch_log())
        m.set_launch_log(False)


@contextlib.contextmanager
def census(accel):
    """The rows each path settled in the block (one block per class, device
    wide), on the emulator (empty elsewhere)."""
    counts = []
    if not emulated(accel):
        yield counts
        return
    m, buf = emulation.load(), torch.zeros(4, dtype=torch.long)
    m.set_nms_census(buf)
    try:
        yield counts
    finally:
        m.set_nms_census(None)
    counts.extend(buf.tolist()[:2])


def uneven_classes(sizes, seed):
    """Class labels with the given number of rows each, shuffled, as negative
    and sparse values (the kernels never index by class)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), 1000 - 37 * c) for c, n in enumerate(sizes)])
    return labels[torch.randperm(len(labels), generator=g)]


SIZES = [1, 2, 63, 64, 65, 100, 129, 300, 7, 200]  # around the 64-row word and segment_max = 64 / 128


def _check(accel, boxes, scores, idxs, thr):
    want = greedy(boxes, scores, thr, idxs)
    with accel:
        got = gflops.batched_nms(accel(boxes), accel(scores), accel(idxs), thr).cpu()
    assert torch.equal(got, want)
    return got



@pytest.mark.parametrize("segment_rows", [64, 128, 1024])
@pytest.mark.parametrize("case", ["random", "clustered", "degenerate"])
def test_segments_of_every_size(accel, segment_rows, case):
    k = sum(SIZES)
    make = dict(random=random_boxes, clustered=clustered_boxes, degenerate=degenerate_boxes)[case]
    boxes, scores = make(k, 3)
    idxs = uneven_classes(SIZES, 4)
    with limits(accel, segment_rows), launches(accel) as names:
        _check(accel, boxes, scores, idxs, 0.5)
    if emulated(accel):
        big = any(n > segment_rows for n in SIZES)
        assert any("nms_segment_kernel" in n for n in names)
        assert any("nms_mask_kernel" in n for n in names) == big


@pytest.mark.parametrize("budget,tiles", [(1024, 11), (17000, 4)])
def test_several_mask_tiles(accel, budget, tiles):
    """A tile budget of 1 KiB (64 rows a tile) or 17000 bytes (192 rows: 3
    words): classes span several tiles, settle inside one and across them,
    and a kept row of one tile removes rows of later tiles."""
    boxes, scores = clustered_boxes(700, 8)
    idxs = uneven_classes([300, 250, 100, 50], 9)
    with limits(accel, 64, budget), launches(accel) as names:
        _check(accel, boxes, scores, idxs, 0.3)
        # one class: nms itself, also tiled
        want = greedy(boxes, scores, 0.3)
        with accel:
            assert torch.equal(gflops.nms(accel(boxes), accel(scores), 0.3).cpu(), want)
    if emulated(accel):
        assert sum("nms_scan_kernel" in n for n in names) == 2 * tiles


def test_nan_scores_and_ties_inside_classes(accel):
    boxes, scores = degenerate_boxes(600, 5)
    scores[::7] = float("nan")
    idxs = uneven_classes([400, 150, 40, 10], 6)
    for rows in (64, 1024):
        with limits(accel, rows):
            got = _check(accel, boxes, scores, idxs, 0.5)
        assert not torch.isnan(scores[got]).any()


def test_one_class_is_nms(accel):
    """batched_nms with one class gives nms's result on both paths, and nms
    launches no per-class kernel once K passes segment_max."""
    boxes, scores = clustered_boxes(500, 2)
    for rows in (64, 1024):
        with limits(accel, rows), launches(accel) as names, accel:
            want = gflops.nms(accel(boxes), accel(scores), 0.5).cpu()
            got = gflops.batched_nms(accel(boxes), accel(scores), accel(torch.full((500,), 3)), 0.5).cpu()
        assert torch.equal(want, greedy(boxes, scores, 0.5)) and torch.equal(got, want)
        if emulated(accel):
            nms_calls = names[:names.index(next(n for n in names if "nms_gather" in n), 1)]
            assert any("nms_segment_kernel" in n for n in nms_calls) == (rows >= 500)


def test_many_tiny_classes(accel):
    """Every box its own class but a few: a block walks 64 segment starts."""
    boxes, scores = random_boxes(400, 12, canvas=60)
    idxs = torch.arange(400)
    idxs[::9] = 5
    with limits(accel, 64):
        _check(accel, boxes, scores, idxs, 0.2)


def test_segment_limits_are_checked():
    for m in [gflops._C] + ([emulation.load()] if emulation.available() else []):
        with pytest.raises(RuntimeError, match="64 to 4096 rows, got 63"):
            m.set_nms_segment_max(63)
        with pytest.raises(RuntimeError, match="positive budget, got 0"):
            m.set_nms_mask_bytes(0)


SEGMENT_ROWS, BIG_ROWS = 0, 1  # gf::cuda::NmsCensus


@pytest.mark.parametrize("classes", [15, 16, 40])
def test_mid_classes_either_side_of_sixteen(accel, classes):
    """Classes above segment_max but within 4096 rows go to one block each
    only when at least 16 of them fill the GPU: both sides of that count,
    beside small classes; on the emulator, the rows each path settled."""
    sizes = [65 + (13 * c) % 60 for c in range(classes)] + [5, 30, 64]
    boxes, scores = clustered_boxes(sum(sizes), classes, clusters=12)
    with limits(accel, 64), census(accel) as rows:
        _check(accel, boxes, scores, uneven_classes(sizes, classes), 0.45)
    if emulated(accel):
        mid = sum(sizes[:classes])
        want = [sum(sizes), 0] if classes >= 16 else [sum(sizes) - mid, mid]
        assert rows == want


def test_class_paths_by_size(accel):
    """Which rows each path settles: a class of 4097 rows is never one
    block's; 1024 rows are by default; one class of K rows (nms) above
    segment_max goes device-wide."""
    cases = [([4097, 100], 1024, [100, 4097]), ([1024, 3], 1024, [1027, 0]), ([300], 64, [0, 300]),
             ([64, 64, 10], 64, [138, 0]),
             ([4096] + [65] * 16, 64, [4096 + 16 * 65, 0])]  # 17 mid classes: even 4096 rows (64 words) in one block
    for sizes, segment_rows, want in cases:
        boxes, scores = clustered_boxes(sum(sizes), 3, clusters=40)
        with limits(accel, segment_rows), census(accel) as rows:
            _check(accel, boxes, scores, uneven_classes(sizes, 1), 0.5)
        if emulated(accel):
            assert rows == want, sizes


@needs_emu
def test_emu_block_order_and_grid_do_not_matter():
    """Both paths, several tiles, blocks run in shuffled orders on 1-5
    emulated SMs: the same kept indices (the greedy loop's)."""
    acc, m = Accelerator("emu"), emulation.load()
    boxes, scores = clustered_boxes(900, 13, clusters=20)
    idxs = uneven_classes([300, 200, 120, 64, 65, 40, 1] + [10] * 11, 14)
    want = greedy(boxes, scores, 0.4, idxs)
    try:
        for sms, shuffle, seed in [(1, False, 0), (5, True, 1), (2, True, 2)]:
            m.set_num_sms(sms)
            m.set_block_order(shuffle, seed)
            with limits(acc, 64, 4096):
                assert torch.equal(_check(acc, boxes, scores, idxs, 0.4), want)
    finally:
        m.set_block_order(False, 0)
        m.set_num_sms(3)
