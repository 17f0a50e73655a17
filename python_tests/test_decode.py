"""integral, decode_distribution, distance2bbox/bbox2distance (the GFL box branch: test_box_branch.py).

The kernels run on every backend that has them: CPU, CUDA, the emulated
CUDA path and Triton (`kernel_device`)."""
import pytest
import torch

import gflops
import reference
from box_cases import distribution_inputs
from conftest import OpCalls, ops
from loss_cases import grads

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else (
        dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2))


@pytest.fixture
def device(kernel_device):
    return kernel_device


@pytest.fixture
def accel(kernel_accel):
    return kernel_accel


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reg_max", [1, 7, 15, 16, 70])  # CPU: 8, 16 and 17 bins unrolled; > 64 bins max-shifted
def test_integral_matches_reference(device, dtype, reg_max):
    pred, _, _ = distribution_inputs(3, 41, reg_max, device=device, dtype=dtype)
    ours, g = grads(gflops.integral, pred, reg_max)
    ref, g_ref = grads(reference.integral, pred, reg_max)
    assert ours.shape == (3, 41, 4) and ours.dtype == dtype and g.dtype == dtype
    torch.testing.assert_close(ours, ref, **_tol(dtype))
    torch.testing.assert_close(g, g_ref, **_tol(dtype))


def test_integral_extreme_and_known(device):
    pred = torch.full((2, 68), -60.0, device=device)
    pred[0, 3] = pred[0, 17 + 16] = 60.0   # one-hot at bins 3 and 16
    out = gflops.integral(pred)
    torch.testing.assert_close(out[0, :2], torch.tensor([3.0, 16.0], device=device))
    torch.testing.assert_close(out[1], torch.full((4,), 8.0, device=device))  # uniform -> mean bin


def _window_edge_logits(rows, n1, device):
    """Rows whose largest logit steps across both ends of the CPU's unshifted
    window (sum of exponentials in [2^-64, 2^64]: a top logit near 44 or -44),
    one far logit among moderate ones, and the float limits."""
    top = torch.linspace(-50.0, 50.0, rows, device=device)[:, None]
    pred = top - torch.rand(rows, n1, generator=torch.Generator().manual_seed(4)).to(device) * 3
    pred[::7, 3] = torch.linspace(-100.0, 100.0, len(pred[::7]), device=device)
    pred[5, :] = 88.0
    pred[6, :] = -87.5
    pred[9, :] = -200.0
    # Deep rows that are not uniform: exp clamps every term to 2^-126, so only
    # the redo against the max gives their distance (~n1 - 1, and ~2).
    pred[11, :] = torch.linspace(-130.0, -100.0, n1, device=device)
    pred[12, :] = -100.0
    pred[12, 2] = -95.0
    return pred


@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("reg_max", [15, 16, 7])
def test_window_edges_match_float64_reference(device, reg_max, grad):
    n1 = reg_max + 1
    pred = _window_edge_logits(400 * 4, n1, device).reshape(2, 200, 4 * n1)
    points = torch.rand(200, 2, generator=torch.Generator().manual_seed(1)).to(device) * 600
    strides = torch.tensor([8.0, 16, 32, 64, 128], device=device).repeat(40)
    for fn, args in (("integral", (reg_max,)), ("decode_distribution", (points, strides, reg_max, (500, 700)))):
        if grad:
            ours, g = grads(getattr(gflops, fn), pred, *args)
            ref, g_ref = grads(getattr(reference, fn), pred.double(), *[a.double() if torch.is_tensor(a) else a
                                                                        for a in args])
            assert torch.isfinite(g).all(), fn
            torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-5 * g_ref.abs().max().item(), msg=fn)
        else:
            ours = getattr(gflops, fn)(pred, *args)
            ref = getattr(reference, fn)(pred.double(), *[a.double() if torch.is_tensor(a) else a for a in args])
        assert torch.isfinite(ours).all(), fn
        atol = 1e-5 if fn == "integral" else 1e-3  # bins; pixels up to ~2000
        torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=atol, msg=fn)


