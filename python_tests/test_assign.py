"""gflops.atss_assign: exact agreement with reference/assign.py on random and
adversarial cases, every dtype and batch size, registration, training, errors."""
import pytest
import torch

import gflops
from assign_cases import SMALL_LEVELS, adversarial_gts, grid, random_gts
from conftest import needs_emu, ops
from gflops import _ops, emulation
from reference.assign import atss_assign as ref_assign
from reference.data import CocoDetection, collate, generate
from reference.gfl import GFL
from reference.ops import Ops

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def both(anchors, sizes, gts, labels, valid, num_classes=7, topk=9, anchor_valid=None, device="cpu"):
    """(gflops result, reference result), the gflops op run on `device`."""
    to = lambda t: None if t is None else t.to(device)  # noqa: E731
    ours = gflops.atss_assign(to(anchors), sizes, to(gts), to(labels), to(valid), num_classes, topk, to(anchor_valid))
    ref = ref_assign(anchors, sizes, gts, labels, valid, num_classes, topk, anchor_valid)
    return [t.cpu() for t in ours], ref


def assert_same(ours, ref, exact_iou=True):
    gt, label, iou = ours
    assert gt.dtype == label.dtype == torch.long and iou.dtype == ref[2].dtype
    assert torch.equal(gt, ref[0]), (gt != ref[0]).nonzero()[:10]
    assert torch.equal(label, ref[1])
    if exact_iou:
        assert torch.equal(iou, ref[2])
    else:
        torch.testing.assert_close(iou, ref[2])


@pytest.mark.parametrize("batch,num_gt", [(1, 1), (2, 7), (4, 30), (16, 3)])
def test_random_batches_match_reference_exactly(device, batch, num_gt):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(batch, num_gt, seed=batch * 100 + num_gt)
    ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert (ref[0] > 0).sum() > 0  # the case has positives to get wrong


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_match_reference(device, dtype):
    anchors, sizes = grid(dtype=dtype)
    gts, labels, valid = random_gts(3, 12, seed=5, dtype=dtype)
    ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert ours[2].dtype == dtype
    assert_same(ours, ref)


@pytest.mark.parametrize("topk", [1, 2, 9, 20, 300])
def test_adversarial_image_matches_reference(device, topk):
    anchors, sizes = grid()
    gts, labels, valid = adversarial_gts()
    ours, ref = both(anchors, sizes, gts[None], labels[None], valid[None], topk=topk, device=device)
    assert_same(ours, ref)


def test_adversarial_rules_hold():
    """What the adversarial image is built to show, checked on the op's own output."""
    anchors, sizes = grid()
    gts, labels, valid = adversarial_gts()
    gt, label, iou = gflops.atss_assign(anchors, sizes, gts[None], labels[None], valid[None], 99)
    owners = set(gt[0].tolist())
    assert 1 in owners and 2 not in owners          # the duplicate loses every tie to the lower index
    for g in (2, 3, 4, 6, 13):                        # tiny, zero area, zero width, outside, padding
        assert g + 1 not in owners
    assert {8, 9} <= owners                           # ordinary and overlapping GTs get anchors
    assert (label[0][gt[0] == 0] == 99).all() and (iou[0][gt[0] == 0] == 0).all()
    assert (label[0][gt[0] > 0] == labels[gt[0][gt[0] > 0] - 1]).all()


def test_equal_iou_claims_go_to_the_lower_gt(device):
    # A GT and its mirror image about an anchor column share that column's anchors at equal IoU.
    anchors, sizes = grid([(8, 8)])
    gts = torch.tensor([[[16.0, 8, 40, 40], [24, 8, 48, 40], [16, 8, 40, 40]]])
    labels, valid = torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool)
    ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert 3 not in set(ours[0][0].tolist())  # GT 2 duplicates GT 0: never wins


def test_equidistant_anchors_go_by_index(device):
    # GT centres on anchor-centre midpoints (and on corners of four): many exact distance ties.
    anchors, sizes = grid()
    c = torch.arange(8, 120, 8.0)
    cx, cy = torch.meshgrid(c, c, indexing="xy")
    half = torch.tensor([6.0, 10.0, 6.0, 10.0])
    centres = torch.stack([cx.flatten(), cy.flatten(), cx.flatten(), cy.flatten()], 1)
    gts = (centres + torch.tensor([-1.0, -1, 1, 1]) * half)[None]
    labels = torch.zeros(gts.shape[:2], dtype=torch.long)
    ours, ref = both(anchors, sizes, gts, labels, torch.ones_like(labels, dtype=torch.bool), device=device)
    assert_same(ours, ref)


@pytest.mark.parametrize("per_image", [False, True])
def test_invalid_anchors(device, per_image):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(3, 10, seed=7)
    g = torch.Generator().manual_seed(1)
    shape = (3, anchors.shape[0]) if per_image else (anchors.shape[0],)
    anchor_valid = torch.rand(shape, generator=g) < 0.6
    anchor_valid[..., -5:] = False  # levels with fewer valid anchors than topk
    ours, ref = both(anchors, sizes, gts, labels, valid, anchor_valid=anchor_valid, device=device)
    assert_same(ours, ref)
    invalid = ~anchor_valid.expand(3, -1)
    assert (ours[0][invalid] == 0).all()


