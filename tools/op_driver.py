"""Call every public gflops op once, forward and (where differentiable)
backward, in every dtype, on small shapes with ragged tails.

    python tools/op_driver.py --device {cpu,cuda,emu} [--dtypes float32,float16,bfloat16,float64]
                              [--backend {default,triton}] [--validate] [--ops NAME,...]

Its job is to be run under a checker, which slows every kernel launch by
orders of magnitude, so it is deliberately small (about a thousand rows,
anchors or boxes per op) and runs each case once:

    compute-sanitizer --tool memcheck  python tools/op_driver.py --device cuda   # also racecheck,
                                                                                 # initcheck, synccheck
    GFLOPS_EMU_SANITIZE=race python tools/op_driver.py --device emu              # the emulator's checks

Sizes are chosen to end in partial tiles, warps and blocks (1001 rows, 37 or
80 classes, 17 bins per side, 911 anchors over five uneven levels, three
images with 7, 0 and 4 valid GTs among 9 padded slots), where out-of-bounds
bugs live. One line per (op, dtype, fwd/bwd): OK, FAIL (with the error) or
SKIP (with the reason); the exit status is 1 when anything failed. On CUDA
each call is followed by a torch.cuda.synchronize(), so a kernel fault is
reported on its own op's line. Where a checker is still too slow for the
whole run, split it with --dtypes and --ops.

--device emu runs the CUDA kernels in the CPU emulator (gflops.emulation) on
CPU tensors. --backend triton runs the Triton kernels of the ops that have
them: gflops.set_backend('triton') on a GPU, and without one the
torch.ops.gflops_triton twin in Triton's CPU interpreter, as the tests do.
"""
import argparse
import contextlib
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run as a script from anywhere: gflops and reference live at the repo root
# torch and gflops are imported inside the functions: main() settles TRITON_INTERPRET first, and --help builds nothing.

FEATS = [(23, 29), (12, 15), (6, 8), (3, 4), (2, 2)]  # 667 + 180 + 48 + 12 + 4 = 911 anchors
REG_MAX = 16  # 17 bins per side
GT_COUNTS = (7, 0, 4)  # valid GTs per image; the rest of the 9 slots are padding
GT_SLOTS = 9


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda", "emu"], default="cpu")
    p.add_argument("--dtypes", default="float32,float16,bfloat16,float64")
    p.add_argument("--backend", choices=["default", "triton"], default="default")
    p.add_argument("--validate", action="store_true", help="gflops.set_validation(True): also run the value checks")
    p.add_argument("--ops", default="", help="comma-separated op names to run (default: all)")
    return p.parse_args(argv)


def route(args):
    """(device of the tensors, context routing the gflops functions, reason an
    op without a Triton kernel is skipped or None)."""
    import gflops
    from gflops import _ops, emulation
    from gflops import triton as gtriton

    if args.device == "emu":
        emulation.load()  # GFLOPS_EMU_SANITIZE picks the plain, address or race build
        return "cpu", _ops.use("gflops_emu"), None
    if args.device == "cuda":
        if not gflops.has_cuda():
            sys.exit("op_driver: this build of gflops has no CUDA kernels")
        if args.backend == "triton":
            gflops.set_backend("triton")  # the other ops keep the compiled CUDA kernels
        return "cuda", contextlib.nullcontext(), None
    if args.backend == "triton":  # no GPU: the twin library, in Triton's interpreter
        gtriton.load_twin()
        return "cpu", _ops.use(gtriton.NAMESPACE), "no Triton kernel (the CPU twin has only the Triton ops)"
    return "cpu", contextlib.nullcontext(), None


