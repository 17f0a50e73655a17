"""Checks that a built gflops library uses the process's C++ runtime.

    python tools/check_cxx_runtime.py [LIBRARY]

LIBRARY defaults to the ahead-of-time build beside the package (gflops/_C*.so).
The first H200 run's AOT CUDA build carried its own copy of libstdc++ and
segfaulted on the first error message that printed a number; g++ 12 linking
the C++ runtime statically gives a library that prints the message without
its numbers. Each check below fails on such a library:
  1. libstdc++.so.6 is among its NEEDED libraries (readelf -d);
  2. it defines none of libstdc++'s own symbols (nm -D --defined-only);
  3. a bad-input call whose message holds a shape raises a clean RuntimeError
     with the shape in it, in a subprocess (a crash is a signal there);
  4. gflops' loader accepts it (its load-time check, an ImportError otherwise).
Exit status 0 when all pass, 1 otherwise.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Defined by libstdc++ itself, never instantiated in a user's object files.
RUNTIME_SYMBOLS = ("_ZNSt6locale7classicEv", "_ZNSt8ios_base4InitC1Ev", "_ZNSo9_M_insertIlEERSoT_")
EXPECTED = "got shape [3, 5]"

# Loads the library with importlib alone (no gflops package, no load-time
# check), so that check 3 sees what a bad-input call does on its own.
BAD_CALL = """
import importlib.util, sys, torch
path = sys.argv[1]
spec = importlib.util.spec_from_file_location(path.rsplit('/', 1)[-1].split('.')[0], path)
spec.loader.exec_module(importlib.util.module_from_spec(spec))
try:
    torch.ops.gflops.box_iou(torch.zeros(3, 5), torch.zeros(2, 4), 'iou', False, 1e-6)
except RuntimeError as e:
    print(str(e).splitlines()[0])
"""
LOADER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location('gflops_ext', sys.argv[2] + '/gflops/_ext.py')
ext = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ext)
ext.load_file(sys.argv[1])
"""


def _run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def checks(lib):
    """[(name, passed, detail)] for the library at `lib`."""
    out = []
    dyn = _run(["readelf", "-d", lib])
    needed = [line.split("[")[1].rstrip("]") for line in dyn.stdout.splitlines() if "(NEEDED)" in line]
    out.append(("libstdc++.so.6 is NEEDED", "libstdc++.so.6" in needed, f"NEEDED: {', '.join(needed) or dyn.stderr}"))
    syms = _run(["nm", "-D", "--defined-only", lib])
    own = [s for s in RUNTIME_SYMBOLS if s in syms.stdout]
    out.append(("defines no libstdc++ symbol", syms.returncode == 0 and not own,
                f"defines {', '.join(own)}" if own else syms.stderr.strip() or "none defined"))
    bad = _run([sys.executable, "-c", BAD_CALL, lib])
    msg = bad.stdout.strip()
    ok = bad.returncode == 0 and msg.endswith(EXPECTED)
    detail = f"message: {msg!r}" if bad.returncode == 0 else f"exit status {bad.returncode}: {bad.stderr[-300:]}"
    out.append(("bad input raises a RuntimeError with its shape", ok, detail))
    load = _run([sys.executable, "-c", LOADER, lib, str(ROOT)])
    out.append(("gflops' loader accepts it", load.returncode == 0,
                load.stderr.strip().splitlines()[-1] if load.returncode else "loaded"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", nargs="?", help="the built library (default: gflops/_C*.so)")
    args = parser.parse_args()
    lib = args.library
    if lib is None:
        found = sorted((ROOT / "gflops").glob("_C*.so"))
        if not found:
            sys.exit("check_cxx_runtime: no gflops/_C*.so; build it first (pip install --no-build-isolation -e .)")
        lib = str(found[0])
    results = checks(lib)
    print(f"C++ runtime of {lib}:")
    for name, passed, detail in results:
        print(f"  {'PASS' if passed else 'FAIL'}  {name}: {detail}")
    sys.exit(0 if all(p for _, p, _ in results) else 1)


if __name__ == "__main__":
    main()
