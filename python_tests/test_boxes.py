"""box_iou and giou_loss: agreement with reference/, gradients, registration, edge cases, errors."""
import pytest
import torch

import gflops
import reference
from box_cases import adversarial_pairs, random_boxes
from conftest import ops
from loss_cases import grads

MODES = ["iou", "giou"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [((1, 4), (1, 4)), ((7, 4), (13, 4)), ((2, 3, 50, 4), (2, 3, 33, 4)),
                                   ((16, 100, 4), (16, 37, 4))])
def test_box_iou_pairwise_matches_reference(device, mode, shape):
    a = random_boxes(*shape[0][:-1], seed=1, device=device)
    b = random_boxes(*shape[1][:-1], seed=2, device=device)
    ours = gflops.box_iou(a, b, mode)
    ref = reference.box_iou(a, b, mode)
    assert ours.shape == ref.shape == (*shape[0][:-1], shape[1][-2])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_box_iou_aligned_and_adversarial(device, mode):
    a, b = adversarial_pairs(device)
    ours = gflops.box_iou(a, b, mode, aligned=True)
    ref = reference.box_iou(a, b, mode, aligned=True)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    assert ours[0].item() == pytest.approx(1.0)          # identical
    if mode == "iou":
        assert ours[1].item() == 0.0 and ours[3].item() == 0.0  # disjoint, touching edges
        assert ours[2].item() == pytest.approx(9 / 100)   # nested
    else:
        assert ours[1].item() == pytest.approx(-(900 - 200) / 900)
    pair = gflops.box_iou(a, b, mode)
    torch.testing.assert_close(pair, reference.box_iou(a, b, mode), rtol=1e-5, atol=1e-6)
    assert torch.isfinite(pair).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_box_iou_dtypes(device, dtype):
    a = random_boxes(40, seed=3, device=device, dtype=dtype)
    b = random_boxes(30, seed=4, device=device, dtype=dtype)
    ours = gflops.box_iou(a, b, "giou")
    assert ours.dtype == dtype
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(ours, reference.box_iou(a, b, "giou"), **tol)


def test_box_iou_empty(device):
    a = random_boxes(0, device=device)
    b = random_boxes(5, device=device)
    assert gflops.box_iou(a, b).shape == (0, 5)
    assert gflops.box_iou(b, a).shape == (5, 0)
    assert gflops.box_iou(a, a, aligned=True).shape == (0,)
    assert gflops.box_iou(random_boxes(3, 0, device=device), random_boxes(3, 4, device=device)).shape == (3, 0, 4)


def test_box_iou_deterministic(device):
    a, b = random_boxes(8, 500, device=device), random_boxes(8, 70, seed=9, device=device)
    assert torch.equal(gflops.box_iou(a, b, "giou"), gflops.box_iou(a, b, "giou"))


@pytest.mark.parametrize("args,message", [
    (lambda a, b: (a[:, :3], b), "boxes1 must have a last dimension of 4"),
    (lambda a, b: (a, b[:, :2]), "boxes2 must have a last dimension of 4"),
    (lambda a, b: (a, b.double()), "must have one dtype"),
    (lambda a, b: (a.long(), b.long()), "must be float32"),
    (lambda a, b: (a[None].expand(2, -1, -1), b[None].expand(3, -1, -1)), "share their leading"),
])
def test_box_iou_bad_inputs(device, args, message):
    a, b = random_boxes(5, device=device), random_boxes(6, device=device)
    with pytest.raises(RuntimeError, match=message):
        gflops.box_iou(*args(a, b))
    with pytest.raises(RuntimeError, match="aligned boxes must have one shape"):
        gflops.box_iou(a, b, aligned=True)
    with pytest.raises(RuntimeError, match="mode must be 'iou' or 'giou'"):
        gflops.box_iou(a, b, mode="diou")
    with pytest.raises(RuntimeError, match="eps must be finite and > 0"):
        gflops.box_iou(a, b, eps=0.0)


def test_box_iou_mixed_devices_meta(device):
    # A meta tensor stands in for "another device" (the only other one on a CPU-only machine).
    with pytest.raises(RuntimeError, match="boxes2 is on meta but boxes1 is on "):
        ops().box_iou(random_boxes(3, device=device), random_boxes(4).to("meta"), "iou", False, 1e-6)


def test_box_iou_refuses_grad():
    a = random_boxes(5).requires_grad_(True)
    with pytest.raises(ValueError, match="boxes1 requires grad"):
        gflops.box_iou(a, random_boxes(3))


