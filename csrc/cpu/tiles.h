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

}  // namespace cpu
}  // namespace gflops
