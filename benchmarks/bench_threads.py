"""Thread scaling of every gflops CPU op: the same call at 1 and 2 threads
(torch.set_num_threads), at the benchmarks' small sizes, forward+backward
where the op is differentiable (distance2bbox and bbox2distance are PyTorch
expressions, not gflops kernels: not here). The CPU kernels cut work into fixed blocks
(results do not depend on the thread count), so scaling is what the
blocking and the memory system allow.

    python -m benchmarks.bench_threads [--quick]

An op that fails (raises) at a thread count leaves that cell empty with the
note, and the other ops still run; the exit status is 1 only when every op
failed at every thread count (harness.exit_status). --quick is a dry run:
the tiny sizes, a few calls each, files under benchmarks/results/quick/.
"""
import argparse
import sys

import torch

import gflops
from benchmarks import bench_assign, bench_autoassign, bench_boxes, bench_losses, bench_nms, harness
from benchmarks.harness import add_quick, attempt, exit_status, median_ms, meta_for, quick_mode, write_results


def _fwd_bwd(fn, pred, *rest, loss_of=lambda out: out, **kw):
    leaf = pred.detach().requires_grad_(True)

    def run():
        leaf.grad = None
        loss_of(fn(leaf, *rest, **kw)).float().sum().backward()
    return run


def cases(device):
    """(name, closure) of one call of each gflops CPU op (at the tiny sizes in quick mode)."""
    dtype = torch.float32
    quick = harness.QUICK
    size = "tiny" if quick else "small"
    out = []
    s = bench_losses.SIZES[size]
    name, args, kw, _ = bench_losses.qfl_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.quality_focal_loss, *args, **kw)))
    name, args, kw, _ = bench_losses.dfl_case(s, device, dtype, 17)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.distribution_focal_loss, *args, **kw)))
    s = bench_boxes.SIZES[size]
    name, args, _, _ = bench_boxes.iou_case(s, device, dtype)
    out.append((f"{name} fwd", lambda a=args: gflops.box_iou(*a)))
    name, args, kw, _ = bench_boxes.giou_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.giou_loss, *args, **kw)))
    name, args, _, _ = bench_boxes.integral_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.integral, *args)))
    name, args, _, _ = bench_boxes.decode_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.decode_distribution, *args)))
    name, args, _, _ = bench_boxes.branch_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.gfl_box_branch, *args, loss_of=lambda o: 2.0 * o[0] + 0.25 * o[1])))
    gts = 10 if quick else 100
    anchors, sizes = bench_assign.anchors_for(800, 1333, device)
    boxes, labels, valid = bench_assign.gts_for(2, gts, 800, 1333, device)
    out.append((f"atss_assign 2x{gts}", lambda: gflops.atss_assign(anchors, sizes, boxes, labels, valid,
                                                                   bench_assign.NUM_CLASSES)))
    k = 1000 if quick else 10000
    nb, ns, ni = bench_nms.random_boxes(k, device)
    out.append((f"nms K={k}", lambda: gflops.nms(nb, ns, 0.5)))
    out.append((f"batched_nms K={k}", lambda: gflops.batched_nms(nb, ns, ni, 0.5)))
    head = bench_nms.head_batch(device, batch=bench_nms.QUICK_BATCH if quick else bench_nms.BATCH)
    out.append((f"multiclass_nms B={len(head[5])} N={head[2].shape[0]}", lambda: gflops.multiclass_nms(*head)))
    aa, shapes = bench_autoassign.inputs(2, gts, device)
    loss = bench_autoassign.loss_fn(gflops.autoassign_loss_terms)
    out.append((f"autoassign loss 2x{gts} fwd+bwd", _fwd_bwd(loss, *aa, level_shapes=shapes)))
    return out


def run(device):
    before = torch.get_num_threads()
    rows = []
    try:
        for name, fn in cases(device):
            ms, notes = {}, []
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ms[threads], note = attempt(lambda: median_ms(fn, device), f"{name} at {threads} threads")
                if note is not None:
                    notes.append(f"{note} (at {threads} thread{'s' * (threads > 1)})")
            speedup = ms[1] / ms[2] if None not in ms.values() else None
            rows.append(dict(op=name, ms_1_thread=ms[1], ms_2_threads=ms[2], speedup=speedup,
                             **({"note": "; ".join(notes)} if notes else {})))
            if speedup is not None:
                print(f"{name:40s} 1 thread {ms[1]:9.3f} ms   2 threads {ms[2]:9.3f} ms   x{speedup:.2f}",
                      file=sys.stderr)
    finally:
        torch.set_num_threads(before)
    table = write_results("threads", device, rows,
                          meta_for(device, "tiny" if harness.QUICK else "small", torch.float32, None))
    return table, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quick(p, "the tiny sizes")
    a = p.parse_args(argv)
    with quick_mode(a.quick):
        table, rows = run(torch.device("cpu"))
    print(table)
    return exit_status(rows, time_keys=("ms_1_thread", "ms_2_threads"))


if __name__ == "__main__":
    raise SystemExit(main())
