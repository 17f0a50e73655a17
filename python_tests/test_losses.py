"""QFL / DFL: agreement with reference/, gradients, registration, edge cases, errors.

The kernels run on every backend that has them: CPU, CUDA, the emulated CUDA
path and Triton (`kernel_device`)."""
import pytest
import torch

import gflops
import reference
from conftest import OpCalls, needs_cuda, ops
from loss_cases import dfl_inputs, grads, qfl_inputs, tol

REDUCTIONS = ["none", "sum", "mean"]
QFL_SHAPES = [(1, 1), (1, 80), (7, 81), (333, 80), (100003, 8), (64, 3)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


@pytest.fixture
def device(kernel_device):
    return kernel_device


@pytest.fixture
def accel(kernel_accel):
    return kernel_accel


def _assert_close(a, b, dtype, what):
    rtol, atol = tol(dtype)
    torch.testing.assert_close(a.to(b.dtype), b, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ---- QFL ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", QFL_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_qfl_matches_reference(device, shape, reduction):
    pred, label, score, weight = qfl_inputs(*shape, device, weight=True)
    ours, g_ours = grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
    ref, g_ref = grads(reference.quality_focal_loss, pred, label, score, weight, reduction=reduction)
    _assert_close(ours, ref, torch.float32, "loss")
    _assert_close(g_ours, g_ref, torch.float32, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_qfl_dtypes(device, dtype):
    pred, label, score, _ = qfl_inputs(257, 80, device, dtype=dtype)
    ours, g_ours = grads(gflops.quality_focal_loss, pred, label, score, reduction="sum")
    ref, g_ref = grads(reference.quality_focal_loss, pred, label, score, reduction="sum")
    assert ours.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert g_ours.dtype == dtype
    _assert_close(ours, ref, torch.float32 if dtype != torch.float64 else dtype, "loss")
    _assert_close(g_ours, g_ref, dtype, "grad")


@pytest.mark.parametrize("beta", [0.0, 1.0, 1.5, 2.0, 2.5])
def test_qfl_beta(device, beta):
    pred, label, score, weight = qfl_inputs(300, 17, device, weight=True, seed=3)
    ours, g_ours = grads(gflops.quality_focal_loss, pred, label, score, weight, beta=beta, reduction="none")
    ref, g_ref = grads(reference.quality_focal_loss, pred, label, score, weight, beta=beta, reduction="none")
    _assert_close(ours, ref, torch.float32, "loss")
    if beta >= 1.0:  # below 1 the reference's own gradient is inf*0 where y == s
        _assert_close(g_ours, g_ref, torch.float32, "grad")


@pytest.mark.parametrize("case", ["extreme_logits", "score_0_and_1", "all_background", "all_positive",
                                  "labels_out_of_range", "non_contiguous"])
def test_qfl_adversarial(device, case):
    pred, label, score, weight = qfl_inputs(512, 80, device, weight=True, seed=7)
    if case == "extreme_logits":
        pred = torch.where(torch.rand_like(pred) > 0.5, 60.0, -60.0)
        pred[::3] *= 0.5
    elif case == "score_0_and_1":
        score = (torch.arange(512, device=device) % 2).float()
    elif case == "all_background":
        label = torch.full_like(label, 80)
    elif case == "all_positive":
        label = torch.arange(512, device=device) % 80
    elif case == "labels_out_of_range":
        label = torch.tensor([-1, 80, 81, 10**9, -(10**9), 5], device=device).repeat(86)[:512]
    elif case == "non_contiguous":
        pred = torch.randn(80, 1024, device=device).t()[::2]
        label = torch.randint(0, 81, (1024,), device=device)[::2]
        score = torch.rand(1024, device=device)[1::2]
        weight = torch.rand(2, 512, device=device)[1]
        assert not pred.is_contiguous() and not label.is_contiguous()
    for reduction in REDUCTIONS:
        ours, g_ours = grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
        ref, g_ref = grads(reference.quality_focal_loss, pred, label, score, weight, reduction=reduction)
        assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
        _assert_close(ours, ref, torch.float32, f"{case}/{reduction} loss")
        _assert_close(g_ours, g_ref, torch.float32, f"{case}/{reduction} grad")


@pytest.mark.parametrize("beta", [0.0, 0.01, 0.5])
def test_qfl_small_beta_far_logits_finite(device, beta):
    # x = -90 with y = 0: s is denormal, |s - y|^(beta - 1) overflows on its own; the gradient's limit is ~0.
    pred = torch.tensor([[-90.0, 90.0, -90.0, 3.0]], device=device).repeat(64, 1)
    label = torch.tensor([1, 4], device=device).repeat(32)
    score = torch.tensor([1.0, 0.0], device=device).repeat(32)
    for dtype in (torch.float32, torch.float64):
        loss, g = grads(gflops.quality_focal_loss, pred.to(dtype), label, score, beta=beta, reduction="none")
        assert torch.isfinite(loss).all() and torch.isfinite(g).all(), (loss, g)
        assert g[:, [0, 2]].abs().max() < 1e-30  # the far-negative background logits
        ref_loss, ref_g = grads(reference.quality_focal_loss, pred.double(), label, score, beta=beta, reduction="none")
        _assert_close(loss.double(), ref_loss, dtype, "loss")
        if beta > 0:  # at beta = 0 autograd's own 0 * inf is NaN at the far logits; checked above instead
            _assert_close(g.double()[:, 3], ref_g[:, 3], dtype, "grad at the moderate logit")


def test_qfl_nonfinite_score_on_background_ignored(device, validation):
    # SPEC section 1: a background row's score is ignored, so NaN/inf there change nothing and raise nothing.
    pred, label, score, weight = qfl_inputs(64, 10, device, weight=True, seed=2)
    label[::2] = 10
    label[1::4] = -1
    clean = score.clone()
    score[::2] = float("nan")
    score[1::4] = float("inf")
    for reduction in REDUCTIONS:
        ours, g = grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
        ref, g_ref = grads(gflops.quality_focal_loss, pred, label, clean, weight, reduction=reduction)
        assert torch.isfinite(ours).all() and torch.isfinite(g).all()
        assert torch.equal(ours, ref) and torch.equal(g, g_ref)
        oracle = reference.quality_focal_loss(pred, label, score, weight, reduction=reduction)
        _assert_close(ours, oracle, torch.float32, "reference")


def test_qfl_extreme_logits_exact_values():
    # A confident, correct background logit costs ~nothing; a confident wrong one costs ~x.
    pred = torch.tensor([[-60.0, 60.0]])
    label = torch.tensor([2])
    loss = gflops.quality_focal_loss(pred, label, torch.tensor([0.0]), reduction="none")
    assert loss.item() == pytest.approx(60.0, rel=1e-6)
    loss = gflops.quality_focal_loss(pred[:, :1], label, torch.tensor([0.0]), reduction="none")
    assert 0 <= loss.item() < 1e-40


@pytest.mark.parametrize("avg", ["number", "tensor"])
def test_qfl_avg_factor(device, avg):
    pred, label, score, weight = qfl_inputs(100, 20, device, weight=True)
    factor = 37.5 if avg == "number" else torch.tensor(37.5, device=device)
    ours = gflops.quality_focal_loss(pred, label, score, weight, avg_factor=factor)
    ref = reference.quality_focal_loss(pred, label, score, weight, avg_factor=factor)
    summed = gflops.quality_focal_loss(pred, label, score, weight, reduction="sum")
    _assert_close(ours, ref, torch.float32, "loss")
    _assert_close(ours, summed / 37.5, torch.float32, "mean vs sum")


def test_qfl_module(device):
    pred, label, score, weight = qfl_inputs(64, 10, device, weight=True)
    mod = gflops.QualityFocalLoss(beta=2.0, loss_weight=0.5)
    out = mod(pred, (label, score), weight=weight, avg_factor=8.0)
    ref = 0.5 * reference.quality_focal_loss(pred, label, score, weight, avg_factor=8.0)
    _assert_close(out, ref, torch.float32, "module")
    none = mod(pred, (label, score), reduction_override="none")
    assert none.shape == (64,)


def test_qfl_gradcheck(device):
    pred, label, score, weight = qfl_inputs(6, 5, device, dtype=torch.float64, weight=True, pos_frac=0.6)
    pred.requires_grad_(True)
    for beta in (2.0, 1.5):
        for reduction in REDUCTIONS:
            assert torch.autograd.gradcheck(
                lambda p: gflops.quality_focal_loss(p, label, score, weight, beta=beta, reduction=reduction),
                (pred,))


def test_qfl_empty(device):
    pred = torch.zeros(0, 80, device=device, requires_grad=True)
    label = torch.zeros(0, dtype=torch.long, device=device)
    score = torch.zeros(0, device=device)
    none = gflops.quality_focal_loss(pred, label, score, reduction="none")
    assert none.shape == (0,)
    none.sum().backward()
    assert pred.grad.shape == (0, 80)
    for reduction in ("sum", "mean"):
        out = gflops.quality_focal_loss(pred, label, score, reduction=reduction)
        assert out.shape == () and out.item() == 0.0
        out.backward()
        assert pred.grad.shape == (0, 80)
    zero_cols = gflops.quality_focal_loss(torch.zeros(4, 0, device=device), torch.zeros(4, dtype=torch.long,
                                          device=device), torch.zeros(4, device=device), reduction="none")
    assert zero_cols.tolist() == [0.0] * 4


def test_qfl_deterministic(device):
    pred, label, score, weight = qfl_inputs(20011, 80, device, weight=True)
    pred.requires_grad_(True)
    runs = []
    for _ in range(2):
        pred.grad = None
        loss = gflops.quality_focal_loss(pred, label, score, weight, reduction="sum")
        loss.backward()
        runs.append((loss.detach().clone(), pred.grad.clone()))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


@pytest.mark.parametrize("reg_max,dtype", [(16, torch.float32), (32, torch.float32), (16, torch.float64)])
@pytest.mark.parametrize("rows,reduction", [(8000, "sum"), (8008, "none"), (400, "none")])
def test_dfl_thread_count_changes_no_bit(rows, reduction, reg_max, dtype):
    """The loss and the gradient of the fused sweep, with 1 thread and with more:
    the blocks depend on the shape only (8000 rows: the small-input split). For
    'none' a thread's share of rows need not start on a 16-row tile, so a row
    must give the same bits in a full tile as on its own: at 17 bins (unrolled)
    and 33 (the generic loop), float32 and float64."""
    pred, target, weight = dfl_inputs(rows, reg_max, "cpu", dtype=dtype, weight=True)
    before = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            leaf = pred.clone().requires_grad_(True)
            loss = gflops.distribution_focal_loss(leaf, target, weight, reduction=reduction)
            loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
            runs.append((loss.detach(), leaf.grad))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_qfl_thread_count_does_not_change_sum():
    pred, label, score, weight = qfl_inputs(50000, 80, "cpu", weight=True)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = gflops.quality_focal_loss(pred, label, score, weight, reduction="sum")
        torch.set_num_threads(max(2, before))
        many = gflops.quality_focal_loss(pred, label, score, weight, reduction="sum")
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_qfl_validation_switch():
    before = gflops.validation_enabled()
    try:
        gflops.set_validation(True)
        assert gflops.validation_enabled()
        gflops.set_validation(False)
        assert not gflops.validation_enabled()
    finally:
        gflops.set_validation(before)


def _qfl_bad(device):
    pred, label, score, weight = qfl_inputs(8, 4, device, weight=True)
    return dict(pred=pred, label=label, score=score, weight=weight)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(pred=a["pred"][0]), "pred must be 2-D"),
    (lambda a: a.update(pred=a["pred"].long()), "pred must be float32"),
    (lambda a: a.update(label=a["label"][:5]), "label must have shape"),
    (lambda a: a.update(label=a["label"].int()), "label must be int64"),
    (lambda a: a.update(score=a["score"][:, None]), "score must have shape"),
    (lambda a: a.update(score=a["score"].long()), "score must be a floating tensor"),
    (lambda a: a.update(weight=a["weight"][:3]), "weight must have shape"),
    (lambda a: a.update(beta=-1.0), "beta must be finite and >= 0"),
])
@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])  # pred requiring grad: the *_and_grad op
def test_qfl_bad_shapes_and_dtypes(device, change, message, grad):
    args = _qfl_bad(device)
    args.setdefault("beta", 2.0)
    change(args)
    args["pred"].requires_grad_(grad and args["pred"].is_floating_point())
    with pytest.raises(RuntimeError, match=message):
        gflops.quality_focal_loss(args["pred"], args["label"], args["score"], args["weight"], beta=args["beta"])


