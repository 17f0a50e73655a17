"""Host cost per call of the public loss and decode functions (issue: the host path).

    python -m benchmarks.bench_host [--quick]

Inputs are tiny (8 rows), one thread, so the kernels' time is negligible and
what is left is the Python wrapper, the dispatcher, autograd and the extra ops
a call makes. Each gflops function is timed beside its closest ATen
counterpart, interleaved (one batch of calls of each in turn, best batch of
several rounds: the machine's noise only ever adds), forward on inputs that
need no gradient and forward+backward from a leaf that does. The target is
at most 1.5x the counterpart forward and 1.3x forward+backward.

Where triton is installed (and no GPU is), the same calls also run on the
Triton twin with Triton's whole launch path but a launcher that launches
nothing (gflops/triton/offline.py): `triton_us` is the Triton path's host
cost less the C launcher's (a few us a launch on a GPU, not counted). Writes
benchmarks/results/host_<device>.{md,csv,json}.
"""
import argparse
import os
import time

import torch
import torch.nn.functional as F

import gflops
from gflops import triton as gtriton
from benchmarks.harness import add_quick, attempt, exit_status, quick_mode, write_results
from benchmarks import harness

ROWS, CLASSES, BINS = 8, 80, 17
TARGET = {"fwd": 1.5, "fwd+bwd": 1.3}
# The public functions with Triton kernels: the twin's ops less their backward ops.
TRITON_OPS = tuple(op for op in gtriton.OP_NAMES if not op.endswith("_backward"))


def autoassign_case():
    """gflops.autoassign_loss against reference.autoassign_loss around the same fused terms (the batch totals
    a user wrote around them before): 2 images, 2 GTs each, 4 classes, 5 points; pred is the class logits."""
    from reference.autoassign import points as grid_points
    from reference.autoassign_loss import autoassign_loss

    g = torch.Generator().manual_seed(0)
    shapes = [(2, 2), (1, 1)]
    pts, st, _ = grid_points(shapes, "cpu")
    B, P = 2, pts.shape[0]
    rest = [torch.randn(B, P, generator=g), torch.rand(B, P, 4, generator=g) * 8, pts, st,
            torch.tensor([[1.0, 1.0, 12.0, 12.0], [4.0, 2.0, 16.0, 9.0]]).repeat(B, 1, 1),
            torch.tensor([[0, 3]] * B), torch.ones(B, 2, dtype=torch.bool), torch.zeros(4, 2), torch.ones(4, 2)]

    def total(out):
        return out["loss_pos"] + out["loss_neg"] + out["loss_center"]

    return ("autoassign_loss", lambda p: total(gflops.autoassign_loss(p, *rest, level_shapes=shapes)),
            lambda p: total(autoassign_loss(p, *rest, autoassign_loss_terms=gflops.autoassign_loss_terms,
                                            level_shapes=shapes)),
            (B, P, 4), "reference glue")


def cases():
    """(op, gflops fn(pred), counterpart fn(pred), pred shape, counterpart): the counterpart is the closest
    ATen op, or for the whole AutoAssign loss the reference's batch totals around gflops' fused terms."""
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, CLASSES + 1, (ROWS,), generator=g)
    score = torch.rand(ROWS, generator=g)
    onehot = torch.zeros(ROWS, CLASSES)
    target = torch.rand(ROWS, generator=g) * (BINS - 1.01)
    bins = target.long()
    points = torch.rand(ROWS, 2, generator=g) * 100
    strides = torch.full((ROWS,), 8.0)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(ROWS, 1)
    proj = torch.arange(BINS, dtype=torch.float32)
    return [
        ("quality_focal_loss", lambda p: gflops.quality_focal_loss(p, label, score),
         lambda p: F.binary_cross_entropy_with_logits(p, onehot), (ROWS, CLASSES)),
        ("distribution_focal_loss", lambda p: gflops.distribution_focal_loss(p, target),
         lambda p: F.cross_entropy(p, bins), (ROWS, BINS)),
        ("integral", lambda p: gflops.integral(p, BINS - 1),
         lambda p: F.softmax(p.view(-1, BINS), 1) @ proj, (ROWS, 4 * BINS)),
        ("decode_distribution", lambda p: gflops.decode_distribution(p, points, strides, BINS - 1),
         lambda p: F.softmax(p.view(-1, BINS), 1) @ proj, (ROWS, 4 * BINS)),
        ("giou_loss", lambda p: gflops.giou_loss(p.abs().cumsum(1), boxes),
         lambda p: F.l1_loss(p.abs().cumsum(1), boxes), (ROWS, 4)),
    ]


def per_call_us(fns, calls, rounds):
    """Best-of-rounds microseconds per call of each fn, the fns interleaved batch by batch."""
    best = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            best[i] = min(best[i], (time.perf_counter() - t0) / calls * 1e6)
    return best


