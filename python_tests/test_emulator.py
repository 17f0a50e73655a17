"""The CUDA emulator catches what it must: deliberately broken kernels
(csrc/emulation/selftest_kernels.cuh) fail each check, and a correct one
passes them all. The sanitizer builds run in subprocesses of their own."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import needs_emu
from gflops import emulation

pytestmark = needs_emu


@pytest.fixture
def emu():
    m = emulation.load()
    yield m
    m.set_block_order(False, 0)


def selftest(case, x):
    return torch.ops.gflops_emu.selftest(case, x)


def test_correct_kernel_passes(emu):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(selftest("block_sum", x), x.sum().reshape(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case,n,message", [
    ("full_mask_shuffle", 48, r"thread \(32, 0, 0\): __shfl_down_sync at reduce.cuh:\d+: mask 0xffffffff names lanes "
                              r"16,.*,31 of warp 1, which has only 16 threads \(partial warp\)"),
    ("half_barrier", 256, r"block \(0, 0, 0\), thread \(128, 0, 0\): exited while 128 of 256 threads wait at "
                          r"__syncthreads at selftest_kernels.cuh:\d+"),
    ("too_many_threads", 256, r"launch of gf::emu_test::bounded_kernel: 256 threads per block exceed its "
                              r"__launch_bounds__\(128\)"),
    ("big_shared", 256, r"big_shared_kernel: block \(0, 0, 0\), thread \(0, 0, 0\): shared memory over budget: "
                        r"53248 bytes static"),
    ("big_dynamic_shared", 64, r"65536 bytes of dynamic shared memory exceed"),
])
def test_misuse_is_an_error_naming_kernel_block_thread(emu, case, n, message):
    with pytest.raises(RuntimeError, match=message):
        selftest(case, torch.randn(n))


def test_unwritten_shared_memory_reads_as_poison(emu):
    # No barrier between the writes and the neighbour's read: the first fibers read
    # slots not written yet, which hold the 0xff poison (NaN), not zeros.
    out = selftest("missing_barrier", torch.randn(256))
    assert torch.isnan(out).any()


def test_block_order_dependence_is_caught(emu):
    # A float reduction through atomics depends on the order blocks finish in;
    # a shuffled block order exposes it, while block partials summed in a fixed order do not move.
    x = torch.randn(100000, generator=torch.Generator().manual_seed(1)) * torch.logspace(-3, 6, 100000)
    results = {}
    for case in ("atomic_sum", "block_sum"):
        runs = []
        for seed in (None, 1, 2, 3):
            emu.set_block_order(seed is not None, seed or 0)
            runs.append(selftest(case, x).item())
        results[case] = runs
    assert len(set(results["atomic_sum"])) > 1, results
    assert len(set(results["block_sum"])) == 1, results


def _run(sanitizer, code):
    env = dict(os.environ, GFLOPS_EMU_SANITIZE=sanitizer, PYTHONPATH=os.pathsep.join(sys.path))
    if sanitizer == "address":
        # libstdc++ too, so that ASan's exception interceptor finds __cxa_throw (python does not link it).
        libs = [subprocess.check_output(["g++", f"-print-file-name={lib}"], text=True).strip()
                for lib in ("libasan.so", "libstdc++.so")]
        env["LD_PRELOAD"] = " ".join(libs)
        env["ASAN_OPTIONS"] = "detect_leaks=0"
    prelude = "import torch, gflops, gflops.emulation as e; e.load(); x = torch.randn(256); "
    return subprocess.run([sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True,
                          timeout=1800)


def test_race_check_catches_a_missing_barrier():
    bad = _run("race", "torch.ops.gflops_emu.selftest('missing_barrier', x)")
    assert bad.returncode != 0
    # Thread 0 reads slot 1 before thread 1 writes it (fibers run in order): a write-after-read race.
    assert ("thread (1, 0, 0): shared-memory race: write of byte 4 of the shared variable declared at "
            "selftest_kernels.cuh:") in bad.stderr and "after thread (0, 0, 0)'s read" in bad.stderr, bad.stderr
    # Within a warp, a __syncwarp orders the lanes' reads before another lane's write; without it, a race.
    unsynced = _run("race", "torch.ops.gflops_emu.selftest('warp_unsynced', x)")
    assert unsynced.returncode != 0
    assert "thread (7, 0, 0): shared-memory race: write of byte 0" in unsynced.stderr, unsynced.stderr[-3000:]
    assert "after thread (0, 0, 0)'s read" in unsynced.stderr, unsynced.stderr[-3000:]
    # The same build passes a correct reduction, a warp-synced write and the real QFL kernels (no false positives).
    good = _run("race", "torch.ops.gflops_emu.selftest('block_sum', x); "
                        "torch.ops.gflops_emu.selftest('warp_synced', x); from gflops import _ops\n"
                        "with _ops.use('gflops_emu'):\n"
                        "    gflops.quality_focal_loss(torch.randn(300, 80), torch.randint(0, 81, (300,)), "
                        "torch.rand(300), reduction='sum')")
    assert good.returncode == 0, good.stderr[-3000:]


def test_address_sanitizer_catches_out_of_bounds():
    past_global = _run("address", "torch.ops.gflops_emu.selftest('read_past_end', x)")
    assert past_global.returncode != 0 and "heap-buffer-overflow" in past_global.stderr, past_global.stderr[-3000:]
    assert "read_past_end_kernel" in past_global.stderr
    past_shared = _run("address", "torch.ops.gflops_emu.selftest('shared_past_end', x)")
    assert past_shared.returncode != 0 and "use-after-poison" in past_shared.stderr, past_shared.stderr[-3000:]
    assert "shared_past_end_kernel" in past_shared.stderr
    good = _run("address", "torch.ops.gflops_emu.selftest('block_sum', x)")
    assert good.returncode == 0, good.stderr[-3000:]