def test_qfl_too_many_classes():
    # no rows, so nothing is allocated: the column count alone is refused (the CPU loop indexes in int)
    pred = torch.empty(0, 1 << 31)
    with pytest.raises(RuntimeError, match=r"too many classes per row \(2147483648"):
        gflops.quality_focal_loss(pred, torch.empty(0, dtype=torch.long), torch.empty(0))


@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_qfl_bad_score_values(device, validation, bad, grad):
    args = _qfl_bad(device)
    args["score"][3] = bad
    args["pred"].requires_grad_(grad)
    with pytest.raises(RuntimeError, match=r"score must lie in \[0, 1\].* at index 3"):
        gflops.quality_focal_loss(args["pred"], args["label"], args["score"])


def test_qfl_bad_python_args():
    args = _qfl_bad("cpu")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gflops.quality_focal_loss(args["pred"], args["label"], args["score"], reduction="avg")
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        gflops.quality_focal_loss(args["pred"], args["label"], args["score"], reduction="sum", avg_factor=2.0)
    with pytest.raises(ValueError, match="score requires grad"):
        gflops.quality_focal_loss(args["pred"], args["label"], args["score"].requires_grad_(True))
    with pytest.raises(RuntimeError, match="reduction must be 'none', 'sum' or 'mean', got 'avg'"):
        ops().quality_focal_loss(args["pred"], args["label"], args["score"], None, 2.0, "avg")
    with pytest.raises(RuntimeError, match="avg_factor is only used with reduction='mean', got reduction='sum'"):
        ops().quality_focal_loss(args["pred"], args["label"], args["score"], None, 2.0, "sum", 4.0)


