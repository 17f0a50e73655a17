"""All benchmarks in one run: `python -m benchmarks [--device cuda] [--size ...] [--dtype ...]`.

The assignment, NMS and AutoAssign benchmarks sweep their own sizes and take
only --device; the thread scaling runs on the CPU."""
import sys

from benchmarks import bench_assign, bench_autoassign, bench_boxes, bench_losses, bench_nms, bench_threads


def _device_args(argv):
    out = []
    for i, a in enumerate(argv):
        if a == "--device" and i + 1 < len(argv):
            out += [a, argv[i + 1]]
        elif a.startswith("--device="):
            out.append(a)
    return out


if __name__ == "__main__":
    for bench in (bench_losses, bench_boxes):
        bench.main(sys.argv[1:])
    bench_assign.main(_device_args(sys.argv[1:]))
    bench_nms.main(_device_args(sys.argv[1:]))
    bench_autoassign.main(_device_args(sys.argv[1:]))
    bench_threads.main()
