// Per-row statistics of distribution logits for tiles of consecutive rows.
// A row has only reg_max + 1 ~ 17 bins, too few to vectorise along. Rows of
// up to kMaxTileBins bins take their exponentials unshifted as one flat loop
// over the tile (rows_exp, rows_exp_dist); longer rows go through
// tile_row_stats, which steps bin by bin with one vector op across kTile
// rows against each row's max (a short tail row by row through the shared
// scalar code).
#pragma once

#include <cstdint>
#include <type_traits>

#include "../common/integral.h"

namespace gflops {
namespace cpu {

constexpr int kTile = 16;
// Rows longer than this take tile_row_stats (no buffer of exponentials).
constexpr int kMaxTileBins = 64;

// lse[j] (and dist[j], the expected bin, when dist is set) of rows
// x + j * n1 for j < nr, nr <= kTile.
template <typename scalar_t, typename acc_t>
GF_HD void tile_row_stats(const scalar_t* x, int n1, int nr, acc_t* lse, acc_t* dist) {
  if (nr < kTile) {
    for (int j = 0; j < nr; ++j) {
      if (dist) gf::row_lse_dist<acc_t>(x + j * n1, n1, lse[j], dist[j]);
      else lse[j] = gf::row_logsumexp<acc_t>(x + j * n1, n1);
    }
    return;
  }
  acc_t m[kTile], s[kTile], d[kTile];
#pragma omp simd
  for (int j = 0; j < kTile; ++j) {
    m[j] = gf::cvt<acc_t>(x[j * n1]);
    s[j] = 0;
    d[j] = 0;
  }
  for (int k = 1; k < n1; ++k) {
#pragma omp simd
    for (int j = 0; j < kTile; ++j) m[j] = gf::gmax(m[j], gf::cvt<acc_t>(x[j * n1 + k]));
  }
  // Same order of operations as gf::row_lse_dist / gf::row_logsumexp.
  for (int k = 0; k < n1; ++k) {
#pragma omp simd
    for (int j = 0; j < kTile; ++j) {
      const acc_t e = gf::gexp(gf::cvt<acc_t>(x[j * n1 + k]) - m[j]);
      s[j] += e;
      d[j] += e * acc_t(k);
    }
  }
#pragma omp simd
  for (int j = 0; j < kTile; ++j) lse[j] = m[j] + gf::glog(s[j]);
  if (!dist) return;
#pragma omp simd
  for (int j = 0; j < kTile; ++j) dist[j] = d[j] / s[j];
}

// Exponentials of distribution rows taken without a shift. e = exp(x) needs
// no row max, so the exponentials of any number of rows run as one flat loop,
// and the sums below are row by row in a fixed order: a row's bits never
// depend on which rows share its loop (tile, tail, thread). The unshifted sum
// is exact enough while it lies in [lo, hi]: then no term reached exp's upper
// clamp, and the terms that exp clamps up to 2^-126 (logits below -87.3) add
// at most n1 * 2^-62 of it (float). A row outside (a logit
// above ~44, every logit below ~-44 in float; inf, NaN) is redone shifted by
// its max, so its sum lies in [1, n1] or is NaN.
template <typename T> struct ExpWindow;
template <> struct ExpWindow<float> { static constexpr float lo = 0x1p-64f, hi = 0x1p64f; };
template <> struct ExpWindow<double> { static constexpr double lo = 0x1p-512, hi = 0x1p512; };

template <typename T> GF_HD bool in_exp_window(T s) { return s >= ExpWindow<T>::lo && s <= ExpWindow<T>::hi; }

// The sum of a row's n1 values (with BINS, of e[k] * k): 16 lane sums over
// its full 16-wide chunks, a fixed tree over the lanes, then the remaining
// values in order. Vectorises at any n1 (a chunk is one or two vectors, the
// tree stays in registers).
template <bool BINS = false, typename T> GF_HD T lane_sum(const T* e, int n1) {
  T a[16];
#pragma omp simd
  for (int l = 0; l < 16; ++l) a[l] = T(0);
  int k = 0;
  for (; k + 16 <= n1; k += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) a[l] += BINS ? e[k + l] * T(k + l) : e[k + l];
  }
#pragma omp simd
  for (int l = 0; l < 8; ++l) a[l] += a[l + 8];
#pragma omp simd
  for (int l = 0; l < 4; ++l) a[l] += a[l + 4];
  a[0] += a[2];
  a[1] += a[3];
  T s = a[0] + a[1];
  for (; k < n1; ++k) s += BINS ? e[k] * T(k) : e[k];
  return s;
}

// e = exp(x) of nr consecutive rows (any nr), each row's unshifted sum to
// s[j] and shift to m[j] (0, or the row's max where the sum left the window,
// with e and s redone): softmax = e / s, lse = m + log(s). N1, when not 0,
// is n1 known at compile time (the loops then unroll to whole vectors).
template <int N1, typename scalar_t, typename acc_t>
GF_HD void rows_exp(const scalar_t* x, int n1_rt, int nr, acc_t* e, acc_t* m, acc_t* s) {
  const int n1 = N1 ? N1 : n1_rt;
  const int n = nr * n1;
#pragma omp simd
  for (int i = 0; i < n; ++i) e[i] = gf::gexp(gf::cvt<acc_t>(x[i]));
  for (int j = 0; j < nr; ++j) s[j] = lane_sum(e + j * n1, n1);
  int redo = 0;
#pragma omp simd reduction(| : redo)
  for (int j = 0; j < nr; ++j) {
    m[j] = acc_t(0);
    redo |= !in_exp_window(s[j]);
  }
  if (!redo) return;
  for (int j = 0; j < nr; ++j) {
    if (in_exp_window(s[j])) continue;
    const scalar_t* xr = x + j * n1;
    acc_t* er = e + j * n1;
    acc_t mm = gf::cvt<acc_t>(xr[0]);
    for (int k = 1; k < n1; ++k) mm = gf::gmax(mm, gf::cvt<acc_t>(xr[k]));
    for (int k = 0; k < n1; ++k) er[k] = gf::gexp(gf::cvt<acc_t>(xr[k]) - mm);
    m[j] = mm;
    s[j] = lane_sum(er, n1);
  }
}

// rows_exp, and each row's expected bin dist[j] = sum_k e[k] * k / s[j]
// (the shift m[j] cancels in the ratio), summed in lane_sum's fixed order.
template <int N1, typename scalar_t, typename acc_t>
GF_HD void rows_exp_dist(const scalar_t* x, int n1_rt, int nr, acc_t* e, acc_t* m, acc_t* s, acc_t* dist) {
  const int n1 = N1 ? N1 : n1_rt;
  rows_exp<N1>(x, n1, nr, e, m, s);
  for (int j = 0; j < nr; ++j) dist[j] = lane_sum<true>(e + j * n1, n1) / s[j];
}

// Rows per tile of the unshifted kernels: their exponentials fit a stack
// buffer of kExpTileRows * kMaxTileBins values (16 KiB in float).
constexpr int kExpTileRows = 64;

// Asks for the n values at x (the caller's next tile, inside its own block of
// rows) while this tile computes: the flat exponential loop reads a tile in
// order with little else to overlap, so on inputs larger than the caches its
// loads waited on DRAM (benchmarks/results/cpu_ab_cpu-x86-64-2t.md). One
// request a 64-byte cache line, into every cache level: the tile is read in
// full right after.
template <typename T> inline void prefetch_values(const T* x, int64_t n) {
#if defined(__GNUC__)
  constexpr int64_t kLine = 64;
  const char* c = reinterpret_cast<const char*>(x);
  for (int64_t b = 0; b < n * static_cast<int64_t>(sizeof(T)); b += kLine) __builtin_prefetch(c + b, 0, 3);
#else
  (void)x;
  (void)n;
#endif
}

// run(std::integral_constant<int, N1>()) with N1 = n1 for the common row
// lengths, whose loops then unroll to whole vectors: 17 (reg_max 16,
// MMDetection's GFL), 16 (Ultralytics) and 8 bins (NanoDet); else N1 = 0.
template <typename F> decltype(auto) with_common_n1(int n1, F&& run) {
  switch (n1) {
    case 17: return run(std::integral_constant<int, 17>());
    case 16: return run(std::integral_constant<int, 16>());
    case 8: return run(std::integral_constant<int, 8>());
    default: return run(std::integral_constant<int, 0>());
  }
}

}  // namespace cpu
}  // namespace gflops
