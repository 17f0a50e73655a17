"""The ops a call dispatches from Python or autograd: on a GPU each is host
time (Python, dispatcher, autograd) and usually a launch, so their count is
what a host-bound call costs (benchmarks/results/autoassign_model.md calibrates
the cost per op on the H200 run's reference DFL row).

    python -m benchmarks.host_ops

Counts, for one forward+backward on the CPU, the ATen and gflops ops not
nested in another op (torch.profiler): the reference DFL, the reference
AutoAssign loss around gflops' fused terms, and gflops.autoassign_loss.
"""
import torch
from torch.profiler import ProfilerActivity, profile

import gflops


def top_level_ops(fn):
    """{op name: count} of what one fn() dispatches from Python or autograd (after a warm-up call)."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()

    def is_op(e):
        return e.name.startswith(("aten::", "gflops"))

    counts = {}
    for e in prof.events():
        if not is_op(e):
            continue
        p = e.cpu_parent
        while p is not None and not is_op(p):
            p = p.cpu_parent
        if p is None:
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def _cases():
    from benchmarks.bench_autoassign import inputs
    from reference import losses
    from reference.autoassign_loss import autoassign_loss

    m = 5200
    pred, target, weight = torch.randn(m, 17, requires_grad=True), torch.rand(m) * 15.9, torch.rand(m)
    yield "reference DFL", lambda: losses.distribution_focal_loss(pred, target, weight, avg_factor=4.0 * m).backward()
    args, shapes = inputs(2, 10, "cpu")
    leaves = [a.requires_grad_() if i in (0, 1, 2, 8, 9) else a for i, a in enumerate(args)]

    def step(loss):  # a training step's: the gradients were set to None before it
        def fn():
            sum(loss().values()).backward()
            for t in leaves:
                t.grad = None
        return fn

    yield "reference.autoassign_loss around gflops' terms", step(lambda: autoassign_loss(
        *leaves, autoassign_loss_terms=gflops.autoassign_loss_terms, level_shapes=shapes))
    yield "gflops.autoassign_loss", step(lambda: gflops.autoassign_loss(*leaves, level_shapes=shapes))


def main():
    for name, fn in _cases():
        counts = top_level_ops(fn)
        ops = ", ".join(f"{k} x{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"{name}: {sum(counts.values())} ops ({ops})")


if __name__ == "__main__":
    main()
