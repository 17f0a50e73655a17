"""The reference detector against MMDetection's GFL (gfl_r50_fpn_1x_coco),
one test per choice: ATSS distances and single candidates, anchor validity
per image, the QFL weights and normaliser, min_bbox_size, the data filters
and batching, the schedule, and weight loading."""
import json

import pytest
import torch

from reference.assign import atss_assign, center_distances
from reference.data import AspectRatioBatchSampler, CocoDetection, collate
from reference.gfl import GFL, anchors, pad_shape, valid_flags
from reference.losses import quality_focal_loss
from reference.nms import multiclass_nms
from reference.ops import Ops
from reference.train import parser, schedule
from reference.weights import from_torchvision_resnet, load_weights


def _box(cx, cy, half):
    return [cx - half, cy - half, cx + half, cy + half]


def test_center_distances_exact_where_cdist_is_not():
    g = torch.Generator().manual_seed(0)
    centers = 1000 + 40 * torch.rand(64, 2, generator=g)
    anchors_ = torch.cat([centers - 16, centers + 16], 1)
    gt = (1000 + 40 * torch.rand(1, 8, 2, generator=g))
    gt_boxes = torch.cat([gt - 5, gt + 5], -1)
    exact = (gt.double()[:, :, None] - centers.double()[None, None]).norm(dim=-1)
    got = center_distances(gt_boxes, anchors_)
    # float32 rounding of the coordinates only: far below a pixel (cdist's mm path: up to ~0.4 px here).
    assert (got.double() - exact).abs().max() < 1e-3


def test_atss_near_tie_in_distance_picks_the_nearer_anchor():
    # One level of 40 anchors around a GT centred at (1000, 1000): 8 anchors at
    # distance 3, then anchor 38 at 7.002 and anchor 39 at 7.000, the rest far.
    # Only 9 are candidates; 39 must be the ninth (torch.cdist's rounding makes
    # the two equal, and the tie rule then takes 38). Their IoUs differ, so the
    # threshold, and with it the positives, depend on which one is picked.
    pts = [(1000 + 3 * dx, 1000 + 3 * dy) for dx, dy in
           [(1, 0), (-1, 0), (0, 1), (0, -1), (0.6, 0.8), (-0.6, 0.8), (0.6, -0.8), (-0.6, -0.8)]]
    pts += [(1000 + 60 + 2 * k, 1000 + 60) for k in range(30)]
    pts += [(1000.0, 1007.002), (1007.0, 1000.0)]
    sizes = [8.0] * 38 + [4.0, 12.0]  # 38 low IoU, 39 high: only 39 can clear mean + std
    a = torch.tensor([_box(x, y, s) for (x, y), s in zip(pts, sizes)], dtype=torch.float32)
    gt = torch.tensor([[_box(1000, 1000, 12)]])
    got, _, _ = atss_assign(a, [40], gt, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                            num_classes=2)
    # The exact candidate set (39 the ninth) in float64, by hand: mean + std of the nine IoUs.
    ious = torch.tensor([(min(x + s, 1012) - max(x - s, 988)) * (min(y + s, 1012) - max(y - s, 988)) /
                         ((2 * s) ** 2 + 24 ** 2 - (min(x + s, 1012) - max(x - s, 988)) *
                          (min(y + s, 1012) - max(y - s, 988)))
                         for (x, y), s in zip(pts[:8] + [pts[39]], sizes[:8] + [12.0])], dtype=torch.float64)
    thr = ious.mean() + ious.std()
    expect = [i for i, v in zip(list(range(8)) + [39], ious) if v >= thr]
    assert expect == [39] and (got[0] > 0).nonzero().squeeze(1).tolist() == expect
    assert got[0, 38] == 0


