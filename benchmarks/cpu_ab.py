"""The CPU kernels of two checkouts, timed on one machine: `python -m benchmarks.cpu_ab OLD NEW [--rounds 3]`.

The committed CPU tables were measured on whatever machine a session had (the
CPU differs from one to the next), so "no CPU table got slower" is checked by
timing the older checkout's build against the newer one here, in alternating
processes (each checkout's own JIT build, its own GFLOPS_JIT_DIR, never an
ahead-of-time `_C` library an earlier `pip install -e .` left: GFLOPS_FORCE_JIT),
best median over the rounds. Only the public functions that every checkout since
2026-11-22 has are called. OLD and NEW are checkout roots (a `git worktree`).
`--child` is the timed side, run by the driver under each checkout.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def _cases():
    import torch
    import gflops

    g = torch.Generator().manual_seed(0)
    out = {}

    def qfl(n, c=80):
        pred = torch.randn(n, c, generator=g)
        label = torch.full((n,), c, dtype=torch.long)
        pos = torch.randperm(n, generator=g)[: n // 22]
        label[pos] = torch.randint(0, c, (pos.numel(),), generator=g)
        score = torch.zeros(n)
        score[pos] = torch.rand(pos.numel(), generator=g)
        avg = torch.tensor(float(pos.numel()))
        return lambda p: gflops.quality_focal_loss(p, label, score, avg_factor=avg), pred

    def dfl(n, n1):
        t = torch.rand(n, generator=g) * (n1 - 1.01)
        w = torch.rand(n, generator=g)
        return lambda p: gflops.distribution_focal_loss(p, t, w, reduction="mean"), torch.randn(n, n1, generator=g)

    A = 22400
    pts, st = torch.rand(A, 2, generator=g) * 800, torch.full((A,), 8.0)

    def integral(b, n1):
        return lambda p: gflops.integral(p, n1 - 1).sum(), torch.randn(b * A, 4 * n1, generator=g)

    def decode(b, n1):
        return (lambda p: gflops.decode_distribution(p, pts, st, n1 - 1, max_shape=(800, 1333)).sum(),
                torch.randn(b, A, 4 * n1, generator=g))

    def giou(n):
        a = torch.rand(n, 4, generator=g) * 100
        a[:, 2:] += a[:, :2] + 1
        b = a + torch.rand(n, 4, generator=g) * 10
        return lambda p: gflops.giou_loss(p, b, reduction="mean"), a

    for name, (fn, x) in {"QFL 358400x80": qfl(358400), "QFL 44800x80": qfl(44800),
                          "DFL 52000x17": dfl(52000, 17), "DFL 8000x16": dfl(8000, 16),
                          "integral 16x22400x17": integral(16, 17), "integral 2x22400x16": integral(2, 16),
                          "decode 16x22400x17": decode(16, 17), "decode 2x22400x17": decode(2, 17),
                          "giou_loss 16000": giou(16000)}.items():
        out[name] = (fn, x)
    a = torch.rand(2, 22400, 4, generator=g) * 600
    a[..., 2:] += a[..., :2]
    bx = torch.rand(2, 100, 4, generator=g) * 600
    bx[..., 2:] += bx[..., :2]
    out["box_iou 2x22400x100"] = (lambda p: gflops.box_iou(p, bx), a)
    return out


def _median_ms(fn, budget_s=1.0, min_iters=10):
    fn()
    ts, t_end = [], time.perf_counter() + budget_s
    while len(ts) < min_iters or time.perf_counter() < t_end:
        s = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - s)
    return statistics.median(ts) * 1e3


def child(only):
    import torch
    import gflops

    res = {"_loaded": getattr(getattr(gflops, "_C", None), "__file__", None) or gflops.__file__}
    for name, (fn, x) in _cases().items():
        if only not in name:
            continue
        with torch.no_grad():
            res[f"{name} fwd"] = _median_ms(lambda: fn(x))
        if name.startswith("box_iou"):
            continue
        p = x.clone().requires_grad_(True)

        def fwd_bwd():
            p.grad = None
            fn(p).backward()
        res[f"{name} fwd+bwd"] = _median_ms(fwd_bwd)
    print(json.dumps(res))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", nargs="?")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="", help="only the calls whose name (without fwd, fwd+bwd) contains this")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args(argv)
    if args.child:
        return child(args.only)
    if not (args.old and args.new):
        ap.error("OLD and NEW checkouts are required")
    best, loaded = {}, {}
    for _ in range(args.rounds):
        for side, root in (("old", args.old), ("new", args.new)):
            root = os.path.abspath(root)
            env = dict(os.environ, PYTHONPATH=root, GFLOPS_JIT_DIR=os.path.join(root, "build", "jit"),
                       GFLOPS_FORCE_JIT="1")
            cmd = [sys.executable, os.path.abspath(__file__), "--child", "--only", args.only]
            r = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True)
            if r.returncode:
                sys.exit(f"cpu_ab: the {side} side ({root}) failed:\n{r.stderr[-3000:]}")
            res = json.loads(r.stdout.strip().splitlines()[-1])
            loaded[side] = res.pop("_loaded")
            for k, v in res.items():
                best.setdefault(k, {}).setdefault(side, []).append(v)
    print(f"gflops loaded from: old {loaded['old']}, new {loaded['new']}\n")
    print(f"| call | {args.old} (ms) | {args.new} (ms) | new / old | rounds, old | rounds, new |")
    print("|---|---|---|---|---|---|")
    for k, v in best.items():
        o, n = min(v["old"]), min(v["new"])
        rounds = [" ".join(f"{x:.3g}" for x in v[s]) for s in ("old", "new")]
        print(f"| {k} | {o:.4g} | {n:.4g} | {n / o:.2f} | {rounds[0]} | {rounds[1]} |")


if __name__ == "__main__":
    main()
