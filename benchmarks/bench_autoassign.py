"""The AutoAssign loss: reference eager vs torch.compile(reference) vs gflops
(gflops.autoassign_loss: the fused terms op and the batch totals), forward
and forward+backward, on the points of a 1333x800 image (P = 22400 over
P3-P7), 80 classes, over the batch and the GTs per image.

    python -m benchmarks.bench_autoassign [--device cuda] [--budget-gib 16] [--quick]

The reference builds (B, P, G) tensors; where its predicted peak memory
passes the budget it is not run, and the row says so (with the prediction).
A provider that fails (raises, also while torch.compile compiles) is a row
with the note, and the sweep goes on; the exit status is 1 only when every
run provider failed (harness.exit_status).
Writes benchmarks/results/autoassign_<device>.{md,csv,json,png}. --quick is
a dry run: B=2, G=10, a few calls each, files under benchmarks/results/quick/.
"""
import argparse
import sys

import torch

import gflops
from benchmarks.bench_assign import measured
from benchmarks import harness
from benchmarks.harness import (add_quick, attempt, copy_gbps, exit_status, plot_sweep, quick_mode,
                                result_path, write_results)
from reference.autoassign import points as grid_points
from reference.autoassign_loss import autoassign_loss, autoassign_loss_terms

STRIDES = (8, 16, 32, 64, 128)
H, W = 800, 1333
BATCHES = (2, 16)
GTS = (10, 100, 1000)
NUM_CLASSES = 80


def level_shapes():
    ph, pw = -(-H // 32) * 32, -(-W // 32) * 32
    return [(-(-ph // s), -(-pw // s)) for s in STRIDES]


def inputs(batch, num_gt, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = level_shapes()
    pts, st, _ = grid_points(shapes, "cpu")
    P = pts.shape[0]
    xy = torch.rand(batch, num_gt, 2, generator=g) * torch.tensor([W, H])
    wh = (torch.rand(batch, num_gt, 2, generator=g) ** 2) * torch.tensor([W, H]) * 0.4 + 4
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    labels = torch.randint(0, NUM_CLASSES, (batch, num_gt), generator=g)
    valid = torch.ones(batch, num_gt, dtype=torch.bool)
    cls = torch.randn(batch, P, NUM_CLASSES, generator=g) - 4  # about the prior-0.02 init
    obj = torch.randn(batch, P, generator=g)
    dist = torch.rand(batch, P, 4, generator=g) * st[None, :, None] * 8
    mu = torch.randn(NUM_CLASSES, 2, generator=g) * 0.2
    sigma = torch.rand(NUM_CLASSES, 2, generator=g) + 0.5
    tensors = [t.to(device) for t in (cls, obj, dist, pts, st, boxes, labels, valid, mu, sigma)]
    return tensors, shapes


def loss_fn(terms):
    def fn(*args, level_shapes=None):
        out = autoassign_loss(*args, autoassign_loss_terms=terms, level_shapes=level_shapes)
        return out["loss_pos"] + out["loss_neg"] + out["loss_center"]
    return fn


def gflops_loss(*args, level_shapes=None):
    """What a gflops user calls: the whole loss (gflops.autoassign_loss), summed as loss_fn sums."""
    out = gflops.autoassign_loss(*args, level_shapes=level_shapes)
    return out["loss_pos"] + out["loss_neg"] + out["loss_center"]


def sweep():
    """(batches, GTs per image): the whole sweep, or its first case in quick mode."""
    return (BATCHES[:1], GTS[:1]) if harness.QUICK else (BATCHES, GTS)


def run(device, budget_gib):
    ref = loss_fn(autoassign_loss_terms)
    rows, per_pair = [], {}
    batches, gts = sweep()
    for batch in batches:
        for num_gt in gts:
            args, shapes = inputs(batch, num_gt, device)
            pairs = batch * args[0].shape[1] * num_gt
            for mode in ("forward", "forward+backward"):
                # A fresh compile per size and mode: one cache over all of them would pass
                # dynamo's recompile limit and silently fall back to eager.
                torch._dynamo.reset()
                providers = {"reference": ref, "compile": torch.compile(loss_fn(autoassign_loss_terms), dynamic=False),
                             "gflops": gflops_loss}
                base, want = {}, None
                for prov, fn in providers.items():
                    row = dict(points=args[0].shape[1], batch=batch, gts=num_gt, mode=mode, provider=prov)
                    key = (prov, mode)
                    if prov != "gflops" and key in per_pair and per_pair[key] * pairs > budget_gib * 2**30:
                        pred = per_pair[key] * pairs / 2**30
                        note = f"not run: predicted peak {pred:.0f} GiB (B x P x G tensors) > {budget_gib} GiB"
                        row.update(median_ms=None, peak_mib=None, vs_eager=None, vs_compile=None, note=note)
                        print(f"B={batch} G={num_gt} {mode} {prov}: {row['note']}", file=sys.stderr)
                        rows.append(row)
                        continue
                    leaves = [a.clone().requires_grad_() if i in (0, 1, 2, 8, 9) else a for i, a in enumerate(args)]

                    def call(fn=fn, leaves=leaves, mode=mode):
                        if mode == "forward":
                            with torch.no_grad():
                                return fn(*leaves, level_shapes=shapes)
                        loss = fn(*leaves, level_shapes=shapes)
                        grads = torch.autograd.grad(loss, [leaves[i] for i in (0, 1, 2, 8, 9)])
                        return loss.detach(), grads

                    label = f"B={batch} G={num_gt} {mode} {prov}"
                    got = measured(call, device, label, row, rows, budget_s=2.0, max_iters=10)
                    if got is None:
                        continue
                    ms, out, mem, mem_note = got
                    value = out if mode == "forward" else out[0]
                    if want is None:
                        want = value
                    close = abs(float(value) - float(want)) <= 1e-4 * abs(float(want))
                    if prov != "gflops" and mem is not None:  # bytes per (point, GT) pair at the largest size so far
                        per_pair[key] = mem * 2**20 / pairs
                    base[prov] = ms
                    row.update(median_ms=ms, peak_mib=mem,
                               vs_eager=base["reference"] / ms if "reference" in base else None,
                               vs_compile=base["compile"] / ms if "compile" in base else None,
                               note="; ".join(n for n in (
                                   "" if close else f"LOSS DIFFERS: {float(value)} vs {float(want)}",
                                   mem_note and f"peak memory {mem_note}") if n))
                    print(f"{label}: {ms:.1f} ms, peak " + (f"{mem:.1f} MiB" if mem is not None else "failed"),
                          file=sys.stderr)
                    rows.append(row)
    return rows


def plot(rows, path):
    plot_sweep(rows, path, [(f"AutoAssign loss {mode}, 1333x800 points, 80 classes",
                             lambda r, mode=mode: r["mode"] == mode) for mode in ("forward", "forward+backward")],
               sweep()[0])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-gib", type=float, default=16.0,
                   help="skip a dense provider whose predicted peak memory exceeds this")
    add_quick(p, "B=2, G=10")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    with quick_mode(a.quick):
        rows = run(device, a.budget_gib)
        meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                    copy_gbps=copy_gbps(device), classes=NUM_CLASSES, image=f"{W}x{H}",
                    note="vs_eager / vs_compile are speedups (x); peak is allocator memory during one call")
        table = write_results("autoassign", device, rows, meta)
        attempt(lambda: plot(rows, result_path("autoassign", device, ".png")), "plot")
    print(table)
    return exit_status(rows)


if __name__ == "__main__":
    raise SystemExit(main())
