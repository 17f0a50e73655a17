"""gflops.atss_assign's window search on grid levels (common/atss.h): which
path each level takes (counted by the kernels' test hook), windows that must
widen, grids that are not uniform or hold several anchors a cell, and levels
that are not grids at all. The reference is the oracle throughout."""
import contextlib

import pytest
import torch

import gflops
from gflops import _ops
from conftest import emu_counters, poisoned_memory
from assign_cases import cell_grid, grid, random_gts
from test_assign import assert_same, both

RANK, LIST, SCAN, WIDEN = range(4)  # gf::AtssPath


@contextlib.contextmanager
def census(device):
    """Yields a list that holds the kernels' path counts once the block ends
    (empty on a GPU, where the tests check the results alone)."""
    if _ops.lib() is torch.ops.gflops_emu:
        with emu_counters("set_atss_census") as counts:
            yield counts
        return
    counts = []
    if device == "cpu":
        gflops._C.atss_census()  # clears
        yield counts
        counts.extend(gflops._C.atss_census())
    else:  # a GPU: the results are still checked; the path counts are the CPU kernel's and the emulator's
        yield counts


def level_rows(valid, sizes, topk=9):
    """(image, GT, level) triples with candidates: what the kernels count."""
    return int(valid.sum()) * sum(1 for n in sizes if min(n, topk) > 0)


def test_grid_levels_take_the_windows(device):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(4, 30, seed=3)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0 and c[RANK] + c[LIST] == level_rows(valid, sizes))
    if _ops.lib() is not torch.ops.gflops:
        assert c[RANK] > 0  # 4 x 4 cells for topk 9: one anchor a lane


@pytest.mark.parametrize("how", ["grid", "off_grid", "no_gt_slot"])
def test_every_output_element_is_written(device, how):
    """With fresh memory poisoned (NaN floats, the largest integers: torch's
    deterministic fill), grid, scanned and GT-less calls still equal the
    reference: no output element, workspace read or probe word is left to
    whatever memory held."""
    anchors, sizes = grid()
    if how == "off_grid":
        anchors, sizes = off_grid(anchors, sizes, "shuffled")
    gts, labels, valid = random_gts(3, 20, seed=5)
    if how == "no_gt_slot":
        gts, labels, valid = gts[:, :0], labels[:, :0], valid[:, :0]
    with poisoned_memory():
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)


@pytest.mark.parametrize("per_cell", [1, 2, 3])
@pytest.mark.parametrize("topk", [1, 9, 20, 40])
def test_uneven_and_multi_anchor_grids(device, per_cell, topk):
    anchors, sizes = cell_grid([(14, 11), (7, 6), (3, 3)], per_cell, irregular=True)
    gts, labels, valid = random_gts(2, 25, extent=200, seed=per_cell * 10 + topk)
    mid = torch.tensor([[[4.0, 4, 12, 12], [10, 2, 30, 18], [26, 26, 58, 58]]])  # centres on cell midpoints
    gts = torch.cat([gts, mid.expand(2, -1, -1)], 1)
    labels, valid = torch.cat([labels, labels[:, :3]], 1), torch.cat([valid, torch.ones(2, 3, dtype=torch.bool)], 1)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, topk=topk, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0 and c[RANK] + c[LIST] == level_rows(valid, sizes, topk))
    assert (ref[0] > 0).any()


def test_windows_widen_where_they_must(device):
    """Holes of invalid anchors around the GTs' centres, centres outside the
    grid, at its corners and huge boxes: the first window cannot be exact."""
    anchors, sizes = grid()
    gts = torch.tensor([[[40.0, 40, 56, 56], [90, 20, 130, 44], [-60, -60, -20, -20], [150, 70, 190, 90],
                         [-4, -4, 4, 4], [124, 124, 132, 132], [-1e6, -1e6, 1e6, 2e6], [10, 60, 80, 120]]])
    gts = gts.expand(2, -1, -1).clone()
    labels = torch.arange(8).expand(2, -1)
    valid = torch.ones(2, 8, dtype=torch.bool)
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    anchor_valid = torch.ones(2, anchors.shape[0], dtype=torch.bool)
    anchor_valid[0] &= ~(((cx - 48).abs() < 30) & ((cy - 48).abs() < 30))  # a hole under GT 0
    anchor_valid[1] &= ~(((cx - 110).abs() < 20) & ((cy - 32).abs() < 40))  # and under GT 1
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, anchor_valid=anchor_valid, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0 and c[WIDEN] > 0)
    assert (ref[0] > 0).any()


