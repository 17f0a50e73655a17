"""The benchmark harness's timing: what the README's speedups rest on."""
import time

import torch

from benchmarks.harness import interleaved_median_ms, median_ms


def test_interleaved_medians_time_each_entry_after_its_setup_in_alternating_batches():
    log = []

    def entry(name, sleep_s):
        return (lambda: (log.append(name), time.sleep(sleep_s)), lambda: log.append(f"setup {name}"))

    ms = interleaved_median_ms({"slow": entry("slow", 0.004), "fast": entry("fast", 0.0)}, torch.device("cpu"),
                               warmup=1, batch=2, min_iters=4, max_iters=4, budget_s=0.0)
    assert ms["slow"] >= 4.0 and ms["fast"] < 1.0, ms
    timed = log[4:]  # after one warmup call (and its setup) of each
    assert timed == ["setup slow", "slow"] * 2 + ["setup fast", "fast"] * 2 + ["setup slow", "slow"] * 2 + ["setup fast", "fast"] * 2


def test_median_ms_runs_setup_before_every_timed_call():
    log = []
    ms = median_ms(lambda: (log.append("call"), time.sleep(0.002)), torch.device("cpu"), warmup=1, min_iters=3,
                   max_iters=3, budget_s=0.0, setup=lambda: log.append("setup"))
    assert ms >= 2.0 and log == ["setup", "call"] * 4, (ms, log)


# A failing provider (it raises in its calls, in torch.compile's warm-up, or
# before it runs) is a row with its note, and the rest of the run goes on.
# These tests set harness.QUICK by hand (and point the result files at a
# temporary folder both ways), so that they fail on a harness without the
# handling by the provider's exception, not by a missing name.

import json  # noqa: E402

import pytest  # noqa: E402

import gflops  # noqa: E402
import reference  # noqa: E402
from benchmarks import bench_assign, bench_losses, harness  # noqa: E402

CPU = torch.device("cpu")
TINY_LOSSES = dict(batch=1, anchors=200, classes=8, pos=10, dfl_pos=20)


@pytest.fixture
def quick_tmp(monkeypatch, tmp_path):
    """Quick mode, result files in tmp_path, a fresh dynamo cache before and after."""
    monkeypatch.setattr(harness, "QUICK", True, raising=False)
    monkeypatch.setattr(harness, "RESULTS", tmp_path)
    monkeypatch.setenv("GFLOPS_RESULTS_DIR", str(tmp_path))
    torch._dynamo.reset()
    yield tmp_path
    torch._dynamo.reset()


def _failing_backend(gm, example_inputs):
    raise RuntimeError("backend exploded\nsecond line")


