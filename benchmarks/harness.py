"""Timing, peak memory, bandwidth and result files shared by the benchmarks."""
import contextlib
import csv
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
# --quick (a dry run: every timing loop a few calls, the smallest case) writes
# here, never over the committed results; the folder's .gitignore keeps it out of git.
QUICK_RESULTS = RESULTS / "quick"
QUICK = False


def reps(warmup, min_iters, max_iters, budget_s):
    """A timing loop's (warmup, min_iters, max_iters, budget_s): as given, or in
    quick mode one warm-up call and three timed ones (a dry run, not a measurement)."""
    if QUICK:
        return min(warmup, 1), min(min_iters, 3), min(max_iters, 3), 0.0
    return warmup, min_iters, max_iters, budget_s


def results_dir():
    """$GFLOPS_RESULTS_DIR where set (tools/gpu_session.sh collects there), else
    benchmarks/results/, or benchmarks/results/quick/ in quick mode."""
    env = os.environ.get("GFLOPS_RESULTS_DIR")
    return Path(env) if env else QUICK_RESULTS if QUICK else RESULTS


# A provider that fails (raises an Exception: a kernel, a compile, a launch, a
# peer's check) becomes a row whose note starts with FAILED, never the end of
# the run: `attempt` is the one place the benchmarks catch it. Rows that were
# not run on purpose (budget, unavailable provider) are not failures.
FAILED = "failed: "


def failure_note(e):
    """FAILED, the exception's type and the first line of its message (cut to 160 characters)."""
    lines = str(e).strip().splitlines()
    return f"{FAILED}{type(e).__name__}" + (f": {lines[0].strip()[:160]}" if lines else "")


class Failed(str):
    """A provider entry (in place of its function) that failed before it could
    run, e.g. while loading its kernels or when checked against the reference:
    bench_providers gives it rows with this note. A plain string is a reason
    to skip the provider (not available here) and gives no row."""


# A wall budget for the whole process (tools/gpu_session.sh sets it from a
# stage's cap): past it attempt() starts nothing more, so every provider and
# case left becomes a row saying so and the files are still written, where a
# kill at the cap would leave none.
_BUDGET_S = os.environ.get("GFLOPS_BENCH_SECONDS")
_DEADLINE = time.monotonic() + float(_BUDGET_S) if _BUDGET_S else None
OUT_OF_TIME = f"not run: past GFLOPS_BENCH_SECONDS={_BUDGET_S}"


def attempt(fn, what):
    """(fn(), None), or (None, note) where fn raised an Exception (the note is
    printed with `what`) or the process's wall budget is spent (the note says
    so; fn is not called); KeyboardInterrupt and SystemExit pass through."""
    if _DEADLINE is not None and time.monotonic() > _DEADLINE:
        return None, OUT_OF_TIME
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 - any failure of a provider is a result, not the end of the run
        note = failure_note(e)
    print(f"{what}: {note}", file=sys.stderr)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:  # an out-of-memory provider leaves its cache to the next
            torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - after a sticky CUDA error this raises too; the calls will say so
            pass
    return None, note


def is_failure(row):
    return str(row.get("note") or "").startswith(FAILED)


def exit_status(rows, time_keys=("median_ms",)):
    """The process's exit status for a benchmark's rows: 1 when something failed
    and nothing was timed (every provider of every case failed), else 0, also
    when some providers failed (their rows say so) or every one was skipped."""
    timed = any(isinstance(r.get(k), (int, float)) and r.get(k) == r.get(k) for r in rows for k in time_keys)
    failed = [r for r in rows if is_failure(r)]
    if failed:
        print(f"{len(failed)} of {len(rows)} rows failed (see their notes)", file=sys.stderr)
    return 1 if failed and not timed else 0


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


