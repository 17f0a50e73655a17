"""Timing, peak memory, bandwidth and result files shared by the benchmarks."""
import csv
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _nothing():
    pass


def median_ms(fn, device, warmup=3, min_iters=10, max_iters=200, budget_s=2.0, setup=_nothing):
    """Median wall time of fn() in ms (setup() runs untimed before each call);
    CUDA events per call on GPU."""
    return interleaved_median_ms({0: (fn, setup)}, device, warmup, 1, min_iters, max_iters, budget_s)[0]


def _time_call_ms(fn, device):
    if device.type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def interleaved_median_ms(entries, device, warmup=3, batch=5, min_iters=10, max_iters=200, budget_s=2.0):
    """Median wall time in ms of each of several (fn, setup) entries (a dict),
    timed in rounds of `batch` calls of each in turn, so that a machine that
    speeds up or slows down during the run (a shared, throttled CPU) moves every
    entry's median alike, and their ratios hold. Otherwise as median_ms."""
    for fn, setup in entries.values():
        for _ in range(warmup):
            setup()
            fn()
    sync(device)
    times = {k: [] for k in entries}
    start = time.perf_counter()

    def more():
        n = min(len(t) for t in times.values())
        return n < max_iters and (n < min_iters or time.perf_counter() - start < budget_s * len(entries))
    while more():
        for k, (fn, setup) in entries.items():
            for _ in range(batch):
                setup()
                times[k].append(_time_call_ms(fn, device))
    return {k: statistics.median(t) for k, t in times.items()}


def peak_mb(fn, device, setup=_nothing):
    """Peak memory allocated during one fn() call beyond what was held before, in MiB."""
    setup()
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    # CPU: the profiler's allocation records carry the allocator's running
    # total after each allocation, so the peak is exact even for memory an
    # op (or a compiled graph) allocates and frees inside one call.
    from torch.profiler import ProfilerActivity, profile
    from torch._C._profiler import _EventType

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    allocs, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            allocs.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.total_allocated))
    if not allocs:
        return 0.0
    allocs.sort()
    before = allocs[0][2] - allocs[0][1]
    return max(0, max(a[2] for a in allocs) - before) / 2**20


def copy_gbps(device, nbytes=1 << 30):
    """Achieved bandwidth of a device-to-device copy (bytes read + written per second)."""
    if device.type != "cuda":
        return None
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device, warmup=5, min_iters=20, budget_s=1.0)
    del src, dst
    return 2 * nbytes / (ms * 1e-3) / 1e9


def device_tag(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{platform.processor() or platform.machine()}-{torch.get_num_threads()}t"
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def write_results(name, device, rows, meta, plot=False):
    """benchmarks/results/<name>_<device>.{md,csv,json} (and .png of the providers'
    times with `plot`); returns the markdown table."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{name}_{device_tag(device)}"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{c: r.get(c) for c in cols} for r in rows]
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    if plot:
        plot_providers(rows, stem.with_suffix(".png"), f"{name} on {device_tag(device)}")
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    head = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(f"# {name} on {device_tag(device)}\n\n{head}\n\n{table}\n")
    return table


def plot_providers(rows, path, title):
    """Median time of every provider, one group of bars per (op, mode), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["op"], r["mode"]) for r in rows))
    provs = list(dict.fromkeys(r["provider"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups)), 5))
    width = 0.8 / len(provs)
    for k, prov in enumerate(provs):
        ms = {(r["op"], r["mode"]): r["median_ms"] for r in rows if r["provider"] == prov}
        xs = [i + k * width for i, g in enumerate(groups) if g in ms]
        ax.bar(xs, [ms[g] for g in groups if g in ms], width, label=prov)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{op}\n{mode}" for op, mode in groups], fontsize=7, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("median ms (lower is better)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grad_modes(fn, args, kw, loss_of):
    """(timed closure, untimed setup) for fwd, bwd and fwd+bwd of fn(pred, *rest);
    the setup drops the last gradient, so peak memory counts the new one, and
    for bwd also runs the forward, so that each timed backward is the first
    backward of a fresh graph (what a training step runs; a second backward of
    a retained graph can take another path). loss_of turns fn's output into a
    scalar."""
    pred = args[0].detach().requires_grad_(True)
    rest = args[1:]
    graph = []

    def fwd():
        with torch.no_grad():
            return fn(pred, *rest, **kw)

    def drop_grad():
        pred.grad = None

    def new_graph():
        pred.grad = None
        graph[:] = [loss_of(fn(pred, *rest, **kw))]

    return {"fwd": (fwd, drop_grad),
            "bwd": (lambda: graph.pop().backward(), new_graph),
            "fwd+bwd": (lambda: loss_of(fn(pred, *rest, **kw)).backward(), drop_grad)}


