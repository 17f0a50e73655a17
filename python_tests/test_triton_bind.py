"""The Triton kernels through Triton's compiled launch path, without a GPU.

The other Triton tests run in Triton's interpreter (TRITON_INTERPRET=1, see
conftest.py), which binds a call's arguments with inspect.signature. On a GPU,
Triton instead execs a generated binder whose own locals can be shadowed by a
kernel parameter: one named `params` made every QFL launch fail on an H200
("failed to specialize argument of type: dict") while every CPU test passed.

So here each kernel goes through JITFunction.warmup, which is the launch path
less the launch: the generated binder, the specialization, and a compile down
to a cubin for sm_90. No GPU or driver is needed (the wheel bundles ptxas; a
stand-in driver only names the target). That runs in a subprocess (this file
run as a script), because the interpreter is chosen when the kernels are
decorated and conftest.py has turned it on in this process; the subprocess
can also import another Triton release, installed with `pip install --target`.
"""
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "gflops" / "triton" / "kernels.py"
OFFLINE = ROOT / "gflops" / "triton" / "offline.py"

# The Triton releases that the supported PyTorch releases pin (Requires-Dist of
# their Linux wheels): torch 2.11 -> 3.6.0, 2.12.0 -> 3.7.0, 2.12.1 and 2.13.0 -> 3.7.1.
# The installed Triton (the Makefile's, for the interpreter) is always checked too.
# GFLOPS_TRITON_VERSIONS="" (or a comma-separated list) overrides the list.
PINNED = ("3.6.0", "3.7.0", "3.7.1")
VERSIONS = [v for v in os.environ.get("GFLOPS_TRITON_VERSIONS", ",".join(PINNED)).split(",") if v]
# Outside the work tree, so that CI's fresh clones reuse the installs (~0.7 GB each).
VERSIONS_DIR = Path(os.environ.get("GFLOPS_TRITON_VERSIONS_DIR")
                    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gflops" / "triton")

# Names that Triton's launch path owns in 3.6-3.9, written out so that a change
# in how triton_owned_names() reads them off the installed Triton cannot drop them.
TRITON_OWNED = frozenset({
    # the binder that create_function_from_signature execs: its locals and namespace
    "params", "specialization", "options", "specialize_impl", "backend", "JITCallable", "dynamic_func",
    # JITFunction.run(*args, grid, warmup, **kwargs) and the keywords it adds before binding
    "grid", "warmup", "debug", "instrumentation_mode", "fpsan_homomorphic_casts",
    # launch options: a parameter of that name would take the launcher's keyword
    "num_warps", "num_stages", "num_ctas", "maxnreg",
})


def triton_owned_names():
    """TRITON_OWNED plus what the installed Triton uses: the names inside a probe
    kernel's generated binder, run()'s keyword-only parameters and the keywords
    it sets, and the backend's launch options."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime import jit

    def probe(a, b: tl.constexpr):
        pass

    backend = make_backend(GPUTarget("cuda", 90, 32))
    probe = jit.JITFunction(probe)
    binder = jit.create_function_from_signature(probe.signature, probe.params, backend)
    names = set(binder.__code__.co_varnames) | set(binder.__code__.co_names) | set(binder.__globals__)
    run = jit.JITFunction.run
    names |= {p.name for p in inspect.signature(run).parameters.values() if p.kind is p.KEYWORD_ONLY}
    names |= set(re.findall(r"kwargs\[\"(\w+)\"\] =", inspect.getsource(run)))
    with warnings.catch_warnings():  # 3.9 warns about a default it will change; not ours to hear here
        warnings.simplefilter("ignore")
        names |= set(vars(backend.parse_options({})))
    return (names - {"a", "b", "__builtins__"}) | TRITON_OWNED


def name_clashes(module):
    """{jit function: its parameters that Triton's launch path owns} (helpers
    included: a helper may become a kernel)."""
    from triton.runtime.jit import KernelInterface
    owned = triton_owned_names()
    found = {}
    for name, f in vars(module).items():
        if isinstance(f, KernelInterface):
            bad = sorted(set(inspect.signature(f.fn).parameters) & owned)
            if bad:
                found[name] = bad
    return found


def test_kernel_parameters_avoid_triton_names():
    pytest.importorskip("triton")
    from gflops.triton import kernels
    assert name_clashes(kernels) == {}, "rename these kernel parameters: Triton's launch path uses the names"


def _install(version):
    target = VERSIONS_DIR / version
    if (target / "triton" / "__init__.py").is_file():
        return target
    partial = target.with_name(f"{version}.partial-{os.getpid()}")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--timeout", "60",
                        "--target", str(partial), f"triton=={version}"], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        why = f"cannot install triton=={version}: {r.stderr.strip()[-500:]}"
        # CI has the registry: there a missing release must not switch the check off unseen.
        if os.environ.get("GFLOPS_REQUIRE_TRITON_VERSIONS") == "1":
            pytest.fail(why)
        pytest.skip(why)
    try:
        partial.rename(target)
    except OSError:  # another process installed it first
        shutil.rmtree(partial, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


@pytest.mark.parametrize("version", ["installed", *VERSIONS])
def test_kernels_bind_and_compile(version):
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Triton's own cache is kept: its key covers the source, the options and the Triton
    # release, so a hit is this very compile having passed before (the binder always runs).
    if version != "installed":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(_install(version)), env.get("PYTHONPATH"))))
    r = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=900)
    out = r.stdout.strip().splitlines()
    assert r.returncode == 0 and out, f"{r.stdout}\n{r.stderr[-4000:]}"
    report = json.loads(out[-1])
    assert version in ("installed", report["triton"]), report
    assert report["failures"] == [] and report["compiled"] > 0, report


# ---- the subprocess -------------------------------------------------------------


def _cases(torch, tl):
    """(kernel, args, constexprs) as gflops/triton/launch.py launches them: each
    kernel in float32 and float64 accumulation, with and without the optional
    paths, 32- and 64-bit offsets (WIDE). CPU tensors do: the binder reads only
    data_ptr() and dtype."""
    def t(dtype, n=1024):
        return torch.empty(n, dtype=dtype)

    i64 = t(torch.int64)
    for pd, acc, tacc, on in ((torch.float16, tl.float32, torch.float32, True),
                              (torch.float64, tl.float64, torch.float64, False)):
        p, a = t(pd), t(tacc)
        w = a if on else None
        yield "qfl_forward_kernel", (p, i64, a, w, a, 1000, 80, a), dict(
            BETA2=not on, HAS_W=on, SUM=on, ACC=acc, BLOCK_N=32, BLOCK_C=16, WIDE=on)
        yield "qfl_backward_kernel", (a, p, i64, a, w, p, 1000, 80, a), dict(
            BETA2=not on, HAS_W=on, GRAD_PER_ROW=not on, ACC=acc, BLOCK_N=32, BLOCK_C=16, WIDE=not on)
        yield "dfl_forward_kernel", (p, a, w, a, 1000, 17), dict(
            HAS_W=on, SUM=on, ACC=acc, BLOCK_M=128, HEAD=16, TAIL=1, WIDE=on)
        yield "dfl_backward_kernel", (a, p, a, w, p, 1000, 17), dict(
            HAS_W=on, GRAD_PER_ROW=not on, ACC=acc, BLOCK_M=128, HEAD=16, TAIL=1, WIDE=not on)
        for name, head in (("integral_kernel", (p, p)), ("integral_backward_kernel", (p, p, p))):
            # 17 bins (a head and a tail tile) and 16 (a head alone)
            yield name, (*head, 1000, 17 if on else 16, a, a, 100, a), dict(
                DECODE=on, CLAMP=on, ACC=acc, BLOCK_R=128, HEAD=16, TAIL=1 if on else 0, WIDE=on)


def _by_path(name, path):
    # By path: importing the gflops package would load (or JIT-build) its C++ extension.
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_kernels():
    return _by_path("gflops_triton_kernels", KERNELS)


def main():
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "run without TRITON_INTERPRET"
    import torch
    import triton
    import triton.language as tl
    from triton.runtime.driver import driver

    driver.set_active(_by_path("gflops_triton_offline", OFFLINE).TargetOnlyDriver())
    kernels = _load_kernels()
    failures = [f"{k}: parameters {v} are names Triton's launch path uses" for k, v in name_clashes(kernels).items()]
    compiled = 0
    for name, args, constexprs in _cases(torch, tl):
        try:
            kernel = getattr(kernels, name).warmup(*args, grid=(1,), num_warps=4, **constexprs)
            assert "cubin" in kernel.asm, sorted(kernel.asm)
            compiled += 1
        except Exception as e:  # noqa: BLE001 (every kernel is tried, all failures reported)
            failures.append(f"{name} {constexprs}: {type(e).__name__}: {e}")
    print(json.dumps({"triton": triton.__version__, "compiled": compiled, "failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())


def test_triton_model_walks_every_launch():
    """tools/triton_model.py (the Triton half of benchmarks/results/gpu_model.md)
    compiles each benchmark launch with launch.py's shapes and walks its SASS: a
    kernel whose parameters it no longer matches fails here, not in a GPU session."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "triton_model.py")], cwd=ROOT / "tools", env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    rows = {}
    for line in r.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 18 and cells[0] != "kernel" and not cells[0].startswith("---"):
            rows[cells[0]] = cells
    kernels = {label.split(" ")[0] for label in rows}
    assert kernels == {"qfl_forward_kernel", "qfl_backward_kernel", "dfl_forward_kernel", "dfl_backward_kernel",
                       "integral_kernel", "integral_backward_kernel"}, sorted(rows)
    for label, cells in rows.items():
        regs, blocks, estimate = int(cells[1]), int(cells[3]), float(cells[16])
        assert 0 < regs <= 255 and blocks >= 1 and estimate > 0, (label, cells)


def test_bench_host_times_the_triton_path_without_a_gpu(tmp_path):
    """benchmarks/bench_host.py's triton_us: the public calls through Triton's
    whole launch path with a launcher that launches nothing (offline.py), in a
    process without the interpreter."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["GFLOPS_RESULTS_DIR"] = str(tmp_path)
    r = subprocess.run([sys.executable, "-m", "benchmarks.bench_host", "--quick"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    data = json.loads(next(tmp_path.rglob("host_*.json")).read_text())
    assert data["meta"]["triton"] == "timed" and data["meta"]["triton_launch_us"] > 0, data["meta"]
    timed = {row["op"] for row in data["rows"] if row["triton_us"]}
    assert timed == {"quality_focal_loss", "distribution_focal_loss", "integral", "decode_distribution"}, timed
