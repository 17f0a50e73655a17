#!/usr/bin/env python3
"""SASS instruction counts of gflops' loss, decode and box kernels on sm_90
(H200), at the benchmark sizes: the numbers behind benchmarks/results/gpu_model.md.

    python3 tools/sass_model.py [--keep DIR] [--sass-dir DIR] [--loops]

1. Compiles csrc/cuda/{losses,decode,boxes}_kernels.cuh for sm_90 to cubins,
   one nvcc at a time, with the flags of torch's CUDAExtension build (-O3,
   --expt-relaxed-constexpr, the __CUDA_NO_HALF*__ macros; gflops/_ext.py's
   -lineinfo does not change the code), and ptxas -v for the registers.
   --keep DIR keeps the .cu/.cubin/.sass/.ptxas files; --sass-dir DIR reuses
   them without compiling.
2. Disassembles them (cuobjdump -sass: from $CUDA_HOME/bin, PATH, or the copy
   Triton ships).
3. For each kernel launch of the benchmarks (cases()), runs a small SASS
   interpreter over one thread of each warp of the first, middle and last
   block (the corners of a 3-D grid), with the launch's real parameters
   (sizes, null or non-null pointers, the launcher's grid). Integer and
   predicate instructions are evaluated (integer division through its float
   reciprocal included), so trip counts and remainder paths are exact; float
   values and memory contents are unknown. A branch on an unknown predicate
   takes the hot side when it skips a short region holding a CALL (the IEEE
   division / reciprocal slow path) or an infinity constant (libm's special
   cases); any other such branch falls through and is listed under
   "unknown branches". Every issued instruction counts, predicated-off ones
   included. A wait on an outstanding LDG's register counts one exposed
   load round.
4. Prints, per kernel: registers, blocks/SM, grid, bytes, thread-instructions
   per element (logit, row, anchor, box or output) with the issue, ALU-pipe,
   MUFU, bandwidth and latency bounds, and the per-element MUFU, division,
   64-bit, load/store width, shared-memory, shuffle and barrier counts;
   --loops adds every loop's static body.

Every number printed is an estimate (see the constants below).
"""
import argparse
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["-std=c++17", "-O3", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__",
         "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
         "-arch=sm_90", "-cubin", "-Xptxas", "-v"]
HEADERS = ("losses", "decode", "boxes")

# H200 (sm_90): 132 SMs, 4 schedulers x 1 warp-instruction/clk each, ~1.98 GHz boost.
SMS, SCHED, CLK = 132, 4, 1.98e9
ISSUE_PER_S = SMS * SCHED * CLK  # warp-instructions per second
MUFU_PER_S = SMS * 16 * CLK      # thread-level MUFU ops per second (16/clk/SM)
REGS_PER_SM, THREADS_PER_SM, SMEM_PER_SM, SMEM_RESERVED = 65536, 2048, 228 * 1024, 1024
MAX_BLOCKS_PER_SM = 8  # reduce.cuh: kMaxBlocksPerSm = 2048 / 256

# ---- compile and disassemble ------------------------------------------------


def find_cuobjdump():
    cands = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"), shutil.which("cuobjdump")]
    try:
        import triton  # ships cuobjdump with its NVIDIA backend
        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except Exception:  # noqa: BLE001
        pass
    for c in cands:
        if c and os.path.exists(c):
            return c
    sys.exit("sass_model: no cuobjdump (set CUDA_HOME or install triton)")


def compile_all(out_dir):
    nvcc = os.environ.get("NVCC", "nvcc")
    for h in HEADERS:
        src = os.path.join(out_dir, f"{h}.cu")
        with open(src, "w") as f:
            f.write(f'#include "{ROOT}/csrc/cuda/{h}_kernels.cuh"\n')
        cubin = os.path.join(out_dir, f"{h}.cubin")
        print(f"sass_model: nvcc {h}_kernels.cuh (sm_90)", file=sys.stderr)
        r = subprocess.run([nvcc, *FLAGS, src, "-o", cubin], check=False, capture_output=True, text=True)
        if r.returncode:
            sys.exit(r.stderr)
        with open(os.path.join(out_dir, f"{h}.ptxas"), "w") as f:
            f.write(r.stderr)
        sass = subprocess.run([find_cuobjdump(), "-sass", cubin], capture_output=True, text=True, check=True).stdout
        with open(os.path.join(out_dir, f"{h}.sass"), "w") as f:
            f.write(sass)


def read_ptxas(path):
    with open(path) as f:
        lines = f.read().splitlines()
    regs, cur = {}, None
    for line in lines:
        m = re.search(r"Compiling entry function '(\w+)' for 'sm_90'", line)
        if m:
            cur = m.group(1)
        m = re.search(r"Used (\d+) registers", line)
        if m and cur:
            s = re.search(r"(\d+) bytes smem", line)
            regs[cur] = (int(m.group(1)), int(s.group(1)) if s else 0)
    return regs


INS_RE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P[T0-9]+\s+)?([A-Z0-9_.]+)\s*(.*?)\s*;")


def parse_sass(path):
    with open(path) as f:
        lines = f.read().splitlines()
    funcs, cur = {}, None
    for line in lines:
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = funcs.setdefault(m.group(1), [])
            continue
        m = INS_RE.search(line)
        if m and cur is not None:
            args = [a.strip() for a in m.group(4).split(",")] if m.group(4).strip() else []
            cur.append(Ins(int(m.group(1), 16), (m.group(2) or "").strip()[1:], m.group(3), args))
    return funcs


class Ins:
    __slots__ = ("addr", "pred", "op", "args")

    def __init__(self, addr, pred, op, args):
        self.addr, self.pred, self.op, self.args = addr, pred, op, args

    def __repr__(self):
        return f"{self.addr:#06x} {'@' + self.pred + ' ' if self.pred else ''}{self.op} {', '.join(self.args)}"


# ---- instruction classes ----------------------------------------------------


ALU_OPS = ("IADD3", "LOP3", "ISETP", "FSETP", "FSEL", "SEL", "FMNMX", "SHF", "LEA", "IABS", "PLOP3", "FSET",
           "IMNMX", "VIMNMX", "PRMT", "FCHK")


