"""Which kernels serve CUDA tensors: gflops.backend_info / set_backend /
GFLOPS_BACKEND, and the Triton launchers reached through the dispatcher."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import gflops
from conftest import needs_triton
from gflops import triton as gtriton
from loss_cases import dfl_inputs, qfl_inputs

ROOT = Path(__file__).resolve().parent.parent
CUDA_KEY = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)


def _cuda_kernel(name):
    dump = torch._C._dispatch_dump(f"gflops::{name}")
    return next((line for line in dump.splitlines() if line.startswith("CUDA:")), None)


@pytest.fixture
def restore_backend():
    before = gflops.backend_info()["requested"]
    yield
    gflops.set_backend(before)


def test_backend_info_describes_this_build():
    info = gflops.backend_info()
    assert info["cpu"] == "C++ kernels" and info["cuda_kernels_compiled"] == gflops.has_cuda()
    assert info["requested"] in ("auto", "cuda", "triton")
    if gtriton.available()[0]:
        assert info["triton"] and info["triton_ops"] == list(gtriton.OP_NAMES)
    else:
        assert info["triton"] is None and info["triton_ops"] == []


@needs_triton
def test_auto_without_compiled_cuda_routes_cuda_tensors_to_triton(restore_backend):
    gflops.set_backend("auto")
    for name in gtriton.OP_NAMES:
        line = _cuda_kernel(name)
        if gflops.has_cuda():
            assert "gflops/backend.py" not in line, line  # the compiled kernel serves
        else:
            assert line is not None and "gflops/backend.py" in line, f"{name}: {line}"
    assert _cuda_kernel("box_iou") is None or "gflops/backend.py" not in _cuda_kernel("box_iou")
    if not gflops.has_cuda():
        assert gflops.backend_info()["cuda"].startswith("triton for quality_focal_loss")


@needs_triton
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the routing with CPU tensors and the interpreter")
def test_the_cuda_dispatch_key_reaches_the_triton_launchers(restore_backend):
    """Redispatching to the CUDA key with CPU tensors runs whatever is registered
    there: under Triton's interpreter, the Triton launchers; they must agree with
    the CPU kernels."""
    gflops.set_backend("triton")
    pred, label, score, weight = qfl_inputs(300, 20, "cpu", weight=True)
    via_cuda = torch.ops.gflops.quality_focal_loss.default.redispatch(CUDA_KEY, pred, label, score, weight, 2.0,
                                                                      "none")
    torch.testing.assert_close(via_cuda, torch.ops.gflops.quality_focal_loss(pred, label, score, weight, 2.0, "none"),
                               rtol=1e-5, atol=1e-6)
    p, target, w = dfl_inputs(64, 16, "cpu", weight=True)
    g = torch.ops.gflops.distribution_focal_loss_backward.default.redispatch(CUDA_KEY, torch.tensor(1.0), p, target,
                                                                            w, "sum")
    torch.testing.assert_close(g, torch.ops.gflops.distribution_focal_loss_backward(torch.tensor(1.0), p, target, w,
                                                                                     "sum"))


def test_set_backend_rejects_what_it_cannot_do(restore_backend):
    with pytest.raises(ValueError, match="backend must be one of"):
        gflops.set_backend("opencl")
    if not gflops.has_cuda():
        with pytest.raises(RuntimeError, match="this build of gflops has no CUDA kernels"):
            gflops.set_backend("cuda")
    if not gtriton.available()[0]:
        with pytest.raises(RuntimeError, match="triton package is not installed"):
            gflops.set_backend("triton")


def test_forcing_and_releasing_restores_the_earlier_kernel():
    """set_backend('cuda') after 'triton' relies on the dispatcher restoring the
    kernel registered before an override when the override's library goes;
    shown here on the CPU key, where a compiled kernel always exists."""
    a, b = torch.rand(3, 4), torch.rand(5, 4)
    expected = torch.ops.gflops.box_iou(a, b, "iou", False, 1e-6)
    lib = torch.library.Library("gflops", "IMPL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lib.impl("box_iou", lambda *args: torch.full((1,), -1.0), "CPU")
    assert torch.ops.gflops.box_iou(a, b, "iou", False, 1e-6).tolist() == [-1.0]
    lib._destroy()
    torch.testing.assert_close(torch.ops.gflops.box_iou(a, b, "iou", False, 1e-6), expected)


def _import_with(backend):
    env = dict(os.environ, GFLOPS_BACKEND=backend)
    code = "import gflops; print(gflops.backend_info()['requested'])"
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_environment_variable_picks_the_backend():
    r = _import_with("opencl")
    assert r.returncode == 0 and r.stdout.split()[-1] == "auto", r.stderr
    assert "GFLOPS_BACKEND='opencl' ignored, using 'auto': gflops.set_backend: backend must be one of" in r.stderr
    if not gflops.has_cuda():
        r = _import_with("cuda")
        assert r.returncode == 0 and "this build of gflops has no CUDA kernels" in r.stderr
    if gtriton.available()[0]:
        r = _import_with("triton")
        assert r.returncode == 0 and r.stdout.split()[-1] == "triton", r.stderr


@needs_triton
def test_float64_parameters_are_not_rounded_to_float32():
    """beta and max_shape reach the Triton kernels in the accumulation dtype: as
    Python floats they would be float32 on a GPU (0.3 and 300.1 are not)."""
    twin = gtriton.load_twin()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pred, label, score, weight = qfl_inputs(64, 7, device, dtype=torch.float64, weight=True)
    g = torch.rand(64, dtype=torch.float64, device=device)
    for name, args in (("quality_focal_loss", (pred, label, score, weight, 0.3, "none")),
                       ("quality_focal_loss_backward", (g, pred, label, score, weight, 0.3, "none"))):
        torch.testing.assert_close(getattr(twin, name)(*args).cpu(),
                                   getattr(torch.ops.gflops, name)(*[a.cpu() if torch.is_tensor(a) else a
                                                                     for a in args]), rtol=1e-13, atol=1e-15)
    dist = torch.randn(3, 50, 68, dtype=torch.float64, device=device) * 3
    points = torch.rand(50, 2, dtype=torch.float64, device=device) * 400
    strides = torch.full((50,), 16.0, dtype=torch.float64, device=device)
    args = (dist, points, strides, 16, [300.1, 400.3])
    ours = twin.decode_distribution(*args)
    assert (ours[..., 1::2] == 300.1).any() and (ours[..., 0::2] == 400.3).any()  # clamped, exactly
    torch.testing.assert_close(ours.cpu(), torch.ops.gflops.decode_distribution(*[a.cpu() if torch.is_tensor(a)
                                                                                  else a for a in args]),
                               rtol=1e-13, atol=1e-12)


@needs_triton
def test_reg_max_beyond_the_triton_tile_is_a_clear_error():
    twin = gtriton.load_twin()
    pred = torch.randn(2, 4 * 1025, device="cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeError, match=r"gflops.integral: the Triton kernels take up to 1024 bins"):
        twin.integral(pred, 1024)


@needs_triton
def test_twin_has_the_schemas_of_gflops():
    from gflops.triton.launch import OPS

    assert tuple(OPS) == gtriton.OP_NAMES
    twin = gtriton.load_twin()
    for name in gtriton.OP_NAMES:
        ours = str(getattr(twin, name).default._schema).split("::", 1)[1]
        assert ours == str(getattr(torch.ops.gflops, name).default._schema).split("::", 1)[1]


@needs_triton
def test_qfl_column_steps_mask_few_lanes():
    """The QFL programs step over the columns in the widest power of two that
    masks at most 1/16 of the lanes, else the one that masks fewest: 80 classes
    in five steps of 16, not one of 128 (48 masked lanes a row, 1.6x the work in
    the SASS model)."""
    from gflops.triton import tiles
    widths = (8, 16, 32, 64, 128, 256)
    assert tiles.qfl_blocks(80, False)[1] == 16
    assert tiles.qfl_blocks(1000, False)[1] == 256  # 1024 lanes for 1000 columns: 2.4% masked
    assert tiles.qfl_blocks(81, False)[1] == 8  # nothing masks <= 1/16: the fewest masked lanes
    for cols in range(1, 1300):
        rows, block = tiles.qfl_blocks(cols, False)
        assert rows * block == tiles.tile_elems(False) and block in widths
        padded = {b: -(-cols // b) * b for b in widths}
        fit = [b for b in widths if padded[b] * 16 <= cols * 17]
        if fit:
            assert block == max(fit), cols
        else:
            assert padded[block] == min(padded.values()), cols


@needs_triton
def test_wide_is_the_bound_of_every_offset():
    """WIDE (64-bit offsets) exactly when the largest offset a kernel computes,
    masked lanes included, leaves int32: the last program's padding rows times
    the row length plus the reach of its column tiles (QFL's column steps, or a
    row's head and tail tiles, wider than the row)."""
    from gflops.triton import tiles
    for cols in (80, 435, 1000, 17):
        block_n, block_c = tiles.qfl_blocks(cols, False)
        reach = -(-cols // block_c) * block_c
        for rows in (1, 2**31 // cols - 7, 2**31 // cols + 3, 4_940_000, 2**26):
            last = (-(-rows // block_n) * block_n - 1) * cols + reach - 1
            assert tiles.qfl_wide(rows, cols, block_n, block_c) == (last > 2**31 - 1), (rows, cols)
    for n1 in (17, 16, 7, 65, 1024):
        block_r, head, tail = tiles.bin_blocks(n1, "test", False)
        for rows in (1, 2**31 // n1 - 40, 2**31 // n1 + 1, 2**28):
            last = (-(-rows // block_r) * block_r - 1) * n1 + max(head + tail, n1) - 1
            assert tiles.bins_wide(rows, n1, block_r, head, tail) == (last > 2**31 - 1), (rows, n1)
    # QFL with 435 classes: rows that fit 32 bits while their padding columns do not.
    block_n, block_c = tiles.qfl_blocks(435, False)
    rows = next(r for r in range(4_930_000, 4_940_000)
                if r * 435 < 2**31 and tiles.qfl_wide(r, 435, block_n, block_c))
    assert rows * 435 < 2**31


@needs_triton
def test_32_and_64_bit_offsets_give_the_same_bits(monkeypatch):
    """A run of both index widths (WIDE forced on), which no test could reach by
    allocating 2^31 values: the same bits as the 32-bit kernels, on every launch."""
    from gflops.triton import tiles
    twin = gtriton.load_twin()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pred, label, score, weight = qfl_inputs(67, 80, device, weight=True)
    dpred, target, dweight = dfl_inputs(53, 16, device, weight=True)
    dist = torch.randn(2, 30, 68, device=device) * 3
    points = torch.rand(30, 2, device=device) * 400
    strides = torch.full((30,), 8.0, device=device)
    calls = [lambda: twin.quality_focal_loss(pred, label, score, weight, 1.5, "none"),
             lambda: twin.quality_focal_loss(pred, label, score, None, 2.0, "sum"),
             lambda: twin.quality_focal_loss_backward(torch.ones(67, device=device), pred, label, score, weight, 2.0,
                                                      "none"),
             lambda: twin.distribution_focal_loss(dpred, target, dweight, "sum"),
             lambda: twin.distribution_focal_loss_backward(torch.ones((), device=device), dpred, target, dweight,
                                                           "sum"),
             lambda: twin.decode_distribution(dist, points, strides, 16, [300.0, 200.0]),
             lambda: twin.decode_distribution_backward(torch.ones(2, 30, 4, device=device), dist, points, strides,
                                                       16, None)]
    narrow = [c() for c in calls]
    seen = []
    monkeypatch.setattr(tiles, "wide", lambda *a: seen.append(a) or True)
    for c, want in zip(calls, narrow):
        got = c()
        assert torch.equal(got, want), (got, want)
    assert len(seen) == len(calls)
