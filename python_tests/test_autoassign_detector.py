"""The reference AutoAssign detector: head layout and init, the post-process,
the ops switch, training and evaluation from the command line, DDP."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference.autoassign import AutoAssign, points
from reference.nms import distance_multiclass_nms
from reference.ops import Ops

ROOT = Path(__file__).resolve().parent.parent


def _tiny(num_classes=3, ops="reference", **kw):
    torch.manual_seed(0)
    return AutoAssign(num_classes, depth=18, base_width=8, fpn_channels=16, stacked_convs=2, ops=Ops(ops), **kw)


def test_head_layout_and_init():
    model = _tiny()
    head = model.head
    convs = [m for m in [*head.cls_tower, *head.reg_tower] if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and all(c.bias is not None for c in convs)  # conv_bias forced on
    assert torch.allclose(head.cls.bias, torch.full((3,), -math.log(49)))
    assert head.reg.bias.tolist() == [4.0] * 4 and head.obj.bias.tolist() == [0.0]
    assert head.obj.in_channels == head.reg.in_channels
    assert model.center_prior.mu.eq(0).all() and model.center_prior.sigma.eq(1).all()
    cls, dist, obj, prior, shapes = model.raw(torch.randn(2, 3, 64, 96))
    assert shapes == [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
    n = sum(h * w for h, w in shapes)
    assert cls.shape == (2, n, 3) and dist.shape == (2, n, 4) and obj.shape == (2, n) and prior.shape == (2, 3, 2)
    # Starting distances are about 4 strides (weights N(0, 0.01), bias 4), never negative.
    pts, strides, sizes = points(shapes, "cpu")
    assert sizes == [96, 24, 6, 2, 1] and pts[:2].tolist() == [[0.0, 0.0], [8.0, 0.0]]
    ratio = dist / strides[None, :, None]
    assert ratio.min() >= 0 and (ratio - 4).abs().median() < 0.5
    # The objectness hangs off the regression tower: it moves with it, not with the class tower.
    x = torch.randn(2, 3, 64, 64)
    before = model.raw(x)[2]
    with torch.no_grad():
        head.cls_tower[0].weight.mul_(3)
    assert torch.equal(model.raw(x)[2], before)
    with torch.no_grad():
        head.reg_tower[0].weight.mul_(3)
    assert not torch.allclose(model.raw(x)[2], before)


def test_distances_are_clamped_scaled_and_strided():
    model = _tiny()
    with torch.no_grad():
        model.head.reg.bias.copy_(torch.tensor([-1.0, 0.5, 2.0, 3.0]))
        model.head.reg.weight.zero_()
        model.head.scales[1].scale.fill_(2.0)
        model.head.scales[2].scale.fill_(-0.5)
    _, dist, _, _, shapes = model.raw(torch.randn(2, 3, 64, 64))
    n0, n1 = (shapes[i][0] * shapes[i][1] for i in range(2))
    assert dist[0, 0].tolist() == [0.0, 4.0, 16.0, 24.0]  # level 0: stride 8, scale 1
    assert dist[0, n0].tolist() == [0.0, 16.0, 64.0, 96.0]  # level 1: stride 16, scale 2
    assert dist[0, n0 + n1].tolist() == [16.0, 0.0, 0.0, 0.0]  # level 2: scale -0.5, then the clamp


def test_post_process_scores_pairs_by_class_then_objectness():
    """Candidates are (point, class) pairs chosen by sigma(cls) alone (above
    score_thr, the best nms_pre), then scored sigma(cls) * sigma(obj) with no
    second threshold; a point can be kept for two classes."""
    pts = torch.tensor([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0], [130.0, 130.0]])
    cls = torch.full((1, 4, 3), -10.0)
    cls[0, 0, 0] = cls[0, 0, 2] = 2.0  # point 0: two classes
    cls[0, 1, 1] = 1.0
    cls[0, 2, 1] = -2.5  # sigma 0.076 > 0.05; times sigma(-3) 0.047 < 0.05: kept all the same
    cls[0, 3, 1] = -3.5  # sigma 0.029 < 0.05: never a candidate, whatever its objectness
    obj = torch.tensor([[0.0, 3.0, -3.0, 10.0]])
    dist = torch.tensor([[[5.0, 5.0, 5.0, 5.0], [4.0, 4.0, 60.0, 4.0], [1.0, 1.0, 1.0, 1.0], [2.0] * 4]])
    boxes, scores, labels, counts = distance_multiclass_nms(cls, dist, obj, pts, [4], [(140, 100)],
                                                            scale_factors=[(1.0, 1.0)])
    sig = torch.sigmoid
    s0, s1, s2 = (sig(torch.tensor(c)) * sig(torch.tensor(o)) for c, o in ((2.0, 0.0), (1.0, 3.0), (-2.5, -3.0)))
    assert counts.tolist() == [4] and s2 < 0.05
    assert labels[0, :4].tolist() == [1, 0, 2, 1] and torch.allclose(scores[0, :4], torch.stack([s1, s0, s0, s2]))
    assert boxes[0, 0].tolist() == [46.0, 46.0, 100.0, 54.0]  # clipped to the image width
    assert boxes[0, 1].tolist() == [5.0, 5.0, 15.0, 15.0]
    # nms_pre 2: the two best by sigma(cls) (point 0's pair), not the best products (points 1 and 0).
    _, scores, labels, counts = distance_multiclass_nms(cls, dist, obj, pts, [4], [(140, 100)], nms_pre=2)
    assert counts.tolist() == [2] and labels[0, :2].tolist() == [0, 2]
    obj[0, 1] = -10.0  # a tiny objectness does not lose point 1 its candidacy either
    _, scores, labels, counts = distance_multiclass_nms(cls, dist, obj, pts, [4], [(140, 100)], nms_pre=3)
    assert counts.tolist() == [3] and labels[0, :3].tolist() == [0, 2, 1]


def test_ops_switch_covers_autoassign():
    ref, gfl = Ops("reference"), Ops("gflops")
    assert ref.used(AutoAssign.OPS) == dict(autoassign_loss="reference", autoassign_loss_terms="reference",
                                            box_iou="reference", giou_loss="reference",
                                            distance_multiclass_nms="reference", batched_nms="reference")
    assert gfl.used(AutoAssign.OPS) == dict(autoassign_loss="gflops", distance_multiclass_nms="reference",
                                            batched_nms="gflops")
    import gflops

    assert gfl.autoassign_loss is gflops.autoassign_loss and gfl.autoassign_loss_terms is gflops.autoassign_loss_terms
    assert gfl.distance_multiclass_nms.keywords == dict(batched_nms=gflops.batched_nms)
    # Composition: a namespace whose whole op is the reference runs it on the namespace's parts.
    from reference import ops as ops_mod

    saved = gflops.autoassign_loss_terms, gflops.autoassign_loss
    try:
        del gflops.autoassign_loss_terms
        parts = Ops("gflops")
        gflops.autoassign_loss_terms = saved[0]
        del gflops.autoassign_loss
        glue = Ops("gflops")
    finally:
        gflops.autoassign_loss_terms, gflops.autoassign_loss = saved
    assert parts.autoassign_loss_terms.func is ops_mod.REFERENCE_OPS["autoassign_loss_terms"]
    assert parts.autoassign_loss_terms.keywords == dict(box_iou=gflops.box_iou, giou_loss=gflops.giou_loss)
    # Without gflops' whole loss, the reference's batch totals run on gflops' fused terms.
    assert glue.autoassign_loss.func is ops_mod.REFERENCE_OPS["autoassign_loss"]
    assert glue.autoassign_loss.keywords == dict(autoassign_loss_terms=gflops.autoassign_loss_terms)


def _batch(n=4, size=64, counts=(2, 1, 3, 0), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g, dtype=dtype)
    G = max(counts)
    xy = torch.rand(n, G, 2, generator=g) * size * 0.5
    boxes = torch.cat([xy, xy + 12 + torch.rand(n, G, 2, generator=g) * size * 0.4], -1)
    valid = torch.arange(G)[None] < torch.tensor(counts)[:, None]
    labels = torch.where(valid, torch.randint(0, 3, (n, G), generator=g), -1)
    return images, boxes, labels, valid


def test_same_function_on_gflops_parts_in_float64():
    """With --ops gflops the loss is gflops.autoassign_loss_terms (the fused
    op) and the post-process runs on gflops.batched_nms: the same losses,
    gradients (every parameter) and detections as the reference in float64."""
    images, boxes, labels, valid = _batch(dtype=torch.float64)
    outs = {}
    for ops in ("reference", "gflops"):
        model = _tiny(ops=ops).double()
        losses = model(images, boxes.double(), labels, valid, [(64, 64)] * 4)
        grads = torch.autograd.grad(sum(losses.values()), list(model.parameters()))
        metas = [dict(img_shape=(64, 64), scale_factor=(1.0, 1.0))] * 4
        model.eval()
        outs[ops] = losses, grads, model.predict(images, metas, score_thr=0.0)
    (la, ga, da), (lb, gb, db) = outs["reference"], outs["gflops"]
    for k in la:
        assert la[k].item() == pytest.approx(lb[k].item(), rel=1e-12)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-15)
    assert sum(len(d["scores"]) for d in da) > 50
    for a, b in zip(da, db):
        assert torch.equal(a["labels"], b["labels"]) and torch.equal(a["boxes"], b["boxes"])


def test_short_training_loss_falls():
    images, boxes, labels, valid = _batch(counts=(2, 1, 3, 2))
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(40):
        losses = model(images, boxes, labels, valid, [(64, 64)] * 4)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < 0.7 * sum(totals[:5]) / 5, totals


def _log(wd):
    rows = [json.loads(line) for line in (wd / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("summary")], rows[-1]


def test_train_and_evaluate_from_the_command_line(tmp_path, monkeypatch):
    from reference.evaluate import main as evaluate
    from reference.train import main as train

    monkeypatch.chdir(tmp_path)
    wd = tmp_path / "aa"
    train(["--model", "autoassign", "--preset", "tiny", "--iters", "6", "--device", "cpu", "--work-dir", str(wd),
           "--quiet", "--ops", "gflops"])
    hist, summary = _log(wd)
    assert summary["model"] == "autoassign" and summary["ops"]["autoassign_loss"] == "gflops"
    assert len(hist) == 6 and set(hist[0]) >= {"loss_pos", "loss_neg", "loss_center", "loss"}
    assert all(math.isfinite(r["loss"]) for r in hist)
    ckpt = torch.load(wd / "latest.pth")
    assert ckpt["detector"] == "autoassign" and "center_prior.mu" in ckpt["model"]
    evaluate(["--checkpoint", str(wd / "latest.pth"), "--device", "cpu", "--ops", "reference"])
    ev = json.loads((wd / "eval.json").read_text())
    assert len(ev["stats"]) == 12 and ev["images"] == 4


def test_float64_training_with_the_fused_loss_follows_the_reference(tmp_path, monkeypatch):
    """Six float64 iterations from one seed with --ops reference and --ops
    gflops (the fused AutoAssign loss op): the same losses at every iteration."""
    from reference.train import main as train

    monkeypatch.chdir(tmp_path)
    logs = {}
    for ops in ("reference", "gflops"):
        wd = tmp_path / ops
        train(["--model", "autoassign", "--preset", "tiny", "--iters", "6", "--device", "cpu", "--work-dir", str(wd),
               "--quiet", "--ops", ops, "--dtype", "float64", "--seed", "2"])
        logs[ops] = _log(wd)
    assert logs["gflops"][1]["ops"]["autoassign_loss"] == "gflops"
    for a, b in zip(logs["reference"][0], logs["gflops"][0]):
        for k in ("loss_pos", "loss_neg", "loss_center", "loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-9), (a["iter"], k)
    assert logs["reference"][0][-1]["loss"] != logs["reference"][0][0]["loss"]


def test_norm_layers_have_no_weight_decay_for_autoassign():
    from reference.train import param_groups

    model = _tiny()
    groups = param_groups(model, 1e-4, 0.0)
    norm = {id(p) for m in model.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))
            for p in m.parameters()}
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == norm
    assert id(model.center_prior.mu) in {id(p) for p in groups[0]["params"]}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo runs on Linux")
def test_two_process_gloo_equals_one_process(tmp_path):
    """One step on a global batch of 4 images: 2 processes of 2 images (the
    second with no GT at all) give the 1-process losses and gradients."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    script = str(ROOT / "python_tests" / "ddp_autoassign_step.py")
    runs = {"one": [sys.executable, script, str(tmp_path / "one.pt")],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", script,
                    str(tmp_path / "two.pt")]}
    for cmd in runs.values():
        r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one["world"] == 1 and two["world"] == 2
    for k in one["losses"]:
        assert one["losses"][k] == pytest.approx(two["losses"][k], rel=1e-12), k
    assert one["losses"]["loss_pos"] > 0 and one["losses"]["loss_center"] > 0
    for name, g in one["grads"].items():
        torch.testing.assert_close(two["grads"][name], g, rtol=1e-9, atol=1e-14, msg=name)
    assert one["grads"]["center_prior.mu"].abs().sum() > 0
