"""All benchmarks in one run: `python -m benchmarks [--device cuda] [--size ...] [--dtype ...]`."""
import sys

from benchmarks import bench_boxes, bench_losses

if __name__ == "__main__":
    for bench in (bench_losses, bench_boxes):
        bench.main(sys.argv[1:])
