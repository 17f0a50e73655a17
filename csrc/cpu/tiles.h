// Per-row statistics of distribution logits for a tile of consecutive rows.
// A row has only reg_max + 1 ~ 17 bins, too few to vectorise along, so a
// full tile steps bin by bin with one vector op across its kTile rows; a
// short tail goes row by row through the shared scalar code.
#pragma once

#include <cstdint>

#include "../common/integral.h"

namespace gflops {
namespace cpu {

constexpr int kTile = 16;
// Rows longer than this take the row-by-row path of tile_row_exp.
constexpr int kMaxTileBins = 64;

// Logits of a full tile spanning at most this much share one shift, the
// tile's max, in place of each row's own: then exp(x - shift) >= e^-60 stays
// a normal float, so no row sum underflows and the softmax and log-sum-exp
// keep full relative accuracy, and the exponentials need no per-row max.
constexpr float kShiftRange = 60.f;

// The tile's max to *shift when x[0, n) spans at most kShiftRange and is
// finite; false otherwise (NaN and infinities take the per-row path, which
// gives what the reference gives). Lane-wise min/max, one horizontal step.
template <typename scalar_t, typename acc_t>
GF_HD bool tile_shift(const scalar_t* x, int n, acc_t* shift) {
  acc_t hi[kTile], lo[kTile], z[kTile];
#pragma omp simd
  for (int l = 0; l < kTile; ++l) {
    hi[l] = lo[l] = gf::cvt<acc_t>(x[l]);
    z[l] = 0;
  }
  for (int i = kTile; i < n; i += kTile) {
#pragma omp simd
    for (int l = 0; l < kTile; ++l) {
      const acc_t v = gf::cvt<acc_t>(x[i + l]);
      hi[l] = gf::gmax(hi[l], v);
      lo[l] = gf::gmin(lo[l], v);
      z[l] += v - v;  // NaN for a NaN or an infinity
    }
  }
  acc_t h = hi[0], l0 = lo[0], zz = z[0];
  for (int l = 1; l < kTile; ++l) {
    h = gf::gmax(h, hi[l]);
    l0 = gf::gmin(l0, lo[l]);
    zz += z[l];
  }
  *shift = h;
  return zz == acc_t(0) && h - l0 <= acc_t(kShiftRange);
}

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
  acc_t m[kTile], s[kTile], d[kTile], shift;
  // The shift tile_row_exp takes, so that both give the same bits.
  const bool shared = n1 <= kMaxTileBins && tile_shift(x, kTile * n1, &shift);
#pragma omp simd
  for (int j = 0; j < kTile; ++j) {
    m[j] = shared ? shift : gf::cvt<acc_t>(x[j * n1]);
    s[j] = 0;
    d[j] = 0;
  }
  for (int k = 1; k < n1 && !shared; ++k) {
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

// exp(x - m[j]) of every element of nr <= kTile rows to e (same layout as
// x), m[j] being the row's max or a full tile's shared shift (tile_shift),
// and each row's sum of those to s[j] and, when dist
// is set, its expected bin sum(e * bin) / s to dist[j]; full tiles
// run the exponentials as one contiguous loop over the tile (no per-row
// remainder), then sum them bin by bin across the rows in the order of
// gf::row_logsumexp. The caller keeps e: softmax = e / s, lse = m + log(s).
template <typename scalar_t, typename acc_t>
GF_HD void tile_row_exp(const scalar_t* x, int n1, int nr, acc_t* e, acc_t* m, acc_t* s, acc_t* dist = nullptr) {
  if (nr < kTile || n1 > kMaxTileBins) {
    for (int j = 0; j < nr; ++j) {
      const scalar_t* xr = x + j * n1;
      acc_t mm = gf::cvt<acc_t>(xr[0]);
      for (int k = 1; k < n1; ++k) mm = gf::gmax(mm, gf::cvt<acc_t>(xr[k]));
      acc_t ss = 0, dd = 0;
      for (int k = 0; k < n1; ++k) {
        const acc_t ek = gf::gexp(gf::cvt<acc_t>(xr[k]) - mm);
        e[j * n1 + k] = ek;
        ss += ek;
        dd += ek * acc_t(k);
      }
      m[j] = mm;
      s[j] = ss;
      if (dist) dist[j] = dd / ss;
    }
    return;
  }
  const int n = kTile * n1;
  acc_t shift;
  if (tile_shift(x, n, &shift)) {
#pragma omp simd
    for (int j = 0; j < kTile; ++j) {
      m[j] = shift;
      s[j] = 0;
    }
#pragma omp simd
    for (int i = 0; i < n; ++i) e[i] = gf::gexp(gf::cvt<acc_t>(x[i]) - shift);
  } else {
    acc_t mb[kTile * kMaxTileBins];  // each element's row max, so that the exponentials run flat
#pragma omp simd
    for (int j = 0; j < kTile; ++j) {
      m[j] = gf::cvt<acc_t>(x[j * n1]);
      s[j] = 0;
    }
    for (int k = 1; k < n1; ++k) {
#pragma omp simd
      for (int j = 0; j < kTile; ++j) m[j] = gf::gmax(m[j], gf::cvt<acc_t>(x[j * n1 + k]));
    }
    for (int j = 0; j < kTile; ++j) {
      const acc_t mm = m[j];
#pragma omp simd
      for (int k = 0; k < n1; ++k) mb[j * n1 + k] = mm;
    }
#pragma omp simd
    for (int i = 0; i < n; ++i) e[i] = gf::gexp(gf::cvt<acc_t>(x[i]) - mb[i]);
  }
  if (!dist) {
    for (int k = 0; k < n1; ++k) {
#pragma omp simd
      for (int j = 0; j < kTile; ++j) s[j] += e[j * n1 + k];
    }
    return;
  }
  acc_t d[kTile];
#pragma omp simd
  for (int j = 0; j < kTile; ++j) d[j] = 0;
  for (int k = 0; k < n1; ++k) {
#pragma omp simd
    for (int j = 0; j < kTile; ++j) {
      s[j] += e[j * n1 + k];
      d[j] += e[j * n1 + k] * acc_t(k);
    }
  }
#pragma omp simd
  for (int j = 0; j < kTile; ++j) dist[j] = d[j] / s[j];
}

}  // namespace cpu
}  // namespace gflops