@pytest.mark.parametrize("rows", [10, 700])  # CPU: within one tile of 64 rows, and across tiles and threads
def test_integral_nonfinite_logits_give_nan_rows(device, rows):
    """A NaN or +inf logit makes its distance (and its row's gradient) NaN, as
    the reference's softmax does; the other rows keep their bits."""
    pred, _, _ = distribution_inputs(1, rows, 16, device=device)
    pred = pred.reshape(rows * 4, 17)
    bad = {3: (5, float("nan")), 17: (16, float("nan")), 20: (0, float("inf")), rows * 4 - 2: (9, float("nan"))}
    poisoned = pred.clone()
    for r, (k, v) in bad.items():
        poisoned[r, k] = v
    rows_bad = torch.tensor(sorted(bad), device=device)
    keep = torch.ones(rows * 4, dtype=torch.bool, device=device)
    keep[rows_bad] = False
    as_logits = lambda t: t.reshape(rows, 4 * 17)  # noqa: E731
    assert reference.integral(as_logits(poisoned)).reshape(-1)[rows_bad].isnan().all()  # the oracle's behaviour
    clean, clean_g = grads(gflops.integral, as_logits(pred))
    out, g = grads(gflops.integral, as_logits(poisoned))
    out, clean, g, clean_g = out.reshape(-1), clean.reshape(-1), g.reshape(-1, 17), clean_g.reshape(-1, 17)
    assert out[rows_bad].isnan().all() and g[rows_bad].isnan().all()
    assert torch.equal(out[keep], clean[keep]) and torch.equal(g[keep], clean_g[keep])


@pytest.mark.parametrize("reg_max", [16, 15, 33])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_thread_count_and_row_position_change_no_bit(reg_max, dtype):
    """A CPU row's distance and gradient depend on its logits alone: not on the
    thread count, nor on which rows share its tile (here: the same rows
    decoded from an offset of 3 boxes)."""
    pred, points, strides = distribution_inputs(1, 1003, reg_max, dtype=dtype)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            runs.append([grads(gflops.integral, pred, reg_max),
                         grads(gflops.decode_distribution, pred, points, strides, reg_max, (500.0, 700.0))])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*runs):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    (dist, g_dist), (boxes, g_boxes) = runs[0]
    # grads' upstream gradient depends on the output's size, so the shifted rows get their own;
    # compare each with the full run's backward op at that upstream.
    shifted, g_shifted = grads(gflops.integral, pred[:, 3:], reg_max)
    torch.testing.assert_close(shifted, dist[:, 3:], rtol=0, atol=0)
    up = torch.linspace(0.5, 1.5, shifted.numel(), dtype=dtype).reshape(shifted.shape)
    full_up = torch.zeros_like(dist)
    full_up[:, 3:] = up
    want = torch.ops.gflops.integral_backward(full_up, pred, reg_max)[:, 3:]
    torch.testing.assert_close(g_shifted, want, rtol=0, atol=0)
    shifted = gflops.decode_distribution(pred[:, 3:], points[3:], strides[3:], reg_max, (500.0, 700.0))
    torch.testing.assert_close(shifted, boxes[:, 3:], rtol=0, atol=0)


@pytest.mark.parametrize("reg_max", [16, 70])  # CPU: rows of <= 64 bins go through tiles, longer rows one by one
@pytest.mark.parametrize("max_shape", [None, (300, 400)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_matches_reference(device, dtype, max_shape, reg_max):
    pred, points, strides = distribution_inputs(2, 97, reg_max, device=device, dtype=dtype)
    ours, g = grads(gflops.decode_distribution, pred, points, strides, reg_max, max_shape)
    ref, g_ref = grads(reference.decode_distribution, pred, points, strides, reg_max, max_shape)
    assert ours.shape == (2, 97, 4) and ours.dtype == dtype
    tol = _tol(dtype) if dtype != torch.float32 else dict(rtol=1e-5, atol=1e-3)  # pixels up to ~2000
    torch.testing.assert_close(ours, ref, **tol)
    # p_b * (b - dist) cancels near b ~ dist, so float32 errors scale with the largest gradient.
    gtol = _tol(dtype) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-5 * g_ref.abs().max().item())
    torch.testing.assert_close(g, g_ref, **gtol)
    if max_shape is not None:
        assert ours[..., 0::2].min() >= 0 and ours[..., 0::2].max() <= 400
        assert ours[..., 1::2].max() <= 300


def test_gradcheck(device):
    f64 = dict(device=device, dtype=torch.float64)
    pred, points, strides = distribution_inputs(2, 3, 4, **f64)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: gflops.integral(p, 4), (pred,))
    assert torch.autograd.gradcheck(lambda p: gflops.decode_distribution(p, points.double(), strides.double(), 4),
                                    (pred,))