def interleaved_median_ms(entries, device, warmup=3, batch=5, min_iters=10, max_iters=200, budget_s=2.0,
                          failed=None, label=""):
    """Median wall time in ms of each of several (fn, setup) entries (a dict),
    timed in rounds of `batch` calls of each in turn, so that a machine that
    speeds up or slows down during the run (a shared, throttled CPU) moves every
    entry's median alike, and their ratios hold. Otherwise as median_ms.
    With a dict `failed`, an entry that raises (in its warm-up, where
    torch.compile compiles, or later) is dropped, with its note there, and
    the others go on; without, the exception propagates."""
    warmup, min_iters, max_iters, budget_s = reps(warmup, min_iters, max_iters, budget_s)
    entries = dict(entries)

    def call(k, work):
        if failed is None:
            return work()
        _, note = attempt(work, f"{label}{k}")
        if note is not None:
            failed[k] = note
            del entries[k]

    for k, (fn, setup) in list(entries.items()):
        def warm(fn=fn, setup=setup):
            for _ in range(warmup):
                setup()
                fn()
            sync(device)
        call(k, warm)
    times = {k: [] for k in entries}
    start = time.perf_counter()

    def more():
        n = min((len(times[k]) for k in entries), default=max_iters)
        return n < max_iters and (n < min_iters or time.perf_counter() - start < budget_s * len(entries))
    while more():
        for k, (fn, setup) in list(entries.items()):
            def timed(fn=fn, setup=setup, k=k):
                for _ in range(batch):
                    setup()
                    times[k].append(_time_call_ms(fn, device))
            call(k, timed)
    return {k: statistics.median(times[k]) for k in entries}


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


def result_path(name, device, suffix):
    """benchmarks/results/<name>_<device><suffix> (results/quick/ in quick mode)."""
    return results_dir() / f"{name}_{device_tag(device)}{suffix}"


def write_results(name, device, rows, meta, plot=False):
    """benchmarks/results/<name>_<device>.{md,csv,json} (and .png of the providers'
    times with `plot`; results/quick/ in quick mode); returns the markdown table.
    A note column, where any row has one, comes last; failed rows are counted
    in the meta."""
    results_dir().mkdir(parents=True, exist_ok=True)
    stem = result_path(name, device, "")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    cols = [c for c in cols if c != "note"] + ["note"] * ("note" in cols)
    rows = [{c: r.get(c) for c in cols} for r in rows]
    failed = sum(map(is_failure, rows))
    meta = {**meta, **({"quick": "a dry run (--quick): a few calls each, not a measurement"} if QUICK else {}),
            **({"failed_rows": failed} if failed else {})}
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    head = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    table = "\n".join(lines)
    stem.with_suffix(".md").write_text(f"# {name} on {device_tag(device)}\n\n{head}\n\n{table}\n")
    if plot:  # last: the tables are written whatever the plot does
        attempt(lambda: plot_providers(rows, stem.with_suffix(".png"), f"{name} on {device_tag(device)}"), "plot")
    return table


def plot_providers(rows, path, title):
    """Median time of every provider, one group of bars per (op, mode), log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["median_ms"] is not None]  # failed rows have no time
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
    _, note = attempt(gtriton.load_twin, "triton")
    if note is not None:
        return Failed(note)

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
    peers) in every mode (the keys of nbytes). A provider whose entry is missing
    or a string (the reason) is skipped with that reason printed; one whose
    entry is Failed, or that raises (building its modes, in its warm-up or
    compile, while timed), gets rows with median_ms None and the note, and
    the others are timed as usual. `limits` maps a mode to the
    (copy, math) times of the machine's limits for it (copy_ms, math_ms):
    pct_copy and pct_math say how close a provider comes to each."""
    runnable, failed = {}, {}  # failed: provider -> {mode: note}
    order = list(dict.fromkeys((*providers, *(p for p in PEERS if p in fns))))
    for prov in order:
        fn = fns.get(prov, "no Triton kernel for this op" if prov == "triton" else "not provided")
        if isinstance(fn, Failed):
            failed[prov] = dict.fromkeys(nbytes, str(fn))
            continue
        if isinstance(fn, str):
            print(f"{name:24s} {prov:10s} skipped: {fn}", file=sys.stderr)
            continue
        modes, note = attempt(lambda: make_modes(fn), f"{name} {prov}")
        if note is None:
            runnable[prov] = modes
        else:
            failed[prov] = dict.fromkeys(nbytes, note)
    # Providers are timed interleaved, mode by mode: their ratios are the result.
    base = {}
    for mode in dict.fromkeys(m for modes in runnable.values() for m in modes):
        errors = {}
        base[mode] = interleaved_median_ms({p: modes[mode] for p, modes in runnable.items() if mode in modes}, device,
                                           failed=errors, label=f"{name} {mode} ")
        for prov, note in errors.items():
            failed.setdefault(prov, {})[mode] = note
    rows = []
    for prov in (p for p in order if p in runnable or p in failed):
        for mode in dict.fromkeys((*runnable.get(prov, {}), *failed.get(prov, {}))):
            if mode in failed.get(prov, {}):
                rows.append(dict(op=name, mode=mode, provider=prov, median_ms=None, note=failed[prov][mode]))
                print(f"{name:24s} {mode:8s} {prov:10s} {failed[prov][mode]}", file=sys.stderr)
                continue
            f, setup = runnable[prov][mode]
            ms = base[mode][prov]
            mem, mem_note = attempt(lambda: peak_mb(f, device, setup=setup), f"{name} {mode} {prov} peak memory")
            gbps = nbytes[mode] / (ms * 1e-3) / 1e9
            lim = (limits or {}).get(mode)
            rows.append(dict(op=name, mode=mode, provider=prov, median_ms=ms,
                             vs_eager=base[mode].get("reference", float("nan")) / ms,
                             vs_compile=base[mode].get("compile", float("nan")) / ms,
                             vs_triton=base[mode].get("triton", float("nan")) / ms,
                             peak_mib=mem, gbps=gbps if device.type == "cuda" else None,
                             pct_copy_bw=100 * gbps / copy if copy else None,
                             pct_copy=100 * lim[0] / ms if lim else None,
                             pct_math=100 * lim[1] / ms if lim and lim[1] else None,
                             **({"note": f"peak memory {mem_note}"} if mem_note else {})))
            print(f"{name:24s} {mode:8s} {prov:10s} {ms:9.3f} ms  peak " +
                  (f"{mem:8.1f} MiB" if mem is not None else "failed"), file=sys.stderr)
    for r in rows:  # the peers' speedups: gflops against each, in the gflops rows
        for peer in PEERS:
            if peer in base.get(r["mode"], {}) and r["provider"] == "gflops" and r["median_ms"] is not None:
                r[f"vs_{peer}"] = base[r["mode"]][peer] / r["median_ms"]
    return rows