@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("case", ["random", "adversarial"])
def test_giou_loss_matches_reference(device, reduction, case, weighted):
    if case == "random":
        pred, target = random_boxes(257, seed=5, device=device), random_boxes(257, seed=6, device=device)
    else:
        pred, target = adversarial_pairs(device)
    weight = torch.rand(pred.shape[0], device=device) if weighted else None
    ours, g_ours = grads(gflops.giou_loss, pred, target, weight, reduction=reduction)
    ref, g_ref = grads(reference.giou_loss, pred, target, weight, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(g_ours).all()


def test_giou_loss_avg_factor_module_dtypes(device):
    pred, target = random_boxes(64, seed=7, device=device), random_boxes(64, seed=8, device=device)
    out = gflops.GIoULoss(loss_weight=2.0)(pred, target, avg_factor=torch.tensor(10.0, device=device))
    torch.testing.assert_close(out, 2.0 * reference.giou_loss(pred, target, avg_factor=10.0))
    for dtype in (torch.float16, torch.bfloat16):
        _, g = grads(gflops.giou_loss, pred.to(dtype), target)
        _, g_ref = grads(reference.giou_loss, pred.to(dtype), target)
        assert g.dtype == dtype
        torch.testing.assert_close(g, g_ref, rtol=2e-2, atol=1e-3)


def test_giou_loss_gradcheck(device):
    pred = random_boxes(6, seed=11, device=device, dtype=torch.float64).requires_grad_(True)
    target = random_boxes(6, seed=12, device=device, dtype=torch.float64)
    weight = torch.rand(6, device=device, dtype=torch.float64)
    for reduction in ("none", "sum", "mean"):
        assert torch.autograd.gradcheck(lambda p: gflops.giou_loss(p, target, weight, reduction=reduction), (pred,))


def test_giou_loss_empty_and_deterministic(device):
    pred = random_boxes(0, device=device).requires_grad_(True)
    out = gflops.giou_loss(pred, random_boxes(0, device=device))
    assert out.item() == 0.0
    out.backward()
    assert pred.grad.shape == (0, 4)
    a, b = random_boxes(5000, device=device), random_boxes(5000, seed=3, device=device)
    assert torch.equal(gflops.giou_loss(a, b, reduction="sum"), gflops.giou_loss(a, b, reduction="sum"))


@pytest.mark.parametrize("n", [37, 5000, 20011])  # CPU blocks: 3 of 16; 16 of 320; 16 of 1264 (chunk tails)
def test_giou_loss_thread_count_changes_no_bit(n):
    """The CPU GIoU loss ('sum' and 'none'; 'mean' is 'sum' divided) and its
    gradient, and box_iou, with 1 thread and with 3: fixed blocks and a fixed
    summation order give the same bits."""
    a, b = random_boxes(n, seed=5), random_boxes(n, seed=6)
    w = torch.rand(n, generator=torch.Generator().manual_seed(7))
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append([grads(gflops.giou_loss, a, b, w, reduction=r) for r in ("sum", "none")]
                        + [(gflops.box_iou(a, b[:50], "giou"), None)])
    finally:
        torch.set_num_threads(before)
    for (x, gx), (y, gy) in zip(*runs):
        assert torch.equal(x, y) and (gx is None or torch.equal(gx, gy))


def test_giou_loss_bad_inputs(device):
    a, b = random_boxes(5, device=device), random_boxes(5, device=device)
    with pytest.raises(RuntimeError, match=r"pred must have shape \(N, 4\)"):
        gflops.giou_loss(a[:, :3], b)
    with pytest.raises(RuntimeError, match="target must have shape"):
        gflops.giou_loss(a, b[:4])
    with pytest.raises(RuntimeError, match="weight must have shape"):
        gflops.giou_loss(a, b, torch.ones(4, device=device))
    with pytest.raises(RuntimeError, match="target is on meta but pred is on "):
        ops().giou_loss(a, b.to("meta"), None, 1e-6, "sum")


def test_box_opcheck(device):
    a, b = random_boxes(2, 9, device=device), random_boxes(2, 5, seed=1, device=device)
    for mode in MODES:
        torch.library.opcheck(ops().box_iou, (a, b, mode, False, 1e-6))
        torch.library.opcheck(ops().box_iou, (a, a, mode, True, 1e-6))
    pred = random_boxes(12, device=device).requires_grad_(True)
    target = random_boxes(12, seed=2, device=device)
    for reduction, avg in (("none", None), ("sum", None), ("mean", None), ("mean", 3.0)):
        torch.library.opcheck(ops().giou_loss, (pred, target, torch.rand(12, device=device), 1e-6, reduction, avg))


def test_box_compile_fullgraph(device):
    a, b = random_boxes(30, device=device), random_boxes(30, seed=1, device=device)

    def f(p):
        return gflops.giou_loss(p, b) + gflops.box_iou(p.detach(), b, "giou").mean()

    p1, p2 = a.clone().requires_grad_(True), a.clone().requires_grad_(True)
    out_c = torch.compile(f, fullgraph=True)(p1)
    out_e = f(p2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(p1.grad, p2.grad)


def test_box_cpu_cuda_agree(accel):
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        a, b = random_boxes(4, 300, dtype=dtype), random_boxes(4, 70, seed=1, dtype=dtype)
        for mode in MODES:
            with accel:
                gpu = gflops.box_iou(accel(a), accel(b), mode).cpu()
            torch.testing.assert_close(gpu, gflops.box_iou(a, b, mode))
        pa, pb = a.reshape(-1, 4)[:280], b.reshape(-1, 4)[:280]
        cpu, g_cpu = grads(gflops.giou_loss, pa, pb.float(), reduction="sum")
        with accel:
            gpu, g_gpu = grads(gflops.giou_loss, accel(pa), accel(pb.float()), reduction="sum")
        torch.testing.assert_close(gpu.cpu(), cpu)
        torch.testing.assert_close(g_gpu.cpu(), g_cpu)
