#!/usr/bin/env python3
"""The SASS model of gflops' Triton kernels on sm_90 (H200), at the benchmark
sizes: the Triton half of benchmarks/results/gpu_model.md.

    python3 tools/triton_model.py [--keep DIR] [--loops]

Each launch that gflops/triton/launch.py makes for the benchmark's calls
(tile shapes, grid and warps from gflops/triton/tiles.py, the launcher's own
module) is compiled by Triton's own launch path less the launch
(JITFunction.warmup with the stand-in driver of gflops/triton/offline.py:
the binder, the specialization and the ptxas that the wheel bundles), to a
cubin for sm_90 without a GPU. The cubin's SASS is then walked by
tools/sass_model.py's interpreter with the launch's parameters, and bounded
by the same formulas as the CUDA kernels (issue, MUFU, bandwidth, latency).
Registers and shared memory are read off the cubin (cuobjdump -res-usage).

Run without TRITON_INTERPRET (the interpreter would decorate the kernels as
Python); the installed Triton compiles (the H200 run had 3.6.0; `pip install
--target` another and put it first on PYTHONPATH to model that one). Every
number printed is an estimate.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import sass_model as S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRITON_DIR = os.path.join(ROOT, "gflops", "triton")


def by_path(name, path):
    """A module of gflops/triton loaded by path: importing gflops would load its C++ extension."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def launches(torch, tl, tiles):
    """(label, kernel name, args, constexprs, grid, elements, unit, bytes): the launches of the
    benchmark calls, sized as tools/sass_model.py's CUDA cases (float32 unless marked)."""
    out = []

    def t(dtype):  # the binder reads a tensor's dtype and data_ptr only
        return torch.empty(64, dtype=dtype)

    f32, i64 = t(torch.float32), t(torch.int64)
    # QFL 358400 x 80, no weight, beta 2, 'mean' with a tensor avg_factor -> the kernel sums.
    R, C = 358400, 80
    bn, bc = tiles.qfl_blocks(C, False)
    grid = -(-R // bn)
    for dtype, esz, tag in ((torch.float32, 4, "float32"), (torch.bfloat16, 2, "bfloat16")):
        p = t(dtype)
        out.append((f"qfl_forward_kernel {tag}", "qfl_forward_kernel", (p, i64, f32, None, f32, R, C, p),
                    dict(BETA2=True, HAS_W=False, SUM=True, ACC=tl.float32, BLOCK_N=bn, BLOCK_C=bc,
                         WIDE=tiles.qfl_wide(R, C, bn, bc)),
                    grid, R * C, "logit", R * C * esz + R * 12 + grid * 4))
        out.append((f"qfl_backward_kernel {tag}", "qfl_backward_kernel", (f32, p, i64, f32, None, p, R, C, p),
                    dict(BETA2=True, HAS_W=False, GRAD_PER_ROW=False, ACC=tl.float32, BLOCK_N=bn, BLOCK_C=bc,
                         WIDE=tiles.qfl_wide(R, C, bn, bc)),
                    grid, R * C, "logit", 2 * R * C * esz + R * 12))
    # DFL 52000 x 17, weight, 'mean' -> the kernel sums.
    M, N1 = 52000, 17
    bm, head, tail = tiles.bin_blocks(N1, "dfl", False)
    grid = -(-M // bm)
    out.append(("dfl_forward_kernel", "dfl_forward_kernel", (f32, f32, f32, f32, M, N1),
                dict(HAS_W=True, SUM=True, ACC=tl.float32, BLOCK_M=bm, HEAD=head, TAIL=tail,
                     WIDE=tiles.bins_wide(M, N1, bm, head, tail)), grid, M, "row",
                M * N1 * 4 + M * 8 + grid * 4))
    out.append(("dfl_backward_kernel", "dfl_backward_kernel", (f32, f32, f32, f32, f32, M, N1),
                dict(HAS_W=True, GRAD_PER_ROW=False, ACC=tl.float32, BLOCK_M=bm, HEAD=head, TAIL=tail,
                     WIDE=tiles.bins_wide(M, N1, bm, head, tail)), grid, M, "row",
                2 * M * N1 * 4 + M * 8))
    # integral and decode: 16 x 22400 x 68 -> 1433600 side rows of 17 (decode clamped to 800 x 1333).
    B, A = 16, 22400
    rows = B * A * 4
    bm, head, tail = tiles.bin_blocks(N1, "integral", False)
    grid = -(-rows // bm)
    for dec, name in ((False, "integral"), (True, "decode")):
        geo = (f32, f32, A, f32) if dec else (f32, f32, 1, f32)
        cx = dict(DECODE=dec, CLAMP=dec, ACC=tl.float32, BLOCK_R=bm, HEAD=head, TAIL=tail,
                  WIDE=tiles.bins_wide(rows, N1, bm, head, tail))
        extra = A * 12 if dec else 0
        out.append((f"integral_kernel ({name} fwd)", "integral_kernel", (f32, f32, rows, N1, *geo), cx, grid, rows,
                    "row", rows * N1 * 4 + rows * 4 + extra))
        out.append((f"integral_backward_kernel ({name} bwd)", "integral_backward_kernel",
                    (f32, f32, f32, rows, N1, *geo), cx, grid, rows, "row", 2 * rows * N1 * 4 + rows * 4 + extra))
    return out


def resources(cuobjdump, cubin):
    text = subprocess.run([cuobjdump, "-res-usage", cubin], capture_output=True, text=True, check=True).stdout
    m = re.search(r"REG:(\d+).*?SHARED:(\d+)", text)
    return int(m.group(1)), int(m.group(2))


def params_of(signature, args):
    """The kernel's parameters in constant bank 0: its non-constexpr arguments in order (a None or
    an int of 1 is specialised into a constant), then Triton's two scratch pointers."""
    out = []
    for (name, ty), a in zip(signature.items(), args):
        if ty == "constexpr":
            continue
        if ty.startswith("*"):
            out.append(S.ptr(len(out)))
        elif ty in ("i32", "i64"):
            out.append((ty, a))
        elif ty == "fp32":
            out.append(("f32", a))
        else:
            raise ValueError(f"{name}: parameter type {ty}")
    return out + [S.NULL, S.NULL]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="write the cubins and their SASS here")
    ap.add_argument("--loops", action="store_true", help="also list every loop's static body")
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        sys.exit("triton_model: run without TRITON_INTERPRET=1")
    import torch
    import triton
    import triton.language as tl
    from triton.runtime.driver import driver

    driver.set_active(by_path("gflops_triton_offline", os.path.join(TRITON_DIR, "offline.py")).TargetOnlyDriver())
    kernels = by_path("gflops_triton_kernels", os.path.join(TRITON_DIR, "kernels.py"))
    tiles = by_path("gflops_triton_tiles", os.path.join(TRITON_DIR, "tiles.py"))
    d = args.keep or tempfile.mkdtemp(prefix="triton_model_")
    os.makedirs(d, exist_ok=True)
    cuobjdump = S.find_cuobjdump()
    rows, code = [], {}
    for i, (label, name, a, cx, grid, elements, unit, nbytes) in enumerate(launches(torch, tl, tiles)):
        print(f"triton_model: {label}", file=sys.stderr)
        k = getattr(kernels, name).warmup(*a, grid=(1,), num_warps=tiles.NUM_WARPS, **cx)
        cubin = os.path.join(d, f"{i:02d}_{name}.cubin")
        with open(cubin, "wb") as f:
            f.write(k.asm["cubin"])
        sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
        with open(cubin[:-6] + ".sass", "w") as f:
            f.write(sass)
        ins = S.parse_sass(cubin[:-6] + ".sass")[k.metadata.name]
        regs, smem = resources(cuobjdump, cubin)
        params = params_of(k.src.signature, a)
        case = dict(label=label, params=lambda g, params=params: params, grid=lambda res, grid=grid: grid,
                    block=(tiles.NUM_WARPS * 32, 1, 1), smem=0, elements=elements, unit=unit, bytes=nbytes)
        key = f"{i:02d} {name}"
        rows.append(dict(S.estimate(case, ins, regs, smem), name=key))
        code[key] = ins
    print(f"Triton {triton.__version__}, num_warps {tiles.NUM_WARPS}, sm_90\n")
    S.report(rows, code if args.loops else None)


if __name__ == "__main__":
    main()