def off_grid(anchors, sizes, how):
    """The anchors with their first level made a non-grid in one way."""
    a, n = anchors.clone(), sizes[0]
    if how == "nudged":  # one anchor's centre half a pixel off its column
        a[n // 2 + 3, [0, 2]] += 0.5
    elif how == "last nudged":  # the level's last anchor: the grid test's last chunk must see it
        a[n - 1, [1, 3]] += 0.5
    elif how == "shuffled":  # the level's anchors in another order
        a[:n] = a[:n][torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    elif how == "mirrored":  # columns in decreasing x
        a[:n, [0, 2]] = 200 - a[:n, [2, 0]]
    elif how == "ragged":  # a level whose size is not rows x columns
        return a[1:], [n - 1] + list(sizes[1:])
    return a, sizes


@pytest.mark.parametrize("how", ["nudged", "last nudged", "shuffled", "mirrored", "ragged"])
def test_levels_off_the_grid_are_scanned(device, how):
    anchors, sizes = off_grid(*grid(), how)
    gts, labels, valid = random_gts(3, 12, seed=8)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert not c or c[SCAN] == int(valid.sum())  # the first level only
    assert not c or (c[RANK] + c[LIST] == level_rows(valid, sizes) - c[SCAN])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_grid_windows_in_every_dtype(device, dtype):
    # Coordinates within +-256: integers bfloat16 holds exactly, so the centres still form a grid.
    anchors, sizes = cell_grid([(8, 8), (4, 4)], 2, irregular=True, dtype=dtype)
    gts, labels, valid = random_gts(2, 20, extent=90, seed=12, dtype=dtype)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0)


def test_a_tie_at_the_window_edge_goes_by_index(device):
    """The window's 9th nearest (anchor 14, at (24, 18) from the GT's centre)
    is exactly as far as an anchor outside it with a lower index (anchor 11,
    at (0, 30)): the window is not exact, and anchor 11 is the candidate. Its
    box is the only one that overlaps the GT much, so it alone is positive."""
    xs = 100 - torch.tensor([50.0, 40, 24, 12, 6, 0])
    ys = 100 - torch.tensor([48.0, 30, 18, 12, 6, 0])
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx.flatten(), cy.flatten()], 1)
    anchors = torch.cat([centres - 2, centres + 2], 1)
    anchors[11] = torch.tensor([60.0, 30, 140, 110])
    anchor_valid = torch.ones(36, dtype=torch.bool)
    for dx, dy in [(12, 12), (24, 0), (24, 6), (24, 12), (0, 18), (6, 18), (12, 18)]:  # thin the window to 9
        anchor_valid[((cx.flatten() == 100 - dx) & (cy.flatten() == 100 - dy)).nonzero()] = False
    gts, labels, valid = torch.tensor([[[60.0, 60, 140, 140]]]), torch.tensor([[3]]), torch.tensor([[True]])
    with census(device) as c:
        ours, ref = both(anchors, [36], gts, labels, valid, anchor_valid=anchor_valid, device=device)
    assert_same(ours, ref)
    assert ref[0][0].nonzero().flatten().tolist() == [11]
    assert not c or (c[WIDEN] == 1 and c[SCAN] == 0)


def test_wide_levels_take_several_search_rounds(device):
    """Levels of 70 and 1100 columns: the CUDA kernels' 32-ary searches (the
    width in the grid test, the columns and rows before a GT's centre) need
    two and three rounds there. Any window gives exact results (a misplaced
    one only widens), so the test is that none had to: every GT centre lies
    at least 3 cells inside both uniform grids, where the window is centred
    on it (the 9th nearest within 1.8 cells, the cells outside 2 away)."""
    anchors, sizes = cell_grid([(45, 70), (40, 1100)])
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(2, 40, 2, generator=g) * torch.tensor([456.0, 256]) + 48
    wh = torch.rand(2, 40, 2, generator=g) * 100 + 8
    gts = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    labels, valid = torch.zeros(2, 40, dtype=torch.long), torch.ones(2, 40, dtype=torch.bool)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0 and c[WIDEN] == 0 and c[RANK] + c[LIST] == level_rows(valid, sizes))
    assert (ref[0] > 0).sum() > 20


def test_centres_anywhere_on_a_wide_level(device):
    """GT centres over the whole width of 1100 columns, on columns and rows
    exactly, and beyond the last column and row (where windows widen)."""
    anchors, sizes = cell_grid([(40, 1100)], irregular=True)
    cx = (anchors[:, 0] + anchors[:, 2]) / 2
    cy = (anchors[:, 1] + anchors[:, 3]) / 2
    g = torch.Generator().manual_seed(6)
    on = torch.randint(0, 1100 * 40, (10,), generator=g)  # centres exactly on an anchor's column and row
    xs = torch.cat([torch.rand(30, generator=g) * float(cx.max()) * 1.05, cx[on]])
    ys = torch.cat([torch.rand(30, generator=g) * float(cy.max()) * 1.1, cy[on]])
    half = torch.rand(40, 2, generator=g) * 200 + 30
    gts = torch.stack([xs - half[:, 0], ys - half[:, 1], xs + half[:, 0], ys + half[:, 1]], 1)[None]
    labels, valid = torch.zeros(1, 40, dtype=torch.long), torch.ones(1, 40, dtype=torch.bool)
    with census(device) as c:
        ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert not c or (c[SCAN] == 0 and c[WIDEN] > 0)
    assert (ref[0] > 0).sum() > 20


def test_a_valid_anchor_at_infinite_distance_beats_an_invalid_one(device):
    """SPEC section 5: only valid anchors are candidates. Anchor 3's centre is
    so far that its distance overflows to inf; invalid anchor 2 must not take
    its slot (the reference once ranked them by index at equal inf, and then
    had only two candidates, both positive). With anchor 3's IoU of 0 among
    the three, mean + std rises above the other two: no positive."""
    anchors = torch.tensor([[-5.0, -4, 3, 4], [-3, -4, 5, 4], [-2, -4, 6, 4], [3e38, -4, 3e38, 4]])
    gts, labels, valid = torch.tensor([[[-4.0, -4, 4, 4]]]), torch.tensor([[1]]), torch.tensor([[True]])
    anchor_valid = torch.tensor([True, True, False, True])
    ours, ref = both(anchors, [4], gts, labels, valid, topk=3, anchor_valid=anchor_valid, device=device)
    assert_same(ours, ref)
    assert ref[0][0].tolist() == [0, 0, 0, 0]