def classes(ins):
    """Counter keys of one instruction (for the per-element columns)."""
    op = ins.op
    out = []
    if op.split(".")[0] in ALU_OPS:
        out.append("alu")  # the ALU pipe: 16 lanes per SM sub-partition on sm_90, half the issue rate
    if op.startswith("MUFU."):
        out.append("mufu")
        out.append("mufu." + op.split(".")[1].lower())
    if op.startswith("I2F") and ".RP" in op:
        out.append("intdiv.setup")  # the reciprocal of a runtime divisor (I2F.RP, MUFU.RCP, F2I)
    if op.startswith("IMAD.HI") and ins.args and ins.args[-1] == "RZ":
        out.append("intdiv")  # a quotient estimate: one per 32-bit division or modulo by a runtime value
    if op.startswith(("I2F.U64", "F2I.U64", "F2I.S64", "I2F.S64")):
        out.append("int64div")
    if op.startswith("FCHK"):
        out.append("fdiv")  # an IEEE-rounded float division (fast path inline, slow path a CALL)
    if op.startswith("IMAD.WIDE"):
        out.append("imad.wide")
    parts = op.split(".")
    if "X" in parts or "EX" in parts or "U64" in parts or "S64" in parts or op.startswith("IMAD.WIDE"):
        out.append("int64")  # 64-bit integer arithmetic: carries, extended compares, wide multiplies
    if op.startswith("LDG"):
        out.append("ldg.128" if ".128" in op else "ldg.64" if ".64" in op else
                   "ldg.16" if (".U16" in op or ".S16" in op) else "ldg.32")
    if op.startswith("STG"):
        out.append("stg.128" if ".128" in op else "stg.64" if ".64" in op else
                   "stg.16" if ".U16" in op or ".16" in op else "stg.32")
    if op.startswith("LDS"):
        out.append("lds")
    if op.startswith("STS"):
        out.append("sts")
    if op.startswith("SHFL"):
        out.append("shfl")
    if op.startswith("BAR"):
        out.append("bar")
    if op.startswith(("ATOM", "RED")):
        out.append("atomic")
    return out


def reg_names(tok):
    """Registers a token reads (R30.64 is R30 and R31; [R3+0x4] is R3)."""
    out = []
    for m in re.finditer(r"(?<![U\w])R(\d+)(\.64|\.128)?", tok):
        n = int(m.group(1))
        k = 4 if m.group(2) == ".128" else 2 if m.group(2) == ".64" else 1
        out += [f"R{n + j}" for j in range(k)]
    return out


# ---- a small SASS interpreter ------------------------------------------------

M32 = 0xFFFFFFFF
COLD_MAX = 16  # instructions: the longest region a branch on unknown data may skip as a cold path


def s32(v):
    v &= M32
    return v - (1 << 32) if v >> 31 else v


def f32(x):
    return struct.unpack("<f", struct.pack("<f", float(x)))[0]


def fbits(f):
    return struct.unpack("<I", struct.pack("<f", f))[0]


def bitsf(b):
    return struct.unpack("<f", struct.pack("<I", b & M32))[0]


class Unknown(Exception):
    pass


