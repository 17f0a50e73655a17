"""The launch shapes of the Triton kernels: tile sizes, grid and warps.

launch.py launches with these, and tools/triton_model.py (which loads this
file by path, without gflops' C++ extension) models the same launches, so the
model is of the kernels as they run. `interpreted`: Triton's CPU interpreter
pays per program, not per element, so it gets bigger tiles (same kernels,
other constexprs).
"""
NUM_WARPS = 4
# The distribution kernels hold a whole row of bins per tile row.
MAX_BINS = 1024


# triton.next_power_of_2 and triton.cdiv are constexpr functions in Triton 3.9, ~1 us a call through
# their wrapper: five of them a launch were a fifth of a DFL forward's host time on the Triton path.
def pow2_ceil(n):
    return 1 << max(n - 1, 0).bit_length()


def cdiv(a, b):
    return -(-a // b)


def tile_elems(interpreted):
    # A GPU program holds 512 values, 4 a thread at 4 warps: the SASS model (tools/triton_model.py)
    # put 4096 (32 a thread) at up to 255 registers and 2-4 blocks an SM in the QFL, DFL and backward
    # kernels, waiting on memory (QFL backward 630 us at 358400 x 80, decode backward 1035 us); 512 at
    # 30-56 registers and 9-16 blocks, bound by issue or bandwidth.
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
    tail = pow2_ceil(n1 - head) if n1 > head else 0
    # Programs of twice QFL's padded values: 17 bins are 32 rows of 16 + 1 (tiles of 32 x 16 and
    # 32 x 1); at 16 rows the model had the integral 10% slower, the per-program work over fewer rows.
    return rows_per_program(max(pow2_ceil(head + tail) // 2, 1), interpreted), head, tail


def wide(rows, block_rows, row_len, row_reach):
    """Whether a kernel's offsets into a rows x row_len tensor need 64 bits (its WIDE): the largest one
    it computes, masked or not, is that of the last program's last padding row plus the reach of its
    column tiles (row_reach: the columns rounded up to the column step, or a row's head and tail tiles),
    (P - 1) * row_len + row_reach - 1 for P = the rows rounded up to the program's. 32-bit otherwise."""
    padded = -(-rows // block_rows) * block_rows
    return (padded - 1) * row_len + max(row_reach, row_len) - 1 > 2**31 - 1


def qfl_wide(rows, cols, block_n, block_c):
    """wide() of a QFL launch with qfl_blocks' (block_n, block_c)."""
    return wide(rows, block_n, cols, -(-cols // block_c) * block_c)


def bins_wide(rows, n1, block_r, head, tail):
    """wide() of a distribution launch with bin_blocks' (block_r, head, tail)."""
    return wide(rows, block_r, n1, head + tail)
