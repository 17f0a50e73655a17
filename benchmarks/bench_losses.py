"""QFL and DFL forward, backward and forward+backward: reference eager vs
torch.compile(reference) vs gflops' Triton kernels vs gflops, on COCO-like sizes.

    python -m benchmarks.bench_losses [--device cuda] [--size coco|small]
"""
import torch

import gflops
import reference
from benchmarks.harness import (bench_providers, cli, copy_gbps, grad_modes, meta_for, subset_tag, triton_provider,
                                write_results)

# (batch, anchors per image, classes); DFL: 4 sides x batch x positives, reg_max.
SIZES = {"coco": dict(batch=16, anchors=22400, classes=80, pos=1000, reg_max=16),
         "small": dict(batch=2, anchors=22400, classes=80, pos=1000, reg_max=16)}


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


def dfl_case(s, device, dtype):
    g = torch.Generator().manual_seed(1)
    m, n1 = 4 * s["batch"] * s["pos"], s["reg_max"] + 1
    pred = torch.randn(m, n1, generator=g).to(device, dtype)
    target = (torch.rand(m, generator=g) * (s["reg_max"] - 0.1)).to(device)
    weight = torch.rand(m, generator=g).to(device)
    esz = pred.element_size()
    side = m * 8
    nbytes = {"fwd": m * n1 * esz + side, "bwd": 2 * m * n1 * esz + side, "fwd+bwd": 3 * m * n1 * esz + 2 * side}
    return f"DFL {m}x{n1}", (pred, target, weight), dict(avg_factor=4.0), nbytes


def run(device, size, dtype, providers):
    s = SIZES[size]
    copy = copy_gbps(device)
    rows = []
    for case, ref_fn, ours in [(qfl_case, reference.quality_focal_loss, gflops.quality_focal_loss),
                               (dfl_case, reference.distribution_focal_loss, gflops.distribution_focal_loss)]:
        name, args, kw, nbytes = case(s, device, dtype)
        fns = {"reference": ref_fn, "compile": torch.compile(ref_fn), "gflops": ours,
               "triton": triton_provider(ours, device)}
        rows += bench_providers(name, fns, lambda fn: grad_modes(fn, args, kw, lambda out: out), nbytes,
                                device, copy, providers)
    return write_results(f"losses_{size}_{str(dtype).split('.')[-1]}{subset_tag(providers)}", device, rows,
                         meta_for(device, size, dtype, copy))


def main(argv=None):
    cli(run, __doc__, argv)


if __name__ == "__main__":
    main()