def test_qfl_mixed_devices_meta(device):
    # A meta tensor stands in for "another device" (the only other one on a CPU-only machine).
    args = _qfl_bad(device)
    with pytest.raises(RuntimeError, match="label is on meta but pred is on "):
        ops().quality_focal_loss(args["pred"], args["label"].to("meta"), args["score"], None, 2.0, "sum")


@needs_cuda  # emulated tensors live on the CPU: test_qfl_mixed_devices_meta[emu] covers the same check
def test_qfl_mixed_devices_cuda():
    args = _qfl_bad("cpu")
    with pytest.raises(RuntimeError, match="all inputs must be on one device"):
        gflops.quality_focal_loss(args["pred"].cuda(), args["label"], args["score"].cuda())


# ---- DFL ---------------------------------------------------------------------

DFL_SHAPES = [(1, 1), (1, 16), (64000, 16), (777, 7), (33, 63), (40, 64)]  # 64/65 bins: both CPU tile paths


@pytest.mark.parametrize("shape", DFL_SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dfl_matches_reference(device, shape, reduction):
    pred, target, weight = dfl_inputs(*shape, device, weight=True)
    ours, g_ours = grads(gflops.distribution_focal_loss, pred, target, weight, reduction=reduction)
    ref, g_ref = grads(reference.distribution_focal_loss, pred, target, weight, reduction=reduction)
    _assert_close(ours, ref, torch.float32, "loss")
    _assert_close(g_ours, g_ref, torch.float32, "grad")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dfl_dtypes(device, dtype):
    pred, target, weight = dfl_inputs(999, 16, device, dtype=dtype, weight=True)
    ours, g_ours = grads(gflops.distribution_focal_loss, pred, target, weight, reduction="sum")
    ref, g_ref = grads(reference.distribution_focal_loss, pred, target, weight, reduction="sum")
    assert g_ours.dtype == dtype
    _assert_close(ours, ref, torch.float32 if dtype != torch.float64 else dtype, "loss")
    _assert_close(g_ours, g_ref, dtype, "grad")


@pytest.mark.parametrize("case", ["integer_targets", "edge_targets", "extreme_logits", "non_contiguous",
                                  "rows_58_apart", "rows_80_apart", "window_edges"])
def test_dfl_adversarial(device, case):
    pred, target, weight = dfl_inputs(400, 16, device, weight=True, seed=5)
    if case == "integer_targets":
        target = (torch.arange(400, device=device) % 16).float()
    elif case == "edge_targets":
        target = torch.tensor([0.0, 15.9, 16 - 0.01, 16 - 1e-6, 1e-7, 7.5], device=device).repeat(67)[:400]
    elif case == "extreme_logits":
        pred = torch.where(torch.rand_like(pred) > 0.5, 60.0, -60.0)
    elif case == "non_contiguous":
        pred = torch.randn(17, 800, device=device).t()[::2]
        target = (torch.rand(800, device=device) * 15.9)[1::2]
    elif case.startswith("rows_"):
        # Neighbouring rows far apart in one CPU tile of 16 rows: each row's exponentials must be
        # taken against its own max (against the tile's, every second row's would sit ~e^-58 or
        # ~e^-80 below it).
        half = 29.0 if case == "rows_58_apart" else 40.0
        offset = torch.tensor([half, -half], device=device).repeat(200)[:, None]
        pred = torch.rand(400, 17, generator=torch.Generator().manual_seed(3)).to(device) * (60 - 2 * half if half < 30 else 2) + offset
    elif case == "window_edges":
        # The CPU takes a row's exponentials unshifted while their sum stays in [2^-64, 2^64] and
        # redoes the row against its max outside: rows whose largest logit steps across both ends
        # (~44.4 and ~-44.4 less log(17)), one far logit among moderate ones, and the float limits.
        top = torch.linspace(-50.0, 50.0, 400, device=device)[:, None]
        pred = top - torch.rand(400, 17, generator=torch.Generator().manual_seed(4)).to(device) * 3
        pred[::7, 3] = torch.linspace(-100.0, 100.0, len(pred[::7]), device=device)
        pred[5, :] = 88.0
        pred[6, :] = -87.5
    for reduction in REDUCTIONS:
        ours, g_ours = grads(gflops.distribution_focal_loss, pred, target, weight, reduction=reduction)
        ref, g_ref = grads(reference.distribution_focal_loss, pred.double(), target, weight, reduction=reduction)
        assert torch.isfinite(ours).all() and torch.isfinite(g_ours).all()
        _assert_close(ours, ref, torch.float32, f"{case}/{reduction} loss")
        _assert_close(g_ours, g_ref, torch.float32, f"{case}/{reduction} grad")


@pytest.mark.parametrize("rows", [40, 400])
def test_dfl_nonfinite_logits_give_nan_rows(device, rows):
    """A NaN or +inf logit anywhere in a row (in a full CPU tile or in the tail)
    makes that row's loss and every element of its gradient NaN, as the
    reference's log_softmax does; the other rows keep their bits."""
    pred, target, weight = dfl_inputs(rows, 16, device, weight=True, seed=9)
    bad = {3: (5, float("nan")), 17: (16, float("nan")), 20: (0, float("inf")), rows - 2: (9, float("nan"))}
    poisoned = pred.clone()
    for r, (k, v) in bad.items():
        poisoned[r, k] = v
    rows_bad = torch.tensor(sorted(bad), device=device)
    ref = reference.distribution_focal_loss(poisoned, target, weight, reduction="none")
    assert ref[rows_bad].isnan().all()  # what the reference does: the oracle of this test
    clean_loss, clean_g = grads(gflops.distribution_focal_loss, pred, target, weight, reduction="none")
    loss, g = grads(gflops.distribution_focal_loss, poisoned, target, weight, reduction="none")
    assert loss[rows_bad].isnan().all() and g[rows_bad].isnan().all(), (loss[rows_bad], g[rows_bad])
    keep = torch.ones(rows, dtype=torch.bool, device=device)
    keep[rows_bad] = False
    assert torch.equal(loss[keep], clean_loss[keep]) and torch.equal(g[keep], clean_g[keep])
    with torch.no_grad():
        assert gflops.distribution_focal_loss(poisoned, target, weight, reduction="none")[rows_bad].isnan().all()
        assert gflops.distribution_focal_loss(poisoned, target, weight, reduction="sum").isnan()


def test_dfl_confident_rows_never_negative(device):
    """A row sure of its integer target costs ~0 and never less: the CPU's
    unshifted log-sum-exp can round below the row's max."""
    g = torch.Generator().manual_seed(11)
    top = torch.rand(4000, generator=g) * 3 + 0.3
    pred = (top[:, None] - 30.0).repeat(1, 17)
    bins = torch.randint(0, 16, (4000,), generator=g)
    pred[torch.arange(4000), bins] = top
    pred, target = pred.to(device), bins.float().to(device)
    loss = gflops.distribution_focal_loss(pred, target, reduction="none")
    assert (loss >= 0).all(), loss.min()
    _assert_close(loss, reference.distribution_focal_loss(pred.double(), target, reduction="none"), torch.float32, "loss")


def test_dfl_known_value():
    # Uniform logits over n+1 bins: the loss is log(n+1) whatever the target.
    loss = gflops.distribution_focal_loss(torch.zeros(3, 17), torch.tensor([0.0, 3.3, 15.9]), reduction="none")
    torch.testing.assert_close(loss, torch.full((3,), torch.log(torch.tensor(17.0)).item()))


@pytest.mark.parametrize("avg", ["number", "tensor"])
def test_dfl_avg_factor_and_module(device, avg):
    pred, target, weight = dfl_inputs(80, 16, device, weight=True)
    factor = 4.0 if avg == "number" else torch.tensor(4.0, device=device)
    out = gflops.DistributionFocalLoss(loss_weight=0.25)(pred, target, weight=weight, avg_factor=factor)
    ref = 0.25 * reference.distribution_focal_loss(pred, target, weight, avg_factor=factor)
    _assert_close(out, ref, torch.float32, "module")


def test_dfl_gradcheck(device):
    pred, target, weight = dfl_inputs(7, 6, device, dtype=torch.float64, weight=True)
    pred.requires_grad_(True)
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda p: gflops.distribution_focal_loss(p, target, weight, reduction=reduction), (pred,))