def test_atss_single_candidate_gives_no_positive():
    # One anchor in the only level: std is undefined (NaN in MMDetection).
    a = torch.tensor([_box(8, 8, 8)], dtype=torch.float32)
    gt = torch.tensor([[[0.0, 0, 16, 16]]])
    got, label, iou = atss_assign(a, [1], gt, torch.zeros(1, 1, dtype=torch.long),
                                  torch.ones(1, 1, dtype=torch.bool), num_classes=2)
    assert got.tolist() == [[0]] and label.tolist() == [[2]] and iou.tolist() == [[0.0]]
    # Two levels of one identical anchor each: two candidates, std 0, both positive.
    a2 = torch.tensor([_box(8, 8, 8), _box(8, 8, 8)], dtype=torch.float32)
    got2, _, _ = atss_assign(a2, [1, 1], gt, torch.zeros(1, 1, dtype=torch.long),
                             torch.ones(1, 1, dtype=torch.bool), num_classes=2)
    assert got2.tolist() == [[1, 1]]
    # Only one *valid* anchor of two: again no positive.
    got3, _, _ = atss_assign(a2, [1, 1], gt, torch.zeros(1, 1, dtype=torch.long),
                             torch.ones(1, 1, dtype=torch.bool), num_classes=2,
                             anchor_valid=torch.tensor([True, False]))
    assert got3.tolist() == [[0, 0]]


def test_valid_flags_use_each_images_own_padded_size():
    # Batch padded to 128 x 128; image 0 is 100 x 60 (h, w) -> padded 128 x 64.
    shapes = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert pad_shape((100, 60)) == (128, 64) and pad_shape((128, 33)) == (128, 64)
    flags = valid_flags(shapes, [pad_shape((100, 60)), pad_shape((128, 128))], "cpu")
    assert flags.shape == (2, sum(h * w for h, w in shapes))
    level0 = flags[0, :256].reshape(16, 16)
    assert level0[:, :8].all() and not level0[:, 8:].any()  # columns < ceil(64 / 8) = 8; all 16 rows
    level3 = flags[0, 256 + 64 + 16:256 + 64 + 16 + 4].reshape(2, 2)  # stride 64: ceil(64 / 64) = 1 column
    assert level3.tolist() == [[True, False], [True, False]]
    assert flags[1].all()


def _tiny_gfl(ops="reference"):
    torch.manual_seed(0)
    return GFL(3, depth=18, base_width=8, fpn_channels=16, stacked_convs=1, ops=Ops(ops))


def test_qfl_weights_invalid_anchors_and_normaliser_per_image():
    model = _tiny_gfl()
    images = torch.randn(2, 3, 128, 128)
    cls, reg, shapes = model.raw(images)
    cls = cls.detach().double().requires_grad_()
    reg = reg.detach().double()
    img_shapes = [(128, 60), (128, 128)]  # image 0 is tall: its padding (w 64..128) holds no anchor
    gt_boxes = torch.tensor([[[10.0, 20, 50, 90]], [[0.0, 0, 0, 0]]], dtype=torch.float64)
    gt_labels = torch.tensor([[1], [-1]])
    gt_valid = torch.tensor([[True], [False]])  # image 1 has no GT: no positive, still counts 1
    losses = model.to(torch.float64).loss_from_raw(cls, reg, shapes, gt_boxes, gt_labels, gt_valid, img_shapes)
    B, N, C = cls.shape
    pts, _, boxes, sizes = anchors(shapes, "cpu", dtype=torch.float64)
    valid = valid_flags(shapes, [pad_shape(s) for s in img_shapes], "cpu")
    assigned, labels, _ = atss_assign(boxes, sizes, gt_boxes, gt_labels.clamp(min=0), gt_valid, C, 9, valid)
    num_pos = int((assigned[0] > 0).sum())
    assert num_pos > 0 and (assigned[1] == 0).all() and not valid[0].all()
    # Expected from the definition: QFL summed over valid anchors only, over (num_pos_0 + max(0, 1)).
    losses["loss_cls"].backward()
    grad_invalid = cls.grad[0][~valid[0]]
    assert (grad_invalid == 0).all()  # anchors over the batch padding are not negatives
    score = torch.zeros(B * N, dtype=torch.float64)
    with torch.no_grad():
        full = model.loss_from_raw(cls, reg, shapes, gt_boxes, gt_labels, gt_valid, img_shapes)
        pos = (assigned.flatten() > 0).nonzero().squeeze(1)
        # Recompute the quality scores exactly as the box branch does.
        from reference.decode import gfl_box_branch

        img, anc = pos // N, pos % N
        st = torch.tensor([8.0] * sizes[0] + [16.0] * sizes[1] + [32.0] * sizes[2] + [64.0] * sizes[3]
                          + [128.0] * sizes[4], dtype=torch.float64)
        w = cls.reshape(B * N, C).sigmoid().max(1).values[pos]
        _, _, s_pos = gfl_box_branch(reg.reshape(B * N, -1)[pos], pts[anc], st[anc],
                                     gt_boxes[img, assigned.flatten()[pos] - 1], w)
        score[pos] = s_pos
        per_row = quality_focal_loss(cls.reshape(B * N, C), labels.flatten(), score, reduction="none")
        expect = per_row[valid.flatten()].sum() / (num_pos + 1)
    torch.testing.assert_close(full["loss_cls"], expect, rtol=1e-12, atol=0)


