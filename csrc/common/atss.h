// ATSS assignment math (SPEC.md section 5), shared by the CPU loop and the
// CUDA kernels. Torch-free. Every operation is the one reference/assign.py
// performs, in its order and precision (no FMA: see mul_rn), so that the
// kernels agree with it bit for bit, near-ties included:
//   centre      (x1 + x2) / 2 in the boxes' arithmetic type;
//   distance    sqrt(dx * dx + dy * dy), never a matrix-multiply expansion;
//   candidates  per level, ascending (distance, anchor index);
//   threshold   mean + unbiased std of the candidates' IoUs, in double,
//               summed candidate by candidate in candidate order;
//   positive    IoU >= threshold, centre strictly inside by 0.01, and at
//               least two candidates (one has no std: no positive);
//   conflicts   highest IoU, then lowest GT index (an order-free max/min).
#pragma once

#include <cstdint>

#include "box.h"

namespace gf {

// Levels an ATSS call may have: the CUDA kernel takes the level table by
// value (no host-to-device copy, so no sync).
constexpr int kAtssMaxLevels = 32;

template <typename T> GF_HD T center_of(T lo, T hi) { return (lo + hi) / T(2); }

// Squared centre distance; the distance itself is gsqrt of it. Callers may
// reject on the square (sqrt is monotone) but must compare distances after
// the sqrt, where two squares can round to one distance and tie.
template <typename T> GF_HD T center_dist2(T gx, T gy, T ax, T ay) {
  const T dx = gx - ax, dy = gy - ay;
  return mul_rn(dx, dx) + mul_rn(dy, dy);
}

// (distance, anchor index) order: ties go to the lower index.
template <typename T> GF_HD bool nearer(T d, int64_t i, T d_other, int64_t i_other) {
  return d < d_other || (d == d_other && i < i_other);
}

// A candidate's centre must lie strictly inside the GT, by more than 0.01.
template <typename T> GF_HD bool center_inside(T cx, T cy, const Box4<T>& g) {
  return gmin(gmin(cx - g.x1, cy - g.y1), gmin(g.x2 - cx, g.y2 - cy)) > T(0.01);
}

// The steps of t_g, shared by atss_threshold and the CUDA kernel's warp
// version (which adds the same terms in the same order).
GF_HD double atss_mean(double sum, int n) { return sum / static_cast<double>(n > 1 ? n : 1); }
GF_HD double atss_spread(double x, double mean) {
  const double d = x - mean;
  return mul_rn(d, d);
}
GF_HD double atss_mean_plus_std(double mean, double spread, int n) {
  return mean + gsqrt(spread / static_cast<double>(n > 2 ? n - 1 : 1));
}

// t_g over a GT's candidate slots (in candidate order; a slot whose anchor
// index is < 0 is empty): mean + unbiased std of the IoUs, in double. Sets
// *count to the number of candidates; under 2 there is no positive, so t_g
// is irrelevant there (the reference clamps the divisors to 1).
template <typename T> GF_HD double atss_threshold(const T* iou, const int32_t* idx, int slots, int* count) {
  double s = 0.0;
  int n = 0;
  for (int i = 0; i < slots; ++i)
    if (idx[i] >= 0) {
      s = s + static_cast<double>(iou[i]);
      ++n;
    }
  const double mean = atss_mean(s, n);
  double v = 0.0;
  for (int i = 0; i < slots; ++i)
    if (idx[i] >= 0) v = v + atss_spread(static_cast<double>(iou[i]), mean);
  *count = n;
  return atss_mean_plus_std(mean, v, n);
}

// ---- grid levels ----------------------------------------------------------
// A level whose anchor centres form a grid is searched in a window of cells
// around the GT's centre instead of anchor by anchor. The grid is a checked
// property of the centres (never assumed): anchor a0 + (i * width + j) *
// per_cell + c has centre (x of column j, y of row i), the columns' x and the
// rows' y strictly increasing. No stride or offset is assumed, only order.
// per_cell == 0: not a grid (the level is scanned).
struct AtssGrid {
  int64_t per_cell = 0, width = 0, height = 0;
};

// The shape the leading anchors imply: per_cell = the run of anchors that
// share anchor a0's centre, width = the run of cells that share its y.
// cx, cy: anchor index -> centre coordinate. Not yet a grid: every anchor
// must also pass atss_grid_holds.
template <typename CX, typename CY> AtssGrid atss_grid_shape(const CX& cx, const CY& cy, int64_t a0, int64_t n) {
  AtssGrid g;
  if (n <= 0) return g;
  int64_t per = 1, w = 1;
  while (per < n && cx(a0 + per) == cx(a0) && cy(a0 + per) == cy(a0)) ++per;
  while ((w + 1) * per <= n && cy(a0 + w * per) == cy(a0)) ++w;
  if (n % (w * per) != 0) return g;
  g.per_cell = per;
  g.width = w;
  g.height = n / (w * per);
  return g;
}

// Anchor a (of the level starting at a0) sits where the shape puts it, and
// its column and row come after the previous ones. NaN centres fail. Every
// centre is read unconditionally (no short-circuit), so that a GPU thread
// issues its loads in one round.
template <typename CX, typename CY>
GF_HD bool atss_grid_holds(const AtssGrid& g, const CX& cx, const CY& cy, int64_t a0, int64_t a) {
  const int64_t cell = (a - a0) / g.per_cell, i = cell / g.width, j = cell - i * g.width;
  const int64_t col = a0 + j * g.per_cell, row = a0 + i * g.width * g.per_cell;
  const int64_t prev_col = j > 0 ? col - g.per_cell : col, prev_row = i > 0 ? row - g.width * g.per_cell : row;
  const auto x = cx(a), y = cy(a), x_col = cx(col), y_row = cy(row), x_prev = cx(prev_col), y_prev = cy(prev_row);
  return (x == x_col) & (y == y_row) & ((j == 0) | (x_prev < x_col)) & ((i == 0) | (y_prev < y_row));
}

// Half-width (in cells) of the first window: the smallest r whose (2r - 1)^2
// cells hold k anchors. For topk 9 and one anchor a cell, 4 x 4 cells: on a
// uniform grid the 9th nearest centre is within 1.8 strides of any point and
// the cells outside are at least 2 away, so the first window is the last.
GF_HD int64_t atss_first_half_width(int64_t k, int64_t per_cell) {
  int64_t r = 1;
  while ((2 * r - 1) * (2 * r - 1) * per_cell < k) ++r;
  return r;
}

// Columns (or rows) [lo, hi) of a window of half-width r: `below` is the
// number of columns whose x is < the GT's, r of them and r at or beyond it,
// shifted inward at the grid's edges. Every column before lo is < the GT's x
// and every column from hi on is >= it, which is what atss_side_bound needs.
struct AtssSpan {
  int64_t lo, hi;
};
GF_HD AtssSpan atss_span(int64_t below, int64_t count, int64_t r) {
  int64_t lo = below - r;
  if (lo > count - 2 * r) lo = count - 2 * r;
  if (lo < 0) lo = 0;
  return AtssSpan{lo, lo + 2 * r < count ? lo + 2 * r : count};
}

// A lower bound on the distance of every anchor beyond one side of a window:
// `edge` is the coordinate of the first column (row) outside it, on the far
// side of v from the window. Rounding is monotone, so the further columns'
// |v - x| and its square are no smaller, and adding the other axis' square
// (>= 0) cannot round below it: d >= sqrt(mul_rn(v - edge, v - edge)).
template <typename T> GF_HD T atss_side_bound(T v, T edge) {
  const T d = v - edge;
  return gsqrt(mul_rn(d, d));
}

// The lower bound on the distance of every anchor outside the window cs x rs
// of grid g (anchors from a0): the nearest of the four sides' bounds, over the
// first column or row beyond each side that has one (inf for the whole
// level). cx(a) and cy(a) give anchor a's centre.
template <typename T, typename CX, typename CY>
GF_HD T atss_outside_bound(const AtssGrid& g, int64_t a0, AtssSpan cs, AtssSpan rs, T gx, T gy, CX cx, CY cy) {
  const int64_t per = g.per_cell, row = g.width * per;
  T out = T(INFINITY);
  if (cs.lo > 0) out = gmin(out, atss_side_bound(gx, cx(a0 + (cs.lo - 1) * per)));
  if (cs.hi < g.width) out = gmin(out, atss_side_bound(gx, cx(a0 + cs.hi * per)));
  if (rs.lo > 0) out = gmin(out, atss_side_bound(gy, cy(a0 + (rs.lo - 1) * row)));
  if (rs.hi < g.height) out = gmin(out, atss_side_bound(gy, cy(a0 + rs.hi * row)));
  return out;
}

// A window's k nearest are the level's when it is the whole level, or when
// it holds k valid anchors and the k-th is strictly nearer than every anchor
// outside (an anchor at exactly that distance could win the tie by index).
template <typename T> GF_HD bool atss_window_exact(bool whole, int have, int k, T kth, T outside) {
  return whole || (have >= k && kth < outside);
}

// How each (image, GT, level)'s k nearest were found, counted for the tests
// (which must see each path taken): a window ranked lane by lane (CUDA), a
// window through the sorted list, a scan of the whole level (not a grid, or
// a GT centre that is not finite), and every window that had to double.
enum AtssPath { kAtssRankWindow = 0, kAtssListWindow = 1, kAtssScan = 2, kAtssWiden = 3, kAtssPaths = 4 };

template <typename T> GF_HD bool atss_positive(T iou, double thr, int n, bool inside) {
  return n > 1 && static_cast<double>(iou) >= thr && inside;
}

// An IoU (>= 0, never NaN for a positive) as an unsigned key whose integer
// order is the IoU's order; 0 means "no positive". Claims resolve with an
// integer atomicMax on the key, then an atomicMin on the GT index among the
// claims that hold the maximum: no write order can change the winner.
GF_HD uint64_t iou_key(float v) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__float_as_uint(v)) + 1;
#else
  return static_cast<uint64_t>(__builtin_bit_cast(uint32_t, v)) + 1;
#endif
}
GF_HD uint64_t iou_key(double v) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(v)) + 1;
#else
  return __builtin_bit_cast(uint64_t, v) + 1;
#endif
}
GF_HD void iou_from_key(uint64_t key, float& v) {
#if defined(__CUDA_ARCH__)
  v = __uint_as_float(static_cast<uint32_t>(key - 1));
#else
  v = __builtin_bit_cast(float, static_cast<uint32_t>(key - 1));
#endif
}
GF_HD void iou_from_key(uint64_t key, double& v) {
#if defined(__CUDA_ARCH__)
  v = __longlong_as_double(static_cast<long long>(key - 1));
#else
  v = __builtin_bit_cast(double, key - 1);
#endif
}

}  // namespace gf
