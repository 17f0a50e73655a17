// Rows of bin logits staged through shared memory, so that global loads and
// stores are coalesced. The distribution kernels (DFL, integral, decode, the
// GFL box branch) give each row (or anchor) one thread; reading the logits
// straight from global memory, a warp's request for bin b touches 32 rows
// 68+ bytes apart: 32 sectors for 128 useful bytes. Here the rows of a tile
// are contiguous in memory, so the block copies them element by element
// (consecutive threads, consecutive addresses: 4 sectors per request), and
// each thread then reads its row from shared memory. Rows sit at an odd
// stride there, so the 32 rows a warp reads at once fall in 32 distinct
// banks. Gradients go back the same way. Torch-free.
#pragma once

#include "../common/math.h"
#include "common.cuh"

namespace gf {
namespace cuda {

// Shared memory a block may take without opting in, on every architecture,
// static and dynamic together; the tiles leave 1 KiB of it to the static
// arrays of the kernels (block_sum's warp totals: 32 values).
constexpr size_t kTileBytes = 48 * 1024 - 1024;

inline int tile_stride(int row_len) { return row_len | 1; }

// Rows (or anchors) of `row_len` accumulation-dtype values per tile: the
// most that fit kTileBytes, up to kThreads, a multiple of 32 when at least 32
// fit (whole warps busy); fewer for a very large reg_max; 0 when not even one
// row fits (the launchers refuse such a reg_max: tile_fits).
inline int tile_rows(int row_len, size_t acc_bytes) {
  const size_t per_row = static_cast<size_t>(tile_stride(row_len)) * acc_bytes;
  size_t n = kTileBytes / per_row;
  n = n > static_cast<size_t>(kThreads) ? kThreads : n;
  if (n >= 32) n -= n % 32;
  return static_cast<int>(n);
}

inline bool tile_fits(int row_len, size_t acc_bytes) { return tile_rows(row_len, acc_bytes) > 0; }

inline size_t tile_smem(int rows, int row_len, size_t acc_bytes) {
  return static_cast<size_t>(rows) * tile_stride(row_len) * acc_bytes;
}

// Blocks for a grid-stride loop over tiles of kernel K with `smem` bytes of
// dynamic shared memory: one wave of the device at most, never more than the
// tiles. The occupancy query is a host computation (no sync).
template <auto K> int tile_grid(int64_t rows, int per_tile, size_t smem, int num_sms) {
  const int64_t need = (rows + per_tile - 1) / per_tile;
  int resident = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&resident, K, kThreads, smem) != cudaSuccess || resident < 1) {
    (void)cudaGetLastError();
    resident = 1;
  }
  resident = resident < kMaxBlocksPerSm ? resident : kMaxBlocksPerSm;
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * resident;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

// The largest tile_grid(): the size of a buffer of per-block partials.
inline int max_tile_grid(int64_t rows, int per_tile, int num_sms) {
  const int64_t need = (rows + per_tile - 1) / per_tile;
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

// tile[r * stride + j] = src[r * row_len + j] for the n = rows * row_len values
// of a tile, by the whole block.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ src, int n, int row_len, int stride,
                                          acc_t* tile) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = i / row_len;
    tile[r * stride + (i - r * row_len)] = cvt<acc_t>(src[i]);
  }
}

// The inverse of load_tile, converting to the storage dtype.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_tile(const acc_t* tile, int n, int row_len, int stride,
                                           scalar_t* __restrict__ dst) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const int r = i / row_len;
    dst[i] = cvt<scalar_t>(tile[r * stride + (i - r * row_len)]);
  }
}

// The tile loop of a block: tiles blockIdx.x, blockIdx.x + gridDim.x, ... of
// `per_tile` rows; `first` is the tile's first row and `nr` its row count.
// The trip count is the same for every thread of a block, so barriers inside
// are reached by all.
#define GF_TILE_LOOP(first, nr, rows, per_tile)                                                         \
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * (per_tile); first < (rows);                \
       first += static_cast<int64_t>(gridDim.x) * (per_tile))                                           \
    for (int nr = static_cast<int>((rows) - first < (per_tile) ? (rows) - first : (per_tile)), gf_once_ = 1; \
         gf_once_; gf_once_ = 0)

}  // namespace cuda
}  // namespace gf
