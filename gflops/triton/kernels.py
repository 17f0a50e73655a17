"""Triton kernels of the loss and decoding family (SPEC.md sections 1-3).

The formulas are the ones of csrc/common (qfl.h, dfl.h, integral.h,
box_branch.h) written in Triton's tile language: the same sigmoid/BCE from
one exp(-|x|), the same log1p correction, the same target split and clamps,
so that the two backends agree to rounding. Each program owns a tile of rows
(rows x a power-of-two number of columns, masked); a 'sum' writes one partial
per program, which the launcher adds with torch.sum (deterministic, and one
ATen op costs the host less than a second Triton launch), so results are
bitwise reproducible (no atomics). Accumulation is float32 (float64 for
float64 logits: ACC is the accumulation dtype).
"""
import triton
import triton.language as tl


@triton.jit
def _program_rows(BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """This program's BLOCK rows. 64-bit only when the launcher says a tensor's offsets need it
    (WIDE): every offset computed from the rows takes their width, and 64-bit address and index
    arithmetic was a tenth of the distribution kernels' instructions (tools/triton_model.py)."""
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    return pid * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _log1p_unit(e, ACC: tl.constexpr):
    """log1p(e) for e in [0, 1]. float32: csrc/common/math.h's glog1p_unit, e * P(e) with P its
    degree-8 fit (nine multiply-adds, within 2.4 ulp), the function every backend computes; float64:
    log(u) * e / (u - 1), which cancels the rounding of u = 1 + e (no libdevice in the interpreter)."""
    if ACC == tl.float64:
        u = 1.0 + e
        d = u - 1.0
        return tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
    else:
        p = e * 5.253457929939032e-3 - 2.958850748836994e-2
        p = p * e + 7.836166769266129e-2
        p = p * e - 1.3674770295619965e-1
        p = p * e + 1.9111430644989014e-1
        p = p * e - 2.4844369292259216e-1
        p = p * e + 3.3319270610809326e-1
        p = p * e - 4.9999502301216125e-1
        p = p * e + 1.0
        return p * e


@triton.jit
def _pow_nonneg(a, b):
    # a^b for a >= 0 with 0^0 = 1 (SPEC section 1).
    v = tl.exp(b * tl.log(tl.where(a > 0.0, a, 1.0)))
    return tl.where(a > 0.0, v, tl.where(b == 0.0, 1.0, 0.0))


@triton.jit
def _sigmoid_bce(x, y, ACC: tl.constexpr):
    e = tl.exp(-tl.abs(x))
    inv = 1.0 / (1.0 + e)
    s = tl.where(x >= 0.0, inv, e * inv)
    bce = tl.maximum(x, 0.0) - x * y + _log1p_unit(e, ACC)
    return s, bce


@triton.jit
def _qfl_tile(pred, label, score, rows, rmask, c0, C, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """(x, y, mask) of the tile rows x [c0, c0 + BLOCK_C)."""
    cols = c0 + tl.arange(0, BLOCK_C)
    mask = rmask[:, None] & (cols < C)[None, :]
    x = tl.load(pred + rows[:, None] * C + cols[None, :], mask=mask, other=0.0).to(ACC)
    lab = tl.load(label + rows, mask=rmask, other=-1)
    sc = tl.load(score + rows, mask=rmask, other=0.0)
    # Labels outside [0, C) never match a column; a background row's score is never read into a value.
    y = tl.where(cols[None, :] == lab[:, None], sc[:, None], 0.0)
    return x, y, mask


@triton.jit
def _row_scale(grad, weight, rows, rmask, HAS_W: tl.constexpr, GRAD_PER_ROW: tl.constexpr):
    """Per row: the incoming gradient (per row, or the one scalar) times the row's weight."""
    if GRAD_PER_ROW:
        g = tl.load(grad + rows, mask=rmask, other=0.0)
    else:
        g = tl.load(grad + rows * 0, mask=rmask, other=0.0)
    if HAS_W:
        g *= tl.load(weight + rows, mask=rmask, other=0.0)
    return g


@triton.jit
def qfl_forward_kernel(pred, label, score, weight, out, N, C, beta_ptr,
                       BETA2: tl.constexpr, HAS_W: tl.constexpr, SUM: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    pid = tl.program_id(0)
    rows = _program_rows(BLOCK_N, WIDE)
    rmask = rows < N
    beta = 2.0 if BETA2 else tl.load(beta_ptr)  # BETA2: beta_ptr may be any pointer, even of no element
    acc = tl.zeros((BLOCK_N,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        x, y, mask = _qfl_tile(pred, label, score, rows, rmask, c0, C, ACC, BLOCK_C)
        s, bce = _sigmoid_bce(x, y, ACC)
        d = s - y
        if BETA2:
            mod = d * d
        else:
            mod = _pow_nonneg(tl.abs(d), beta)
        acc += tl.sum(tl.where(mask, bce * mod, 0.0), axis=1)
    if HAS_W:
        acc *= tl.load(weight + rows, mask=rmask, other=0.0)
    if SUM:
        tl.store(out + pid, tl.sum(tl.where(rmask, acc, 0.0), axis=0))
    else:
        tl.store(out + rows, acc, mask=rmask)


@triton.jit
def qfl_backward_kernel(grad, pred, label, score, weight, out, N, C, beta_ptr,
                        BETA2: tl.constexpr, HAS_W: tl.constexpr, GRAD_PER_ROW: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, WIDE: tl.constexpr):
    rows = _program_rows(BLOCK_N, WIDE)
    rmask = rows < N
    beta = 2.0 if BETA2 else tl.load(beta_ptr)  # BETA2: beta_ptr may be any pointer, even of no element
    g = _row_scale(grad, weight, rows, rmask, HAS_W, GRAD_PER_ROW)
    for c0 in range(0, C, BLOCK_C):
        x, y, mask = _qfl_tile(pred, label, score, rows, rmask, c0, C, ACC, BLOCK_C)
        s, bce = _sigmoid_bce(x, y, ACC)
        d = s - y
        ds = s * (1.0 - s)
        if BETA2:
            dx = 2.0 * d * ds * bce + d * d * d
        else:
            ad = tl.abs(d)
            sign = tl.where(d > 0.0, 1.0, tl.where(d < 0.0, -1.0, 0.0))
            p = _pow_nonneg(ad, beta)
            # |d|^(beta-1) s(1-s) as (|d|^beta s(1-s)) / |d|, finite for beta < 1 (as qfl.h).
            first = tl.where(ad > 0.0, beta * sign * ((p * ds) / tl.where(ad > 0.0, ad, 1.0)) * bce, 0.0)
            dx = first + p * d
        cols = c0 + tl.arange(0, BLOCK_C)
        offs = rows[:, None] * C + cols[None, :]
        tl.store(out + offs, (g[:, None] * dx).to(out.dtype.element_ty), mask=mask)


@triton.jit
def _bins_tile(pred, rows, rmask, n1: tl.constexpr, B0: tl.constexpr, W: tl.constexpr, ACC: tl.constexpr):
    """Bins [B0, B0 + W) of each row as a (rows, W) tile; bins past the row's n1 are -inf."""
    bins = B0 + tl.arange(0, W)
    bmask = bins < n1
    mask = rmask[:, None] & bmask[None, :]
    x = tl.load(pred + rows[:, None] * n1 + bins[None, :], mask=mask, other=0.0).to(ACC)
    x = tl.where(bmask[None, :], x, float("-inf"))
    return x, bins, mask


@triton.jit
def _row_tiles(pred, rows, rmask, n1: tl.constexpr, ACC: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr):
    """A row's n1 bins as a head tile of HEAD (a power of two <= n1) and, when n1 > HEAD, a tail tile of
    TAIL (a power of two >= n1 - HEAD): 17 bins are 16 + 1, not 32 with 15 masked. Triton spreads a row
    of the head over HEAD lanes and repeats each row's own work on all of them, so the narrower the row,
    the less is repeated and reduced by shuffles (tools/triton_model.py). Without a tail the tail is the
    head again, never read."""
    xh, bh, mh = _bins_tile(pred, rows, rmask, n1, 0, HEAD, ACC)
    if TAIL > 0:
        xt, bt, mt = _bins_tile(pred, rows, rmask, n1, HEAD, TAIL, ACC)
    else:
        xt, bt, mt = xh, bh, mh
    return xh, bh, mh, xt, bt, mt


@triton.jit
def _row_sum(vh, vt, TAIL: tl.constexpr):
    s = tl.sum(vh, axis=1)
    if TAIL > 0:
        s += tl.sum(vt, axis=1)
    return s


@triton.jit
def _lse_dist(xh, bh, xt, bt, TAIL: tl.constexpr):
    """Per row: log-sum-exp and the expected bin sum_b softmax(x)[b] * b."""
    m = tl.max(xh, axis=1)
    if TAIL > 0:
        m = tl.maximum(m, tl.max(xt, axis=1))
    eh = tl.exp(xh - m[:, None])
    et = tl.exp(xt - m[:, None]) if TAIL > 0 else eh
    s = _row_sum(eh, et, TAIL)
    dist = _row_sum(eh * bh[None, :].to(xh.dtype), et * bt[None, :].to(xh.dtype), TAIL) / s
    return m + tl.log(s), dist


@triton.jit
def _dfl_split(target, n1: tl.constexpr):
    """(l, wl, wr): the bins around the target, clamped to [0, n] so that no
    index leaves the row without validation; NaN becomes 0 (as dfl.h)."""
    n: tl.constexpr = n1 - 1
    t = tl.minimum(tl.maximum(target, 0.0), n * 1.0)
    t = tl.where(t == t, t, 0.0)
    lf = tl.minimum(tl.floor(t), (n - 1) * 1.0)
    return lf.to(tl.int32), (lf + 1.0) - t, t - lf


@triton.jit
def _dfl_tile(pred, target, M, n1: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr, HEAD: tl.constexpr,
              TAIL: tl.constexpr, WIDE: tl.constexpr):
    """The program's rows with their logits (head and tail tiles), log-sum-exp and target split."""
    rows = _program_rows(BLOCK_M, WIDE)
    rmask = rows < M
    xh, bh, mh, xt, bt, mt = _row_tiles(pred, rows, rmask, n1, ACC, HEAD, TAIL)
    lse, _ = _lse_dist(xh, bh, xt, bt, TAIL)
    l, wl, wr = _dfl_split(tl.load(target + rows, mask=rmask, other=0.0), n1)
    return rows, rmask, xh, bh, mh, xt, bt, mt, lse, l, wl, wr


@triton.jit
def _dfl_pick(xh, bh, xt, bt, k, TAIL: tl.constexpr):
    """Per row: its logit of bin k (exactly: the other bins add zeros)."""
    return _row_sum(tl.where(bh[None, :] == k[:, None], xh, 0.0), tl.where(bt[None, :] == k[:, None], xt, 0.0), TAIL)


@triton.jit
def dfl_forward_kernel(pred, target, weight, out, M, n1: tl.constexpr,
                       HAS_W: tl.constexpr, SUM: tl.constexpr, ACC: tl.constexpr,
                       BLOCK_M: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, WIDE: tl.constexpr):
    rows, rmask, xh, bh, _, xt, bt, _, lse, l, wl, wr = _dfl_tile(pred, target, M, n1, ACC, BLOCK_M, HEAD, TAIL,
                                                                  WIDE)
    xl = _dfl_pick(xh, bh, xt, bt, l, TAIL)
    xr = _dfl_pick(xh, bh, xt, bt, l + 1, TAIL)
    loss = wl * (lse - xl) + wr * (lse - xr)
    if HAS_W:
        loss *= tl.load(weight + rows, mask=rmask, other=0.0)
    loss = tl.where(rmask, loss, 0.0)
    if SUM:
        tl.store(out + tl.program_id(0), tl.sum(loss, axis=0))
    else:
        tl.store(out + rows, loss, mask=rmask)


@triton.jit
def _dfl_grad_store(out, rows, n1: tl.constexpr, x, bins, mask, lse, l, wl, wr, g):
    p = tl.exp(x - lse[:, None])
    hot = tl.where(bins[None, :] == l[:, None], wl[:, None], 0.0) + \
        tl.where(bins[None, :] == l[:, None] + 1, wr[:, None], 0.0)
    offs = rows[:, None] * n1 + bins[None, :]
    tl.store(out + offs, (g[:, None] * (p - hot)).to(out.dtype.element_ty), mask=mask)


@triton.jit
def dfl_backward_kernel(grad, pred, target, weight, out, M, n1: tl.constexpr,
                        HAS_W: tl.constexpr, GRAD_PER_ROW: tl.constexpr, ACC: tl.constexpr,
                        BLOCK_M: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, WIDE: tl.constexpr):
    rows, rmask, xh, bh, mh, xt, bt, mt, lse, l, wl, wr = _dfl_tile(pred, target, M, n1, ACC, BLOCK_M, HEAD, TAIL,
                                                                    WIDE)
    g = _row_scale(grad, weight, rows, rmask, HAS_W, GRAD_PER_ROW)
    _dfl_grad_store(out, rows, n1, xh, bh, mh, lse, l, wl, wr, g)
    if TAIL > 0:
        _dfl_grad_store(out, rows, n1, xt, bt, mt, lse, l, wl, wr, g)


@triton.jit
def _side_coord(rows, rmask, points, strides, anchors, dist, limits, CLAMP: tl.constexpr):
    """Row r is side k = r % 4 of box r // 4, whose anchor is (r // 4) % anchors:
    (coordinate, sign * stride * pass) of distance2bbox(point, dist * stride),
    clamped to [0, W] x [0, H]; a clamped coordinate passes no gradient."""
    k = rows % 4
    a = (rows // 4) % anchors
    pt = tl.load(points + 2 * a + (k % 2), mask=rmask, other=0.0)
    st = tl.load(strides + a, mask=rmask, other=0.0)
    sign = tl.where(k < 2, -1.0, 1.0)
    v = pt + sign * (dist * st)
    scale = sign * st
    if CLAMP:
        lim = tl.where(k % 2 == 0, tl.load(limits + 1), tl.load(limits))
        scale = tl.where((v >= 0.0) & (v <= lim), scale, 0.0)
        v = tl.minimum(tl.maximum(v, 0.0), lim)
    return v, scale


@triton.jit
def integral_kernel(pred, out, R, n1: tl.constexpr, points, strides, anchors, limits,
                    DECODE: tl.constexpr, CLAMP: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_R: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, WIDE: tl.constexpr):
    """integral (DECODE=False): out[r] = expected bin of row r; the fused
    decode (DECODE=True): out[r] = that side's pixel coordinate."""
    rows = _program_rows(BLOCK_R, WIDE)
    rmask = rows < R
    xh, bh, _, xt, bt, _ = _row_tiles(pred, rows, rmask, n1, ACC, HEAD, TAIL)
    _, dist = _lse_dist(xh, bh, xt, bt, TAIL)
    if DECODE:
        dist, _ = _side_coord(rows, rmask, points, strides, anchors, dist, limits, CLAMP)
    tl.store(out + rows, dist.to(out.dtype.element_ty), mask=rmask)


@triton.jit
def _integral_grad_store(out, rows, n1: tl.constexpr, x, bins, mask, lse, dist, g):
    p = tl.exp(x - lse[:, None])
    dx = g[:, None] * (p * (bins[None, :].to(x.dtype) - dist[:, None]))
    offs = rows[:, None] * n1 + bins[None, :]
    tl.store(out + offs, dx.to(out.dtype.element_ty), mask=mask)


@triton.jit
def integral_backward_kernel(grad, pred, out, R, n1: tl.constexpr, points, strides, anchors, limits,
                             DECODE: tl.constexpr, CLAMP: tl.constexpr, ACC: tl.constexpr,
                             BLOCK_R: tl.constexpr, HEAD: tl.constexpr, TAIL: tl.constexpr, WIDE: tl.constexpr):
    rows = _program_rows(BLOCK_R, WIDE)
    rmask = rows < R
    xh, bh, mh, xt, bt, mt = _row_tiles(pred, rows, rmask, n1, ACC, HEAD, TAIL)
    lse, dist = _lse_dist(xh, bh, xt, bt, TAIL)
    g = tl.load(grad + rows, mask=rmask, other=0.0)
    if DECODE:
        _, scale = _side_coord(rows, rmask, points, strides, anchors, dist, limits, CLAMP)
        g = g * scale
    _integral_grad_store(out, rows, n1, xh, bh, mh, lse, dist, g)
    if TAIL > 0:
        _integral_grad_store(out, rows, n1, xt, bt, mt, lse, dist, g)
