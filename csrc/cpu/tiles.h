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

// exp(x - max of its row) of every element of nr <= kTile rows to e (same
// layout as x), each row's max and sum of those to m[j], s[j] and, when dist
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
  const int n = kTile * n1;
#pragma omp simd
  for (int i = 0; i < n; ++i) e[i] = gf::gexp(gf::cvt<acc_t>(x[i]) - mb[i]);
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