def forward_modes(fn, args, kw):
    return {"fwd": (lambda: fn(*args, **kw), _nothing)}


def triton_provider(fn, device):
    """`fn` (a gflops function) run on the Triton kernels, or the reason it cannot be.
    Benchmarks time real GPU code only: Triton's CPU interpreter is a test tool."""
    from gflops import _ops
    from gflops import triton as gtriton

    ok, why = gtriton.available()
    if not ok:
        return why
    if device.type != "cuda":
        return "the Triton kernels need a GPU (no GPU here)"
    gtriton.load_twin()

    def run(*args, **kw):
        with _ops.use(gtriton.NAMESPACE):
            return fn(*args, **kw)
    return run


def copy_ms(nbytes, device):
    """Median time of a copy that moves `nbytes` (half read, half written) between
    preallocated buffers: the memory limit of an op that moves as many bytes."""
    src = torch.empty(max(nbytes // 8, 1), dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    return median_ms(lambda: dst.copy_(src), device, warmup=3, min_iters=20, budget_s=0.5)


_LOOPS = []


def math_ms(elements, device, with_log1p):
    """Median time of the kernels' own vectorised exp (and log1p) over `elements`
    float32 values, one of each per element, with the same clones and threads
    (benchmarks/limits/loops.cpp): the arithmetic limit of a loss kernel. CPU
    only (on a GPU the loss kernels are bound by memory: see pct_copy_bw)."""
    if device.type != "cpu":
        return None
    if not _LOOPS:
        from torch.utils import cpp_extension

        from gflops import _ext

        here = Path(__file__).parent / "limits"
        # one folder per torch: a module built against another torch would be rebuilt on every load
        build = Path(_ext._cache_dir(False)).parent / f"bench-limits-torch{torch.__version__}"
        build.mkdir(parents=True, exist_ok=True)
        _LOOPS.append(cpp_extension.load(name="gflops_bench_limits", sources=[str(here / "loops.cpp")],
                                         extra_cflags=_ext.CXX_FLAGS, extra_include_paths=[str(_ext.CSRC)],
                                         build_directory=str(build)))
    x = torch.randn(elements) * 4
    y = torch.empty_like(x)
    return median_ms(lambda: _LOOPS[0].run(x, y, with_log1p), device, warmup=3, min_iters=20, budget_s=0.5)


PEERS = ("ultralytics",)


def bench_providers(name, fns, make_modes, nbytes, device, copy, providers, limits=None):
    """Rows of one op: every provider (reference, compile, gflops, triton and the
    peers) in every mode. A provider whose entry is missing or a string (the
    reason) is skipped with that reason printed. `limits` maps a mode to the
    (copy, math) times of the machine's limits for it (copy_ms, math_ms):
    pct_copy and pct_math say how close a provider comes to each."""
    runnable = {}
    for prov in dict.fromkeys((*providers, *(p for p in PEERS if p in fns))):
        fn = fns.get(prov, "no Triton kernel for this op" if prov == "triton" else "not provided")
        if isinstance(fn, str):
            print(f"{name:24s} {prov:10s} skipped: {fn}", file=sys.stderr)
            continue
        runnable[prov] = make_modes(fn)
    # Providers are timed interleaved, mode by mode: their ratios are the result.
    base = {}
    for mode in dict.fromkeys(m for modes in runnable.values() for m in modes):
        base[mode] = interleaved_median_ms({p: modes[mode] for p, modes in runnable.items() if mode in modes}, device)
    rows = []
    for prov, modes in runnable.items():
        for mode, (f, setup) in modes.items():
            ms = base[mode][prov]
            mem = peak_mb(f, device, setup=setup)
            gbps = nbytes[mode] / (ms * 1e-3) / 1e9
            lim = (limits or {}).get(mode)
            rows.append(dict(op=name, mode=mode, provider=prov, median_ms=ms,
                             vs_eager=base[mode].get("reference", float("nan")) / ms,
                             vs_compile=base[mode].get("compile", float("nan")) / ms,
                             vs_triton=base[mode].get("triton", float("nan")) / ms,
                             peak_mib=mem, gbps=gbps if device.type == "cuda" else None,
                             pct_copy_bw=100 * gbps / copy if copy else None,
                             pct_copy=100 * lim[0] / ms if lim else None,
                             pct_math=100 * lim[1] / ms if lim and lim[1] else None))
            print(f"{name:24s} {mode:8s} {prov:10s} {ms:9.3f} ms  peak {mem:8.1f} MiB", file=sys.stderr)
    for r in rows:  # the peers' speedups: gflops against each, in the gflops rows
        for peer in PEERS:
            if peer in base.get(r["mode"], {}) and r["provider"] == "gflops":
                r[f"vs_{peer}"] = base[r["mode"]][peer] / r["median_ms"]
    return rows


def meta_for(device, size, dtype, copy):
    return dict(device=str(device), size=size, dtype=str(dtype), torch=torch.__version__,
                threads=torch.get_num_threads(), copy_gbps=copy,
                note="vs_eager / vs_compile / vs_triton are speedups (x); bytes are what a fused kernel must move")


PROVIDERS = ("reference", "compile", "triton", "gflops")


def subset_tag(providers):
    """A file-name suffix for runs of fewer providers, so they never overwrite a full comparison."""
    return "" if set(providers) == set(PROVIDERS) else "_" + "-".join(providers)


def cli(run, doc, argv=None):
    """The benchmarks' shared command line: run(device, size, dtype, providers) prints its table."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=["coco", "small"], default=None,
                   help="coco on GPU, small (batch 2) on CPU by default")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    size = a.size or ("coco" if device.type == "cuda" else "small")
    print(run(device, size, getattr(torch, a.dtype), a.providers.split(",")))


def plot_sweep(rows, path, columns, batches, styles=None):
    """Median time (top) and peak memory (bottom) against GTs per image, one
    column per (title, row filter) in `columns`, one line per batch and
    provider, log-log. Rows without a time (not run) are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = styles or {"reference": "o-", "compile": "s--", "gflops": "^-"}
    fig, axes = plt.subplots(2, len(columns), figsize=(6 * len(columns), 8), squeeze=False)
    for col, (title, keep) in enumerate(columns):
        for batch in batches:
            for prov, style in styles.items():
                pts = [(r["gts"], r["median_ms"], r["peak_mib"]) for r in rows
                       if keep(r) and r["batch"] == batch and r["provider"] == prov and r["median_ms"]]
                if not pts:
                    continue
                g, ms, mib = zip(*pts)
                axes[0][col].plot(g, ms, style, label=f"{prov} B={batch}")
                axes[1][col].plot(g, [max(m, 1e-3) for m in mib], style, label=f"{prov} B={batch}")
        axes[0][col].set_title(title, fontsize=10)
        axes[0][col].set_ylabel("median time (ms)")
        axes[1][col].set_ylabel("peak memory (MiB)")
        for ax in axes[:, col]:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("GTs per image (G)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
