"""Pairwise IoU and GIoU, the GIoU loss, the integral, the integral decode and
the fused GFL box branch: reference eager vs torch.compile(reference) vs gflops
(and gflops' Triton kernels for the integral and the decode), on COCO-like sizes.

    python -m benchmarks.bench_boxes [--device cuda] [--size coco|small|tiny] [--quick]

The decode runs twice: as GFL configures it (17 bins, boxes clamped to the
image) and as Ultralytics' training loss does (16 bins, no clamp), where its
bbox_decode (softmax, matmul with the bin indices, dist2bbox) is a peer when
the ultralytics package imports (see bench_losses, also for failing
providers, the exit status and --quick).
"""
import types

import torch

import gflops
import reference
from benchmarks.harness import (bench_providers, case_rows, checked_peer, cli, copy_gbps, forward_modes, grad_modes,
                                meta_for, subset_tag, triton_provider, write_results)

SIZES = {"coco": dict(batch=16, anchors=22400, gts=100, pos=1000, reg_max=16),
         "small": dict(batch=2, anchors=22400, gts=100, pos=1000, reg_max=16),
         "tiny": dict(batch=1, anchors=1000, gts=10, pos=100, reg_max=16)}  # --quick: a dry run


def _boxes(*shape, g, device, dtype):
    xy = torch.rand(*shape, 2, generator=g) * 800
    wh = torch.rand(*shape, 2, generator=g) * 200 + 1
    return torch.cat([xy, xy + wh], -1).to(device, dtype)


def iou_case(s, device, dtype, mode="iou"):
    g = torch.Generator().manual_seed(0)
    a = _boxes(s["batch"], s["anchors"], g=g, device=device, dtype=dtype)
    b = _boxes(s["batch"], s["gts"], g=g, device=device, dtype=dtype)
    esz = a.element_size()
    out = s["batch"] * s["anchors"] * s["gts"] * esz
    nbytes = {"fwd": a.numel() * esz + b.numel() * esz + out}
    return f"box_iou {mode} {s['batch']}x{s['anchors']}x{s['gts']}", (a, b, mode), {}, nbytes


def giou_case(s, device, dtype):
    """The GFL head's GIoU loss: decoded positive boxes against their targets,
    weighted by the classification score, summed (avg_factor 1, as GFL calls it)."""
    g = torch.Generator().manual_seed(3)
    p = s["batch"] * s["pos"]
    target = _boxes(p, g=g, device="cpu", dtype=torch.float32)
    pred = (target + torch.randn(p, 4, generator=g) * 8).to(device, dtype)
    weight = torch.rand(p, generator=g).to(device, dtype)
    esz = pred.element_size()
    side = p * 4 * esz + p * esz  # target and weight
    nbytes = {"fwd": pred.numel() * esz + side, "bwd": 2 * pred.numel() * esz + side,
              "fwd+bwd": 3 * pred.numel() * esz + 2 * side}
    return f"giou_loss P={p}", (pred, target.to(device, dtype)), dict(weight=weight, avg_factor=1.0), nbytes


def integral_case(s, device, dtype):
    g = torch.Generator().manual_seed(4)
    n1 = s["reg_max"] + 1
    pred = torch.randn(s["batch"], s["anchors"], 4 * n1, generator=g).to(device, dtype)
    esz = pred.element_size()
    logits, dist = pred.numel() * esz, s["batch"] * s["anchors"] * 4 * esz
    nbytes = {"fwd": logits + dist, "bwd": 2 * logits + dist, "fwd+bwd": 3 * logits + 2 * dist}
    return f"integral {s['batch']}x{s['anchors']}x{n1}", (pred, s["reg_max"]), {}, nbytes


def ultralytics_decode(points, strides):
    """Ultralytics' bbox_decode (v8DetectionLoss, the training path) on gflops'
    arguments: its anchor points are in grid units and its boxes are scaled by
    the stride afterwards, so those are prepared here, outside the timing."""
    try:
        from ultralytics.utils.loss import v8DetectionLoss
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is unavailable
        return f"ultralytics unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
    grid, scale = points / strides[:, None], strides[:, None]
    heads = {}  # the loss object's state bbox_decode reads, as v8DetectionLoss builds it once

    def decode(pred, points_, strides_, reg_max, max_shape):
        assert max_shape is None, "Ultralytics' decode does not clamp"
        if reg_max not in heads:
            proj = torch.arange(reg_max + 1, dtype=torch.float, device=pred.device)
            heads[reg_max] = types.SimpleNamespace(use_dfl=True, proj=proj)
        return v8DetectionLoss.bbox_decode(heads[reg_max], grid, pred) * scale
    return decode


def decode_case(s, device, dtype, reg_max=None, max_shape=(800, 1333)):
    g = torch.Generator().manual_seed(1)
    reg_max = s["reg_max"] if reg_max is None else reg_max
    n1 = reg_max + 1
    pred = torch.randn(s["batch"], s["anchors"], 4 * n1, generator=g).to(device, dtype)
    points = (torch.rand(s["anchors"], 2, generator=g) * 1333).to(device)
    strides = torch.tensor([8.0, 16, 32, 64, 128])[torch.arange(s["anchors"]) % 5].to(device)
    esz = pred.element_size()
    logits = pred.numel() * esz
    boxes = s["batch"] * s["anchors"] * 4 * esz
    nbytes = {"fwd": logits + boxes, "bwd": 2 * logits + boxes, "fwd+bwd": 3 * logits + 2 * boxes}
    return (f"decode {s['batch']}x{s['anchors']}x{n1}", (pred, points, strides, reg_max, max_shape), {}, nbytes)