def checked_peer(make, check):
    """A peer's entry for bench_providers: make() (the peer, or a string: why it
    is not available, and it is skipped) where check(peer) passes (it computes
    what the reference computes); Failed, with the note, where either raises."""
    peer, note = attempt(make, "peer")
    if note is None and not isinstance(peer, str):
        _, note = attempt(lambda: check(peer), "peer check")
    return peer if note is None else Failed(note)


def case_rows(label, make_rows, **key):
    """make_rows() (one case's rows), or, where the case itself failed before
    or between its providers (building its inputs, its limits), one row of
    `key` and `label` with the note, so that the next case still runs."""
    rows, note = attempt(make_rows, label)
    if note is None:
        return rows
    return [dict(op=label, **key, provider="all", median_ms=None, note=note)]


def meta_for(device, size, dtype, copy):
    return dict(device=str(device), size=size, dtype=str(dtype), torch=torch.__version__,
                threads=torch.get_num_threads(), copy_gbps=copy,
                note="vs_eager / vs_compile / vs_triton are speedups (x); bytes are what a fused kernel must move")


PROVIDERS = ("reference", "compile", "triton", "gflops")


def subset_tag(providers):
    """A file-name suffix for runs of fewer providers, so they never overwrite a full comparison."""
    return "" if set(providers) == set(PROVIDERS) else "_" + "-".join(providers)


def add_quick(parser, what="the smallest case"):
    parser.add_argument("--quick", action="store_true",
                        help=f"a dry run: {what}, a few calls per timing, results in benchmarks/results/quick/")


@contextlib.contextmanager
def quick_mode(on=True):
    """Quick mode (see reps and results_dir) for the block where `on`; a block
    inside one in quick mode stays in it."""
    global QUICK
    before, QUICK = QUICK, QUICK or bool(on)
    try:
        yield
    finally:
        QUICK = before


def cli(run, doc, argv=None, sizes=("coco", "small", "tiny")):
    """The benchmarks' shared command line: run(device, size, dtype, providers)
    returns (markdown table, rows); prints the table and returns the exit
    status (exit_status)."""
    import argparse

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--size", choices=list(sizes), default=None,
                   help="coco on GPU, small (batch 2) on CPU by default, tiny with --quick")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    add_quick(p, "the tiny size")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    size = a.size or ("tiny" if a.quick else "coco" if device.type == "cuda" else "small")
    with quick_mode(a.quick):
        table, rows = run(device, size, getattr(torch, a.dtype), a.providers.split(","))
    print(table)
    return exit_status(rows)


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
