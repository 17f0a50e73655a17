"""tools/op_driver.py (what compute-sanitizer runs on a GPU) and
benchmarks/profile_ops.py run end to end here: every op, every dtype, in a
process of their own, as they are run by hand."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gflops
from conftest import needs_cuda, needs_emu, needs_triton
from gflops import emulation
from gflops import triton as gtriton

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tools" / "op_driver.py"
OPS = ("quality_focal_loss", "distribution_focal_loss", "box_iou", "giou_loss", "integral", "decode_distribution",
       "gfl_box_branch", "atss_assign", "autoassign_loss_terms", "autoassign_loss", "nms", "batched_nms",
       "multiclass_nms")
DIFFERENTIABLE = ("quality_focal_loss", "distribution_focal_loss", "giou_loss", "integral", "decode_distribution",
                  "gfl_box_branch", "autoassign_loss_terms", "autoassign_loss")
DTYPES = ("float32", "float16", "bfloat16", "float64")


def _run(*args, timeout=120):
    r = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=dict(os.environ), capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r.stdout


@pytest.mark.parametrize("device, backend", [("cpu", "default"), pytest.param("emu", "default", marks=needs_emu),
                                             pytest.param("cuda", "default", marks=needs_cuda),
                                             pytest.param("cpu", "triton", marks=needs_triton)])
def test_op_driver_calls_every_op_in_every_dtype(device, backend):
    if device == "emu":
        emulation.load()  # builds (under its file lock) here, without the subprocess's timeout; the driver reuses it
    out = _run(DRIVER, "--device", device, "--backend", backend)
    ok = {tuple(line.split()[1:4]) for line in out.splitlines() if line.startswith("OK ")}
    # Triton's CPU twin has only the loss and decoding ops; the driver skips the rest, saying so.
    ops = [op for op in OPS if backend == "default" or op in gtriton.OP_NAMES]
    for op in ops:
        for dtype in DTYPES:
            for mode in ("fwd", "bwd") if op in DIFFERENTIABLE else ("fwd",):
                assert any(o.split("[")[0] == op and d == dtype and m == mode for o, d, m in ok), (op, dtype, mode)
    assert all(f" {op}" in out for op in OPS)
    assert "FAIL" not in out and out.splitlines()[-1].startswith("PASSED"), out[-2000:]


def test_op_driver_reports_a_failing_call_and_goes_on(capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("op_driver", DRIVER)
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)

    def broken(dev, dt):  # a call that raises (a bad shape), then one that works
        yield "box_iou", "bad", lambda: gflops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4)), []
        yield "box_iou", "good", lambda: gflops.box_iou(torch.zeros(3, 4), torch.zeros(2, 4)), []
    monkeypatch.setattr(driver, "cases", broken)
    assert driver.main(["--device", "cpu", "--dtypes", "float32"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("FAIL  box_iou[bad]") and "boxes1" in lines[0], lines
    assert lines[1].startswith("OK    box_iou[good]") and lines[-1].startswith("FAILED: 1 failure"), lines


def test_profile_ops_lists_every_op_and_mode(tmp_path):
    _run("-m", "benchmarks.profile_ops", "--device", "cpu", "--quick", "--out", tmp_path)
    js = list(tmp_path.glob("profile_*.json"))
    assert len(js) == 1 and js[0].with_suffix(".md").exists(), list(tmp_path.iterdir())
    data = json.loads(js[0].read_text())
    text = js[0].with_suffix(".md").read_text()
    calls = {(r["op"], r["mode"]): r for r in data["rows"] if r["kind"] == "call"}
    for op in OPS:
        assert f"| {op} |" in text, op
        for mode in ("fwd", "bwd", "fwd+bwd") if op in DIFFERENTIABLE else ("fwd",):
            row = calls[(op, mode)]
            assert row["wall_ms"] > 0 and row["mbytes"] > 0, row
            ran = {r["kind"] for r in data["rows"] if (r["op"], r["mode"]) == (op, mode)}
            # The CPU backward of an op that fuses its gradient into the forward is an aten::mul_ alone.
            assert ("gflops" if mode != "bwd" else "aten") in ran, (op, mode, ran)
    # The whole AutoAssign loss: its op and the ATen ops of the batch totals around it.
    aten = {op: sum(r["count"] for r in data["rows"] if (r["op"], r["mode"], r["kind"]) == (op, "fwd+bwd", "aten"))
            for op in ("autoassign_loss_terms", "autoassign_loss")}
    assert calls[("autoassign_loss", "fwd+bwd")]["wall_ms"] > 0 and aten["autoassign_loss"] > aten["autoassign_loss_terms"]


@needs_triton
def test_profile_ops_triton_lists_each_launch(tmp_path, monkeypatch):
    """--backend triton: the four ops on the Triton kernels (the interpreter here),
    each launch of a call a row: QFL's forward is one (its partials are summed by ATen)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the subprocess's kernels run in the interpreter
    _run("-m", "benchmarks.profile_ops", "--device", "cpu", "--quick", "--backend", "triton", "--out", tmp_path)
    data = json.loads(next(tmp_path.glob("profile_triton_*.json")).read_text())
    launches = {}
    for r in data["rows"]:
        if r["kind"] == "triton":
            launches.setdefault((r["op"], r["mode"]), {})[r["name"]] = r["count"]
    assert set(launches) == {(op, m) for op in gtriton.OP_NAMES if not op.endswith("_backward")
                             for m in ("fwd", "bwd", "fwd+bwd")}, sorted(launches)
    assert launches[("quality_focal_loss", "fwd")] == {"triton::qfl_forward_kernel": 1}
    assert launches[("decode_distribution", "fwd+bwd")] == {"triton::integral_kernel": 1,
                                                            "triton::integral_backward_kernel": 1}
    ours = {r["name"] for r in data["rows"] if r["kind"] == "gflops" and (r["op"], r["mode"]) == (
        "distribution_focal_loss", "fwd+bwd")}
    assert ours == {f"{gtriton.NAMESPACE}::distribution_focal_loss",
                    f"{gtriton.NAMESPACE}::distribution_focal_loss_backward"}, ours