class Thread:
    """One thread's walk. regs/preds hold ints/bools or None (unknown)."""

    def __init__(self, ins, const, tid, ctaid, ntid, nctaid, max_steps=5_000_000):
        self.ins = ins
        self.at = {x.addr: i for i, x in enumerate(ins)}
        self.const = const
        self.sr = {"SR_TID.X": tid[0], "SR_TID.Y": tid[1], "SR_TID.Z": tid[2], "SR_CTAID.X": ctaid[0],
                   "SR_CTAID.Y": ctaid[1], "SR_CTAID.Z": ctaid[2], "SR_CgaCtaId": 0, "SR_LANEID": tid[0] & 31,
                   "SR_NTID.X": ntid[0]}
        self.r, self.p = {}, {}
        self.counts = {}
        self.steps = 0
        self.max_steps = max_steps
        self.unknown_branches = set()
        self.stack = []
        self.pending = set()

    # operands
    def reg(self, name):
        name = name.split(".")[0]
        if name in ("RZ", "URZ", "SRZ"):
            return 0
        return self.r.get(name)

    def val(self, tok):
        t = tok.strip()
        neg = inv = absv = False
        if t.startswith("-") and not re.match(r"-0x|-\d", t):
            neg, t = True, t[1:]
        if t.startswith("~"):
            inv, t = True, t[1:]
        if t.startswith("|") and t.endswith("|"):
            absv, t = True, t[1:-1]
        m = re.match(r"c\[0x0\]\[(0x[0-9a-f]+|RZ)\]", t)
        if m:
            off = 0 if m.group(1) == "RZ" else int(m.group(1), 16)
            v = self.cword(off)
        elif re.match(r"U?R\d+|U?RZ", t):
            v = self.reg(t)
        elif re.match(r"-?0x[0-9a-f]+$", t):
            v = int(t, 16) & M32
        elif re.match(r"-?\d+$", t):
            v = int(t) & M32
        else:
            return None  # float literal, SR, INF ...
        if v is None:
            return None
        if absv:
            v = abs(s32(v)) & M32
        if inv:
            v = ~v & M32
        if neg:
            v = -v & M32
        return v

    def cword(self, off, size=4):
        if off + size > len(self.const):
            return 0
        return int.from_bytes(self.const[off:off + size], "little")

    def pred(self, tok):
        t = tok.strip()
        neg = t.startswith("!")
        t = t.lstrip("!")
        v = True if t in ("PT", "UPT") else self.p.get(t)
        if v is None:
            return None
        return (not v) if neg else v

    def setr(self, name, v):
        name = name.split(".")[0]
        if name in ("RZ", "URZ"):
            return
        self.r[name] = None if v is None else v & M32

    def setr64(self, name, v):
        name = name.split(".")[0]
        if name in ("RZ", "URZ"):
            return
        pre, n = re.match(r"(U?R)(\d+)", name).groups()
        self.setr(f"{pre}{n}", None if v is None else v & M32)
        self.setr(f"{pre}{int(n) + 1}", None if v is None else (v >> 32) & M32)

    def reg64(self, name):
        name = name.split(".")[0]
        if name in ("RZ", "URZ"):
            return 0
        pre, n = re.match(r"(U?R)(\d+)", name).groups()
        lo, hi = self.r.get(f"{pre}{n}"), self.r.get(f"{pre}{int(n) + 1}")
        return None if lo is None or hi is None else lo | (hi << 32)

    def setp(self, name, v):
        name = name.strip()
        if name in ("PT", "UPT"):
            return
        self.p[name] = v

    def dests_unknown(self, ins):
        for a in ins.args[:2]:
            a = a.strip()
            if re.match(r"U?R\d+", a):
                self.setr(a, None)
                if ".64" in ins.op or ".WIDE" in ins.op or ".128" in ins.op:
                    pre, n = re.match(r"(U?R)(\d+)", a).groups()
                    for k in range(1, 4 if ".128" in ins.op else 2):
                        self.setr(f"{pre}{int(n) + k}", None)
                break
            if re.match(r"U?P\d", a):
                self.setp(a, None)
        if ins.op.startswith(("ISETP", "UISETP", "FSETP", "PLOP3", "DSETP", "HSETP")) and len(ins.args) > 1:
            self.setp(ins.args[1], None)

    # execution
    def run(self, start=0):
        i = start
        n = len(self.ins)
        while i < n:
            self.steps += 1
            if self.steps > self.max_steps:
                raise RuntimeError("step limit")
            x = self.ins[i]
            for k in ["all", *classes(x)]:
                self.counts[k] = self.counts.get(k, 0) + 1
            g = True if not x.pred else self.pred(x.pred)
            op = x.op
            self.scoreboard(x)
            if op.startswith("EXIT"):
                if g is None:
                    g = False  # an unknown early exit: keep walking (the work path)
                if g:
                    return
                i += 1
                continue
            if op.startswith("BRA"):
                if op.startswith("BRA.DIV"):
                    i += 1  # the warp is converged
                    continue
                tgt = int(re.search(r"0x([0-9a-f]+)", x.args[-1]).group(1), 16)
                if g is None:
                    g = self.decide(i, tgt)
                if g:
                    if tgt == x.addr:
                        return  # the trailing self-loop
                    i = self.at[tgt]
                else:
                    i += 1
                continue
            if op.startswith("CALL"):
                tgt = int(re.search(r"0x([0-9a-f]+)", x.args[-1]).group(1), 16)
                self.stack.append(i + 1)
                i = self.at[tgt]
                continue
            if op.startswith("RET"):
                i = self.stack.pop() if self.stack else n
                continue
            if g is False:
                i += 1
                continue
            try:
                self.execute(x) if g else self.dests_unknown(x)
            except (Unknown, TypeError, AttributeError, IndexError, ValueError):
                self.dests_unknown(x)
            i += 1

    def scoreboard(self, x):
        """Global-load rounds: an instruction that reads the result of an outstanding LDG waits
        for it, and with it for every load issued before (they overlap): one exposed memory
        latency per wait."""
        op = x.op
        srcs = x.args if op.startswith(("ST", "RED", "ATOM", "BRA", "EXIT")) else x.args[1:]
        if self.pending and any(r in self.pending for t in srcs for r in reg_names(t)):
            self.counts["ldg.rounds"] = self.counts.get("ldg.rounds", 0) + 1
            self.pending.clear()
        if op.startswith("LDG"):
            m = re.match(r"R(\d+)", x.args[0])
            if m:
                k = 4 if ".128" in op else 2 if ".64" in op else 1
                self.pending.update(f"R{int(m.group(1)) + j}" for j in range(k))

    def decide(self, i, tgt):
        """Hot side of a branch on an unknown predicate: skip a cold region."""
        j = self.at[tgt]

        def cold(lo, hi):
            for y in self.ins[lo:hi]:
                if y.op.startswith("CALL") or any(("INF" in a or "0x7f800000" in a) for a in y.args):
                    return True
            return False
        if j > i:  # only a short region is a slow path / special case (an fdiv's CALL block, libm fix-ups)
            if j - i - 1 <= COLD_MAX and cold(i + 1, j):
                return True
            end = j
            while end < len(self.ins) and not self.ins[end].op.startswith(("BRA", "EXIT", "BSYNC")):
                end += 1
            if end - j < COLD_MAX and cold(j, end + 1):
                return False
        self.unknown_branches.add(self.ins[i].addr)
        return False  # loops and unknown guards: fall through

    def execute(self, x):
        op, a = x.op, x.args
        base = op.split(".")[0]
        V = self.val
        if base in ("MOV", "UMOV"):
            self.setr(a[0], V(a[1]))
        elif base in ("LDC", "ULDC"):
            m = re.match(r"c\[0x0\]\[(0x[0-9a-f]+|RZ)\]", a[1])
            off = 0 if m.group(1) == "RZ" else int(m.group(1), 16)
            if ".64" in op:
                self.setr64(a[0], self.cword(off, 8))
            elif ".U8" in op:
                self.setr(a[0], self.cword(off, 1))
            elif ".S8" in op:
                v = self.cword(off, 1)
                self.setr(a[0], v - 256 if v > 127 else v)
            else:
                self.setr(a[0], self.cword(off))
        elif base in ("S2R", "S2UR"):
            self.setr(a[0], self.sr.get(a[1]))
        elif base == "CS2R":
            self.setr64(a[0], 0 if a[1] == "SRZ" else None)
        elif base == "R2UR":
            self.setr(a[0], V(a[1]))
        elif base == "HFMA2":
            if len(a) == 5 and a[1] == "-RZ" and a[2] == "RZ":
                lo, hi = (struct.unpack("<H", struct.pack("<e", float(t)))[0] for t in (a[4], a[3]))
                self.setr(a[0], lo | (hi << 16))
            else:
                raise Unknown
        elif base in ("IMAD", "UIMAD"):
            self.imad(x)
        elif base in ("IADD3", "UIADD3"):
            self.iadd3(x)
        elif base == "VIADD":
            self.setr(a[0], V(a[1]) + V(a[2]))
        elif base in ("LOP3", "ULOP3"):
            self.lop3(x)
        elif base in ("SHF", "USHF"):
            self.shf(x)
        elif base in ("LEA", "ULEA"):
            self.lea(x)
        elif base in ("SEL", "USEL"):
            p = self.pred(a[3])
            if p is None:
                raise Unknown
            self.setr(a[0], V(a[1]) if p else V(a[2]))
        elif base == "IABS":
            self.setr(a[0], abs(s32(V(a[1]))))
        elif base in ("IMNMX", "VIMNMX"):
            u = ".U32" in op
            x1, x2 = V(a[1]), V(a[2])
            if not u:
                x1, x2 = s32(x1), s32(x2)
            p = self.pred(a[3]) if len(a) > 3 else None
            self.setr(a[0], min(x1, x2) if p else max(x1, x2))
        elif base in ("ISETP", "UISETP"):
            self.isetp(x)
        elif base in ("PLOP3", "UPLOP3"):
            lut = int(a[5], 16)
            b = [self.pred(t) for t in a[2:5]]
            if None in b:
                raise Unknown
            self.setp(a[0], bool((lut >> ((b[0] << 2) | (b[1] << 1) | b[2])) & 1))
        elif base in ("I2F", "I2FP") and ".64" not in op and "U64" not in op and "S64" not in op:
            v = V(a[1])  # integer division starts from a float reciprocal: emulated, so quotients are exact
            v = v if ".U32" in op else s32(v)
            f = f32(v)
            if ".RP" in op and f < v:
                f = math.nextafter(f, math.inf)
                f = f32(f) if f32(f) >= v else f32(math.nextafter(f, math.inf))
            self.setr(a[0], fbits(f))
        elif op.startswith("MUFU.RCP") and ".64" not in op:
            f = bitsf(V(a[1]))
            self.setr(a[0], fbits(f32(1.0 / f)) if f else 0x7F800000)
        elif base == "F2I" and "TRUNC" in op and "64" not in op:
            f = bitsf(V(a[1]))
            if math.isnan(f) or math.isinf(f):
                raise Unknown
            q = int(f)
            self.setr(a[0], max(0, min(q, M32)) if ".U32" in op else max(-(1 << 31), min(q, (1 << 31) - 1)))
        elif base in ("PRMT", "UPRMT") and a[2] == "0x8880":
            v = V(a[1]) & 0xFF
            self.setr(a[0], (v - 256 if v > 127 else v) & M32)
        else:
            raise Unknown

    @staticmethod
    def lut(lut, va, vb, vc):
        r = 0
        for bit in range(32):
            ia, ib, ic = (va >> bit) & 1, (vb >> bit) & 1, (vc >> bit) & 1
            if (lut >> ((ia << 2) | (ib << 1) | ic)) & 1:
                r |= 1 << bit
        return r

    def lop3(self, x):
        a = x.args
        if re.match(r"U?P\d", a[0]):  # LOP3.LUT P, R, a, b, c, lut, pin
            v = self.lut(int(a[5], 16), self.val(a[2]), self.val(a[3]), self.val(a[4]))
            self.setp(a[0], v != 0)
            self.setr(a[1], v)
        else:
            self.setr(a[0], self.lut(int(a[4], 16), self.val(a[1]), self.val(a[2]), self.val(a[3])))

    def imad(self, x):
        op, a, V = x.op, x.args, self.val
        if ".WIDE" in op:
            u = ".U32" in op
            x1, x2 = V(a[1]), V(a[2])
            if not u:
                x1, x2 = s32(x1), s32(x2)
            c = self.reg64(a[3]) if re.match(r"U?R", a[3]) else V(a[3])
            self.setr64(a[0], x1 * x2 + c)
        elif ".HI" in op:
            c = V(a[3])
            self.setr(a[0], ((V(a[1]) * V(a[2])) >> 32) + c)
        elif ".X" in op:
            cin = self.pred(a[4]) if len(a) > 4 else False
            if cin is None:
                raise Unknown
            self.setr(a[0], V(a[1]) * V(a[2]) + V(a[3]) + int(cin))
        else:
            self.setr(a[0], V(a[1]) * V(a[2]) + V(a[3]))

    def iadd3(self, x):
        op, a, V = x.op, x.args, self.val
        preds = [t for t in a[1:] if re.match(r"!?U?P(\d|T)", t)]
        if ".X" in op:
            srcs = a[1:4]
            cins = a[4:]
            c = 0
            for t in cins:
                p = self.pred(t)
                if p is None:
                    raise Unknown
                c += int(p)
            self.setr(a[0], sum(V(t) for t in srcs) + c)
            return
        outs = a[1:1 + len(preds)]
        srcs = a[1 + len(preds):]
        s = 0
        for t in srcs:  # -x is ~x + 1 in the adder: that is what sets the carry of a 64-bit subtraction
            if t.startswith("-") and not re.match(r"-0x|-\d", t):
                s += (~V(t[1:]) & M32) + 1
            else:
                s += V(t)
        self.setr(a[0], s)
        for k, pn in enumerate(outs):
            self.setp(pn, bool((s >> (32 + k)) & 1))

    def shf(self, x):
        op, a, V = x.op, x.args, self.val
        sh = V(a[2]) & 63
        if ".L." in op and ".HI" in op:  # SHF.L.U32.HI / .U64.HI: the high word of (hi:lo) << sh
            lo, hi = V(a[1]), V(a[3])
            self.setr(a[0], ((((hi << 32) | lo) << sh) >> 32) & M32)
        elif ".L.U32" in op or ".L.W.U32" in op:
            lo, hi = V(a[1]), V(a[3])
            self.setr(a[0], (((hi << 32) | lo) << sh) & M32)
        elif ".L.U64.HI" in op:
            lo, hi = V(a[1]), V(a[3])
            self.setr(a[0], ((((hi << 32) | lo) << sh) >> 32) & M32)
        elif ".R.S32.HI" in op:
            self.setr(a[0], s32(V(a[3])) >> min(sh, 31))
        elif ".R.U32.HI" in op:
            self.setr(a[0], V(a[3]) >> sh)
        elif ".R.S64" in op:
            lo, hi = V(a[1]), V(a[3])
            v = (s32(hi) << 32) | lo
            self.setr(a[0], v >> sh)
        elif ".R.U64" in op:
            lo, hi = V(a[1]), V(a[3])
            self.setr(a[0], ((hi << 32) | lo) >> sh)
        else:
            raise Unknown

    def lea(self, x):
        op, a, V = x.op, x.args, self.val
        if ".HI" in op:
            if ".X.SX32" in op:  # LEA.HI.X.SX32 d, a, b, sh, P
                lo = V(a[1])
                hi = (-1 if lo >> 31 else 0) & M32
                b, sh, cin = V(a[2]), V(a[3]), self.pred(a[4])
            elif ".X" in op:  # LEA.HI.X d, lo, b, hi, sh, P
                lo, b, hi, sh, cin = V(a[1]), V(a[2]), V(a[3]), V(a[4]), self.pred(a[5])
            elif re.match(r"U?P\d", a[1]):  # LEA.HI d, P, lo, b, hi, sh: with a carry out
                lo, b, hi, sh = V(a[2]), V(a[3]), V(a[4]), V(a[5])
                v = b + (((((hi << 32) | lo) << sh) >> 32) & M32)
                self.setp(a[1], bool(v >> 32))
                self.setr(a[0], v)
                return
            else:  # LEA.HI d, lo, b, hi, sh
                lo, b, hi, sh, cin = V(a[1]), V(a[2]), V(a[3]), V(a[4]), False
            if cin is None:
                raise Unknown
            self.setr(a[0], b + (((((hi << 32) | lo) << sh) >> 32) & M32) + int(cin))
            return
        if re.match(r"U?P\d", a[1]):  # LEA d, P, a, b, sh
            v = (V(a[2]) << V(a[4])) + V(a[3])
            self.setp(a[1], bool((((V(a[2]) << V(a[4])) & M32) + V(a[3])) >> 32))
        else:
            v = (V(a[1]) << V(a[3])) + V(a[2])
        self.setr(a[0], v)

    def isetp(self, x):
        op, a, V = x.op, x.args, self.val
        parts = op.split(".")
        cmp_ = parts[1]
        u = "U32" in parts
        boolop = next(p for p in parts if p in ("AND", "OR", "XOR"))
        ex = "EX" in parts
        x1, x2 = V(a[2]), V(a[3])
        if x1 is None or x2 is None:
            raise Unknown
        if not u:
            x1, x2 = s32(x1), s32(x2)
        pc = self.pred(a[4])
        if ex:
            plo = self.pred(a[5])
            if plo is None:
                raise Unknown
            eq = x1 == x2
            strict = {"LT": x1 < x2, "LE": x1 < x2, "GT": x1 > x2, "GE": x1 > x2, "EQ": False, "NE": x1 != x2}[cmp_]
            if cmp_ == "EQ":
                r = eq and plo
            elif cmp_ == "NE":
                r = strict or plo
            else:
                r = strict or (eq and plo)
        else:
            r = {"LT": x1 < x2, "LE": x1 <= x2, "GT": x1 > x2, "GE": x1 >= x2, "EQ": x1 == x2, "NE": x1 != x2}[cmp_]
        if pc is None:
            raise Unknown
        comb = {"AND": lambda p, q: p and q, "OR": lambda p, q: p or q, "XOR": lambda p, q: p != q}[boolop]
        self.setp(a[0], comb(r, pc))
        self.setp(a[1], comb(not r, pc))


