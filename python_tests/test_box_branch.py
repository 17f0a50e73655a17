"""The fused GFL box branch (gfl_box_branch): agreement with reference/, gradients, edge cases, errors."""
import pytest
import torch

import gflops
import reference
from box_cases import branch_inputs
from conftest import ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else (
        dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_box_branch_matches_reference(device, dtype):
    pred, points, strides, gt, weight = branch_inputs(301, 16, device=device, dtype=dtype)
    p1, p2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    ours = gflops.gfl_box_branch(p1, points, strides, gt, weight)
    ref = reference.gfl_box_branch(p2, points, strides, gt, weight)
    tol = _tol(dtype) if dtype in (torch.float64,) else dict(rtol=1e-4, atol=1e-4)
    for a, b, name in zip(ours, ref, ("giou", "dfl", "score")):
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")
    assert not ours[2].requires_grad
    (2.0 * ours[0] + 0.25 * ours[1]).backward()
    (2.0 * ref[0] + 0.25 * ref[1]).backward()
    torch.testing.assert_close(p1.grad, p2.grad, **_tol(dtype))


def test_box_branch_degenerate(device):
    # A GT that is a point at the anchor centre and one far outside: finite everything.
    pred, points, strides, gt, weight = branch_inputs(4, 16, device=device)
    gt[0] = torch.cat([points[0], points[0]])
    gt[1] = torch.tensor([1e4, 1e4, 1e4 + 1, 1e4 + 1], device=device)
    gt[2, 2:] = gt[2, :2] - 1  # x2 < x1
    p = pred.requires_grad_(True)
    out = gflops.gfl_box_branch(p, points, strides, gt, weight)
    ref = reference.gfl_box_branch(pred.detach(), points, strides, gt, weight)
    (out[0] + out[1]).backward()
    assert all(torch.isfinite(t).all() for t in out) and torch.isfinite(p.grad).all()
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.detach(), b, rtol=1e-4, atol=1e-4)


def test_gradcheck(device):
    f64 = dict(device=device, dtype=torch.float64)
    bp, bpts, bst, bgt, bw = branch_inputs(5, 4, **f64)
    bp.requires_grad_(True)
    args = (bpts.double(), bst.double(), bgt.double(), bw.double())
    assert torch.autograd.gradcheck(lambda p: torch.stack(gflops.gfl_box_branch(p, *args, reg_max=4)[:2]), (bp,))


def test_training_step_fills_no_zero_gradients():
    """A GFL step uses both losses and the score only as a detached target:
    the backward runs the op's backward and fills no zero gradient for the
    score (each fill is host time and a launch on a GPU); one loss alone
    still gets its gradient."""
    from benchmarks.host_ops import top_level_ops
    pred, points, strides, gt, weight = branch_inputs(64, 16)
    p = pred.clone().requires_grad_(True)

    def step():
        giou, dfl, _ = gflops.gfl_box_branch(p, points, strides, gt, weight)
        (giou + dfl).backward()
        p.grad = None

    ops = top_level_ops(step)
    assert "aten::zeros" not in ops and ops.get("gflops::gfl_box_branch_backward") == 1, ops
    for k in range(2):
        a, b = p.clone().detach().requires_grad_(True), p.clone().detach().requires_grad_(True)
        gflops.gfl_box_branch(a, points, strides, gt, weight)[k].backward()
        out = gflops.gfl_box_branch(b, points, strides, gt, weight)
        (out[k] + 0 * out[1 - k]).backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)


def test_empty(device):
    bp, bpts, bst, bgt, bw = branch_inputs(0, 16, device=device)
    bp.requires_grad_(True)
    giou, dfl, score = gflops.gfl_box_branch(bp, bpts, bst, bgt, bw)
    assert giou.item() == 0.0 and dfl.item() == 0.0 and score.shape == (0,)
    (giou + dfl).backward()
    assert bp.grad.shape == (0, 68)


def test_deterministic(device):
    pred, points, strides, gt, weight = branch_inputs(16000, 16, device=device)
    a = gflops.gfl_box_branch(pred, points, strides, gt, weight)
    b = gflops.gfl_box_branch(pred, points, strides, gt, weight)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_inputs(device, validation):
    bp, bpts, bst, bgt, bw = branch_inputs(6, 16, device=device)
    with pytest.raises(RuntimeError, match="gt_boxes must have shape"):
        gflops.gfl_box_branch(bp, bpts, bst, bgt[:, :3], bw)
    with pytest.raises(RuntimeError, match="weight must have shape"):
        gflops.gfl_box_branch(bp, bpts, bst, bgt, bw[:5])
    with pytest.raises(RuntimeError, match=r"pred must be \(P, 4 \* \(reg_max \+ 1\)\)"):
        gflops.gfl_box_branch(bp[None], bpts, bst, bgt, bw)
    if device == "cpu":  # a meta tensor stands in for "another device"
        with pytest.raises(RuntimeError, match="weight is on meta but pred is on cpu"):
            ops().gfl_box_branch(bp, bpts, bst, bgt, bw.to("meta"), 16)
    with pytest.raises(ValueError, match="gt_boxes requires grad"):
        gflops.gfl_box_branch(bp, bpts, bst, bgt.requires_grad_(True), bw)


def test_opcheck(device):
    bp, bpts, bst, bgt, bw = branch_inputs(9, 7, device=device)
    bp.requires_grad_(True)
    torch.library.opcheck(ops().gfl_box_branch, (bp, bpts, bst, bgt, bw, 7))


def test_compile_fullgraph(device):
    bp, bpts, bst, bgt, bw = branch_inputs(40, 16, device=device)

    def f(p):
        giou, dfl, score = gflops.gfl_box_branch(p, bpts, bst, bgt, bw)
        return 2.0 * giou + 0.25 * dfl + score.sum()

    p1, p2 = bp.clone().requires_grad_(True), bp.clone().requires_grad_(True)
    out_c = torch.compile(f, fullgraph=True)(p1)
    out_e = f(p2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(p1.grad, p2.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_cuda_agree(accel, dtype):
    bp, bpts, bst, bgt, bw = branch_inputs(500, 16, dtype=dtype)
    cuda_args = [accel(t) for t in (bpts, bst, bgt, bw)]
    p1, p2 = bp.clone().requires_grad_(True), accel(bp).clone().requires_grad_(True)
    c = gflops.gfl_box_branch(p1, bpts, bst, bgt, bw)
    with accel:
        g = gflops.gfl_box_branch(p2, *cuda_args)
        (g[0] + g[1]).backward()
    for a, b in zip(g, c):
        torch.testing.assert_close(a.detach().cpu(), b.detach(), rtol=1e-4, atol=1e-4)
    (c[0] + c[1]).backward()
    torch.testing.assert_close(p2.grad.cpu(), p1.grad, **_tol(dtype))


def test_backward_ops_check_their_gradients():
    bp, bpts, bst, bgt, bw = branch_inputs(3, 16)
    with pytest.raises(RuntimeError, match=r"grad_dfl must have shape \[\]"):
        torch.ops.gflops.gfl_box_branch_backward(torch.tensor(1.0), torch.ones(2), bp, bpts, bst, bgt, bw, 16)