def test_no_gt_padding_and_empty(device):
    anchors, sizes = grid()
    gts, labels, _ = random_gts(3, 6, seed=2)
    valid = torch.zeros(3, 6, dtype=torch.bool)
    valid[1, :2] = True  # image 0 and 2 have no valid GT
    ours, ref = both(anchors, sizes, gts, labels, valid, device=device)
    assert_same(ours, ref)
    assert (ours[0][0] == 0).all() and (ours[0][2] == 0).all()
    for B, G in [(2, 0), (0, 4)]:  # no GT slots; empty batch
        ours, ref = both(anchors, sizes, gts[:B, :G], labels[:B, :G], valid[:B, :G], device=device)
        assert ours[0].shape == (B, anchors.shape[0])
        assert_same(ours, ref)
    all_pad = torch.zeros(2, 6, dtype=torch.bool)
    ours, ref = both(anchors, sizes, gts[:2], labels[:2], all_pad, device=device)
    assert_same(ours, ref)
    out = gflops.atss_assign(torch.zeros(0, 4, device=device), [0, 0], gts.to(device), labels.to(device),
                             valid.to(device), 7)
    assert [t.shape for t in out] == [(3, 0)] * 3


def test_empty_levels_and_single_level(device):
    anchors, sizes = grid([(8, 8), (4, 4)])
    gts, labels, valid = random_gts(2, 5, extent=64, seed=4)
    a3 = [sizes[0], 0, sizes[1]]  # an empty level between two
    ours, ref = both(anchors, a3, gts, labels, valid, device=device)
    assert_same(ours, ref)
    ours, ref = both(anchors, [anchors.shape[0]], gts, labels, valid, device=device)  # one level
    assert_same(ours, ref)


def test_many_gts_per_image():
    """G = 5000 on one image (the crowded-dataset case): the reference still fits here, at this N."""
    anchors, sizes = grid([(32, 32), (16, 16), (8, 8)])
    gts, labels, valid = random_gts(1, 5000, extent=256, seed=11, valid_p=0.95)
    ours, ref = both(anchors, sizes, gts * 0.25 + 8, labels, valid)
    assert_same(ours, ref)
    assert (ref[0] > 0).sum() > 100


def test_cpu_and_cuda_kernels_agree(accel):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(5, 25, seed=9)
    cpu = gflops.atss_assign(anchors, sizes, gts, labels, valid, 7)
    with accel:
        dev = gflops.atss_assign(accel(anchors), sizes, accel(gts), accel(labels), accel(valid), 7)
    for a, b in zip(cpu, dev):
        assert torch.equal(a, b.cpu())


def test_deterministic_and_int32_labels(device):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(4, 40, seed=3)
    anchors, gts, labels, valid = (t.to(device) for t in (anchors, gts, labels, valid))
    a = gflops.atss_assign(anchors, sizes, gts, labels, valid, 7)
    b = gflops.atss_assign(anchors, sizes, gts, labels.int(), valid, 7)
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert a[1].dtype == torch.long


def test_default_arguments():
    anchors, sizes = grid()
    gts, labels, _ = random_gts(2, 5, seed=1)
    ours = gflops.atss_assign(anchors, sizes, gts, labels)
    ref = ref_assign(anchors, sizes, gts, labels, torch.ones(2, 5, dtype=torch.bool), 80)
    assert_same(ours, ref)


def test_opcheck(device):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(2, 6, seed=1)
    anchor_valid = torch.rand(anchors.shape[0]) < 0.9
    for av in (None, anchor_valid):
        args = (anchors, sizes, gts, labels, valid, None if av is None else av, 9, 7)
        torch.library.opcheck(ops().atss_assign, tuple(a.to(device) if torch.is_tensor(a) else a for a in args))


def test_compile_fullgraph(device):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(2, 6, seed=1)
    anchors, gts, labels, valid = (t.to(device) for t in (anchors, gts, labels, valid))

    def f(g):
        return gflops.atss_assign(anchors, sizes, g, labels, valid, 7)

    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True)(gts)
    want = f(gts)
    # The op's own outputs, bitwise (it is deterministic); not a float sum of them (iou.sum()
    # was compared bitwise before), which inductor may add up in another order than eager.
    assert len(got) == len(want) == 3 and (want[0] > 0).any()
    for x, y in zip(got, want):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_no_gradient_flows():
    anchors, sizes = grid()
    gts, labels, valid = random_gts(1, 4, seed=1)
    gts.requires_grad_(True)
    out = gflops.atss_assign(anchors, sizes, gts, labels, valid)
    assert not any(t.requires_grad for t in out)