def _compile_that_fails(monkeypatch):
    """torch.compile whose every graph fails to compile: at the first call, in the warm-up."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend=_failing_backend))


def _boom(*args, **kw):
    raise TypeError("triton launcher got an unexpected keyword\nmore detail")


def test_bench_providers_turns_failing_providers_into_rows_with_their_notes(quick_tmp):
    x = torch.randn(64)
    calls = []

    def flaky(t):  # passes its warm-up, fails while timed
        calls.append(1)
        if len(calls) > 2:
            raise ValueError("third call fails")
        return t * 3

    fns = {"reference": lambda t: t * 2, "compile": torch.compile(lambda t: t * 2, backend=_failing_backend),
           "gflops": _boom, "ultralytics": flaky}
    rows = harness.bench_providers("op", fns, lambda fn: harness.forward_modes(fn, (x,), {}), {"fwd": 512}, CPU,
                                   None, ("reference", "compile", "triton", "gflops"))
    by = {r["provider"]: r for r in rows}
    assert list(by) == ["reference", "compile", "gflops", "ultralytics"], rows  # triton: skipped, no kernel
    assert isinstance(by["reference"]["median_ms"], float) and by["reference"]["peak_mib"] is not None
    assert "note" not in by["reference"]
    assert by["gflops"]["median_ms"] is None
    assert by["gflops"]["note"] == "failed: TypeError: triton launcher got an unexpected keyword"
    assert by["compile"]["median_ms"] is None and by["compile"]["note"].startswith("failed: BackendCompilerFailed")
    assert by["ultralytics"]["note"] == "failed: ValueError: third call fails"


def test_a_failed_entry_is_a_row_and_the_exit_status_counts_failures(quick_tmp):
    x = torch.randn(64)
    fns = {"reference": lambda t: t * 2, "triton": harness.Failed("failed: RuntimeError: no twin"), "gflops": _boom}
    rows = harness.bench_providers("op", fns, lambda fn: harness.forward_modes(fn, (x,), {}), {"fwd": 512}, CPU,
                                   None, ("reference", "triton", "gflops"))
    assert [(r["provider"], r.get("note")) for r in rows] == [
        ("reference", None), ("triton", "failed: RuntimeError: no twin"),
        ("gflops", "failed: TypeError: triton launcher got an unexpected keyword")]
    assert harness.exit_status(rows) == 0
    assert harness.exit_status(rows[1:]) == 1  # every provider failed
    assert harness.exit_status([]) == 0  # nothing run, nothing failed


def test_losses_run_writes_every_row_when_gflops_fails_and_compile_fails_in_warmup(quick_tmp, monkeypatch):
    monkeypatch.setitem(bench_losses.SIZES, "tiny", TINY_LOSSES)
    monkeypatch.setattr(gflops, "quality_focal_loss", _boom)
    _compile_that_fails(monkeypatch)
    monkeypatch.setattr(bench_losses, "math_ms", lambda *a: None)  # no C++ build here
    bench_losses.run(CPU, "tiny", torch.float32, ["reference", "compile", "triton", "gflops"])
    stem = quick_tmp / f"losses_tiny_float32_{harness.device_tag(CPU)}"
    rows = json.loads(stem.with_suffix(".json").read_text())["rows"]
    assert [r["op"] for r in rows[::9]] == ["QFL 200x8", "DFL 80x17", "DFL 80x16"]  # 3 providers x 3 modes each
    for r in rows:
        if r["provider"] == "compile":
            assert r["median_ms"] is None and r["note"].startswith("failed: BackendCompilerFailed"), r
        elif r["provider"] == "gflops" and r["op"].startswith("QFL"):
            assert r["median_ms"] is None, r
            assert r["note"] == "failed: TypeError: triton launcher got an unexpected keyword", r
        else:  # the reference everywhere, gflops' DFL: timed
            assert r["median_ms"] > 0 and r["vs_eager"] > 0 and r["pct_copy"] > 0 and not r["note"], r
    md = stem.with_suffix(".md").read_text()
    assert "failed: TypeError: triton launcher got an unexpected keyword" in md and "| note |" in md
    assert "note" in stem.with_suffix(".csv").read_text().splitlines()[0]


def test_losses_exit_status_is_1_only_when_every_provider_failed(quick_tmp, monkeypatch, capsys):
    monkeypatch.setitem(bench_losses.SIZES, "small", TINY_LOSSES)
    monkeypatch.setattr(bench_losses, "math_ms", lambda *a: None)
    for fn in ("quality_focal_loss", "distribution_focal_loss"):
        monkeypatch.setattr(gflops, fn, _boom)
    argv = ["--device", "cpu", "--size", "small", "--providers", "reference,gflops"]
    assert bench_losses.main(argv) == 0
    for fn in ("quality_focal_loss", "distribution_focal_loss"):
        monkeypatch.setattr(reference, fn, _boom)
    assert bench_losses.main(argv) == 1
    assert "failed: TypeError" in capsys.readouterr().out


def test_a_loss_case_whose_inputs_fail_is_one_row_and_a_failing_limit_leaves_its_cells_empty(quick_tmp, monkeypatch):
    monkeypatch.setitem(bench_losses.SIZES, "tiny", TINY_LOSSES)
    monkeypatch.setattr(bench_losses, "math_ms", lambda *a: (_ for _ in ()).throw(RuntimeError("no compiler")))
    monkeypatch.setattr(bench_losses, "qfl_case", lambda *a: (_ for _ in ()).throw(MemoryError("no room")))
    _, rows = bench_losses.run(CPU, "tiny", torch.float32, ["reference", "gflops"])
    assert rows[0] == dict(op="QFL", mode=None, provider="all", median_ms=None, note="failed: MemoryError: no room")
    assert len(rows) == 1 + 2 * 2 * 3 and all(r["median_ms"] > 0 and r["pct_copy"] is None for r in rows[1:])


def test_assign_sweep_survives_compile_failing_in_warmup(quick_tmp, monkeypatch):
    _compile_that_fails(monkeypatch)
    rows = bench_assign.run(CPU, 8.0)
    assert [r["provider"] for r in rows] == ["reference", "compile", "gflops"]  # quick: one case
    assert rows[1]["median_ms"] is None and rows[1]["note"].startswith("failed: BackendCompilerFailed")
    assert rows[0]["median_ms"] > 0 and rows[2]["median_ms"] > 0 and rows[2]["vs_eager"] > 0


def test_past_the_wall_budget_nothing_more_starts_and_the_rows_say_so(quick_tmp, monkeypatch):
    calls = []
    monkeypatch.setattr(harness, "_DEADLINE", time.monotonic() - 1.0)
    assert harness.attempt(lambda: calls.append(1), "x") == (None, harness.OUT_OF_TIME)
    assert calls == []
    monkeypatch.setitem(bench_losses.SIZES, "tiny", TINY_LOSSES)
    monkeypatch.setattr(bench_losses, "math_ms", lambda *a: None)
    _, rows = bench_losses.run(CPU, "tiny", torch.float32, ["reference", "gflops"])
    assert rows and all(r["median_ms"] is None and r["note"] == harness.OUT_OF_TIME for r in rows), rows
    assert harness.exit_status(rows) == 0  # not run is not a failure
    assert list(quick_tmp.glob("losses_tiny_float32_*.json"))


def test_host_cost_rows_time_each_function_and_its_aten_counterpart(quick_tmp):
    from benchmarks import bench_host

    rows = bench_host.run(calls=2, rounds=1)
    assert [(r["op"], r["mode"]) for r in rows[:2]] == [("quality_focal_loss", "fwd"), ("quality_focal_loss", "fwd+bwd")]
    assert len(rows) == 2 * len(bench_host.cases()) + 2
    assert [(r["op"], r["vs"]) for r in rows[-2:]] == [("autoassign_loss", "reference glue")] * 2
    for r in rows:
        assert r["gflops_us"] > 0 and r["aten_us"] > 0 and r["ratio"] == r["gflops_us"] / r["aten_us"], r
        assert r["meets"] == (None if r["target"] is None else r["ratio"] <= r["target"]) and "note" not in r, r
        # Under the interpreter (the tests') the Triton path is not timed: its kernels run as Python.
        assert r["triton_us"] is None and r["triton_ratio"] is None, r