def test_min_bbox_size_drops_boxes_before_nms():
    # Two anchors with the same score; one decodes to a zero-width box (clipped at the border).
    cls = torch.full((1, 2, 1), 3.0, dtype=torch.float64)
    reg = torch.zeros(1, 2, 4)
    points = torch.tensor([[10.0, 10.0], [50.0, 10.0]], dtype=torch.float64)
    strides = torch.ones(2, dtype=torch.float64)

    def decode(pred, pts, st, shape):
        out = torch.tensor([[5.0, 5, 15, 15], [50, 5, 60, 15]], dtype=torch.float64)[:pred.shape[0]]
        return out.clamp(max=50.0) if pts.shape[0] == 2 else out

    boxes, scores, labels, counts = multiclass_nms(cls, reg, points, strides, [2], [(100, 50)], decode=decode)
    assert counts.tolist() == [1] and boxes[0, 0].tolist() == [5.0, 5, 15, 15]
    # min_bbox_size in original pixels: a 10 px box at scale 2 is 5 px there, dropped at 6.
    _, _, _, counts = multiclass_nms(cls, reg, points, strides, [2], [(100, 50)], decode=decode, min_bbox_size=6,
                                     scale_factors=[(2.0, 2.0)])
    assert counts.tolist() == [0]


@pytest.fixture()
def coco_file(tmp_path):
    from PIL import Image

    imgs, anns = [], []
    sizes = [(80, 40), (40, 80), (64, 64), (90, 50), (20, 100), (60, 30), (50, 90)]  # (w, h)
    for i, (w, h) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
        imgs.append(dict(id=i + 1, file_name=f"{i}.png", width=w, height=h))
    boxes = {1: [[70, 5, 20, 10], [10, 10, 30, 20]],  # the first runs past the right border: clipped
             2: [[5, 5, 10, 10], [100, 100, 5, 5]],     # the second lies outside the image: dropped
             3: [[0, 0, 10, 10, 1]],                     # crowd only: no usable GT
             4: [[1, 1, 10, 10]], 5: [[2, 2, 8, 8]], 6: [[3, 3, 9, 9]], 7: [[4, 4, 7, 7]]}
    for img_id, bb in boxes.items():
        for b in bb:
            anns.append(dict(id=len(anns) + 1, image_id=img_id, category_id=1, bbox=b[:4], area=b[2] * b[3],
                             iscrowd=int(len(b) > 4)))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(dict(images=imgs, annotations=anns, categories=[dict(id=1, name="x")])))
    return tmp_path, ann