def cases(dev, dt):
    """(op, variant, call, leaves) per case: call(*leaves) runs the public
    function; leaves are the inputs gradients flow to (empty: no backward).
    Side inputs (scores, targets, points, GTs) are float32, float64 with
    float64 logits, as the ops take them; boxes of the box ops have `dt`."""
    import torch

    import gflops
    from reference.gfl import anchors

    g = torch.Generator().manual_seed(0)
    acc = torch.float64 if dt == torch.float64 else torch.float32

    def rand(*s, scale=1.0, dtype=None):
        return (torch.rand(*s, generator=g, dtype=torch.float64) * scale).to(dev, dtype or acc)

    def randn(*s, scale=1.0, dtype=None):
        return (torch.randn(*s, generator=g, dtype=torch.float64) * scale).to(dev, dtype or dt)

    def randint(hi, *s):
        return torch.randint(0, hi, s, generator=g).to(dev)

    def boxes(*s, dtype=None, canvas=200.0):
        xy = torch.rand(*s, 2, generator=g, dtype=torch.float64) * canvas
        wh = torch.rand(*s, 2, generator=g, dtype=torch.float64) * canvas / 4 + 1
        return torch.cat([xy, xy + wh], -1).to(dev, dtype or dt)

    n1 = REG_MAX + 1
    points, strides, anchor_boxes, sizes = (t.to(dev, acc) if torch.is_tensor(t) else t
                                            for t in anchors(FEATS, "cpu", dtype=torch.float64))
    A, B, G = points.shape[0], len(GT_COUNTS), GT_SLOTS
    image_hw = [(FEATS[0][0] * 8, FEATS[0][1] * 8), (150, 201), (97, 230)]  # the batch's images differ
    gt = boxes(B, G, dtype=acc)
    gt_valid = (torch.arange(G)[None] < torch.tensor(GT_COUNTS)[:, None]).to(dev)
    gt_labels = randint(5, B, G)

    # Losses: 1001 rows (a partial block), 80 classes (the packed path) or 37 (the scalar path).
    for reduction, c, beta in (("mean", 80, 2.0), ("none", 37, 1.5)):
        label = torch.where(rand(1001) < 0.3, randint(c, 1001), torch.full((1001,), c, device=dev))
        score, w = rand(1001), rand(1001)
        avg = torch.tensor(300.0, device=dev) if reduction == "mean" else None
        yield ("quality_focal_loss", reduction, lambda p, label=label, score=score, w=w, beta=beta, r=reduction,
               avg=avg: gflops.quality_focal_loss(p, label, score, w, beta, r, avg), [randn(1001, c, scale=3)])
    for reduction in ("mean", "none"):
        target, w = rand(1001, scale=REG_MAX - 0.01), rand(1001)
        avg = 250.0 if reduction == "mean" else None
        yield ("distribution_focal_loss", reduction, lambda p, t=target, w=w, r=reduction, avg=avg:
               gflops.distribution_focal_loss(p, t, w, r, avg), [randn(1001, n1, scale=2)])

    # Boxes: pairwise over a batch dim (3 x 37 x 101), and aligned (1001).
    for mode in ("iou", "giou"):
        a, b = boxes(3, 37), boxes(3, 101)
        yield "box_iou", f"{mode},pairwise", lambda a=a, b=b, m=mode: gflops.box_iou(a, b, m), []
        a, b = boxes(1001), boxes(1001)
        yield "box_iou", f"{mode},aligned", lambda a=a, b=b, m=mode: gflops.box_iou(a, b, m, aligned=True), []
    for reduction in ("mean", "none"):
        target, w = boxes(1001, dtype=acc), rand(1001)
        pred = (target + randn(1001, 4, scale=3, dtype=acc)).to(dt)
        yield ("giou_loss", reduction, lambda p, t=target, w=w, r=reduction: gflops.giou_loss(p, t, w, r),
               [pred])

    # Decoding: 3 images x 337 (integral) or 911 anchors (the decode, with their points) x 4 sides x 17 bins.
    yield "integral", "", lambda p: gflops.integral(p, REG_MAX), [randn(B, 337, 4 * n1, scale=2)]
    yield ("decode_distribution", "max_shape", lambda p: gflops.decode_distribution(
        p, points, strides, REG_MAX, max_shape=image_hw[0]), [randn(B, A, 4 * n1, scale=2)])
    # The box branch over 1001 positives, GTs around their points.
    idx = randint(A, 1001)
    p_pts, p_st = points[idx], strides[idx]
    p_gt = torch.cat([p_pts - rand(1001, 2) * p_st[:, None] * 6, p_pts + rand(1001, 2) * p_st[:, None] * 6], 1)
    yield ("gfl_box_branch", "", lambda p, w=rand(1001): gflops.gfl_box_branch(p, p_pts, p_st, p_gt, w, REG_MAX),
           [randn(1001, 4 * n1, scale=2)])

    # Assignment: padded GTs, one image without any; a tenth of the anchors invalid.
    anchor_valid = rand(B, A) > 0.1
    yield ("atss_assign", "", lambda: gflops.atss_assign(anchor_boxes.to(dt), sizes, gt.to(dt), gt_labels, gt_valid,
                                                          num_classes=5, topk=9, anchor_valid=anchor_valid), [])
    c = 5
    mu, sigma = randn(c, 2, scale=0.3, dtype=acc), rand(c, 2, dtype=acc) + 0.6
    yield ("autoassign_loss_terms", "", lambda cls, obj, d, mu, sigma: gflops.autoassign_loss_terms(
        cls, obj, d, points, strides, gt, gt_labels, gt_valid, mu, sigma, level_shapes=FEATS),
        [randn(B, A, c, scale=2), randn(B, A), rand(B, A, 4, scale=30, dtype=acc) + 0.5, mu, sigma])
    # The whole loss: autoassign_loss_totals (the terms and the batch totals in one op).
    yield ("autoassign_loss", "", lambda cls, obj, d, mu, sigma: tuple(gflops.autoassign_loss(
        cls, obj, d, points, strides, gt, gt_labels, gt_valid, mu, sigma, level_shapes=FEATS).values()),
        [randn(B, A, c, scale=2), randn(B, A), rand(B, A, 4, scale=30, dtype=acc) + 0.5, mu, sigma])

    # NMS: 1001 boxes in a few clusters (long suppression chains), 7 classes.
    centre = boxes(8, dtype=torch.float64)[randint(8, 1001)]
    nb = (centre + randn(1001, 4, scale=2, dtype=torch.float64)).to(dt)
    ns, ni = rand(1001, dtype=dt), randint(7, 1001)
    yield "nms", "", lambda: gflops.nms(nb, ns, 0.5), []
    yield "batched_nms", "", lambda: gflops.batched_nms(nb, ns, ni, 0.5), []
    cls, reg = randn(B, A, 7, scale=2) - 2, randn(B, A, 4 * n1, scale=2)
    yield ("multiclass_nms", "", lambda: gflops.multiclass_nms(
        cls, reg, points, strides, sizes, image_hw, score_thr=0.05, nms_pre=100, iou_threshold=0.6,
        max_per_img=50, min_bbox_size=1.0, scale_factors=[(1.0, 1.0), (0.5, 0.75), (2.0, 2.0)]), [])


