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
  const double mean = s / static_cast<double>(n > 1 ? n : 1);
  double v = 0.0;
  for (int i = 0; i < slots; ++i)
    if (idx[i] >= 0) {
      const double d = static_cast<double>(iou[i]) - mean;
      v = v + mul_rn(d, d);
    }
  *count = n;
  return mean + gsqrt(v / static_cast<double>(n > 2 ? n - 1 : 1));
}

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