def test_data_clip_and_filters(coco_file):
    root, ann = coco_file
    ds = CocoDetection(root, ann, scale=(160, 160))  # scale 2 for image 1 (80 x 40)
    assert len(ds) == 7
    _, meta = ds[0]
    assert meta["img_shape"] == (80, 160)
    # [70, 5, 90, 15] * 2 clipped to width 160; the second box scaled.
    assert meta["boxes"].tolist() == [[140.0, 10, 160, 30], [20, 20, 80, 60]]
    _, meta = ds[1]
    assert meta["boxes"].shape == (1, 4)  # the box outside the image is gone
    _, meta = ds[2]
    assert meta["boxes"].shape == (0, 4)  # crowd boxes are never GT
    train = CocoDetection(root, ann, scale=(160, 160), filter_empty_gt=True, min_size=32)
    # Images 5 (20 px wide) and 6 (30 px tall) are under min_size; image 3 (crowd
    # only) stays, as in MMDetection, which drops only images without any annotation.
    assert train.ids == [1, 2, 3, 4, 7]
    img_dir = root
    js = json.loads(ann.read_text())
    js["annotations"] = [a for a in js["annotations"] if a["image_id"] != 4]
    ann2 = root / "ann2.json"
    ann2.write_text(json.dumps(js))
    assert CocoDetection(img_dir, ann2, filter_empty_gt=True, min_size=32).ids == [1, 2, 3, 7]


def test_aspect_ratio_batches_never_mix_orientations(coco_file):
    root, ann = coco_file
    ds = CocoDetection(root, ann, scale=(160, 160))
    groups = ds.aspect_groups()
    assert groups == [1, 0, 1, 1, 0, 1, 0]
    sampler = AspectRatioBatchSampler(range(7), groups, 2)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(7)) and len(batches) == len(sampler) == 4
    full = [b for b in batches if len(b) == 2][:3]
    assert all(len({groups[i] for i in b}) == 1 for b in full)
    assert batches[:3] == [[0, 2], [1, 4], [3, 5]] and batches[3] == [6]
    assert list(AspectRatioBatchSampler(range(7), groups, 2, drop_last=True)) == batches[:3]
    # A batch of one orientation pads less than one mixing tall and wide images.
    b = collate([ds[i] for i in (0, 2)])
    assert b["images"].shape[-2:] == (160, 160)


def test_schedule_and_defaults():
    assert schedule(24) == (288, [192, 264])  # 12 epochs of 24 batches, steps after epochs 8 and 11
    assert schedule(24, iters=1200) == (1200, [800, 1100])
    a = parser().parse_args([])
    assert a.dtype == "float32" and a.clip is None and not a.amp and a.epochs == 12