def test_dfl_empty(device):
    pred = torch.zeros(0, 17, device=device, requires_grad=True)
    target = torch.zeros(0, device=device)
    none = gflops.distribution_focal_loss(pred, target, reduction="none")
    assert none.shape == (0,)
    none.sum().backward()
    assert pred.grad.shape == (0, 17)
    out = gflops.distribution_focal_loss(pred, target)
    assert out.item() == 0.0
    out.backward()
    assert pred.grad.shape == (0, 17)


def test_dfl_deterministic(device):
    pred, target, weight = dfl_inputs(64000, 16, device, weight=True)
    a = gflops.distribution_focal_loss(pred, target, weight, reduction="sum")
    b = gflops.distribution_focal_loss(pred, target, weight, reduction="sum")
    assert torch.equal(a, b)


@pytest.mark.parametrize("change,message", [
    (lambda a: a.update(pred=a["pred"][0]), "pred must be 2-D"),
    (lambda a: a.update(pred=a["pred"][:, :1]), "reg_max \\+ 1 >= 2 bins"),
    (lambda a: a.update(pred=a["pred"].int()), "pred must be float32"),
    (lambda a: a.update(target=a["target"][:2]), "target must have shape"),
    (lambda a: a.update(target=a["target"].long()), "target must be a floating tensor"),
    (lambda a: a.update(weight=a["weight"][:, None]), "weight must have shape"),
])
@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])
def test_dfl_bad_shapes_and_dtypes(device, change, message, grad):
    pred, target, weight = dfl_inputs(8, 16, device, weight=True)
    args = dict(pred=pred, target=target, weight=weight)
    change(args)
    args["pred"].requires_grad_(grad and args["pred"].is_floating_point())
    with pytest.raises(RuntimeError, match=message):
        gflops.distribution_focal_loss(args["pred"], args["target"], args["weight"])