@pytest.mark.parametrize("change,message", [
    (dict(anchors=lambda a: a[:, :3]), "anchors must have shape \\(N, 4\\)"),
    (dict(anchors=lambda a: a.long()), "anchors must be float32"),
    (dict(gt_boxes=lambda g: g[0]), "gt_boxes must have shape \\(B, G, 4\\)"),
    (dict(gt_boxes=lambda g: g.double()), "gt_boxes must have the anchors' dtype"),
    (dict(gt_labels=lambda t: t[:, :2]), "gt_labels must have shape \\(B, G\\)"),
    (dict(gt_labels=lambda t: t.float()), "gt_labels must be int64 or int32"),
    (dict(gt_valid=lambda t: t.long()), "gt_valid must be bool"),
    (dict(gt_valid=lambda t: t[:1]), "gt_valid must have shape \\(B, G\\)"),
    (dict(anchor_valid=lambda t: torch.ones(5, dtype=torch.bool)), "anchor_valid must have shape \\(N,\\)"),
    (dict(anchor_valid=lambda t: torch.ones(341)), "anchor_valid must be bool"),
    (dict(sizes=lambda s: s[:-1]), "sum to 340 but anchors has N = 341"),
    (dict(sizes=lambda s: [*s[:-1], -1, 2]), "num_level_anchors must be >= 0"),
    (dict(sizes=lambda s: [1] * 33), "at most 32 are supported"),
    (dict(topk=lambda k: 0), "topk must be >= 1, got 0"),
])
def test_bad_inputs(device, change, message):
    anchors, sizes = grid()
    gts, labels, valid = random_gts(2, 3, seed=1)
    args = dict(anchors=anchors, sizes=sizes, gt_boxes=gts, gt_labels=labels, gt_valid=valid, anchor_valid=None,
                topk=9)
    for k, fn in change.items():
        args[k] = fn(args[k])
    t = lambda x: x.to(device) if torch.is_tensor(x) else x  # noqa: E731
    with pytest.raises(RuntimeError, match=message):
        ops().atss_assign(t(args["anchors"]), args["sizes"], t(args["gt_boxes"]), t(args["gt_labels"]),
                          t(args["gt_valid"]), t(args["anchor_valid"]), args["topk"], 7)


def test_mixed_devices_meta():
    anchors, sizes = grid()
    gts, labels, valid = random_gts(2, 3, seed=1)
    with pytest.raises(RuntimeError, match="on one device|is on meta"):
        gflops.atss_assign(anchors, sizes, gts.to("meta"), labels, valid)


def test_reference_ops_switch_takes_it():
    assert Ops("gflops").atss_assign is gflops.atss_assign
    assert Ops("gflops").sources["atss_assign"] == "gflops"


def test_training_with_gflops_atss_matches_the_reference(tmp_path):
    """A few SGD steps of the reference detector, once with the reference's
    ATSS and once with gflops': at every step the two assigners agree
    exactly on the live inputs, and the losses are bitwise the same."""
    ann = generate(tmp_path, images=4, size=96, num_classes=3, seed=5, split="train")
    ds = CocoDetection(tmp_path / "train", ann, scale=(96, 96))
    b = collate([ds[i] for i in range(4)])
    shapes = [m["img_shape"] for m in b["metas"]]
    calls = []

    def checked(*args):
        ours, ref = gflops.atss_assign(*args), ref_assign(*args)
        for x, y in zip(ours, ref):
            assert torch.equal(x, y)
        calls.append(int((ours[0] > 0).sum()))
        return ours

    runs = []
    for use_gflops in (False, True):
        torch.manual_seed(0)
        ops = Ops("reference")
        if use_gflops:
            ops.atss_assign = checked
        model = GFL(ds.num_classes, depth=18, base_width=8, fpn_channels=32, stacked_convs=2, ops=ops)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        trace = []
        for _ in range(4):
            losses = model(b["images"], b["gt_boxes"], b["gt_labels"], b["gt_valid"], shapes)
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            opt.step()
            trace.append([v.item() for v in losses.values()])
        runs.append(trace)
    assert len(calls) == 4 and all(c > 0 for c in calls)
    assert runs[0] == runs[1]


@needs_emu
def test_emulated_result_independent_of_block_order_and_grid():
    """The claims are integer max/min atomics: shuffling the blocks (and so the
    order of the atomics) or the grid size must not change a single output."""
    m = emulation.load()
    anchors, sizes = grid()
    gts, labels, valid = random_gts(6, 40, seed=21)
    gts = torch.cat([gts, gts[:, :5]], 1)  # duplicates: every one of their claims ties
    labels, valid = torch.cat([labels, labels[:, :5] + 1], 1), torch.cat([valid, valid[:, :5]], 1)
    want = ref_assign(anchors, sizes, gts, labels, valid, 7)
    try:
        with _ops.use("gflops_emu"):
            for sms, shuffle, seed in [(1, False, 0), (3, True, 1), (7, True, 2), (2, True, 3)]:
                m.set_num_sms(sms)
                m.set_block_order(shuffle, seed)
                got = gflops.atss_assign(anchors, sizes, gts, labels, valid, 7)
                for x, y in zip(got, want):
                    assert torch.equal(x, y)
    finally:
        m.set_block_order(False, 0)
        m.set_num_sms(3)