def _tv_resnet18_keys(model):
    """torchvision's resnet18 state_dict names (written from its module layout), with our tensors' shapes."""
    out = {"conv1.weight": None, "fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    out.update({f"bn1.{p}": None for p in bn})
    for layer in range(1, 5):
        for block in range(2):
            pre = f"layer{layer}.{block}"
            for i in (1, 2):
                out[f"{pre}.conv{i}.weight"] = None
                out.update({f"{pre}.bn{i}.{p}": None for p in bn})
            if layer > 1 and block == 0:
                out[f"{pre}.downsample.0.weight"] = None
                out.update({f"{pre}.downsample.1.{p}": None for p in bn})
    return out


def test_torchvision_resnet_weights_load_into_the_backbone(tmp_path):
    model = GFL(3, depth=18, base_width=64, fpn_channels=16, stacked_convs=1)
    keys = _tv_resnet18_keys(model)
    mapped_names = from_torchvision_resnet({k: torch.zeros(1) for k in keys})
    own = model.backbone.state_dict()
    assert set(mapped_names) == set(own)  # every torchvision key but fc has its place, and every place a key
    state = {}
    for k in keys:
        if keys[k] is not None:
            state[k] = keys[k]
        else:
            t = own[next(m for m in from_torchvision_resnet({k: 0}))]
            state[k] = torch.arange(t.numel(), dtype=t.dtype).reshape(t.shape) + 7
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    load_weights(model, path, log=lambda *_: None)
    torch.testing.assert_close(model.backbone.layers[1][0].down[1].running_mean, state["layer2.0.downsample.1.running_mean"])
    torch.testing.assert_close(model.backbone.stem[0].weight, state["conv1.weight"])
    torch.testing.assert_close(model.backbone.layers[3][1].c2[1].weight, state["layer4.1.bn2.weight"])


def test_weights_strict_by_default_partial_on_request(tmp_path):
    model = _tiny_gfl()
    nothing = tmp_path / "nothing.pth"
    torch.save({"foo.weight": torch.zeros(3)}, nothing)
    for partial in (False, True):
        with pytest.raises(ValueError, match="no key matches"):
            load_weights(model, nothing, partial=partial, log=lambda *_: None)
    some = tmp_path / "some.pth"
    state = model.state_dict()
    head_only = {k: v + 1 for k, v in state.items() if k.startswith("head.")}
    head_only["head.cls.bias"] = torch.zeros(5)  # wrong shape
    torch.save({"model": head_only}, some)
    with pytest.raises(ValueError, match="does not match the detector.*head.cls.bias"):
        load_weights(model, some, log=lambda *_: None)
    lines = []
    matched, skipped, missing = load_weights(model, some, partial=True, log=lines.append)
    assert skipped == ["head.cls.bias"] and any("head.cls.bias" in line for line in lines)
    assert missing and all(not k.startswith("head.") or k == "head.cls.bias" for k in missing)
    torch.testing.assert_close(model.head.reg.weight, head_only["head.reg.weight"])
    full = tmp_path / "full.pth"
    torch.save({"model": model.state_dict()}, full)
    assert load_weights(_tiny_gfl(), full, log=lambda *_: None)[1:] == ([], [])


def test_frozen_stages_and_norm_eval():
    torch.manual_seed(0)
    model = GFL(3, depth=18, base_width=8, fpn_channels=16, stacked_convs=1, frozen_stages=1, norm_eval=True)
    model.train()
    bb = model.backbone
    assert not any(p.requires_grad for m in (bb.stem, bb.layers[0]) for p in m.parameters())
    assert all(p.requires_grad for p in bb.layers[1].parameters())
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and model.head.training
    before = [m.running_mean.clone() for m in bns]
    cls, reg, _ = model.raw(torch.randn(2, 3, 64, 64))
    (cls.sum() + reg.sum()).backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))
    assert bb.stem[0].weight.grad is None and bb.layers[1][0].c1[0].weight.grad is not None
    plain = GFL(3, depth=18, base_width=8, fpn_channels=16, stacked_convs=1).train()
    assert all(p.requires_grad for p in plain.parameters())
    assert all(m.training for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))


@pytest.mark.parametrize("d", [1.0, 2.0, 5.0])
def test_atss_equal_candidate_ious_are_all_positive(d):
    # Three anchors shifted by d along +x, -x and +y from a square GT: one IoU
    # three times, so std = 0 and t_g is that IoU. Summed in float32 (as
    # torch's mean/std would), 3 * IoU / 3 misses the IoU for d = 1 and 2 and
    # no anchor is positive; the float64 candidate-order sum gets it exactly.
    gt = torch.tensor([[[-8.0, -8, 8, 8]]])
    a = torch.tensor([[d - 8, -8, d + 8, 8], [-d - 8, -8, -d + 8, 8], [-8, d - 8, 8, d + 8]])
    got, label, iou = atss_assign(a, [3], gt, torch.full((1, 1), 4), torch.ones(1, 1, dtype=torch.bool), 7)
    assert got.tolist() == [[1, 1, 1]] and label.tolist() == [[4, 4, 4]]
    expected = (16 - d) * 16 / (2 * 256 - (16 - d) * 16)
    torch.testing.assert_close(iou, torch.full((1, 3), expected), rtol=1e-6, atol=0)


def test_atss_half_boxes_compute_in_float32():
    gt = torch.tensor([[[-8.0, -8, 8, 8]]])
    a = torch.tensor([[1 - 8.0, -8, 1 + 8, 8], [-1 - 8.0, -8, -1 + 8, 8], [-8.0, 1 - 8, 8, 1 + 8]])
    args = ([3], gt.half(), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), 7)
    got, _, iou = atss_assign(a.half(), *args)
    want, _, want_iou = atss_assign(a, *args[:1], gt, *args[2:])
    assert torch.equal(got, want) and iou.dtype == torch.float16
    assert torch.equal(iou, want_iou.half())