@pytest.mark.parametrize("bad", [-0.5, 16.0, 20.0, float("nan")])
@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])
def test_dfl_bad_target_values(device, validation, bad, grad):
    pred, target, _ = dfl_inputs(8, 16, device)
    target[5] = bad
    pred.requires_grad_(grad)
    with pytest.raises(RuntimeError, match=r"target must lie in \[0, reg_max\) = \[0, 16\).* at index 5"):
        gflops.distribution_focal_loss(pred, target)


@pytest.mark.parametrize("grad", [False, True], ids=["plain", "fused"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("threads", [1, 3])
def test_bad_values_lowest_row_of_many_blocks_named(device, validation, grad, reduction, threads):
    # Rows spread over many parallel blocks, bad values in several: the error names the lowest,
    # whatever block finished first (1 thread: blocks in order, so a "last report wins" fails;
    # 3 threads: in any order); a background row's out-of-range score is not an error.
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        pred, target, _ = dfl_inputs(9000, 16, device)
        target[[8700, 4321, 6000]] = torch.tensor([-1.0, 16.0, float("nan")], device=device)
        pred.requires_grad_(grad)
        with pytest.raises(RuntimeError, match=r"target must lie in \[0, reg_max\) = \[0, 16\), got 16.* at index 4321"):
            gflops.distribution_focal_loss(pred, target, reduction=reduction)
        pred, label, score, _ = qfl_inputs(9000, 4, device)
        label[:3000] = 4
        score[:3000] = 7.0  # background rows: ignored
        label[[7000, 5001]] = 1
        score[[7000, 5001]] = torch.tensor([1.5, -0.5], device=device)
        pred.requires_grad_(grad)
        with pytest.raises(RuntimeError, match=r"score must lie in \[0, 1\], got -0.5 at index 5001"):
            gflops.quality_focal_loss(pred, label, score, reduction=reduction)
    finally:
        torch.set_num_threads(before)


def test_dfl_unvalidated_cuda_stays_in_bounds(accel):
    before = gflops.validation_enabled()
    gflops.set_validation(False)
    try:
        pred, target, _ = dfl_inputs(1000, 16, accel.device)
        target[::7] = 1e9
        target[1::7] = -1e9
        target[2::7] = float("nan")
        pred.requires_grad_(True)
        with accel:
            out = gflops.distribution_focal_loss(pred, target, reduction="sum")
            out.backward()
    finally:
        gflops.set_validation(before)
    assert torch.isfinite(out) and torch.isfinite(pred.grad).all()


# ---- registration, compile, CPU vs CUDA --------------------------------------


def test_opcheck(device):
    pred, label, score, weight = qfl_inputs(33, 12, device, weight=True)
    pred.requires_grad_(True)
    for reduction, avg in (("none", None), ("sum", None), ("mean", None), ("mean", 3.0)):
        torch.library.opcheck(ops().quality_focal_loss, (pred, label, score, weight, 2.0, reduction, avg))
        torch.library.opcheck(ops().quality_focal_loss, (pred, label, score, None, 1.5, reduction, avg))
        torch.library.opcheck(ops().quality_focal_loss_and_grad, (pred, label, score, weight, 2.0, reduction, avg))
    dpred, target, dweight = dfl_inputs(40, 16, device, weight=True)
    dpred.requires_grad_(True)
    for reduction, avg in (("none", None), ("sum", None), ("mean", None), ("mean", 3.0)):
        torch.library.opcheck(ops().distribution_focal_loss, (dpred, target, dweight, reduction, avg))
        torch.library.opcheck(ops().distribution_focal_loss, (dpred, target, None, reduction, avg))
        torch.library.opcheck(ops().distribution_focal_loss_and_grad, (dpred, target, dweight, reduction, avg))


def _fused_case(loss, device, dtype, weight=True, n=301):
    """(op name, tensor inputs, constant args, public function) of one loss."""
    if loss == "qfl":
        pred, label, score, w = qfl_inputs(n, 80, device, dtype=dtype, weight=weight)
        return "quality_focal_loss", (pred, label, score, w), (2.0,), gflops.quality_focal_loss
    pred, target, w = dfl_inputs(n, 16, device, dtype=dtype, weight=weight)
    return "distribution_focal_loss", (pred, target, w), (), gflops.distribution_focal_loss


@pytest.mark.parametrize("loss", ["qfl", "dfl"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_gradient_from_the_forward_sweep(device, loss, dtype, reduction):
    """With pred requiring grad the loss comes from <loss>_and_grad: on CPU it
    returns the gradient with the loss (empty on the other backends, which run
    the backward op). Either way the gradient is the backward op's, and a
    second backward (retain_graph) gives the same bits as the first."""
    name, tensors, consts, public = _fused_case(loss, device, dtype)
    pred, rest = tensors[0], tensors[1:]
    args = (*consts, reduction)
    out_loss, fused = getattr(ops(), f"{name}_and_grad")(*tensors, *args)
    torch.testing.assert_close(out_loss, getattr(ops(), name)(*tensors, *args))
    on_cpu_kernels = ops() is torch.ops.gflops and device == "cpu"
    fuses = on_cpu_kernels and dtype in (torch.float32, torch.float64)  # 16-bit: the backward op rounds once
    assert fused.shape == (pred.shape if fuses else (0,))
    g = torch.rand(out_loss.shape, dtype=out_loss.dtype, device=device) + 0.5
    expected = getattr(ops(), f"{name}_backward")(g, *tensors, *args)
    leaf = pred.clone().requires_grad_(True)
    out = public(leaf, *rest, reduction=reduction)
    with OpCalls() as calls:
        (first,) = torch.autograd.grad(out, leaf, g, retain_graph=True)
    assert calls.names == ([] if fuses else [f"{name}_backward"])  # fused: the backward only scales
    with OpCalls() as calls:
        (second,) = torch.autograd.grad(out, leaf, g)
    assert calls.names == ([f"{name}_and_grad"] if fuses else [f"{name}_backward"])  # the buffer is spent
    rtol, atol = tol(dtype)
    torch.testing.assert_close(first, expected, rtol=rtol, atol=atol)
    assert torch.equal(first, second)


@pytest.mark.parametrize("loss", ["qfl", "dfl"])
def test_create_graph_keeps_the_op_backward(device, loss):
    """With create_graph the gradient is not the forward's constant buffer (which
    would silently drop d grad / d pred): the backward op runs, as without fusion."""
    name, tensors, consts, public = _fused_case(loss, device, torch.float64, n=40)
    leaf = tensors[0].clone().requires_grad_(True)
    out = public(leaf, *tensors[1:], reduction="sum")
    (g,) = torch.autograd.grad(out, leaf, create_graph=True)
    one = torch.ones((), dtype=torch.float64, device=device)
    expected = getattr(ops(), f"{name}_backward")(one, *tensors, *consts, "sum")
    torch.testing.assert_close(g, expected)
    assert g.grad_fn is not None


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(device, backend):
    pred, label, score, weight = qfl_inputs(64, 16, device, weight=True)
    dpred, target, dweight = dfl_inputs(48, 16, device, weight=True)

    def step(p, dp, avg):
        qfl = gflops.quality_focal_loss(p, label, score, weight, avg_factor=avg)
        dfl = gflops.distribution_focal_loss(dp, target, dweight, avg_factor=4.0)
        return qfl + dfl

    compiled = torch.compile(step, fullgraph=True, backend=backend)
    avg = torch.tensor(10.0, device=device)
    p1, dp1 = pred.clone().requires_grad_(True), dpred.clone().requires_grad_(True)
    p2, dp2 = pred.clone().requires_grad_(True), dpred.clone().requires_grad_(True)
    out_c = compiled(p1, dp1, avg)
    out_e = step(p2, dp2, avg)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    torch.testing.assert_close(p1.grad, p2.grad)
    torch.testing.assert_close(dp1.grad, dp2.grad)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_cuda_agree(accel, dtype):
    for vec_friendly in (True, False):
        c = 80 if vec_friendly else 81
        pred, label, score, weight = qfl_inputs(3001, c, "cpu", dtype=dtype, weight=True)
        for reduction in ("none", "sum"):
            cpu, g_cpu = grads(gflops.quality_focal_loss, pred, label, score, weight, reduction=reduction)
            with accel:
                gpu, g_gpu = grads(gflops.quality_focal_loss, accel(pred), accel(label), accel(score),
                                   accel(weight), reduction=reduction)
            _assert_close(gpu.cpu(), cpu, torch.float32 if dtype != torch.float64 else dtype, "qfl loss")
            _assert_close(g_gpu.cpu(), g_cpu, dtype, "qfl grad")
    pred, target, weight = dfl_inputs(5000, 16, "cpu", dtype=dtype, weight=True)
    for reduction in ("none", "sum"):
        cpu, g_cpu = grads(gflops.distribution_focal_loss, pred, target, weight, reduction=reduction)
        with accel:
            gpu, g_gpu = grads(gflops.distribution_focal_loss, accel(pred), accel(target), accel(weight),
                               reduction=reduction)
        _assert_close(gpu.cpu(), cpu, torch.float32 if dtype != torch.float64 else dtype, "dfl loss")
        _assert_close(g_gpu.cpu(), g_cpu, dtype, "dfl grad")
