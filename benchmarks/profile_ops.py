"""What each public gflops op runs: one call per op and mode under torch.profiler.

    python -m benchmarks.profile_ops [--device cpu|cuda] [--quick] [--out benchmarks/results]

For every op and mode (fwd; bwd and fwd+bwd where differentiable) one call
of the public function, after a warm-up call, is profiled, and everything it
ran is listed: the gflops ops, the ATen ops around them (casts, reductions,
allocations), the device kernels launched with their device time
(self_device_time_total) and the CUDA runtime calls (a cudaStreamSynchronize
or a device-to-host cudaMemcpy there is a host sync; the one
cudaDeviceSynchronize is this script's own, which waits for the kernels
inside the profiled region). Each (op, mode) block
starts with a `call` row: the host wall time of a call (the median of
three, unprofiled) and the bytes of the tensors it takes and returns (see
BYTES below), a rough figure of the traffic, not a measurement.

--backend triton profiles the same calls on the Triton kernels (the twin
torch.ops.gflops_triton: QFL, DFL, integral and decode): on a GPU their real
launches; on the CPU under TRITON_INTERPRET=1, where the interpreter runs
them, each launch is a `triton::<kernel>` range. Writes
profile_triton_<device>.*.

Sizes (PRESETS): on a GPU the benchmarks' COCO ones (bench_losses and
bench_boxes; 16 images of 1333x800 for assignment and NMS), on the CPU their
small ones (2 images), with --quick tiny ones (one 320x320 image) on either,
so that a run takes well under a minute on a 2-core CPU. Writes
profile_<device>.{md,csv,json} into --out (benchmarks/results/ by default)
with the harness's write_results and device names, as the other benchmarks.
"""
import argparse
import os
import time
from pathlib import Path
from unittest import mock

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import gflops
from benchmarks import bench_assign, bench_boxes, bench_losses, bench_nms, harness
from reference.gfl import anchors

# Assignment, AutoAssign and NMS: `batch` images of `image` with `gts` GTs each, `nms_boxes` boxes for nms.
# The loss and box sizes of coco and small are the benchmarks' own (bench_losses, bench_boxes).
PRESETS = {
    "coco": dict(image=(800, 1333), batch=16, gts=100, classes=80, nms_boxes=10_000),  # GPU
    "small": dict(image=(800, 1333), batch=2, gts=100, classes=80, nms_boxes=10_000),  # CPU
    "tiny": dict(image=(320, 320), batch=1, gts=10, classes=80, nms_boxes=1000,  # --quick
                 losses=dict(batch=1, anchors=1000, classes=80, pos=50, dfl_pos=100),
                 boxes=dict(batch=1, anchors=1000, gts=10, pos=100, reg_max=16)),
}
BYTES = ("fwd: the tensors of the arguments and the results; bwd: those again (the backward reads the inputs and "
         "an upstream gradient the size of the results) plus the gradient of the first argument; fwd+bwd: both")


def nbytes(x):
    """Bytes of every tensor in x (nested tuples, lists and dicts)."""
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(nbytes(v) for v in x)
    if isinstance(x, dict):
        return sum(nbytes(v) for v in x.values())
    return 0