def run(call, leaves, mode, dev):
    """One forward (no autograd: the plain kernels) or forward with autograd +
    backward of the sum of the differentiable outputs."""
    import torch

    if mode == "fwd":
        with torch.no_grad():
            out = call(*leaves)
    else:
        leaves = [t.detach().requires_grad_(True) for t in leaves]
        out = call(*leaves)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        total = sum(o.sum() for o in outs if o.requires_grad)
        torch.autograd.grad(total, leaves, allow_unused=True)
    if dev == "cuda":
        torch.cuda.synchronize()  # an asynchronous kernel fault surfaces here, on this op's line


def main(argv=None):
    args = parse_args(argv)
    if args.backend == "triton" and args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # read when gflops.triton's kernels are first imported
    import torch

    import gflops
    from gflops import triton as gtriton

    if args.validate:
        gflops.set_validation(True)
    dev, routing, no_triton = route(args)
    only = set(filter(None, args.ops.split(",")))
    seen, failed = set(), 0
    start = time.perf_counter()
    with routing:
        for name in args.dtypes.split(","):
            for op, variant, call, leaves in cases(dev, getattr(torch, name)):
                seen.add(op)
                if only and op not in only:
                    continue
                label = f"{op}[{variant}]" if variant else op
                for mode in ("fwd", "bwd") if leaves else ("fwd",):
                    if no_triton and op not in gtriton.OP_NAMES:
                        print(f"SKIP  {label:36s} {name:9s} {mode}  {no_triton}")
                        continue
                    t0 = time.perf_counter()
                    try:
                        run(call, leaves, mode, dev)
                        print(f"OK    {label:36s} {name:9s} {mode}  {1e3 * (time.perf_counter() - t0):8.1f} ms")
                    except Exception as e:  # noqa: BLE001 - report every failing call, then go on
                        failed += 1
                        print(f"FAIL  {label:36s} {name:9s} {mode}  {type(e).__name__}: {str(e).splitlines()[0]}")
                        traceback.print_exc(file=sys.stderr)
                    sys.stdout.flush()
    if only - seen:
        failed += 1
        print(f"FAIL  --ops names no op: {sorted(only - seen)}; the ops are {sorted(seen)}")
    if dev == "cuda":
        try:
            torch.cuda.synchronize()  # anything still in flight reports before the verdict
        except Exception as e:  # noqa: BLE001 - a fault after the last per-call sync still fails the run
            failed += 1
            print(f"FAIL  final torch.cuda.synchronize(): {type(e).__name__}: {e}")
    print(f"{'FAILED' if failed else 'PASSED'}: {failed} failure(s), device {args.device}, backend {args.backend}, "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