def branch_case(s, device, dtype):
    g = torch.Generator().manual_seed(2)
    p, n1 = s["batch"] * s["pos"], s["reg_max"] + 1
    pred = torch.randn(p, 4 * n1, generator=g).to(device, dtype)
    strides = torch.tensor([8.0, 16, 32, 64, 128])[torch.arange(p) % 5]
    points = torch.rand(p, 2, generator=g) * 800
    gt = torch.cat([points - torch.rand(p, 2, generator=g) * strides[:, None] * 6,
                    points + torch.rand(p, 2, generator=g) * strides[:, None] * 6], 1)
    weight = torch.rand(p, generator=g)
    args = (pred, points.to(device), strides.to(device), gt.to(device), weight.to(device), s["reg_max"])
    esz = pred.element_size()
    logits = pred.numel() * esz
    side = p * 4 * 12
    nbytes = {"fwd": logits + side, "bwd": 2 * logits + side, "fwd+bwd": 3 * logits + 2 * side}
    return f"gfl_box_branch P={p}", args, {}, nbytes


def iou_rows(s, device, dtype, providers, copy, mode):
    name, args, kw, nbytes = iou_case(s, device, dtype, mode)
    torch._dynamo.reset()
    fns = {"reference": reference.box_iou, "gflops": gflops.box_iou, "compile": torch.compile(reference.box_iou)}
    return bench_providers(name, fns, lambda fn: forward_modes(fn, args, kw), nbytes, device, copy, providers)


def giou_rows(s, device, dtype, providers, copy):
    name, args, kw, nbytes = giou_case(s, device, dtype)
    fns = {"reference": reference.giou_loss, "gflops": gflops.giou_loss, "compile": torch.compile(reference.giou_loss)}
    return bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: out), nbytes, device, copy,
                           providers)


def integral_rows(s, device, dtype, providers, copy):
    name, args, kw, nbytes = integral_case(s, device, dtype)
    fns = {"reference": reference.integral, "gflops": gflops.integral, "compile": torch.compile(reference.integral),
           "triton": triton_provider(gflops.integral, device)}
    return bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: out.float().sum()),
                           nbytes, device, copy, providers)


def decode_rows(s, device, dtype, providers, copy, reg_max, max_shape):
    name, args, kw, nbytes = decode_case(s, device, dtype, reg_max, max_shape)
    torch._dynamo.reset()
    fns = {"reference": reference.decode_distribution, "gflops": gflops.decode_distribution,
           "compile": torch.compile(reference.decode_distribution),
           "triton": triton_provider(gflops.decode_distribution, device)}
    if max_shape is None:
        def check(peer):  # the peer computes the same boxes, or it is not compared
            ref = reference.decode_distribution(*args)
            atol = 1e-2 if dtype == torch.float32 else 4.0  # pixels up to ~2000 in 16 bits
            torch.testing.assert_close(peer(*args).to(ref.dtype), ref, rtol=1e-3, atol=atol)
        fns["ultralytics"] = checked_peer(lambda: ultralytics_decode(args[1], args[2]), check)
    return bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: out.float().sum()),
                           nbytes, device, copy, providers)


def branch_rows(s, device, dtype, providers, copy):
    name, args, kw, nbytes = branch_case(s, device, dtype)
    fns = {"reference": reference.gfl_box_branch, "gflops": gflops.gfl_box_branch,
           "compile": torch.compile(reference.gfl_box_branch)}
    return bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: 2.0 * out[0] + 0.25 * out[1]),
                           nbytes, device, copy, providers)


def run(device, size, dtype, providers):
    """(markdown table, rows); writes the result files."""
    s = SIZES[size]
    copy = copy_gbps(device)
    common = (s, device, dtype, providers, copy)
    cases = [("box_iou iou", lambda: iou_rows(*common, "iou")), ("box_iou giou", lambda: iou_rows(*common, "giou")),
             ("giou_loss", lambda: giou_rows(*common)), ("integral", lambda: integral_rows(*common))]
    cases += [(f"decode reg_max={reg_max}", lambda reg_max=reg_max, shape=shape: decode_rows(*common, reg_max, shape))
              for reg_max, shape in ((s["reg_max"], (800, 1333)), (15, None))]
    cases += [("gfl_box_branch", lambda: branch_rows(*common))]
    rows = []
    for label, make_rows in cases:
        rows += case_rows(label, make_rows, mode=None)
    # Runs with the peer come from another virtualenv (another torch): kept apart from the project's own.
    peers = "_ultralytics" if any(r["provider"] == "ultralytics" for r in rows) else ""
    table = write_results(f"boxes_{size}_{str(dtype).split('.')[-1]}{subset_tag(providers)}{peers}", device, rows,
                          meta_for(device, size, dtype, copy), plot=True)
    return table, rows


def main(argv=None):
    return cli(run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
