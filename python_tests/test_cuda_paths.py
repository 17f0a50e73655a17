"""The CUDA kernels' own paths, through the emulator: results independent of
the block order, multi-block reductions, the 64-bit index path, and the
unvectorised and misaligned paths, checked against the launch log so that
each test provably ran the path it names."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import gflops
from box_cases import branch_inputs, distribution_inputs, random_boxes
from conftest import needs_emu, poisoned_memory
from gflops import _ops, emulation
from loss_cases import dfl_inputs, grads, qfl_inputs

pytestmark = needs_emu


@pytest.fixture
def emu():
    m = emulation.load()
    m.set_launch_log(True)
    try:
        with _ops.use("gflops_emu"):
            yield m
    finally:
        m.set_launch_log(False)
        m.set_block_order(False, 0)
        m.force_int64_index(False)
        m.set_num_sms(3)


def launched(m):
    return m.launch_log()


def every_op(dtype=torch.float32):
    """Forward and backward of every op, 'sum' reductions included, as a flat list of tensors."""
    out = []
    pred, label, score, weight = qfl_inputs(1001, 80, "cpu", dtype=dtype, weight=True)
    for reduction in ("none", "sum"):
        out += grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
        out += grads(gflops.quality_focal_loss, pred, label, score, weight, beta=1.5, reduction=reduction)
    dpred, target, dweight = dfl_inputs(3000, 16, "cpu", dtype=dtype, weight=True)
    for reduction in ("none", "sum"):
        out += grads(gflops.distribution_focal_loss, dpred, target, dweight, reduction=reduction)
    a, b = random_boxes(2, 70, dtype=dtype), random_boxes(2, 45, seed=1, dtype=dtype)
    out += [gflops.box_iou(a, b, "giou"), gflops.box_iou(a[0], a[0], aligned=True)]
    out += grads(gflops.giou_loss, a[0], b[0, :1].expand(70, 4).float(), reduction="sum")
    p, points, strides = distribution_inputs(2, 600, 16, dtype=dtype)
    out += grads(gflops.integral, p) + grads(gflops.decode_distribution, p, points, strides, 16, (300, 400))
    bp, bpts, bst, bgt, bw = branch_inputs(2500, 16, dtype=dtype)
    q = bp.clone().requires_grad_(True)
    giou, dfl, sc = gflops.gfl_box_branch(q, bpts, bst, bgt, bw)
    (giou + dfl).backward()
    return out + [giou.detach(), dfl.detach(), sc, q.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_order_does_not_change_any_result(emu, dtype):
    base = every_op(dtype)
    grids = [r[1][0] for r in launched(emu) if "sum_partials" not in r[0]]
    assert max(grids) > 1  # multi-block launches, so the order can matter
    for seed in (1, 2):
        emu.set_block_order(True, seed)
        for i, (x, y) in enumerate(zip(base, every_op(dtype))):
            assert torch.equal(x, y), f"output {i} changed with block order seed {seed}"


def test_sums_are_multi_block_and_stable_across_sm_counts(emu):
    pred, label, score, weight = qfl_inputs(20011, 80, "cpu", weight=True)
    results = {}
    for sms in (1, 3, 7):
        emu.set_num_sms(sms)
        emu.set_launch_log(True)
        results[sms] = gflops.quality_focal_loss(pred, label, score, weight, reduction="sum")
        grid = [r[1][0] for r in launched(emu) if "qfl_forward_sum" in r[0]][0]
        assert grid == sms * 8  # one full wave: 8 resident 256-thread blocks per emulated SM
    torch.testing.assert_close(results[1], results[7], rtol=1e-6, atol=0)
    torch.testing.assert_close(results[3], results[7], rtol=1e-6, atol=0)


def test_int64_index_path(emu):
    base = every_op()
    emu.set_launch_log(True)
    emu.force_int64_index(True)
    forced = every_op()
    names = [r[0] for r in launched(emu)]
    assert any("qfl_forward_sum_kernel" in n and n.endswith("long int>") for n in names), names
    assert any("qfl_backward_kernel" in n and n.endswith("long int>") for n in names), names
    for i, (x, y) in enumerate(zip(base, forced)):
        assert torch.equal(x, y), f"output {i} differs on the 64-bit index path"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_unvectorised_and_misaligned_paths(emu, dtype):
    pred, label, score, weight = qfl_inputs(999, 80, "cpu", dtype=dtype, weight=True)
    width = 16 // pred.element_size()
    storage = torch.empty(pred.numel() + 1, dtype=dtype)
    shifted = storage[1:].view(999, 80)  # contiguous, but 2 or 4 bytes past a 16-byte boundary
    shifted.copy_(pred)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16 != 0
    for reduction in ("none", "sum"):
        emu.set_launch_log(True)
        ref, g_ref = grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
        vec_names = [r[0] for r in launched(emu) if "qfl_" in r[0]]
        emu.set_launch_log(True)
        leaf = shifted.detach().requires_grad_(True)  # not grads(): it would clone into aligned memory
        ours = gflops.quality_focal_loss(leaf, label, score, weight, reduction=reduction)
        up = torch.linspace(0.5, 1.5, ours.numel(), dtype=ours.dtype).reshape(ours.shape)
        (ours * up).sum().backward()
        ours, g = ours.detach(), leaf.grad
        names = [r[0] for r in launched(emu) if "qfl_" in r[0]]
        assert all(f"{dtype_name(dtype)}, float, {width}, true" in n for n in vec_names), vec_names
        assert all(f"{dtype_name(dtype)}, float, 1, true" in n for n in names), names
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g, g_ref, rtol=0, atol=0)  # elementwise: the same bits on both paths
    # 81 columns: rows straddle 16-byte packs, so the packed path is never taken.
    pred81, label81, score81, _ = qfl_inputs(999, 81, "cpu", dtype=dtype)
    emu.set_launch_log(True)
    gflops.quality_focal_loss(pred81, label81, score81, reduction="sum")
    assert all(", 1, true" in r[0] for r in launched(emu) if "qfl_" in r[0])


def _shifted(t):
    """t's values in contiguous memory one element past a 16-byte boundary."""
    storage = torch.empty(t.numel() + 1, dtype=t.dtype)
    out = storage[1:].view(t.shape)
    out.copy_(t)
    assert out.is_contiguous() and out.data_ptr() % 16 != 0
    return out


