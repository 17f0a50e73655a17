"""Thread scaling of every gflops CPU op: the same call at 1 and 2 threads
(torch.set_num_threads), at the benchmarks' small sizes, forward+backward
where the op is differentiable (distance2bbox and bbox2distance are PyTorch
expressions, not gflops kernels: not here). The CPU kernels cut work into fixed blocks
(results do not depend on the thread count), so scaling is what the
blocking and the memory system allow.

    python -m benchmarks.bench_threads
"""
import sys

import torch

import gflops
from benchmarks import bench_assign, bench_autoassign, bench_boxes, bench_losses, bench_nms
from benchmarks.harness import median_ms, meta_for, write_results


def _fwd_bwd(fn, pred, *rest, loss_of=lambda out: out, **kw):
    leaf = pred.detach().requires_grad_(True)

    def run():
        leaf.grad = None
        loss_of(fn(leaf, *rest, **kw)).float().sum().backward()
    return run


def cases(device):
    """(name, closure) of one call of each gflops CPU op."""
    dtype = torch.float32
    out = []
    s = bench_losses.SIZES["small"]
    name, args, kw, _ = bench_losses.qfl_case(s, device, dtype)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.quality_focal_loss, *args, **kw)))
    name, args, kw, _ = bench_losses.dfl_case(s, device, dtype, 17)
    out.append((f"{name} fwd+bwd", _fwd_bwd(gflops.distribution_focal_loss, *args, **kw)))
    s = bench_boxes.SIZES["small"]
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
    anchors, sizes = bench_assign.anchors_for(800, 1333, device)
    boxes, labels, valid = bench_assign.gts_for(2, 100, 800, 1333, device)
    out.append(("atss_assign 2x100", lambda: gflops.atss_assign(anchors, sizes, boxes, labels, valid,
                                                                 bench_assign.NUM_CLASSES)))
    nb, ns, ni = bench_nms.random_boxes(10000, device)
    out.append(("nms K=10000", lambda: gflops.nms(nb, ns, 0.5)))
    out.append(("batched_nms K=10000", lambda: gflops.batched_nms(nb, ns, ni, 0.5)))
    head = bench_nms.head_batch(device)
    out.append((f"multiclass_nms B={len(head[5])} N={head[2].shape[0]}", lambda: gflops.multiclass_nms(*head)))
    aa, shapes = bench_autoassign.inputs(2, 100, device)
    loss = bench_autoassign.loss_fn(gflops.autoassign_loss_terms)
    out.append(("autoassign loss 2x100 fwd+bwd", _fwd_bwd(loss, *aa, level_shapes=shapes)))
    return out


def run(device):
    before = torch.get_num_threads()
    rows = []
    try:
        for name, fn in cases(device):
            ms = {}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ms[threads] = median_ms(fn, device)
            rows.append(dict(op=name, ms_1_thread=ms[1], ms_2_threads=ms[2], speedup=ms[1] / ms[2]))
            print(f"{name:40s} 1 thread {ms[1]:9.3f} ms   2 threads {ms[2]:9.3f} ms   x{ms[1] / ms[2]:.2f}",
                  file=sys.stderr)
    finally:
        torch.set_num_threads(before)
    return write_results("threads", device, rows, meta_for(device, "small", torch.float32, None))


def main(argv=None):
    print(run(torch.device("cpu")))


if __name__ == "__main__":
    main()