def grid(image, device):
    """FPN points, strides, anchor boxes, level sizes and level shapes of an image padded to 32 (the detectors')."""
    ph, pw = (-(-v // 32) * 32 for v in image)
    shapes = [(-(-ph // s), -(-pw // s)) for s in bench_assign.STRIDES]
    points, strides, boxes, sizes = anchors(shapes, device)
    return points, strides, boxes, list(sizes), shapes


def cases(preset, device):
    """(op, case, fn, args, kw, loss_of): fn(*args, **kw) is one call of the
    public function; loss_of makes a scalar of its output for the backward
    (None: not differentiable). The loss and box cases are the benchmarks'."""
    p = PRESETS[preset]
    p = dict(p, losses=p.get("losses") or bench_losses.SIZES[preset], boxes=p.get("boxes") or bench_boxes.SIZES[preset])
    f32 = torch.float32

    def loss(out):
        return out

    for op, make, loss_of in (
            ("quality_focal_loss", lambda: bench_losses.qfl_case(p["losses"], device, f32), loss),
            ("distribution_focal_loss", lambda: bench_losses.dfl_case(p["losses"], device, f32, 17), loss),
            ("box_iou", lambda: bench_boxes.iou_case(p["boxes"], device, f32, "giou"), None),
            ("giou_loss", lambda: bench_boxes.giou_case(p["boxes"], device, f32), loss),
            ("integral", lambda: bench_boxes.integral_case(p["boxes"], device, f32), torch.sum),
            ("decode_distribution", lambda: bench_boxes.decode_case(p["boxes"], device, f32), torch.sum),
            ("gfl_box_branch", lambda: bench_boxes.branch_case(p["boxes"], device, f32),
             lambda out: 2.0 * out[0] + 0.25 * out[1])):
        name, args, kw, _ = make()
        yield op, name, getattr(gflops, op), args, kw, loss_of

    points, strides, boxes, sizes, shapes = grid(p["image"], device)
    B, G, C, (h, w) = p["batch"], p["gts"], p["classes"], p["image"]
    gt, labels, valid = bench_assign.gts_for(B, G, h, w, device)
    yield ("atss_assign", f"atss_assign B={B} N={boxes.shape[0]} G={G}", gflops.atss_assign,
           (boxes, sizes, gt, labels, valid), dict(num_classes=C), None)

    g = torch.Generator().manual_seed(0)
    P = points.shape[0]
    aa = [torch.randn(B, P, C, generator=g) - 4, torch.randn(B, P, generator=g),
          torch.rand(B, P, 4, generator=g) * strides.cpu()[None, :, None] * 8]
    aa = [t.to(device) for t in aa] + [points, strides, gt, labels, valid]
    aa += [(torch.randn(C, 2, generator=g) * 0.2).to(device), (torch.rand(C, 2, generator=g) + 0.5).to(device)]
    yield ("autoassign_loss_terms", f"autoassign_loss_terms B={B} P={P} C={C} G={G} (gradient to cls_logits)",
           gflops.autoassign_loss_terms, aa, dict(level_shapes=shapes), lambda out: out[0].sum() + out[1].sum() +
           out[2].sum())
    # The whole loss: the same op and the batch totals around it, each a launch on a GPU.
    yield ("autoassign_loss", f"autoassign_loss B={B} P={P} C={C} G={G} (the totals too; gradient to cls_logits)",
           gflops.autoassign_loss, aa, dict(level_shapes=shapes), lambda out: sum(out.values()))

    k = p["nms_boxes"]
    nb, ns, ni = bench_nms.random_boxes(k, device)
    yield "nms", f"nms K={k}", gflops.nms, (nb, ns, 0.6), {}, None
    yield "batched_nms", f"batched_nms K={k} classes=80", gflops.batched_nms, (nb, ns, ni, 0.6), {}, None

    cls = (torch.randn(B, P, C, generator=g) * 2 - 6).to(device)  # ~6% of the pairs above score_thr, as bench_nms
    reg = (torch.randn(B, P, 68, generator=g) * 2).to(device)
    hw = torch.tensor([[h, w]] * B, dtype=torch.float32, device=device)
    yield ("multiclass_nms", f"multiclass_nms B={B} N={P} C={C}", gflops.multiclass_nms,
           (cls, reg, points, strides, sizes, hw), {}, None)


def kind_of(evt):
    if evt.device_type == DeviceType.CUDA:
        return "kernel"  # kernels, memcpy and memset on the device
    name = evt.key
    if name.startswith("gflops"):
        return "gflops"
    if name.startswith("triton::"):
        return "triton"  # a Triton launch (gflops/triton/launch.py's range): its host time
    if name.startswith("aten::"):
        return "aten"
    if name.startswith("cu"):
        return "runtime"  # cudaLaunchKernel, cudaMemcpyAsync, cudaStreamSynchronize, ...
    return "other"  # autograd engine nodes, record_function ranges


def profile_call(fn, setup, device, timed=3):
    """(median wall ms of `timed` calls, the profile rows of one more); a
    warm-up call first. A median of a few: one call on a shared CPU can wait
    for a scheduler tick."""
    walls = []
    for _ in range(1 + timed):
        setup()
        harness.sync(device)
        t0 = time.perf_counter()
        fn()
        harness.sync(device)
        walls.append((time.perf_counter() - t0) * 1e3)
    wall = sorted(walls[1:])[timed // 2]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    setup()
    harness.sync(device)
    with profile(activities=activities) as prof:
        fn()
        harness.sync(device)  # inside, so the kernels' device time is recorded
    rows = []
    for evt in prof.key_averages():
        kind = kind_of(evt)
        rows.append(dict(kind=kind, name=evt.key, count=evt.count,
                         host_us=None if kind == "kernel" else evt.self_cpu_time_total,
                         device_us=(evt.self_device_time_total if kind == "kernel" else evt.device_time_total)
                         if device.type == "cuda" else None))
    order = ("gflops", "triton", "aten", "kernel", "runtime", "other")
    rows.sort(key=lambda r: (order.index(r["kind"]), -(r["device_us"] or r["host_us"] or 0)))
    return wall, rows


def run(device, preset, only=(), route=None):
    """route: a context the calls run in (None: gflops' own backends); ops outside `only` are skipped."""
    rows, seen = [], set()
    for op, case, fn, args, kw, loss_of in cases(preset, device):
        seen.add(op)
        if only and op not in only:
            continue
        if route is not None:
            fn = _routed(fn, route)
        if loss_of is None:
            modes = harness.forward_modes(fn, args, kw)
        else:
            modes = harness.grad_modes(fn, args, kw, loss_of)
        with torch.no_grad():
            fwd_bytes = nbytes(args) + nbytes(kw) + nbytes(fn(*args, **kw))
        bwd_bytes = fwd_bytes + nbytes(args[0])
        moved = {"fwd": fwd_bytes, "bwd": bwd_bytes, "fwd+bwd": fwd_bytes + bwd_bytes}
        for mode, (call, setup) in modes.items():
            wall, events = profile_call(call, setup, device)
            kernels = [e for e in events if e["kind"] == "kernel"]
            device_us = sum(e["device_us"] for e in kernels) if device.type == "cuda" else None
            rows.append(dict(op=op, mode=mode, case=case, kind="call", name=f"gflops.{op}", count=1, wall_ms=wall,
                             mbytes=moved[mode] / 2**20, device_us=device_us))
            rows += [dict(op=op, mode=mode, case=case, **e) for e in events]
            device_ms = f"  device {device_us / 1e3:8.3f} ms" if device_us is not None else ""
            print(f"{op:24s} {mode:8s} {wall:9.3f} ms{device_ms}  {moved[mode] / 2**20:9.1f} MiB  "
                  f"{sum(e['count'] for e in events if e['kind'] == 'aten')} aten, "
                  f"{sum(e['count'] for e in kernels)} kernel launches"
                  + (f", {sum(e['count'] for e in events if e['kind'] == 'triton')} Triton launches" if route else ""),
                  flush=True)
    if set(only) - seen:
        raise SystemExit(f"profile_ops: --ops names no op: {sorted(set(only) - seen)}; the ops are {sorted(seen)}")
    return rows


def _routed(fn, route):
    def call(*args, **kw):
        with route():
            return fn(*args, **kw)
    return call


def triton_route(device):
    """(the context that routes the public functions to the Triton twin, its ops), or exits saying why not."""
    from gflops import _ops
    from gflops import triton as gtriton
    ok, why = gtriton.available()
    if not ok:
        raise SystemExit(f"profile_ops: {why}")
    if device.type == "cpu" and not gtriton.interpreter_requested():
        raise SystemExit("profile_ops: --backend triton on the CPU runs Triton's interpreter: set TRITON_INTERPRET=1")
    gtriton.load_twin()
    return (lambda: _ops.use(gtriton.NAMESPACE)), {op for op in gtriton.OP_NAMES if not op.endswith("_backward")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (one 320x320 image), on any device")
    ap.add_argument("--out", default=str(harness.RESULTS), help="the folder of the result files")
    ap.add_argument("--ops", default="", help="comma-separated op names (default: all)")
    ap.add_argument("--backend", choices=["gflops", "triton"], default="gflops",
                    help="triton: the Triton kernels' twin (its four ops)")
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    preset = "tiny" if a.quick else "coco" if device.type == "cuda" else "small"
    t0 = time.perf_counter()
    only, route = set(filter(None, a.ops.split(","))), None
    if a.backend == "triton":
        route, triton_ops = triton_route(device)
        only = (only & triton_ops) if only else triton_ops
    rows = run(device, preset, only, route)
    backend = gflops.backend_info()["cuda" if device.type == "cuda" else "cpu"] if route is None else "triton"
    meta = dict(device=str(device), preset=preset, torch=torch.__version__, threads=torch.get_num_threads(),
                backend=backend, bytes=BYTES,
                note="per (op, mode): a `call` row (wall_ms: the median of 3 unprofiled calls after a warm-up; "
                     "mbytes in MiB), then what the profiled call ran: gflops and aten ops (count, self host_us, "
                     "device_us of their kernels), device kernels (device_us), CUDA runtime calls",
                total_s=round(time.perf_counter() - t0, 1))
    # --out wins: write_results writes under harness.RESULTS, or $GFLOPS_RESULTS_DIR where the harness reads it.
    with mock.patch.object(harness, "RESULTS", Path(a.out)), mock.patch.dict(os.environ, GFLOPS_RESULTS_DIR=a.out):
        name = "profile" if route is None else "profile_triton"
        harness.write_results(name, device, rows, meta)
    print(f"wrote {Path(a.out) / (name + '_' + harness.device_tag(device))}.{{md,csv,json}} in {meta['total_s']} s")


if __name__ == "__main__":
    main()
