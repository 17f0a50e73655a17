// Rows of bin logits staged through shared memory, so that global loads and
// stores are coalesced. The distribution kernels (DFL, integral, decode, the
// GFL box branch) give each row (or anchor) one thread; reading the logits
// straight from global memory, a warp's request for bin b touches 32 rows
// 68+ bytes apart: 32 sectors for 128 useful bytes. Here the rows of a tile
// are contiguous in memory, so the block copies them in 16-byte packs
// (consecutive threads, consecutive packs: every sector fetched once; the
// shared-memory side of a pack's values then conflicts 4-way in float32,
// which costs cycles, where the load it replaces cost a DRAM latency), and
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
// row fits (the launchers refuse such a reg_max: check_rows_fit).
inline int tile_rows(int row_len, size_t acc_bytes) {
  const size_t per_row = static_cast<size_t>(tile_stride(row_len)) * acc_bytes;
  size_t n = kTileBytes / per_row;
  n = n > static_cast<size_t>(kThreads) ? kThreads : n;
  if (n >= 32) n -= n % 32;
  return static_cast<int>(n);
}

inline size_t tile_smem(int rows, int row_len, size_t acc_bytes) {
  return static_cast<size_t>(rows) * tile_stride(row_len) * acc_bytes;
}

// Blocks of kernel K with `smem` bytes of dynamic shared memory resident on one
// SM, cached per device and smem as resident_blocks() is: the occupancy query
// is host work (no sync) that cost each launch again. A kernel's smem takes
// few values (one per reg_max in use), so a device keeps four; a fifth
// replaces one (asked again later, it is the same answer).
template <auto K> int resident_tile_blocks(size_t smem) {
  static std::atomic<uint64_t> cache[64][4];  // (smem << 8) | blocks; 0: empty
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = 0;
  std::atomic<uint64_t>* slots = cache[dev & 63];
  for (int i = 0; i < 4; ++i) {
    const uint64_t v = slots[i].load(std::memory_order_relaxed);
    if (v != 0 && (v >> 8) == smem) return static_cast<int>(v & 255);
  }
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, K, kThreads, smem) != cudaSuccess || n < 1) {
    (void)cudaGetLastError();
    n = 1;
  }
  n = n < kMaxBlocksPerSm ? n : kMaxBlocksPerSm;
  const uint64_t entry = (static_cast<uint64_t>(smem) << 8) | static_cast<uint64_t>(n);
  for (int i = 0; i < 4; ++i) {
    uint64_t empty = 0;
    if (slots[i].compare_exchange_strong(empty, entry, std::memory_order_relaxed)) return n;
  }
  slots[(smem >> 7) & 3].store(entry, std::memory_order_relaxed);  // tiles are multiples of 128 bytes
  return n;
}

// Blocks for a grid-stride loop over tiles of kernel K with `smem` bytes of
// dynamic shared memory: one wave of the device at most, never more than the
// tiles.
template <auto K> int tile_grid(int64_t rows, int per_tile, size_t smem, int num_sms) {
  const int64_t need = (rows + per_tile - 1) / per_tile;
  const int resident = resident_tile_blocks<K>(smem);
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * resident;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

// The largest tile_grid(): the size of a buffer of per-block partials.
inline int max_tile_grid(int64_t rows, int per_tile, int num_sms) {
  const int64_t need = (rows + per_tile - 1) / per_tile;
  const int64_t cap = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * kMaxBlocksPerSm;
  return static_cast<int>(need < 1 ? 1 : (need < cap ? need : cap));
}

// 16-byte packs a thread keeps in flight in load_tile. The copy is bound by
// memory latency, not bandwidth: a thread of a 256-row float32 tile of 17 bins
// loaded 17 scalars, each awaited before the next (gpu_model.md, "load
// rounds"); as packs it is 4-5 loads, issued 4 at a time (2 of the 8-value
// packs of 16-bit logits: a thread's share of the tile is then about 2, and 4
// would spill).
template <typename scalar_t> constexpr int tile_packs_in_flight() { return sizeof(scalar_t) == 2 ? 2 : 4; }

// Whether a tile's copies go by packs: its first element 16-byte aligned (every
// tile of an aligned tensor is, with a multiple of 32 rows per tile).
template <typename scalar_t> __device__ __forceinline__ bool tile_packs(const scalar_t* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// tile[r * stride + j] = src[r * row_len + j] for the n = rows * row_len values
// of a tile, by the whole block: consecutive threads read consecutive packs
// (then the last n % width values one by one), or one by one throughout where
// src is not 16-byte aligned.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_tile(const scalar_t* __restrict__ src, int n, int row_len, int stride,
                                          acc_t* tile) {
  constexpr int V = pack_width<scalar_t>();
  using P = Pack<scalar_t, V>;
  const int step = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  const int packs = tile_packs(src) ? n / V : 0;
  constexpr int F = tile_packs_in_flight<scalar_t>();
  const P* __restrict__ s = reinterpret_cast<const P*>(src);
  RowStep<int> at(t * V, step * V, row_len);
  for (int k0 = t; k0 < packs; k0 += step * F) {
    P v[F];
#pragma unroll
    for (int u = 0; u < F; ++u)
      if (k0 + u * step < packs) v[u] = s[k0 + u * step];
#pragma unroll
    for (int u = 0; u < F; ++u) {
      if (k0 + u * step < packs) {
        int r = at.row, j = at.col;
#pragma unroll
        for (int e = 0; e < V; ++e) {
          tile[r * stride + j] = cvt<acc_t>(v[u].v[e]);
          if (++j == row_len) j = 0, ++r;
        }
      }
      at.next();
    }
  }
  RowStep<int> rest(packs * V + t, step, row_len);
  for (int i = packs * V + t; i < n; i += step, rest.next()) tile[rest.at(stride)] = cvt<acc_t>(src[i]);
}

// The inverse of load_tile, converting to the storage dtype.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_tile(const acc_t* tile, int n, int row_len, int stride,
                                           scalar_t* __restrict__ dst) {
  constexpr int V = pack_width<scalar_t>();
  using P = Pack<scalar_t, V>;
  const int step = static_cast<int>(blockDim.x), t = static_cast<int>(threadIdx.x);
  const int packs = tile_packs(dst) ? n / V : 0;
  P* __restrict__ d = reinterpret_cast<P*>(dst);
  RowStep<int> at(t * V, step * V, row_len);
  for (int k = t; k < packs; k += step, at.next()) {
    P v;
    int r = at.row, j = at.col;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      v.v[e] = cvt<scalar_t>(tile[r * stride + j]);
      if (++j == row_len) j = 0, ++r;
    }
    d[k] = v;
  }
  RowStep<int> rest(packs * V + t, step, row_len);
  for (int i = packs * V + t; i < n; i += step, rest.next()) dst[i] = cvt<scalar_t>(tile[rest.at(stride)]);
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
