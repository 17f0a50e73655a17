"""Registers, shared memory, spills and resident blocks per SM of every CUDA
kernel instantiation, from `ptxas -v` logs (tools/check_cuda_compile.sh).

No GPU runs here, so this is the static evidence for the kernels' GPU
resources. Exits 1 if any float32/float16/bfloat16 kernel spills registers
(float64 kernels only serve gradcheck and may spill).

    python3 tools/ptxas_report.py LOG... --out benchmarks/results/ptxas_resources.md
"""
import argparse
import re
import subprocess
import sys

# Per-SM limits of sm_80 (A100) and sm_90 (H100).
SMEM_PER_SM = {"sm_80": 164 * 1024, "sm_90": 228 * 1024}
REGS_PER_SM, THREADS_PER_SM, MAX_BLOCKS, REG_UNIT, SMEM_RESERVED = 65536, 2048, 32, 256, 1024
THREADS = 256  # every kernel is launched with 256-thread blocks (the IoU tile is 32 x 8)


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True).stdout
    return out.splitlines()


def parse(text):
    kernels, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\d+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2), "regs": 0, "smem": 0, "spill": 0}
            kernels.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur["spill"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["regs"] = int(m.group(1))
            s = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(s.group(1)) if s else 0
    return kernels


def resident_blocks(k):
    warps = THREADS // 32
    regs_per_warp = -(-k["regs"] * 32 // REG_UNIT) * REG_UNIT
    by_regs = (REGS_PER_SM // max(regs_per_warp, 1)) // warps
    by_smem = SMEM_PER_SM[k["arch"]] // (k["smem"] + SMEM_RESERVED)
    return min(THREADS_PER_SM // THREADS, MAX_BLOCKS, by_regs, by_smem)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", nargs="+")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    kernels = []
    for path in args.logs:
        kernels += parse(open(path).read())
    if not kernels:
        sys.exit("ptxas_report: no kernels found in the logs (was -Xptxas -v passed?)")
    for k, name in zip(kernels, demangle([k["mangled"] for k in kernels])):
        k["name"] = re.sub(r"^void |\(.*$", "", name).replace("gf::cuda::", "")
        k["blocks"] = resident_blocks(k)
    kernels.sort(key=lambda k: (k["name"], k["arch"]))
    bad = [k for k in kernels if k["spill"] and "double" not in k["name"]]
    lines = ["# CUDA kernel resources (ptxas -v, static)", "",
             f"{len(kernels)} kernel instantiations; resident blocks per SM for {THREADS}-thread blocks, from "
             "registers, shared memory and the 2048-thread limit. Register spills in float32/float16/bfloat16 "
             f"kernels fail CI: {len(bad)}.", "",
             "| kernel | arch | registers | shared memory (B) | spill (B) | blocks / SM |", "|---|---|---|---|---|---|"]
    lines += [f"| `{k['name']}` | {k['arch']} | {k['regs']} | {k['smem']} | {k['spill']} | {k['blocks']} |"
              for k in kernels]
    with open(args.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"ptxas_report: {len(kernels)} kernels, max {max(k['regs'] for k in kernels)} registers, "
          f"min {min(k['blocks'] for k in kernels)} blocks/SM; written to {args.out}")
    for k in bad:
        print(f"ptxas_report: register spill ({k['spill']} bytes) in {k['name']} for {k['arch']}", file=sys.stderr)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