def _row_tile_ops(pred_dfl, target, pred_dist, points, strides, pred_branch, branch_rest):
    """Outputs and gradients of the kernels that stage rows through shared memory (row_tiles.cuh)."""
    out = []
    for fn, p, args in ((gflops.distribution_focal_loss, pred_dfl, (target,)), (gflops.integral, pred_dist, ()),
                        (gflops.decode_distribution, pred_dist, (points, strides, 16, (300, 400)))):
        leaf = p.detach().requires_grad_(True)  # not grads(): a clone would be aligned
        y = fn(leaf, *args, **({"reduction": "none"} if fn is gflops.distribution_focal_loss else {}))
        (y * torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        out += [y.detach(), leaf.grad]
    leaf = pred_branch.detach().requires_grad_(True)
    giou, dfl, score = gflops.gfl_box_branch(leaf, *branch_rest)
    (giou + 0.5 * dfl).backward()
    return out + [giou.detach(), dfl.detach(), score, leaf.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_row_tiles_packed_and_misaligned_copies_agree(emu, dtype):
    """The tiles are copied in 16-byte packs where their first element is
    aligned, else value by value; both give the same bits. Sizes leave a
    partial last tile whose length is not a multiple of the pack."""
    pred_dfl, target, _ = dfl_inputs(1001, 16, "cpu", dtype=dtype)
    pred_dist, points, strides = distribution_inputs(1, 333, 16, dtype=dtype)
    bp, *rest = branch_inputs(301, 16, dtype=dtype)
    assert pred_dfl.data_ptr() % 16 == 0 and pred_dist.data_ptr() % 16 == 0 and bp.data_ptr() % 16 == 0
    packed = _row_tile_ops(pred_dfl, target, pred_dist, points, strides, bp, rest)
    scalar = _row_tile_ops(_shifted(pred_dfl), target, _shifted(pred_dist), points, strides, _shifted(bp), rest)
    for i, (x, y) in enumerate(zip(packed, scalar)):
        assert torch.equal(x, y), f"output {i} differs between the packed and the value-by-value copies"


def dtype_name(dtype):
    return {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}[dtype]


def test_empty_inputs_launch_only_the_scalar_sum(emu):
    """No rows: no kernel reads the inputs; a summed loss is written by the
    partials' sum over none (0 times the 'mean' scale: 0, or NaN for an
    avg_factor of 0, as dividing 0 by it would give)."""
    label, score = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    for kw, want in (({"reduction": "sum"}, 0.0), ({"reduction": "mean"}, 0.0),
                     ({"reduction": "mean", "avg_factor": 0.0}, float("nan"))):
        emu.set_launch_log(True)
        pred = torch.zeros(0, 80, requires_grad=True)
        out = gflops.quality_focal_loss(pred, label, score, **kw)
        out.backward()
        torch.testing.assert_close(out, torch.tensor(want), equal_nan=True)
        assert pred.grad.shape == (0, 80)
        assert [(r[0], r[1]) for r in launched(emu)] == [("gf::cuda::sum_partials_kernel<float>", (1, 1, 1))], kw
    emu.set_launch_log(True)
    assert gflops.quality_focal_loss(pred, label, score, reduction="none").shape == (0,)
    assert launched(emu) == []
    # The box branch's two sums over no anchors: one launch of two blocks, no box_branch_kernel.
    emu.set_launch_log(True)
    giou, dfl, sc = gflops.gfl_box_branch(*branch_inputs(0, 16))
    assert [(r[0], r[1]) for r in launched(emu)] == [("gf::cuda::sum_partials_kernel<float>", (2, 1, 1))]
    assert giou.item() == 0.0 and dfl.item() == 0.0 and sc.shape == (0,)


def _aten_ops(fn):
    """Every ATen op fn() dispatches, nested ones included."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


@pytest.mark.parametrize("loss", ["qfl", "dfl", "giou"])
def test_mean_is_folded_into_the_kernels(emu, loss):
    """On CUDA a 'mean' loss divides inside its kernels (the partials' sum and
    the backward's scale, gc::mean_scale), not in an ATen op around them (each
    is host time and a launch on a GPU): a forward+backward dispatches no ATen
    division or multiply, and the forward launches its kernel and the sum."""
    if loss == "qfl":
        pred, label, score, weight = qfl_inputs(1001, 80, "cpu", weight=True)
        fn = lambda p, **kw: gflops.quality_focal_loss(p, label, score, weight, **kw)  # noqa: E731
    elif loss == "dfl":
        pred, target, weight = dfl_inputs(3000, 16, "cpu", weight=True)
        fn = lambda p, **kw: gflops.distribution_focal_loss(p, target, weight, **kw)  # noqa: E731
    else:
        pred, target = random_boxes(700), random_boxes(700, seed=1)
        fn = lambda p, **kw: gflops.giou_loss(p, target, **kw)  # noqa: E731
    leaf = pred.clone().requires_grad_(True)
    up = torch.tensor(2.0)
    for avg in (None, 3.0):
        emu.set_launch_log(True)
        names = _aten_ops(lambda: torch.autograd.grad(fn(leaf, reduction="mean", avg_factor=avg), leaf, up))
        assert not {"aten::div", "aten::div_", "aten::mul", "aten::mul_"} & set(names), names
        kernels = [r[0] for r in launched(emu)]
        assert len(kernels) == 3 and "sum_partials" in kernels[1] and "backward" in kernels[2], kernels


def _distribution_ops(reg_max, dtype, sms_rows):
    """Forward and backward of DFL, integral, decode and the box branch at one reg_max."""
    out = []
    dpred, target, dweight = dfl_inputs(sms_rows, reg_max, "cpu", dtype=dtype, weight=True)
    for reduction in ("none", "sum"):
        out += grads(gflops.distribution_focal_loss, dpred, target, dweight, reduction=reduction)
    p, points, strides = distribution_inputs(2, sms_rows // 8, reg_max, dtype=dtype)
    out += grads(gflops.integral, p, reg_max)
    out += grads(gflops.decode_distribution, p, points, strides, reg_max, (300, 400))
    bp, bpts, bst, bgt, bw = branch_inputs(sms_rows // 4, reg_max, dtype=dtype)
    q = bp.clone().requires_grad_(True)
    giou, dfl, sc = gflops.gfl_box_branch(q, bpts, bst, bgt, bw, reg_max=reg_max)
    (giou + dfl).backward()
    return out + [giou.detach(), dfl.detach(), sc, q.grad]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("reg_max", [16, 7, 100, 101, 400, 408])
def test_distribution_kernels_through_shared_memory_tiles(emu, dtype, reg_max):
    """The distribution rows are staged through shared memory in tiles of up to
    256 rows (64 anchors, 4 lanes each) in 47 KiB, fewer for a large reg_max
    (reg_max 400: 30 rows, 7 anchors), leaving the static shared arrays room (101, 408: the
    tiles alone would fill 48 KiB); one emulated SM, so each block walks
    several tiles. Every op agrees with the CPU kernels."""
    emu.set_num_sms(1)
    emu.set_launch_log(True)
    ours = _distribution_ops(reg_max, dtype, 4000)
    grids = {r[0].split("<")[0]: r[1][0] for r in launched(emu) if "sum_partials" not in r[0]}
    assert {"gf::cuda::rows_dist_kernel", "gf::cuda::box_branch_kernel", "gf::cuda::dfl_forward_kernel"} <= set(grids)
    assert all(g <= 8 for g in grids.values())  # one SM's wave: the blocks loop over tiles
    with _ops.use("gflops"):
        ref = _distribution_ops(reg_max, dtype, 4000)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else (
        dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2))
    for i, (a, b) in enumerate(zip(ours, ref)):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"output {i}: {m}")


def test_reg_max_beyond_a_shared_memory_tile_is_a_clear_error(emu):
    with pytest.raises(RuntimeError, match=r"gflops.integral: reg_max = 12300 is too large for the CUDA kernels"):
        gflops.integral(torch.zeros(1, 4 * 12301), 12300)
    with pytest.raises(RuntimeError, match=r"gflops.distribution_focal_loss: reg_max = 12300 is too large"):
        gflops.distribution_focal_loss(torch.zeros(2, 12301), torch.zeros(2))
    bp, bpts, bst, bgt, bw = branch_inputs(2, 3100)
    with pytest.raises(RuntimeError, match=r"gflops.gfl_box_branch: reg_max = 3100 is too large"):
        gflops.gfl_box_branch(bp, bpts, bst, bgt, bw, reg_max=3100)
    assert gflops.integral(torch.zeros(1, 4 * 12001), 12000).shape == (1, 4)  # one row fits: a tile of one


@pytest.mark.parametrize("n,m,grid,block", [(300, 90, (3, 3, 3), (32, 8, 1)), (600, 70, (9, 2, 3), (8, 32, 1)),
                                             (20, 5, (1, 1, 3), (8, 32, 1))])
@pytest.mark.parametrize("mode", ["iou", "giou"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_box_iou_pairwise_tiles_are_the_cpu_bits(emu, mode, dtype, n, m, grid, block):
    """The pairwise kernel's tiles (128 rows x 32 columns, or 512 x 8 where
    that pads the columns less: 72 of 70, not 96; each box's area staged once,
    16 outputs a thread) over full and partial tiles in both directions and
    several images, degenerate and non-finite boxes among them: the CPU
    kernel's bits (the same box.h operations)."""
    a, b = random_boxes(3, n, seed=1, dtype=dtype), random_boxes(3, m, seed=2, dtype=dtype)
    a[0, 3] = a[0, 3].flip(0)  # inverted
    a[1, n // 2] = torch.tensor([5.0, 5.0, 5.0, 5.0], dtype=dtype)  # zero area
    b[2, m // 2, 2] = float("inf")
    b[1, m - 1, 0] = float("nan")
    emu.set_launch_log(True)
    ours = gflops.box_iou(a, b, mode)
    assert [r[1:3] for r in launched(emu)] == [(grid, block)]
    cpu = torch.ops.gflops.box_iou(a, b, mode, False, 1e-6)
    assert torch.equal(ours.isnan(), cpu.isnan())
    assert torch.equal(ours.nan_to_num(), cpu.nan_to_num())


def test_every_output_element_is_written(emu):
    """Fresh memory poisoned (NaN, the largest integers): every op's outputs and
    gradients, 'mean' and empty sums included, are the bits of a run on
    unpoisoned memory, so no kernel leaves an element (or a partial) unwritten."""
    def run():
        out = every_op()
        pred, label, score, weight = qfl_inputs(301, 80, "cpu", weight=True)
        out += grads(gflops.quality_focal_loss, pred, label, score, weight, reduction="mean", avg_factor=7.0)
        dpred, target, dweight = dfl_inputs(500, 16, "cpu", weight=True)
        out += grads(gflops.distribution_focal_loss, dpred, target, dweight, reduction="mean")
        a, b = random_boxes(90), random_boxes(90, seed=1)
        out += grads(gflops.giou_loss, a, b, reduction="mean", avg_factor=3.0)
        empty = torch.zeros(0, 80)
        out += [gflops.quality_focal_loss(empty, torch.zeros(0, dtype=torch.long), torch.zeros(0), reduction=r)
                for r in ("sum", "mean")]
        out += [gflops.distribution_focal_loss(torch.zeros(0, 17), torch.zeros(0), reduction="sum"),
                gflops.giou_loss(torch.zeros(0, 4), torch.zeros(0, 4), reduction="sum")]
        out += list(gflops.gfl_box_branch(*branch_inputs(0, 16)))
        out.append(gflops.box_iou(random_boxes(2, 300), random_boxes(2, 64, seed=1)))  # the 32-wide tile
        return out

    base = run()
    with poisoned_memory():
        poisoned = run()
    assert len(base) == len(poisoned)
    for i, (x, y) in enumerate(zip(base, poisoned)):
        assert torch.equal(x.isnan(), y.isnan()) and torch.equal(x.nan_to_num(), y.nan_to_num()), f"output {i}"


@pytest.mark.parametrize("cols,lanes", [(3, 1), (4, 1), (8, 2), (80, 4), (81, 4), (1000, 32)])
def test_qfl_none_gives_a_row_its_lanes(emu, cols, lanes):
    """reduction='none' gives each row `lanes` lanes of a warp (qfl_row_lanes:
    the most that leave at most 1/16 idle; 80 classes are 20 packs: 4 lanes),
    so several rows share a warp and the last warp runs past the rows; 81 and
    3 columns take the unpacked path. The CPU kernel's values; the grid is
    rows x lanes threads (capped at the emulated 3 SMs x 8 blocks)."""
    pred, label, score, weight = qfl_inputs(203, cols, "cpu", weight=True)
    emu.set_launch_log(True)
    ours = gflops.quality_focal_loss(pred, label, score, weight, reduction="none")
    assert [r[1][0] for r in launched(emu)] == [min(-(-203 * lanes // 256), 24)]
    with _ops.use("gflops"):
        cpu = gflops.quality_focal_loss(pred, label, score, weight, reduction="none")
    torch.testing.assert_close(ours, cpu, rtol=1e-5, atol=1e-6)
