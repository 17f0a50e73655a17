"""QFL and DFL forward, backward and forward+backward: reference eager vs
torch.compile(reference) vs gflops' Triton kernels vs gflops, on COCO-like sizes,
and DFL against Ultralytics' DFLoss where the ultralytics package imports.

    python -m benchmarks.bench_losses [--device cuda] [--size coco|small|tiny] [--quick]

A provider that fails (raises, also in torch.compile's warm-up) is a row
with the note; the others still run and the files are written; the exit
status is 1 only when every provider of every case failed (harness.exit_status).
--quick is a dry run: the tiny size, a few calls per timing, files under
benchmarks/results/quick/.

The machine's limits, per case and mode: pct_copy is the time of a copy
moving the same bytes over the provider's time, pct_math that of the
kernels' own vectorised exp and log1p (QFL) or exp (DFL) loop over the same
elements, once each (what any implementation must evaluate; CPU only; none
for bwd, which may reuse the forward's), both in percent.

Ultralytics is a peer, never a dependency: its wheels need opencv and read
torchvision's metadata, so the committed numbers come from the separate
virtualenv of the README ("Benchmarks"), where it is installed with --no-deps.
"""
import torch

import gflops
import reference
from benchmarks.harness import (attempt, bench_providers, case_rows, checked_peer, cli, copy_gbps, copy_ms, grad_modes,
                                math_ms, meta_for, subset_tag, triton_provider, write_results)

# QFL: (batch, anchors per image, classes). DFL: positives in the batch (x 4 sides), bins per side:
# 17 is GFL's reg_max 16, 16 is Ultralytics' (YOLOv8 and later).
SIZES = {"coco": dict(batch=16, anchors=22400, classes=80, pos=1000, dfl_pos=13000),
         "small": dict(batch=2, anchors=22400, classes=80, pos=1000, dfl_pos=2000),
         "tiny": dict(batch=1, anchors=1000, classes=80, pos=50, dfl_pos=100)}  # --quick: a dry run
DFL_BINS = (17, 16)


def ultralytics_dfl(bins):
    """Ultralytics' DFLoss as its BboxLoss applies it (the mean over a box's 4
    sides times the box's weight, summed, over the normaliser), on gflops'
    arguments: rows are sides, 4 per box, each with its box's weight."""
    try:
        from ultralytics.utils.loss import DFLoss
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is unavailable
        return f"ultralytics unavailable ({type(e).__name__}: {str(e).splitlines()[0][:100]})"
    dfl = DFLoss(reg_max=bins)

    def loss(pred, target, weight, avg_factor):
        # DFLoss clamps its target in place; a copy keeps the inputs the providers share unchanged.
        per_box = dfl(pred, target.view(-1, 4).clone())  # (boxes, 1): the mean over the sides
        return 4 * (per_box * weight.view(-1, 4)[:, :1]).sum() / avg_factor
    return loss


def qfl_case(s, device, dtype):
    g = torch.Generator().manual_seed(0)
    n, c = s["batch"] * s["anchors"], s["classes"]
    pred = torch.randn(n, c, generator=g).to(device, dtype)
    label = torch.full((n,), c, dtype=torch.long)
    pos = torch.randperm(n, generator=g)[: s["batch"] * s["pos"]]
    label[pos] = torch.randint(0, c, (pos.numel(),), generator=g)
    score = torch.zeros(n)
    score[pos] = torch.rand(pos.numel(), generator=g)
    avg = torch.tensor(float(pos.numel()), device=device)
    args = (pred, label.to(device), score.to(device))
    kw = dict(avg_factor=avg)
    esz = pred.element_size()
    side = n * (8 + 4)
    nbytes = {"fwd": n * c * esz + side, "bwd": 2 * n * c * esz + side, "fwd+bwd": 3 * n * c * esz + 2 * side}
    return f"QFL {n}x{c}", args, kw, nbytes


def dfl_case(s, device, dtype, n1):
    g = torch.Generator().manual_seed(1)
    m = 4 * s["dfl_pos"]
    pred = torch.randn(m, n1, generator=g).to(device, dtype)
    target = (torch.rand(m, generator=g) * (n1 - 1.1)).to(device)
    weight = torch.rand(m // 4, generator=g).repeat_interleave(4).to(device)  # a box's weight on its 4 sides
    esz = pred.element_size()
    side = m * 8
    nbytes = {"fwd": m * n1 * esz + side, "bwd": 2 * m * n1 * esz + side, "fwd+bwd": 3 * m * n1 * esz + 2 * side}
    return f"DFL {m}x{n1}", (pred, target, weight), dict(avg_factor=4.0), nbytes


def limits(device, nbytes, elements, with_log1p):
    """The bwd mode has no arithmetic limit: a backward may reuse the forward's
    exponentials. None where measuring a limit fails (the rows go without)."""
    def measure():
        math = math_ms(elements, device, with_log1p)
        return {mode: (copy_ms(b, device), None if mode == "bwd" else math) for mode, b in nbytes.items()}
    return attempt(measure, "limits")[0]


def run_case(case, ref_fn, ours, with_log1p, make_peer, device, copy, providers):
    """The rows of one loss case: every provider in every mode (bench_providers)."""
    name, args, kw, nbytes = case()
    torch._dynamo.reset()  # a fresh compile per case: one shared cache would hit the recompile limit
    fns = {"reference": ref_fn, "compile": torch.compile(ref_fn), "gflops": ours,
           "triton": triton_provider(ours, device)}
    if make_peer is not None:  # the peer computes the same loss, or it is not compared
        fns["ultralytics"] = checked_peer(make_peer, lambda peer: torch.testing.assert_close(
            peer(*args, **kw), ref_fn(*args, **kw), rtol=1e-4, atol=1e-4))
    return bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: out), nbytes,
                           device, copy, providers, limits(device, nbytes, args[0].numel(), with_log1p))


def run(device, size, dtype, providers):
    """(markdown table, rows); writes the result files."""
    s = SIZES[size]
    copy = copy_gbps(device)
    rows = []
    cases = [("QFL", lambda: qfl_case(s, device, dtype), reference.quality_focal_loss, gflops.quality_focal_loss,
              True, None)]
    cases += [(f"DFL {n1} bins", lambda n1=n1: dfl_case(s, device, dtype, n1), reference.distribution_focal_loss,
               gflops.distribution_focal_loss, False, lambda n1=n1: ultralytics_dfl(n1)) for n1 in DFL_BINS]
    for label, *case in cases:
        rows += case_rows(label, lambda: run_case(*case, device, copy, providers), mode=None)
    # Runs with the peer come from another virtualenv (another torch): kept apart from the project's own.
    peers = "_ultralytics" if any(r["provider"] == "ultralytics" for r in rows) else ""
    table = write_results(f"losses_{size}_{str(dtype).split('.')[-1]}{subset_tag(providers)}{peers}", device, rows,
                          meta_for(device, size, dtype, copy), plot=True)
    return table, rows


def main(argv=None):
    return cli(run, __doc__, argv)


if __name__ == "__main__":
    raise SystemExit(main())
