"""The launch shapes of the Triton kernels: tile sizes, grid and warps.

launch.py launches with these, and tools/triton_model.py (which loads this
file by path, without gflops' C++ extension) models the same launches, so the
model is of the kernels as they run. `interpreted`: Triton's CPU interpreter
pays per program, not per element, so it gets bigger tiles (same kernels,
other constexprs).
"""
import triton

NUM_WARPS = 4
# The distribution kernels hold a whole row of bins per tile row.
MAX_BINS = 1024


def tile_elems(interpreted):
    # A GPU program holds 512 values, 4 a thread at 4 warps: the SASS model (tools/triton_model.py)
    # put 4096 (32 a thread) at 104-255 registers, 2-4 blocks an SM and latency-bound (QFL backward 630 us
    # at 358400 x 80, decode backward 1035 us), 512 at 32-56 registers, 9-16 blocks, issue-bound.
    return 32768 if interpreted else 512


def rows_per_program(cols_block, interpreted):
    return max(1, tile_elems(interpreted) // cols_block)


def qfl_blocks(cols, interpreted):
    """(BLOCK_N rows, BLOCK_C columns) of a QFL program, which loops over the columns in BLOCK_C
    steps: the widest power of two that masks at most 1/16 of the lanes, else the one that masks
    fewest (80 classes: 16, five full steps, where one 128-wide step masked 48 lanes a row)."""
    cols = max(cols, 1)
    widths = (256, 128, 64, 32, 16, 8)
    padded = {b: -(-cols // b) * b for b in widths}
    fit = [b for b in widths if padded[b] * 16 <= cols * 17]
    block_c = fit[0] if fit else min(widths, key=lambda b: (padded[b], -b))
    return rows_per_program(block_c, interpreted), block_c


def bin_blocks(n1, op, interpreted):
    """(rows, HEAD, TAIL) of a distribution program (DFL, integral, decode): a row's n1 bins are a
    head of HEAD, the largest power of two <= n1, and a tail of TAIL, the smallest power of two >=
    n1 - HEAD (0: none); 17 bins are 16 + 1."""
    if n1 > MAX_BINS:
        raise RuntimeError(f"{op}: the Triton kernels take up to {MAX_BINS} bins per distribution "
                           f"(reg_max <= {MAX_BINS - 1}), got reg_max = {n1 - 1}; use the CPU or CUDA kernels")
    head = 1 << (max(n1, 1).bit_length() - 1)
    tail = triton.next_power_of_2(n1 - head) if n1 > head else 0
    # 32 rows of 17 bins (544 values; the head and tail tiles hold 16 x 32 + 32): 16 rows made the
    # integral 10% slower by the model, the per-program work spread over fewer rows.
    return rows_per_program(max(triton.next_power_of_2(head + tail) // 2, 1), interpreted), head, tail


def wide(rows, block_rows, cols):
    """Whether the offsets of a rows x cols tensor, up to the last program's padding rows, need
    64 bits (the kernels' WIDE): 32-bit index arithmetic otherwise."""
    return -(-rows // block_rows) * block_rows * max(cols, 1) >= 2**31
