"""The reference detector: ATSS and NMS on hand-made cases, data round trip,
training, COCOeval, and the reference-vs-gflops loss trajectories."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reference.assign import atss_assign
from reference.boxes import box_iou
from reference.data import CocoDetection, collate, generate
from reference.evaluate import coco_results, coco_stats
from reference.gfl import GFL, anchors
from reference.nms import batched_nms, nms
from reference.ops import Ops
from reference.stages import TRAIN_STAGES

ROOT = Path(__file__).resolve().parent.parent


def _grid_anchors(n=4, stride=8, size=16):
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    c = torch.stack([xs.flatten(), ys.flatten()], 1).float() * stride
    return torch.cat([c - size / 2, c + size / 2], 1)


def _assign(gts, valid=None, labels=None, topk=9):
    a = _grid_anchors()
    g = torch.tensor(gts, dtype=torch.float32).reshape(1, -1, 4)
    valid = torch.ones(1, g.shape[1], dtype=torch.bool) if valid is None else torch.tensor([valid])
    labels = torch.zeros(1, g.shape[1], dtype=torch.long) if labels is None else torch.tensor([labels])
    return atss_assign(a, [16], g, labels, valid, num_classes=3, topk=topk)


def test_atss_gt_centred_between_anchors():
    # Centre (12, 12): the four nearest anchors (8|16, 8|16) tie in distance and in IoU.
    gt, label, iou = _assign([[4, 4, 20, 20]], labels=[2])
    pos = (gt[0] > 0).nonzero().squeeze(1).tolist()
    assert pos == [5, 6, 9, 10]
    assert label[0, pos].tolist() == [2] * 4 and (label[0, gt[0] == 0] == 3).all()
    assert torch.allclose(iou[0, pos], torch.full((4,), 144 / 368))


def test_atss_tiny_gt_inside_no_anchor_centre():
    gt, label, _ = _assign([[9, 9, 11, 11]])
    assert (gt == 0).all() and (label == 3).all()


def test_atss_equal_iou_goes_to_lower_gt_index():
    gt, _, _ = _assign([[4, 4, 20, 20], [4, 4, 20, 20]], labels=[0, 1])
    assert set(gt[0].tolist()) == {0, 1}  # every positive anchor to GT 0 (stored as 1)


def test_atss_image_without_gt_and_padding():
    gt, label, iou = _assign([[4, 4, 20, 20]], valid=[False])
    assert (gt == 0).all() and (label == 3).all() and (iou == 0).all()
    a = _grid_anchors()
    out = atss_assign(a, [16], torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long),
                      torch.zeros(2, 0, dtype=torch.bool), num_classes=3)
    assert out[0].shape == (2, 16) and (out[1] == 3).all()


def test_atss_invalid_anchors_never_assigned():
    a = _grid_anchors()
    valid = torch.ones(16, dtype=torch.bool)
    valid[[5, 6]] = False
    g = torch.tensor([[[4.0, 4, 20, 20]]])
    gt, _, _ = atss_assign(a, [16], g, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                           3, anchor_valid=valid)
    assert gt[0, 5] == 0 and gt[0, 6] == 0


def test_nms_tie_and_threshold_rules():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 12.5], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.9, 0.95, 0.5])
    # IoU(box2, box0) = 100/125 = 0.8: suppressed at 0.6, kept at exactly 0.8 (only > suppresses).
    assert nms(boxes, scores, 0.6).tolist() == [2, 3]
    assert nms(boxes, scores, 0.8).tolist() == [2, 0, 3]  # box 0 before its twin box 1 (lower index)
    assert nms(boxes[:0], scores[:0], 0.5).numel() == 0
    keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.6)
    assert keep.tolist() == [2, 1, 3]


def test_batched_nms_compares_classes_without_coordinate_offsets():
    # Class 79 moved by 79 x 1001 px rounds these float32 coordinates to 1/128 px: the
    # offset trick's IoU of boxes 0 and 1 would come out above their true IoU (the threshold
    # here), so box 1 would be suppressed although only IoU > threshold suppresses.
    boxes = torch.tensor([[446.63092041015625, 691.3995971679688, 472.0020751953125, 733.103515625],
                          [448.1011962890625, 694.0889282226562, 473.36895751953125, 735.0004272460938],
                          [0.0, 0.0, 1000.0, 1000.0]])
    thr = box_iou(boxes[:1], boxes[1:2]).item()
    keep = batched_nms(boxes, torch.tensor([0.9, 0.8, 0.1]), torch.tensor([79, 79, 0]), thr)
    assert keep.tolist() == [0, 1, 2]


def test_nms_nan_scores_are_never_kept():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30.0], [50, 50, 60, 60.0]])
    assert nms(boxes, torch.tensor([0.5, float("nan"), 0.7, float("nan")]), 0.5).tolist() == [2, 0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    ann = generate(root, images=6, size=96, num_classes=3, seed=3, split="train")
    return root, ann


def test_generator_deterministic_and_loader_round_trip(tiny_data, tmp_path):
    root, ann = tiny_data
    again = generate(tmp_path, images=6, size=96, num_classes=3, seed=3, split="train")
    assert Path(ann).read_bytes() == Path(again).read_bytes()
    assert (root / "train" / "train_000000.png").read_bytes() == (tmp_path / "train" / "train_000000.png").read_bytes()
    ds = CocoDetection(root / "train", ann, scale=(96, 96))
    js = json.loads(Path(ann).read_text())
    assert len(ds) == 6 and ds.num_classes == 3
    img, meta = ds[0]
    raw = [a for a in js["annotations"] if a["image_id"] == meta["image_id"]]
    sx, sy = meta["scale_factor"]
    expect = torch.tensor([[x * sx, y * sy, (x + w) * sx, (y + h) * sy] for x, y, w, h in (a["bbox"] for a in raw)])
    torch.testing.assert_close(meta["boxes"], expect.reshape(-1, 4))
    assert img.shape[1:] == meta["img_shape"]
    b = collate([ds[i] for i in range(3)])
    assert b["images"].shape[2] % 32 == 0 and b["images"].shape[3] % 32 == 0
    assert b["gt_valid"].sum().item() == sum(ds[i][1]["boxes"].shape[0] for i in range(3))


def _model(ds, backend="reference", seed=0):
    torch.manual_seed(seed)
    return GFL(ds.num_classes, depth=18, base_width=8, fpn_channels=32, stacked_convs=2, ops=Ops(backend))


def _batch(ds, n=2):
    b = collate([ds[i] for i in range(n)])
    return b, [m["img_shape"] for m in b["metas"]]


def test_forward_backward_tiny(tiny_data):
    root, ann = tiny_data
    ds = CocoDetection(root / "train", ann, scale=(96, 96))
    model = _model(ds)
    b, shapes = _batch(ds)
    losses = model(b["images"], b["gt_boxes"], b["gt_labels"], b["gt_valid"], shapes)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.cls.weight.grad.abs().sum() > 0 and model.head.reg.weight.grad.abs().sum() > 0


def test_short_training_loss_falls(tiny_data):
    root, ann = tiny_data
    ds = CocoDetection(root / "train", ann, scale=(96, 96))
    model = _model(ds)
    b, shapes = _batch(ds, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(40):
        losses = model(b["images"], b["gt_boxes"], b["gt_labels"], b["gt_valid"], shapes)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35)
        opt.step()
        totals.append(total.item())
    assert sum(totals[-5:]) / 5 < 0.6 * sum(totals[:5]) / 5, totals


def test_cocoeval_output(tiny_data):
    root, ann = tiny_data
    ds = CocoDetection(root / "train", ann, scale=(96, 96))
    # Ground truth fed back as predictions must score a perfect AP through the same conversion.
    metas = [ds[i][1] for i in range(len(ds))]
    preds = [dict(boxes=m["boxes"] / torch.tensor([*m["scale_factor"]] * 2), scores=torch.ones(len(m["labels"])),
                  labels=m["labels"]) for m in metas]
    stats = coco_stats(ds.coco, coco_results(ds, metas, preds), verbose=False)
    assert len(stats) == 12 and stats["AP"] == pytest.approx(1.0) and stats["AP50"] == pytest.approx(1.0)
    # And a real (untrained) model's predictions go through COCOeval too.
    model = _model(ds).eval()
    b, _ = _batch(ds, 3)
    out = model.predict(b["images"], b["metas"], score_thr=0.0)
    assert all(o["boxes"].shape[1] == 4 and len(o["scores"]) <= 100 for o in out)
    stats = coco_stats(ds.coco, coco_results(ds, b["metas"], out), verbose=False)
    assert all(-1.0 <= v <= 1.0 for v in stats.values())


def _train_log(tmp_path, ops, iters=6, dtype="float32"):
    from reference.train import main

    wd = tmp_path / ops
    main(["--preset", "tiny", "--ops", ops, "--iters", str(iters), "--device", "cpu", "--work-dir", str(wd),
          "--quiet", "--seed", "1", "--dtype", dtype])
    rows = [json.loads(line) for line in (wd / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if not r.get("summary")], rows[-1]


def test_reference_and_gflops_ops_are_the_same_function_in_float64(tmp_path, monkeypatch):
    """Trained from one seed in float64, the two ops backends give the same
    losses at every iteration (relative 1e-9) and identical detections and
    COCO numbers: any difference between the ops would grow, not stay at
    rounding level."""
    from reference.evaluate import main as evaluate

    monkeypatch.chdir(tmp_path)  # the preset's synthetic data is generated under ./data
    iters = 40
    ref, ref_summary = _train_log(tmp_path, "reference", iters, "float64")
    gfl, gfl_summary = _train_log(tmp_path, "gflops", iters, "float64")
    assert ref_summary["ops"]["gfl_box_branch"] == "reference" and gfl_summary["ops"]["gfl_box_branch"] == "gflops"
    assert ref_summary["dtype"] == gfl_summary["dtype"] == "float64"
    assert len(ref) == len(gfl) == iters
    for r in ref + gfl:  # the step split into stages, which add up to the step
        assert list(r["stages"]) == list(TRAIN_STAGES) and all(v >= 0 for v in r["stages"].values())
        assert 0.8 * r["step_s"] <= sum(r["stages"].values()) <= r["step_s"] * 1.0001
    worst = 0.0
    for a, b in zip(ref, gfl):
        for k in ("loss_cls", "loss_bbox", "loss_dfl", "loss"):
            assert a[k] == pytest.approx(b[k], rel=1e-9, abs=0), (a["iter"], k, a[k], b[k])
            worst = max(worst, abs(a[k] - b[k]) / abs(a[k]))
    dets = {}
    for ops in ("reference", "gflops"):
        evaluate(["--checkpoint", str(tmp_path / ops / "latest.pth"), "--device", "cpu"])
        dets[ops] = json.loads((tmp_path / ops / "detections.json").read_text())
        stats = json.loads((tmp_path / ops / "eval.json").read_text())["stats"]
        dets[ops + "_stats"] = stats
    assert len(dets["reference"]) > 0
    assert len(dets["reference"]) == len(dets["gflops"])
    for a, b in zip(dets["reference"], dets["gflops"]):
        assert a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
        assert a["score"] == pytest.approx(b["score"], rel=1e-9)
        assert a["bbox"] == pytest.approx(b["bbox"], rel=1e-9, abs=1e-9)
    assert dets["reference_stats"] == dets["gflops_stats"]
    print(f"largest relative loss difference over {iters} float64 iterations: {worst:.2e}")


def test_gflops_post_process_gives_the_reference_detections(tmp_path, monkeypatch):
    """One float32 model trained with reference ops, evaluated twice: with the
    reference post-process (per-image Python loops) and with --ops gflops
    (gflops.multiclass_nms, one op for the batch). Same detections, record by
    record and in order, and the same COCOeval numbers."""
    from reference.evaluate import main as evaluate

    monkeypatch.chdir(tmp_path)
    _train_log(tmp_path, "reference", 40, "float32")
    ckpt = str(tmp_path / "reference" / "latest.pth")
    dets, stats = {}, {}
    for ops in ("reference", "gflops"):
        out = tmp_path / f"eval_{ops}" / "eval.json"
        out.parent.mkdir()
        evaluate(["--checkpoint", ckpt, "--device", "cpu", "--ops", ops, "--out", str(out)])
        dets[ops] = json.loads(out.with_name("detections.json").read_text())
        stats[ops] = json.loads(out.read_text())["stats"]
    assert len(dets["reference"]) > 50
    assert [(d["image_id"], d["category_id"]) for d in dets["reference"]] == \
        [(d["image_id"], d["category_id"]) for d in dets["gflops"]]
    for a, b in zip(dets["reference"], dets["gflops"]):
        assert a["score"] == pytest.approx(b["score"], rel=1e-6)
        assert a["bbox"] == pytest.approx(b["bbox"], rel=1e-6, abs=1e-4)
    assert stats["reference"] == stats["gflops"]


def test_anchors_layout():
    points, strides, boxes, sizes = anchors([(2, 3), (1, 2)], "cpu")
    assert sizes == [6, 2]
    assert points[:4].tolist() == [[0, 0], [8, 0], [16, 0], [0, 8]]
    assert strides.tolist() == [8.0] * 6 + [16.0] * 2
    torch.testing.assert_close(boxes[1], torch.tensor([-24.0, -32, 40, 32]))


@pytest.mark.skipif(sys.platform != "linux", reason="gloo smoke test runs on Linux")
def test_torchrun_two_process_gloo(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "reference.train", "--preset", "tiny", "--iters", "2", "--device", "cpu", "--quiet",
           "--work-dir", str(tmp_path / "ddp")]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["summary"] and rows[-1]["iters"] == 2


def test_demo_report_pieces(tmp_path):
    from reference.demo import float64_section, plot_stages

    hist = [dict(iter=i, loss=1.0 + i, loss_cls=0.5, loss_bbox=0.3, loss_dfl=0.2 + i) for i in range(1, 4)]
    other = [dict(r) for r in hist]
    other[1]["loss_dfl"] *= 1 + 3e-12
    det = [dict(image_id=1, category_id=2, score=0.5, bbox=[1.0, 2.0, 3.0, 4.0])]
    ev = dict(stats=dict(AP=0.25))
    same = float64_section(dict(reference=(hist, {}, ev, det), gflops=(other, {}, ev, [dict(det[0])])))
    assert same["worst_at"] == (2, "loss_dfl") and same["worst_rel_loss_diff"] == pytest.approx(3e-12, rel=1e-3)
    assert same["same_detections"] and same["max_detection_diff"] == 0 and same["same_cocoeval"]
    moved = [dict(det[0], bbox=[1.0, 2.0, 3.0, 4.5])]
    assert float64_section(dict(reference=(hist, {}, ev, det), gflops=(hist, {}, ev, moved)))["max_detection_diff"] == 0.5
    from reference.demo import first_above, plot_divergence, rel_diffs

    diffs = rel_diffs(hist, other)
    assert diffs[0] == 0 and diffs[1] == pytest.approx(3e-12, rel=1e-3)
    assert first_above(diffs) is None and first_above(diffs, 1e-12) == 2
    plot_divergence({"gflops": diffs}, tmp_path / "div.png")
    assert (tmp_path / "div.png").stat().st_size > 1000
    png = tmp_path / "stages.png"
    plot_stages({"reference": {k: 0.01 for k in TRAIN_STAGES}, "gflops": {k: 0.005 for k in TRAIN_STAGES}},
                {"reference": dict(network=0.02, postprocess=0.01), "gflops": dict(network=0.02, postprocess=0.005)},
                png)
    assert png.stat().st_size > 1000


def test_seed_spread_report(tmp_path):
    from benchmarks import seed_spread

    work = tmp_path / "w" / "tiny_5"
    for ops, aps in (("reference", [0.10, 0.14, 0.12]), ("gflops", [0.13, 0.11, 0.125])):
        for seed, ap in enumerate(aps):
            d = work / f"{ops}_seed{seed}"
            d.mkdir(parents=True)
            (d / "eval.json").write_text(json.dumps(dict(stats=dict(AP=ap, AP50=2 * ap))))
    summary = seed_spread.main(["--preset", "tiny", "--iters", "5", "--work-dir", str(tmp_path / "w"),
                                "--out-dir", str(tmp_path / "out")])
    assert summary["reference"]["AP"]["mean"] == pytest.approx(0.12)
    assert summary["reference"]["AP"]["std"] == pytest.approx(0.02)
    assert summary["verdict"]["spread"] == pytest.approx([0.08, 0.16]) and summary["verdict"]["inside"]
    assert summary["verdict"]["welch_t"] == pytest.approx(0.128, abs=0.002)
    md = (tmp_path / "out" / "seed_spread_tiny_cpu.md").read_text()
    assert "| reference | 0.100 | 0.140 | 0.120 | 0.120 | 0.020 | 0.100..0.140 |" in md and "is inside" in md
    assert (tmp_path / "out" / "seed_spread_tiny_cpu.png").exists()
