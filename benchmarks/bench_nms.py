"""NMS: single-class nms and 80-class batched_nms over K boxes (reference,
torchvision.ops when importable, gflops), and the GFL post-process over a
batch (reference eager, torch.compile(reference), gflops.multiclass_nms).

    python -m benchmarks.bench_nms [--device cuda] [--budget-gib 8] [--skip-single] [--quick]

torchvision's wheels are built against the CUDA build of torch, so with a
CPU-only torch the provider is skipped (the reason is printed); the numbers
under benchmarks/results/ come from a separate virtualenv with
torch==2.14.1 and torchvision==0.29.2 (README, "Benchmarks"). The reference
nms builds a K x K IoU matrix; where that passes the budget it is not run.
A provider that fails (raises, also while torch.compile compiles) is a row
with the note; the exit status is 1 only when every run provider failed
(harness.exit_status). --quick is a dry run: K=1000 and the post-process of
one image, a few calls each, files under benchmarks/results/quick/.
"""
import argparse
import sys
import time

import torch

import gflops
from benchmarks import harness
from benchmarks.harness import (add_quick, attempt, copy_gbps, exit_status, peak_mb, quick_mode, reps, result_path,
                                sync, write_results)
from benchmarks.bench_assign import anchors_for
from reference import nms as ref

KS = (1_000, 10_000, 100_000, 200_000)
CLASSES = 80
BATCH = 16
QUICK_BATCH = 1
IMAGE = (800, 1333)
SLOW_S = 10.0  # a provider whose first call takes longer is timed once, without a memory profile


def torchvision_ops():
    try:
        import torchvision.ops as tv
        tv.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
        return tv, ""
    except Exception as e:  # not installed, or built for another torch
        return None, f"torchvision.ops unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def random_boxes(k, device, seed=0):
    """Uniform boxes: corner in [0, 1000)^2, sides in [0, 100); uniform scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(k, 2, generator=g) * 1000
    boxes = torch.cat([xy, xy + torch.rand(k, 2, generator=g) * 100], 1)
    scores, idxs = torch.rand(k, generator=g), torch.randint(0, CLASSES, (k,), generator=g)
    return boxes.to(device), scores.to(device), idxs.to(device)


def measure(fn, device, budget_s=3.0, max_iters=20):
    """(median ms, peak MiB or None, result, runs)."""
    _, _, max_iters, budget_s = reps(1, 3, max_iters, budget_s)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    first = time.perf_counter() - t0
    if first > SLOW_S:
        return first * 1e3, None, out, 1
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], peak_mb(fn, device), out, len(times)


def _row(rows, base, **row):
    ms = row.get("median_ms")
    for other in ("reference", "torchvision", "compile"):
        ok = ms is not None and other in base and row["provider"] != other
        row[f"vs_{other}"] = base[other] / ms if ok else None
    note = row.pop("note")
    row["note"] = note
    rows.append(row)
    peak = row.get("peak_mib")
    print(f"{row['case']} {row['provider']}: " + (f"{ms:.2f} ms" if ms is not None else row["note"]) +
          (f", peak {peak:.1f} MiB" if peak is not None else ""), file=sys.stderr)


def _compare(out, want, scores):
    """'' when the kept indices equal the first provider's, in order."""
    out, want = out.cpu(), want.cpu()
    if torch.equal(out, want):
        return ""
    if set(out.tolist()) != set(want.tolist()):
        return "KEPT SET DIFFERS"
    if torch.equal(scores.cpu()[out], scores.cpu()[want]):
        return "same set; equal scores in another order"
    return "same set, ORDER DIFFERS"


def run_single(device, budget_gib, tv, rows):
    for batched in (False, True):
        for k in KS[:1] if harness.QUICK else KS:
            boxes, scores, idxs = random_boxes(k, device)
            case = f"{'batched_nms 80 classes' if batched else 'nms'} K={k}"
            providers = {"reference": (ref.batched_nms, ref.nms), "gflops": (gflops.batched_nms, gflops.nms)}
            if tv is not None:
                providers = {"reference": providers["reference"], "torchvision": (tv.batched_nms, tv.nms),
                             "gflops": providers["gflops"]}
            base, want = {}, None
            for prov, (fb, fs) in providers.items():
                row = dict(case=case, provider=prov, median_ms=None, peak_mib=None, runs=0, kept=None, note="")
                if prov == "reference" and k * k * 6 > budget_gib * 2**30:
                    row["note"] = f"not run: its K x K IoU matrix needs ~{k * k * 6 / 2**30:.0f} GiB"
                    _row(rows, base, **row)
                    continue
                call = (lambda: fb(boxes, scores, idxs, 0.5)) if batched else (lambda: fs(boxes, scores, 0.5))
                res, note = attempt(lambda: measure(call, device), f"{case} {prov}")
                if note is not None:
                    row["note"] = note
                    _row(rows, base, **row)
                    continue
                ms, mib, out, n = res
                want = out if want is None else want
                base[prov] = ms
                row.update(median_ms=ms, peak_mib=mib, runs=n, kept=int(out.numel()),
                           note=_compare(out, want, scores) +
                           ("" if mib is not None else f" one call ({ms / 1e3:.0f} s), memory not profiled"))
                _row(rows, base, **row)