# ---- parameters -------------------------------------------------------------

SIZES = {"ptr": 8, "i64": 8, "i32": 4, "f32": 4, "bool": 1}
PARAM_BASE = 0x210  # sm_90 kernel parameters in constant bank 0


def pack_params(params, grid, block):
    """params: [(type, value)] or ('struct', [(type, value)...]) with natural alignment."""
    buf = bytearray(PARAM_BASE + 0x400)
    struct.pack_into("<III", buf, 0, *block)
    struct.pack_into("<III", buf, 0xC, *grid)
    off = PARAM_BASE

    def put(t, v, off):
        size = SIZES[t]
        off = (off + size - 1) // size * size
        if t == "f32":
            struct.pack_into("<f", buf, off, v)
        elif t == "bool":
            buf[off] = int(bool(v))
        else:
            buf[off:off + size] = int(v).to_bytes(size, "little", signed=True)
        return off + size
    for t, v in params:
        if t == "struct":
            off = (off + 7) // 8 * 8
            for tt, vv in v:
                off = put(tt, vv, off)
            off = (off + 7) // 8 * 8
        else:
            off = put(t, v, off)
    return bytes(buf)


P = 0x7F0000000000  # a non-null device pointer


def ptr(k):
    return ("ptr", P + k * 0x10000000)


