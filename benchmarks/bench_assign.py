"""ATSS assignment: reference eager vs torch.compile(reference) vs gflops, over
the number of GTs per image, on the anchors of a 1333x800 and a 2000x2000 image.

    python -m benchmarks.bench_assign [--device cuda] [--budget-gib 8] [--quick]

The reference builds (B, G, N) IoU and distance matrices; where its
predicted peak memory passes the budget it is not run, and the row says so
(with the prediction). A provider that fails (raises, also while
torch.compile compiles) is a row with the note, and the sweep goes on; the
exit status is 1 only when every run provider failed (harness.exit_status).
Writes benchmarks/results/assign_<device>.{md,csv,json}
and a plot of time and memory against G. --quick is a dry run: the
1333x800 image, B=2, G=10, a few calls each, files under benchmarks/results/quick/.
"""
import argparse
import sys
import time

import torch

import gflops
from benchmarks import harness
from benchmarks.harness import (add_quick, attempt, copy_gbps, exit_status, peak_mb, plot_sweep, quick_mode, reps,
                                result_path, sync, write_results)
from reference.assign import atss_assign as ref_assign
from reference.gfl import anchors as fpn_anchors

STRIDES = (8, 16, 32, 64, 128)
IMAGES = {"1333x800": (800, 1333), "2000x2000": (2000, 2000)}
BATCHES = (2, 16)
GTS = (10, 100, 1000, 5000)
NUM_CLASSES = 80


def anchors_for(h, w, device):
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32  # padded as the detector pads
    shapes = [(-(-ph // s), -(-pw // s)) for s in STRIDES]
    _, _, boxes, sizes = fpn_anchors(shapes, device)
    return boxes, list(sizes)


def gts_for(batch, num_gt, h, w, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch, num_gt, 2, generator=g) * torch.tensor([w, h])
    wh = (torch.rand(batch, num_gt, 2, generator=g) ** 2) * torch.tensor([w, h]) * 0.4 + 4
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
    labels = torch.randint(0, NUM_CLASSES, (batch, num_gt), generator=g)
    valid = torch.ones(batch, num_gt, dtype=torch.bool)
    return boxes.to(device), labels.to(device), valid.to(device)


def sweep():
    """(images, batches, GTs per image): the whole sweep, or its first case in quick mode."""
    if harness.QUICK:
        return dict(list(IMAGES.items())[:1]), BATCHES[:1], GTS[:1]
    return IMAGES, BATCHES, GTS


def measured(call, device, label, row, rows, **timing):
    """(ms, result, peak MiB, peak-memory note) of `call`, or None when timing it
    failed: then `row` gets the failure note and joins `rows`."""
    res, note = attempt(lambda: timed(call, device, **timing), label)
    if note is not None:
        row.update(median_ms=None, peak_mib=None, vs_eager=None, vs_compile=None, note=note)
        rows.append(row)
        return None
    mem, mem_note = attempt(lambda: peak_mb(call, device), f"{label} peak memory")
    return (*res, mem, mem_note)


def timed(fn, device, budget_s=3.0, max_iters=20):
    """(median ms of fn(), its result): one warm-up call, then calls until the
    budget (at least 3; just 3 in quick mode)."""
    _, _, max_iters, budget_s = reps(1, 3, max_iters, budget_s)
    out = fn()
    sync(device)
    times, start = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - start < budget_s and len(times) < max_iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2], out


def run(device, budget_gib):
    compiled = torch.compile(ref_assign, dynamic=True)
    providers = {"reference": ref_assign, "compile": compiled, "gflops": gflops.atss_assign}
    rows, per_elem = [], {}
    images, batches, gts = sweep()
    for image, (h, w) in images.items():
        anchors, sizes = anchors_for(h, w, device)
        n = anchors.shape[0]
        for batch in batches:
            for num_gt in gts:
                boxes, labels, valid = gts_for(batch, num_gt, h, w, device)
                args = (anchors, sizes, boxes, labels, valid, NUM_CLASSES)
                base = {}
                want = None
                for prov, fn in providers.items():
                    row = dict(image=image, anchors=n, batch=batch, gts=num_gt, provider=prov)
                    dense = batch * num_gt * n
                    if prov in per_elem and per_elem[prov] * dense > budget_gib * 2**30:
                        pred = per_elem[prov] * dense / 2**30
                        row.update(median_ms=None, peak_mib=None, vs_eager=None, vs_compile=None,
                                   note=f"not run: predicted peak {pred:.0f} GiB (B x G x N matrices) > {budget_gib} GiB")
                        print(f"{image} B={batch} G={num_gt} {prov}: {row['note']}", file=sys.stderr)
                        rows.append(row)
                        continue
                    call = lambda fn=fn: fn(*args)  # noqa: E731
                    label = f"{image} B={batch} G={num_gt} {prov}"
                    got = measured(call, device, label, row, rows)
                    if got is None:
                        continue
                    ms, out, mem, mem_note = got
                    if want is None:
                        want = out
                    same = all(torch.equal(a, b) for a, b in zip(out, want))
                    if prov != "gflops" and dense > 0 and mem is not None:
                        per_elem[prov] = max(per_elem.get(prov, 0.0), mem * 2**20 / dense)
                    base[prov] = ms
                    row.update(median_ms=ms, peak_mib=mem,
                               vs_eager=base["reference"] / ms if "reference" in base else None,
                               vs_compile=base["compile"] / ms if "compile" in base else None,
                               note="; ".join(n for n in ("" if same else "RESULT DIFFERS from the first provider",
                                                          mem_note and f"peak memory {mem_note}") if n))
                    print(f"{label}: {ms:.2f} ms, peak " + (f"{mem:.1f} MiB" if mem is not None else "failed"),
                          file=sys.stderr)
                    rows.append(row)
    return rows


def plot(rows, path):
    images, batches, _ = sweep()
    plot_sweep(rows, path, [(f"ATSS, anchors of a {image} image", lambda r, image=image: r["image"] == image)
                            for image in images], batches)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--budget-gib", type=float, default=8.0,
                   help="skip a dense provider whose predicted peak memory exceeds this")
    add_quick(p, "the 1333x800 image, B=2, G=10")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    with quick_mode(a.quick):
        rows = run(device, a.budget_gib)
        meta = dict(device=str(device), torch=torch.__version__, threads=torch.get_num_threads(),
                    copy_gbps=copy_gbps(device), strides=STRIDES, topk=9,
                    note="vs_eager / vs_compile are speedups (x); peak is allocator memory during one call")
        table = write_results("assign", device, rows, meta)
        attempt(lambda: plot(rows, result_path("assign", device, ".png")), "plot")
    print(table)
    return exit_status(rows)


if __name__ == "__main__":
    raise SystemExit(main())