def head_batch(device, seed=0, batch=BATCH):
    """Raw GFL head outputs of `batch` 1333x800 images, 80 classes: logits ~ N(-6, 2)
    put ~6% of the (anchor, class) pairs above score_thr (more than nms_pre on
    the large levels), distribution logits ~ N(0, 2)."""
    h, w = IMAGE
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    from reference.gfl import anchors
    strides = (8, 16, 32, 64, 128)
    points, st, _, sizes = anchors([(-(-ph // s), -(-pw // s)) for s in strides], device)
    g = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    cls = (torch.randn(batch, n, CLASSES, generator=g) * 2 - 6).to(device)
    reg = (torch.randn(batch, n, 68, generator=g) * 2).to(device)
    shapes = torch.tensor([[h, w]] * batch, dtype=torch.float32, device=device)
    return cls, reg, points, st, list(sizes), shapes


def run_post(device, rows):
    batch = QUICK_BATCH if harness.QUICK else BATCH
    cls, reg, points, st, sizes, shapes = head_batch(device, batch=batch)
    case = f"multiclass_nms B={batch} N={points.shape[0]} C={CLASSES}"
    shape_list = shapes.tolist()

    def reference():
        return ref.multiclass_nms(cls, reg, points, st, sizes, shape_list)

    compiled = torch.compile(ref.multiclass_nms, dynamic=True)
    providers = {"reference": reference, "compile": lambda: compiled(cls, reg, points, st, sizes, shape_list),
                 "gflops": lambda: gflops.multiclass_nms(cls, reg, points, st, sizes, shapes)}
    base, want = {}, None
    for prov, fn in providers.items():
        row = dict(case=case, provider=prov, median_ms=None, peak_mib=None, runs=0, kept=None, note="")

        def warm_and_measure(prov=prov, fn=fn):
            warm = ""
            if prov == "compile":  # compilation is not the op's time: one untimed call first
                t0 = time.perf_counter()
                fn()
                warm = f"first call (compiling) {time.perf_counter() - t0:.0f} s; "
            return warm, measure(fn, device)
        res, note = attempt(warm_and_measure, f"{case} {prov}")  # torch.compile of the Python loops may not compile
        if note is not None:
            row["note"] = note
            _row(rows, base, **row)
            continue
        warm, (ms, mib, out, n) = res
        want = out if want is None else want
        same = torch.equal(out[3].cpu(), want[3].cpu()) and torch.equal(out[2].cpu(), want[2].cpu())
        base[prov] = ms
        row.update(median_ms=ms, peak_mib=mib, runs=n, kept=int(out[3].sum()),
                   note=warm + ("" if same else "DETECTIONS DIFFER from the reference"))
        _row(rows, base, **row)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for ax, kind in zip(axes[:2], ("nms K=", "batched_nms 80 classes K=")):
        for prov, style in (("reference", "o-"), ("torchvision", "s--"), ("gflops", "^-")):
            pts = [(int(r["case"].split("K=")[1]), r["median_ms"]) for r in rows
                   if r["case"].startswith(kind) and r["provider"] == prov and r["median_ms"]]
            if pts:
                ax.plot(*zip(*pts), style, label=prov)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("boxes K")
        ax.set_ylabel("median time (ms)")
        ax.set_title(kind.replace(" K=", "") + " (uniform random boxes)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    post = [r for r in rows if r["case"].startswith("multiclass_nms") and r["median_ms"]]
    axes[2].bar([r["provider"] for r in post], [r["median_ms"] for r in post])
    axes[2].set_yscale("log")
    axes[2].set_ylabel("median time (ms)")
    axes[2].set_title(f"GFL post-process, B={QUICK_BATCH if harness.QUICK else BATCH}, 80 classes, 1333x800")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-gib", type=float, default=8.0,
                   help="skip the reference where its K x K matrix passes this")
    p.add_argument("--skip-single", action="store_true", help="only the post-process")
    add_quick(p, "K=1000, the post-process of one image")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    tv, why = torchvision_ops()
    if tv is None:
        print(f"torchvision provider skipped: {why}", file=sys.stderr)
    rows = []
    with quick_mode(a.quick):
        if not a.skip_single:
            run_single(device, a.budget_gib, tv, rows)
        run_post(device, rows)
        meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                    copy_gbps=copy_gbps(device), torchvision=why or "used", iou_threshold=0.5,
                    note="vs_* are speedups (x) of this row over that provider; "
                         "peak is allocator memory during one call")
        table = write_results("nms", device, rows, meta)
        attempt(lambda: plot(rows, result_path("nms", device, ".png")), "plot")
    print(table)
    return exit_status(rows)


if __name__ == "__main__":
    raise SystemExit(main())