def modes(fn, shape):
    fwd_in = torch.randn(shape)
    leaf = torch.randn(shape, requires_grad=True)

    def fwd_bwd():
        out = fn(leaf)
        (out if out.dim() == 0 else out.sum()).backward()
        leaf.grad = None

    return {"fwd": lambda: fn(fwd_in), "fwd+bwd": fwd_bwd}


_no_launch = []


def triton_no_launch():
    """A context that routes the public functions to the Triton twin, whose kernels
    compile for sm_90 and launch nothing; or why it cannot be had here."""
    if _no_launch:
        return _no_launch[0]
    from gflops import _ops
    ok, why = gtriton.available()
    if not ok:
        return why
    if os.environ.get("TRITON_INTERPRET", "0") == "1" or torch.cuda.is_available():
        return "the Triton path is timed on a machine without a GPU and without TRITON_INTERPRET"
    from triton.runtime.driver import driver
    from gflops.triton import offline
    driver.set_active(offline.NoLaunchDriver())
    gtriton.load_twin()
    from gflops.triton.launch import OPS
    lib = torch.library.Library(gtriton.NAMESPACE, "IMPL")  # the launchers on CPU tensors: they launch nothing
    for name, fn in OPS.items():
        lib.impl(name, fn, "CPU")
    _no_launch.append(lambda: _ops.use(gtriton.NAMESPACE))
    _no_launch.append(lib)
    return _no_launch[0]


def triton_launch_us(calls, rounds):
    """us of one Triton launch alone (JITFunction.run, its launcher stubbed): a DFL forward kernel
    over 8 rows, as launch.py launches it; None where the Triton path is not timed here."""
    if isinstance(triton_no_launch(), str):
        return None
    import triton.language as tl
    from gflops.triton import kernels as K
    from gflops.triton import tiles
    pred, target, out = torch.randn(ROWS, BINS), torch.rand(ROWS), torch.empty(1)
    block, head, tail = tiles.bin_blocks(BINS, "bench_host", False)

    def launch():
        K.dfl_forward_kernel[(1,)](pred, target, None, out, ROWS, BINS, HAS_W=False, SUM=True, ACC=tl.float32,
                                   BLOCK_M=block, HEAD=head, TAIL=tail, WIDE=False, num_warps=tiles.NUM_WARPS)
    launch()
    return per_call_us([launch], calls, rounds)[0]


def _on(route, fn):
    def call():
        with route():
            fn()
    return call


def run(calls, rounds):
    rows = []
    route = triton_no_launch()
    if isinstance(route, str):  # why not: main() writes it into the results' header
        route = None
    for op, ours, aten, shape, *vs in [c + ("ATen",) for c in cases()] + [autoassign_case()]:
        for mode in ("fwd", "fwd+bwd"):
            a, b = modes(ours, shape)[mode], modes(aten, shape)[mode]
            fns = [a, b] + ([_on(route, a)] if route and op in TRITON_OPS else [])
            res, note = attempt(lambda: [f() for f in fns] and per_call_us(fns, calls, rounds), f"{op} {mode}")
            # The targets are against an ATen op; the reference glue's row is a comparison only.
            target = TARGET[mode] if vs[0] == "ATen" else None
            row = dict(op=op, mode=mode, vs=vs[0], gflops_us=None, aten_us=None, ratio=None, target=target,
                       triton_us=None, triton_ratio=None)
            if note is None:
                row.update(gflops_us=res[0], aten_us=res[1], ratio=res[0] / res[1])
                row["meets"] = None if target is None else row["ratio"] <= target
                if len(res) > 2:
                    row.update(triton_us=res[2], triton_ratio=res[2] / res[1])
            else:
                row["note"] = note
            rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000, help="calls per timed batch")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the best batch counts")
    add_quick(p, "50 calls a batch, 3 rounds")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with quick_mode(a.quick):
        calls, rounds = (50, 3) if harness.QUICK else (a.calls, a.rounds)
        rows = run(calls, rounds)
        launch = triton_launch_us(calls, rounds)
        meta = dict(device="cpu", torch=torch.__version__, threads=1, rows=ROWS, calls=calls, rounds=rounds,
                    triton_launch_us=None if launch is None else round(launch, 2),
                    triton="timed" if launch is not None else f"not timed: {triton_no_launch()}",
                    note="us per call; ratio = gflops / counterpart (`vs`: an ATen op, or the reference's glue "
                    "around the same fused op, in aten_us); target 1.5x fwd, 1.3x fwd+bwd; "
                    "triton_us: the Triton twin, launch path whole, launcher stubbed (gflops/triton/offline.py); "
                    "triton_launch_us: one such launch alone (a DFL forward kernel)")
        print(write_results("host", torch.device("cpu"), rows, meta))
    return exit_status(rows, time_keys=("gflops_us",))


if __name__ == "__main__":
    raise SystemExit(main())