def test_empty(device):
    pred, points, strides = distribution_inputs(0, 5, 16, device=device)
    assert gflops.integral(pred).shape == (0, 5, 4)
    assert gflops.decode_distribution(pred, points, strides).shape == (0, 5, 4)
    for boxes, anchors in ((0, 5), (2, 0)):  # the backward of empty outputs too
        pred, points, strides = distribution_inputs(boxes, anchors, 16, device=device)
        leaf = pred.clone().requires_grad_(True)
        gflops.decode_distribution(leaf, points, strides).sum().backward()
        assert leaf.grad.shape == pred.shape
        leaf.grad = None
        gflops.integral(leaf).sum().backward()
        assert leaf.grad.shape == pred.shape


def test_deterministic(device):
    pred, points, strides = distribution_inputs(4, 4000, 16, device=device)
    pred.requires_grad_(True)
    a = gflops.decode_distribution(pred, points, strides, max_shape=(800, 1333))
    (ga,) = torch.autograd.grad(a.sum(), pred)
    b = gflops.decode_distribution(pred, points, strides, max_shape=(800, 1333))
    (gb,) = torch.autograd.grad(b.sum(), pred)
    assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])  # pred requiring grad: the *_and_grad op
def test_bad_inputs(device, validation, grad):
    pred, points, strides = distribution_inputs(2, 5, 16, device=device)
    pred.requires_grad_(grad)
    with pytest.raises(RuntimeError, match=r"last dimension of 4 \* \(reg_max \+ 1\) = 68"):
        gflops.integral(pred[..., :60])
    with pytest.raises(RuntimeError, match="reg_max must be >= 1"):
        gflops.integral(pred, reg_max=0)
    with pytest.raises(RuntimeError, match="points must have shape"):
        gflops.decode_distribution(pred, points[:4], strides)
    with pytest.raises(RuntimeError, match="strides must have shape"):
        gflops.decode_distribution(pred, points, strides[:, None])
    with pytest.raises(RuntimeError, match="max_shape must be"):
        ops().decode_distribution(pred, points, strides, 16, [1.0, 2.0, 3.0])
    bad = strides.clone()
    bad[2] = 0
    with pytest.raises(RuntimeError, match="strides must be > 0.* at index 2"):
        gflops.decode_distribution(pred, points, bad)
    if device == "cpu":  # a meta tensor stands in for "another device"
        with pytest.raises(RuntimeError, match="points is on meta but pred is on cpu"):
            ops().decode_distribution(pred, points.to("meta"), strides, 16, None)


def test_opcheck(device):
    pred, points, strides = distribution_inputs(2, 6, 7, device=device)
    pred.requires_grad_(True)
    torch.library.opcheck(ops().integral, (pred, 7))
    torch.library.opcheck(ops().integral_and_grad, (pred, 7))
    torch.library.opcheck(ops().decode_distribution, (pred, points, strides, 7, None))
    torch.library.opcheck(ops().decode_distribution, (pred, points, strides, 7, [100.0, 200.0]))
    torch.library.opcheck(ops().decode_distribution_and_grad, (pred, points, strides, 7, [100.0, 200.0]))