NULL = ("ptr", 0)

# ---- the launches of the benchmarks -----------------------------------------


def resident(regs, smem_static, smem_dyn, threads=256):
    warps = threads // 32
    regs_per_warp = -(-regs * 32 // 256) * 256
    by_regs = (REGS_PER_SM // max(regs_per_warp, 1)) // warps
    by_smem = SMEM_PER_SM // (smem_static + smem_dyn + SMEM_RESERVED)
    return min(THREADS_PER_SM // threads, 32, by_regs, by_smem)


def tile_rows(row_len, acc=4):
    n = min((48 * 1024 - 1024) // ((row_len | 1) * acc), 256)
    return n - n % 32 if n >= 32 else n


def cases():
    """(label, header, mangled-name regex, params(grid) -> list, grid(res) -> int|tuple, block,
    dyn smem, elements, unit)."""
    out = []
    # QFL: 358400 x 80 (batch 16 x 22400 anchors, 80 classes), no weight, reduction 'mean' -> op 'sum'.
    R, C = 358400, 80
    for dt, V, esz, tag in (("ff", 4, 4, "float32"), ("13__nv_bfloat16f", 8, 2, "bfloat16")):
        npk = R * C // V
        out.append(dict(label=f"qfl_forward_sum_kernel {tag}", header="losses",
                        regex=rf"qfl_forward_sum_kernelI{dt}Li{V}ELb1EiE",
                        params=lambda g: [ptr(0), ptr(1), ptr(2), NULL, ("i32", R), ("i32", C), ("f32", 2.0), ptr(3)],
                        grid=lambda res, npk=npk: min(-(-npk // 256), SMS * res), smem=0, elements=R * C,
                        unit="logit", bytes=R * C * esz + R * 12 + 0))
        out.append(dict(label=f"qfl_backward_kernel {tag}", header="losses",
                        regex=rf"qfl_backward_kernelI{dt}Li{V}ELb1EiE",
                        params=lambda g: [ptr(0), ptr(1), ptr(2), NULL, ptr(4), ("f32", 0.1), ("bool", 0), ("i32", R),
                                          ("i32", C), ("f32", 2.0), ptr(5)],
                        grid=lambda res, npk=npk: min(-(-npk // 256), SMS * res), smem=0, elements=R * C,
                        unit="logit", bytes=2 * R * C * esz + R * 12))
    out.append(dict(label="qfl_forward_rows_kernel float32 (reduction='none')", header="losses",
                    regex=r"qfl_forward_rows_kernelIffLi4ELb1EE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), NULL, ("i64", R), ("i64", C), ("i32", 4), ("f32", 2.0),
                                      ptr(3)],
                    grid=lambda res: min(-(-R * 4 // 256), SMS * res), smem=0, elements=R * C, unit="logit",
                    bytes=R * C * 4 + R * 16))
    out.append(dict(label="sum_partials_kernel (QFL: 792 partials)", header="losses",
                    regex=r"sum_partials_kernelIfE",
                    params=lambda g: [ptr(0), ("i32", 792), ("f32", 0.1), ptr(1), NULL],
                    grid=lambda res: 1, smem=0, elements=1, unit="call", bytes=792 * 4 + 4))
    # DFL: 52000 x 17, weight given, 'mean' -> 'sum'.
    M, N1 = 52000, 17
    pt = tile_rows(N1)
    out.append(dict(label="dfl_forward_kernel float32", header="losses", regex=r"dfl_forward_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ("i64", M), ("i32", N1), ("i32", pt), NULL, ptr(3)],
                    grid=lambda res: min(-(-M // pt), SMS * min(res, MAX_BLOCKS_PER_SM)), smem=pt * (N1 | 1) * 4,
                    elements=M, unit="row", bytes=M * N1 * 4 + M * 8))
    out.append(dict(label="dfl_backward_kernel float32", header="losses", regex=r"dfl_backward_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ptr(3), ("f32", 0.1), ("bool", 0), ("i64", M),
                                      ("i32", N1), ("i32", pt), ptr(4)],
                    grid=lambda res: min(-(-M // pt), SMS * min(res, MAX_BLOCKS_PER_SM)), smem=pt * (N1 | 1) * 4,
                    elements=M, unit="row", bytes=2 * M * N1 * 4 + M * 8))
    # integral / decode: 16 x 22400 x 68 -> 1433600 side rows of 17.
    B, A = 16, 22400
    rows = B * A * 4
    geo_none = ("struct", [NULL, NULL, ("i64", 1), ("bool", 0), ("f32", 0.0), ("f32", 0.0)])
    geo = ("struct", [ptr(7), ptr(8), ("i64", A), ("bool", 1), ("f32", 800.0), ("f32", 1333.0)])
    for dec, g_, name in ((False, geo_none, "integral"), (True, geo, "decode")):
        out.append(dict(label=f"rows_dist_kernel<{str(dec).lower()}> ({name} fwd) float32", header="decode",
                        regex=rf"16rows_dist_kernelIffLb{int(dec)}E",
                        params=lambda g, g_=g_: [ptr(0), ("i64", rows), ("i32", N1), ("i32", pt), g_, ptr(1)],
                        grid=lambda res: min(-(-rows // pt), SMS * min(res, MAX_BLOCKS_PER_SM)),
                        smem=pt * (N1 | 1) * 4, elements=rows, unit="row",
                        bytes=rows * N1 * 4 + rows * 4 + (A * 12 if dec else 0)))
        out.append(dict(label=f"rows_dist_backward_kernel<{str(dec).lower()}> ({name} bwd) float32", header="decode",
                        regex=rf"rows_dist_backward_kernelIffLb{int(dec)}E",
                        params=lambda g, g_=g_: [ptr(2), ptr(0), ("i64", rows), ("i32", N1), ("i32", pt), g_, ptr(1)],
                        grid=lambda res: min(-(-rows // pt), SMS * min(res, MAX_BLOCKS_PER_SM)),
                        smem=pt * (N1 | 1) * 4, elements=rows, unit="row",
                        bytes=2 * rows * N1 * 4 + rows * 4 + (A * 12 if dec else 0)))
    # GFL box branch: P = 16 x 1000 positives, 4 x 17 logits each.
    Pn = 16 * 1000
    ptb = tile_rows(N1) // 4  # box_branch_tile: 4 side rows (lanes) an anchor
    out.append(dict(label="box_branch_kernel float32", header="decode", regex=r"17box_branch_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ptr(3), ptr(4), ("i64", Pn), ("i32", N1), ("i32", ptb),
                                      ptr(5), ptr(6)],
                    grid=lambda res: min(-(-Pn // ptb), SMS * min(res, MAX_BLOCKS_PER_SM)),
                    smem=ptb * 4 * (N1 | 1) * 4, elements=Pn, unit="anchor", bytes=Pn * 68 * 4 + Pn * 4 * 8))
    out.append(dict(label="box_branch_backward_kernel float32", header="decode",
                    regex=r"box_branch_backward_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ptr(3), ptr(4), ptr(5), ptr(6), ("i64", Pn),
                                      ("i32", N1), ("i32", ptb), ptr(7)],
                    grid=lambda res: min(-(-Pn // ptb), SMS * min(res, MAX_BLOCKS_PER_SM)),
                    smem=ptb * 4 * (N1 | 1) * 4, elements=Pn, unit="anchor", bytes=2 * Pn * 68 * 4 + Pn * 4 * 7))
    # GIoU loss: 16000 boxes, weight given, 'mean' with avg_factor -> 'sum'.
    out.append(dict(label="giou_loss_kernel float32", header="boxes", regex=r"16giou_loss_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ("i64", Pn), ("f32", 1e-6), NULL, ptr(3)],
                    grid=lambda res: min(-(-Pn // 256), SMS * res), smem=0, elements=Pn, unit="box",
                    bytes=Pn * 36))
    out.append(dict(label="giou_loss_backward_kernel float32", header="boxes", regex=r"giou_loss_backward_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ptr(2), ptr(3), ("f32", 0.1), ("bool", 0), ("i64", Pn), ("f32", 1e-6),
                                      ptr(4)],
                    grid=lambda res: min(-(-Pn // 256), SMS * res), smem=0, elements=Pn, unit="box",
                    bytes=Pn * 52))
    # box_iou pairwise 4000 x 4000 (the measured size), the bench's 16 x 22400 x 100 (IoU and GIoU) and
    # 16 x 22400 x 7 (a COCO image's gt count): each on the tile width box_iou picks (iou_cols), the last two
    # also on the other width.
    def iou_cols(m):
        return 8 if -(-m // 8) * 8 * 109 < -(-m // 32) * 32 * 100 else 32

    for n, m, b, tag, giou, cols in ((4000, 4000, 1, "4000x4000", 0, None), (22400, 100, 16, "16x22400x100", 0, None),
                                     (22400, 100, 16, "16x22400x100", 1, None), (22400, 100, 16, "16x22400x100", 0, 32),
                                     (22400, 7, 16, "16x22400x7", 0, None), (22400, 7, 16, "16x22400x7", 0, 32)):
        c = cols or iou_cols(m)
        out.append(dict(label=f"box_iou_pairwise_kernel<{'giou' if giou else 'iou'}, {c}> {tag}", header="boxes",
                        regex=rf"box_iou_pairwise_kernelIffLb{giou}ELi{c}E",
                        params=lambda g, n=n, m=m: [ptr(0), ptr(1), ("i64", n), ("i64", m), ("f32", 1e-6), ptr(2)],
                        grid=lambda res, n=n, m=m, b=b, c=c: (-(-m // c), -(-n // (4096 // c)), b),
                        block=(c, 256 // c, 1), smem=0,
                        elements=b * n * m, unit="output", bytes=b * (n * 16 + m * 16 + n * m * 4)))
    out.append(dict(label="box_iou_aligned_kernel<iou> 16000", header="boxes", regex=r"box_iou_aligned_kernelIffE",
                    params=lambda g: [ptr(0), ptr(1), ("i64", Pn), ("f32", 1e-6), ("bool", 0), ptr(2)],
                    grid=lambda res: min(-(-Pn // 256), SMS * res), smem=0, elements=Pn, unit="box",
                    bytes=Pn * 36))
    return out


def loops(ins):
    """(first, last) index pairs of backward branches: the loops, innermost ones short."""
    at = {x.addr: i for i, x in enumerate(ins)}
    out = []
    for i, x in enumerate(ins):
        if x.op.startswith("BRA") and not x.op.startswith("BRA.DIV"):
            t = int(re.search(r"0x([0-9a-f]+)", x.args[-1]).group(1), 16)
            if t < x.addr:
                out.append((at[t], i))
    return out


def sample_blocks(grid3):
    """(block index, weight) pairs standing for the whole grid. 1-D: the first, middle and last
    blocks (a grid-stride or tile loop gives blocks at most one iteration apart, and only the last
    block can hold a partial tile); more dimensions: the corners, the first block of each dimension
    standing for all but the last."""
    gx, gy, gz = grid3
    if gy == gz == 1:
        if gx <= 2:
            return [((b, 0, 0), 1.0) for b in range(gx)]
        return [((0, 0, 0), (gx - 1) / 2), ((gx // 2, 0, 0), (gx - 1) / 2), ((gx - 1, 0, 0), 1.0)]
    out = []
    for x, wx in ((0, gx - 1), (gx - 1, 1)) if gx > 1 else ((0, 1),):
        for y, wy in ((0, gy - 1), (gy - 1, 1)) if gy > 1 else ((0, 1),):
            for z, wz in ((0, gz - 1), (gz - 1, 1)) if gz > 1 else ((0, 1),):
                out.append(((x, y, z), wx * wy * wz))
    return out


def simulate(ins, c, res):
    """Warp-instruction totals over the grid, and the most exposed load rounds of any thread walked."""
    grid = c["grid"](res)
    grid3 = grid if isinstance(grid, tuple) else (grid, 1, 1)
    block = c.get("block", (256, 1, 1))
    nthreads = block[0] * block[1] * block[2]
    const = pack_params(c["params"](grid3), grid3, block)
    totals, unknown, rounds, chain = {}, set(), 0, 0
    for ctaid, weight in sample_blocks(grid3):
        for w in range(nthreads // 32):
            t = w * 32
            tid = (t % block[0], (t // block[0]) % block[1], t // (block[0] * block[1]))
            th = Thread(ins, const, tid, ctaid, block, grid3)
            th.run()
            unknown |= th.unknown_branches
            rounds = max(rounds, th.counts.get("ldg.rounds", 0))
            chain = max(chain, th.counts.get("all", 0))
            for k, v in th.counts.items():
                totals[k] = totals.get(k, 0) + v * weight
    return grid3, totals, unknown, rounds, chain


COLS = ["alu", "mufu.ex2", "mufu.lg2", "mufu.rcp", "fdiv", "intdiv", "int64", "imad.wide", "ldg.128", "ldg.64",
        "ldg.32", "ldg.16", "stg.128", "stg.32", "stg.16", "lds", "sts", "shfl", "bar", "atomic"]
LATENCY_S = 0.6e-6  # assumed DRAM load latency under load (H100/H200 class): an estimate, not a measurement
DEP_CYCLES = 4  # assumed cycles per instruction of one thread's dependent chain (FP32 latency ~4 cycles)


def estimate(c, ins, regs, smem_static):
    """The bounds of one launch (case c) of the kernel whose SASS is `ins`."""
    nth = math.prod(c.get("block", (256, 1, 1)))
    res = resident(regs, smem_static, c["smem"], nth)
    grid, tot, unknown, rounds, chain = simulate(ins, c, res)
    nb = math.prod(grid)
    waves = max(1.0, nb / (SMS * res))
    el = c["elements"]
    x = dict(c, regs=regs, smem_total=smem_static + c["smem"], res=res, grid=grid, nblocks=nb,
             per={k: v * 32 / el for k, v in tot.items()}, tot=tot, unknown=unknown, rounds=rounds,
             issue_us=tot.get("all", 0) / ISSUE_PER_S * 1e6,
             alu_us=2 * tot.get("alu", 0) / ISSUE_PER_S * 1e6,
             mufu_us=tot.get("mufu", 0) * 32 / MUFU_PER_S * 1e6,
             bw_us=c["bytes"] / 4.21e12 * 1e6,
             lat_us=(rounds * LATENCY_S + chain * DEP_CYCLES / CLK) * 1e6 * math.ceil(waves),
             chain=chain, static=len(ins), loops=loops(ins))
    bounds = {"bandwidth": x["bw_us"], "issue": x["issue_us"], "ALU pipe": x["alu_us"], "MUFU": x["mufu_us"],
              "latency": x["lat_us"]}
    x["bound"] = max(bounds, key=bounds.get)
    x["est_us"] = bounds[x["bound"]]
    return x


def model(funcs, regs):
    rows = []
    for c in cases():
        name = next((n for n in funcs[c["header"]] if re.search(c["regex"], n)), None)
        if name is None:
            rows.append(dict(c, missing=True))
            continue
        rows.append(dict(estimate(c, funcs[c["header"]][name], *regs.get(name, (0, 0))), name=name))
    return rows


def fmt_grid(g):
    return str(g[0]) if g[1] == g[2] == 1 else "x".join(map(str, g))


def report(rows, code=None):
    """Prints the tables of `rows` (estimate()'s); code: {kernel name: SASS} to list the loops too."""
    print("## Per kernel: resources, grid, bounds (estimates from SASS; H200 sm_90)\n")
    print("| kernel | regs | smem/block (B) | blocks/SM | grid (blocks/SM) | elements | MB moved | bandwidth (us) "
          "| instr/element | issue (us) | ALU pipe (us) | MUFU/element | MUFU (us) | exposed load rounds/thread "
          "| instr of the longest thread | latency floor (us) | kernel estimate (us) | bound |")
    print("|" + "---|" * 18)
    for x in rows:
        if x.get("missing"):
            print(f"| {x['label']} | not found |")
            continue
        print(f"| {x['label']} | {x['regs']} | {x['smem_total']} | {x['res']} | {fmt_grid(x['grid'])} "
              f"({x['nblocks'] / SMS:.2f}) | {x['elements']} {x['unit']}s | {x['bytes'] / 1e6:.1f} | {x['bw_us']:.1f} | "
              f"{x['per'].get('all', 0):.1f} | {x['issue_us']:.1f} | {x['alu_us']:.1f} | "
              f"{x['per'].get('mufu', 0):.2f} | {x['mufu_us']:.1f} | {x['rounds']} | {x['chain']} | {x['lat_us']:.1f} | "
              f"{x['est_us']:.1f} | {x['bound']} |")
    print("\n## Per element along the walked path (thread-instructions per element)\n")
    print("| kernel | instr | " + " | ".join(COLS) + " | unknown branches |")
    print("|" + "---|" * (len(COLS) + 3))
    for x in rows:
        if x.get("missing"):
            continue
        cols = " | ".join(f"{x['per'].get(k, 0):.3g}" for k in COLS)
        print(f"| {x['label']} | {x['per'].get('all', 0):.1f} | {cols} | "
              f"{' '.join(hex(u) for u in sorted(x['unknown'])) or '-'} |")
    if code is not None:
        print("\n## Static loops (backward branches) of each kernel\n")
        for x in rows:
            if x.get("missing"):
                continue
            ins = code[x["name"]]
            print(f"- {x['label']} ({x['static']} instructions):")
            for j, i in x["loops"]:
                cnt = {}
                for y in ins[j:i + 1]:
                    for k in classes(y):
                        cnt[k] = cnt.get(k, 0) + 1
                print(f"  - {ins[j].addr:#06x}-{ins[i].addr:#06x}: {i - j + 1} instructions; "
                      + ", ".join(f"{k} {v}" for k, v in sorted(cnt.items())))
    print("\nissue = warp-instructions / (132 SMs x 4 schedulers x 1.98 GHz); ALU pipe = 2 cycles per ALU "
          "warp-instruction (IADD3, LOP3, ISETP, FSETP, FSEL, SEL, FMNMX, SHF, LEA, ...: 16 lanes per "
          "sub-partition); MUFU = thread-level MUFU ops / (132 x 16/clk x 1.98 GHz); bandwidth = bytes / 4.21 TB/s "
          "(the measured 1 GiB copy); latency floor = (exposed global-load rounds of the busiest thread x "
          f"{LATENCY_S * 1e6:.1f} us, an assumed DRAM latency, + its instructions x {DEP_CYCLES} cycles) x waves; "
          "kernel estimate = the largest of these. Every number here is an estimate.")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="write the .cu, .cubin, .sass and ptxas logs here")
    ap.add_argument("--sass-dir", help="reuse the .sass/.ptxas files of an earlier --keep run (no compile)")
    ap.add_argument("--loops", action="store_true", help="also list every loop's static body")
    args = ap.parse_args()
    if args.sass_dir:
        d = args.sass_dir
    else:
        d = args.keep or tempfile.mkdtemp(prefix="sass_model_")
        os.makedirs(d, exist_ok=True)
        compile_all(d)
    funcs, regs = {}, {}
    for h in HEADERS:
        funcs[h] = parse_sass(os.path.join(d, f"{h}.sass"))
        regs.update(read_ptxas(os.path.join(d, f"{h}.ptxas")))
    rows = model(funcs, regs)
    report(rows, {x['name']: funcs[x['header']][x['name']] for x in rows if not x.get('missing')}
           if args.loops else None)


if __name__ == "__main__":
    main()
