"""All benchmarks in one run: `python -m benchmarks [--device cuda] [--size ...] [--dtype ...] [--quick]`.

The assignment, NMS and AutoAssign benchmarks sweep their own sizes and take
only --device and --quick; the thread scaling and the host cost per call run
on the CPU (--quick only).
Each benchmark turns a failing provider into a row with its note; a
benchmark that still stops (or whose every provider failed) does not stop
the ones after it, and makes the exit status 1."""
import sys
import traceback

from benchmarks import (bench_assign, bench_autoassign, bench_boxes, bench_host, bench_losses, bench_nms,
                        bench_threads)


def _device_args(argv):
    out = []
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            out += [a, argv[i + 1]]
        elif a.startswith("--device="):
            out.append(a)
    return out


def _quick_args(argv):
    return ["--quick"] * ("--quick" in argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    runs = [(bench_losses, argv), (bench_boxes, argv),
            *((b, _device_args(argv) + _quick_args(argv)) for b in (bench_assign, bench_nms, bench_autoassign)),
            (bench_threads, _quick_args(argv)), (bench_host, _quick_args(argv))]
    status = 0
    for bench, args in runs:
        try:
            status = max(status, bench.main(args) or 0)
        except Exception:  # noqa: BLE001 - one benchmark's crash is reported, the next still runs
            traceback.print_exc()
            print(f"{bench.__name__} stopped; going on with the next benchmark", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