@pytest.mark.parametrize("reg_max", [16, 70])
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_gradient_from_the_forward_sweep(device, dtype, reg_max):
    """With pred requiring grad the boxes come from decode_distribution_and_grad:
    on CPU (float32/float64) it also returns each bin's derivative of its side
    (empty elsewhere, where the backward op runs). Either way the gradient is
    the backward op's, clamp included, and a second backward (retain_graph)
    gives the same bits as the first."""
    pred, points, strides = distribution_inputs(3, 37, reg_max, device=device, dtype=dtype)
    args = (points, strides, reg_max, [300.0, 400.0])
    boxes, fused = ops().decode_distribution_and_grad(pred, *args)
    torch.testing.assert_close(boxes, ops().decode_distribution(pred, *args), rtol=0, atol=0)
    fuses = ops() is torch.ops.gflops and device == "cpu" and dtype in (torch.float32, torch.float64)
    assert fused.shape == (pred.shape if fuses else (0,))
    g = torch.randn(boxes.shape, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    expected = ops().decode_distribution_backward(g, pred, *args)
    leaf = pred.clone().requires_grad_(True)
    out = gflops.decode_distribution(leaf, *args)
    with OpCalls() as calls:
        (first,) = torch.autograd.grad(out, leaf, g.to(out.dtype), retain_graph=True)
    assert calls.names == ([] if fuses else ["decode_distribution_backward"])  # fused: the backward only scales
    with OpCalls() as calls:
        (second,) = torch.autograd.grad(out, leaf, g.to(out.dtype))
    assert calls.names == (["decode_distribution_and_grad"] if fuses else ["decode_distribution_backward"])
    torch.testing.assert_close(first, expected, **_tol(dtype))
    assert torch.equal(first, second)


@pytest.mark.parametrize("reg_max", [16, 70])
@pytest.mark.parametrize("dtype", DTYPES)
def test_integral_gradient_from_the_forward_sweep(device, dtype, reg_max):
    """As for the decode: with pred requiring grad the distances come from
    integral_and_grad, whose gradient (CPU, float32/float64) the backward only
    scales; it equals the backward op's, and a second backward gives the same bits."""
    pred, _, _ = distribution_inputs(3, 37, reg_max, device=device, dtype=dtype)
    dist, fused = ops().integral_and_grad(pred, reg_max)
    torch.testing.assert_close(dist, ops().integral(pred, reg_max), rtol=0, atol=0)
    fuses = ops() is torch.ops.gflops and device == "cpu" and dtype in (torch.float32, torch.float64)
    assert fused.shape == (pred.shape if fuses else (0,))
    g = torch.randn(dist.shape, device=device, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    expected = ops().integral_backward(g, pred, reg_max)
    if fuses:  # the fused buffer is the backward op's gradient for a unit incoming gradient
        ones = torch.ones_like(g)
        torch.testing.assert_close(fused, ops().integral_backward(ones, pred, reg_max), rtol=0, atol=0)
    leaf = pred.clone().requires_grad_(True)
    out = gflops.integral(leaf, reg_max)
    with OpCalls() as calls:
        (first,) = torch.autograd.grad(out, leaf, g.to(out.dtype), retain_graph=True)
    assert calls.names == ([] if fuses else ["integral_backward"])
    with OpCalls() as calls:
        (second,) = torch.autograd.grad(out, leaf, g.to(out.dtype))
    assert calls.names == (["integral_and_grad"] if fuses else ["integral_backward"])
    torch.testing.assert_close(first, expected, **_tol(dtype))
    assert torch.equal(first, second)


def test_compile_fullgraph(device):
    pred, points, strides = distribution_inputs(2, 10, 16, device=device)

    def f(q):
        return gflops.decode_distribution(q, points, strides, max_shape=(320, 320)).mean() + gflops.integral(q).sum()

    q1, q2 = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    out_c = torch.compile(f, fullgraph=True)(q1)
    out_e = f(q2)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(q1.grad, q2.grad)


def test_distance2bbox_roundtrip(device):
    points = torch.rand(50, 2, device=device) * 100
    dist = (torch.rand(50, 4, device=device) * 20).requires_grad_(True)
    boxes = gflops.distance2bbox(points, dist)
    torch.testing.assert_close(boxes, reference.distance2bbox(points, dist))
    torch.testing.assert_close(gflops.bbox2distance(points, boxes), dist)
    clamped = gflops.bbox2distance(points, boxes, max_dis=16, eps=0.1)
    assert clamped.min() >= 0 and clamped.max() <= 15.9
    boxes.sum().backward()
    torch.testing.assert_close(dist.grad, torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device).expand(50, 4))
    torch.testing.assert_close(gflops.distance2bbox(points, dist, max_shape=(30, 40)),
                               reference.distance2bbox(points, dist, max_shape=(30, 40)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_cuda_agree(accel, dtype):
    pred, points, strides = distribution_inputs(3, 50, 16, dtype=dtype)
    for fn, args in ((gflops.integral, ()), (gflops.decode_distribution, (points, strides, 16, (200, 300)))):
        cpu, g_cpu = grads(fn, pred, *args)
        with accel:
            gpu, g_gpu = grads(fn, accel(pred), *[accel(a) for a in args])
        torch.testing.assert_close(gpu.cpu(), cpu, **(_tol(dtype) if dtype != torch.float32 else
                                                      dict(rtol=1e-5, atol=1e-3)))
        gtol = _tol(dtype) if dtype != torch.float32 else dict(rtol=1e-4, atol=1e-5 * g_cpu.abs().max().item())
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, **gtol)


def test_backward_ops_check_their_gradients(device):
    pred, points, strides = distribution_inputs(2, 5, 16, device=device)
    with pytest.raises(RuntimeError, match=r"grad must have shape \[2, 5, 4\]"):
        ops().integral_backward(torch.ones(2, 5, 3, device=device), pred, 16)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        ops().decode_distribution_backward(torch.ones(10, 4, device=device), pred, points, strides, 16, None)
