// CUDA kernels of the decoding family (integral, fused decode, fused GFL box
// branch) and their torch-free host entry points. Included by decode.cu alone.
// The math is in csrc/common. Every kernel stages a block's rows through
// shared memory with coalesced loads and stores (row_tiles.cuh), then gives
// each distribution row one thread (integral, and the decode, whose four side
// rows of an anchor are independent) or each anchor 4 lanes (the box branch,
// whose GIoU needs all four sides). The box-branch kernels ask for at least 1
// resident block, not ptxas's default target: it then keeps their 56-103
// registers instead of spilling (benchmarks/results/ptxas_resources.md);
// grids follow the real occupancy.
#pragma once

#include "../common/box_branch.h"
#include "common.cuh"
#include "row_tiles.cuh"

namespace gf {
namespace cuda {

struct DecodeArgs {
  const void* pred = nullptr;     // (boxes, 4 * n1)
  const void* points = nullptr;   // (anchors, 2), accumulation dtype
  const void* strides = nullptr;  // (anchors,)
  int64_t boxes = 0, anchors = 1;
  int n1 = 17;
  bool clamp = false;
  double max_h = 0, max_w = 0;
  DType dtype = DType::Float;
  int num_sms = 1;
};


// Where side row r (side k = r % 4 of box r / 4, anchor (r / 4) % anchors) sits.
template <typename acc_t> struct SideGeo {
  const acc_t* pts = nullptr;
  const acc_t* st = nullptr;
  int64_t anchors = 1;
  bool clamp = false;
  acc_t h = acc_t(0), w = acc_t(0);
};

template <typename acc_t> struct Side { int k; acc_t pt, stride, lim; };

template <typename acc_t> __device__ __forceinline__ Side<acc_t> side_of(const SideGeo<acc_t>& g, int64_t r) {
  const int k = static_cast<int>(r & 3);
  const int64_t a = (r >> 2) % g.anchors;
  return Side<acc_t>{k, g.pts[2 * a + (k & 1)], g.st[a], (k & 1) ? g.h : g.w};
}

// integral (DECODE = false): out[r] = the expected bin of row r; the fused
// decode (DECODE = true): out[r] = that side's pixel coordinate.
template <typename scalar_t, typename acc_t, bool DECODE>
__global__ void __launch_bounds__(kThreads)
rows_dist_kernel(const scalar_t* __restrict__ pred, int64_t rows, int n1, int per_tile, SideGeo<acc_t> geo,
                       scalar_t* __restrict__ out) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  const int stride = n1 | 1;
  GF_TILE_LOOP(first, nr, rows, per_tile) {
    __syncthreads();  // the previous tile is consumed
    load_tile(pred + first * n1, nr * n1, n1, stride, tile);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < nr) {
      const int64_t r = first + threadIdx.x;
      acc_t lse, dist;
      row_lse_dist<acc_t>(tile + threadIdx.x * stride, n1, lse, dist);
      if constexpr (DECODE) {
        const Side<acc_t> sd = side_of(geo, r);
        dist = decode_side(dist, sd.k, sd.pt, sd.stride, geo.clamp, sd.lim);
      }
      out[r] = cvt<scalar_t>(dist);
    }
  }
}

// d(sum_r grad[r] * out[r]) / d pred of rows_dist_kernel; grad (rows,)
// in the accumulation dtype.
template <typename scalar_t, typename acc_t, bool DECODE>
__global__ void __launch_bounds__(kThreads)
rows_dist_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ pred, int64_t rows,
                                int n1, int per_tile, SideGeo<acc_t> geo, scalar_t* __restrict__ out) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  const int stride = n1 | 1;
  GF_TILE_LOOP(first, nr, rows, per_tile) {
    __syncthreads();
    load_tile(pred + first * n1, nr * n1, n1, stride, tile);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < nr) {
      const int64_t r = first + threadIdx.x;
      acc_t* x = tile + threadIdx.x * stride;
      acc_t lse, dist;
      row_lse_dist<acc_t>(x, n1, lse, dist);
      acc_t g = grad[r];
      if constexpr (DECODE) {
        const Side<acc_t> sd = side_of(geo, r);
        g *= decode_side_grad(dist, sd.k, sd.pt, sd.stride, geo.clamp, sd.lim);
      }
      for (int b = 0; b < n1; ++b) x[b] = g * integral_grad(x[b], b, lse, dist);  // in place: own row only
    }
    __syncthreads();
    store_tile(tile, nr * n1, n1, stride, out + first * n1);
  }
}

// The box branch gives each anchor 4 lanes of a warp, lane k its side k: the
// side's softmax and DFL term (forward) or gradient (backward), with the
// anchor-wide GIoU part computed by all 4 from the sides' distances, which
// lanes exchange by shuffles. One thread an anchor ran 4 sides one after the
// other: a dependent chain 4 times as long, on 100 blocks for 132 SMs.
constexpr int kBranchLanes = 4;

// Each of `v` of the 4 lanes of this lane's anchor, in side order. Every lane
// of the warp calls it (full-mask shuffles).
template <typename T> __device__ __forceinline__ void gather_sides(T v, T* out) {
  const int base = static_cast<int>(threadIdx.x & 31) & ~(kBranchLanes - 1);
#pragma unroll
  for (int k = 0; k < kBranchLanes; ++k) out[k] = __shfl_sync(0xffffffffu, v, base + k);
}

// v[k] by selects: a runtime index into a register array would put it in local memory.
template <typename T> __device__ __forceinline__ T pick_side(const T* v, int k) {
  return k == 0 ? v[0] : k == 1 ? v[1] : k == 2 ? v[2] : v[3];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1)
box_branch_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts, const acc_t* __restrict__ st,
                        const acc_t* __restrict__ gt, const acc_t* __restrict__ weight, int64_t p, int n1,
                        int per_tile, acc_t* __restrict__ score, acc_t* __restrict__ partials) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  // Staged as side rows at an odd stride (tile row 4 slot + side): the 32
  // lanes of a warp, 8 anchors x 4 sides, read 32 distinct banks.
  const int len = 4 * n1, stride = n1 | 1;
  const int slot = static_cast<int>(threadIdx.x) / kBranchLanes, side = static_cast<int>(threadIdx.x) % kBranchLanes;
  acc_t giou = acc_t(0), dfl = acc_t(0);
  GF_TILE_LOOP(first, nr, p, per_tile) {
    __syncthreads();
    load_tile(pred + first * len, nr * len, n1, stride, tile);
    __syncthreads();
    // Lanes past the tile's anchors take part in the shuffles with zeros.
    const bool active = slot < nr;
    const int64_t i = first + (active ? slot : 0);
    const acc_t* xk = tile + static_cast<int>(threadIdx.x) * stride;
    acc_t lse_k = acc_t(0), dist_k = acc_t(0), dfl_k = acc_t(0);
    if (active) row_lse_dist<acc_t>(xk, n1, lse_k, dist_k);
    acc_t dist[kBranchLanes], side_dfl[kBranchLanes];
    gather_sides(dist_k, dist);
    BranchBox<acc_t> bx{};
    if (active) {
      bx = box_branch_box<acc_t>(n1, pts[2 * i], pts[2 * i + 1], st[i], gt + 4 * i, dist);
      dfl_k = box_branch_side_dfl<acc_t>(xk, n1, pick_side(bx.tgt_dist, side), lse_k);
    }
    gather_sides(dfl_k, side_dfl);
    if (active && side == 0) {
      const BranchOut<acc_t> r = box_branch_out(bx, side_dfl, weight[i]);
      giou += r.giou_loss;
      dfl += r.dfl;
      score[i] = r.score;
    }
  }
  giou = block_sum(giou);
  dfl = block_sum(dfl);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = giou;
    partials[gridDim.x + blockIdx.x] = dfl;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1)
box_branch_backward_kernel(const acc_t* __restrict__ g_giou, const acc_t* __restrict__ g_dfl,
                                 const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts,
                                 const acc_t* __restrict__ st, const acc_t* __restrict__ gt,
                                 const acc_t* __restrict__ weight, int64_t p, int n1, int per_tile,
                                 scalar_t* __restrict__ out) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  const int len = 4 * n1, stride = n1 | 1;  // side rows, as in box_branch_kernel
  const acc_t gg = *g_giou, gd = *g_dfl;
  const int slot = static_cast<int>(threadIdx.x) / kBranchLanes, side = static_cast<int>(threadIdx.x) % kBranchLanes;
  GF_TILE_LOOP(first, nr, p, per_tile) {
    __syncthreads();
    load_tile(pred + first * len, nr * len, n1, stride, tile);
    __syncthreads();
    const bool active = slot < nr;
    const int64_t i = first + (active ? slot : 0);
    acc_t* xk = tile + static_cast<int>(threadIdx.x) * stride;
    acc_t lse_k = acc_t(0), dist_k = acc_t(0);
    if (active) row_lse_dist<acc_t>(xk, n1, lse_k, dist_k);
    acc_t dist[kBranchLanes];
    gather_sides(dist_k, dist);
    if (active) {
      const BranchGrad<acc_t> bg =
          box_branch_grad<acc_t>(n1, pts[2 * i], pts[2 * i + 1], st[i], gt + 4 * i, weight[i], gg, gd, dist);
      // In place, side by side: a lane reads and writes its own side's logits only.
      box_branch_side_grad<acc_t>(xk, n1, pick_side(bg.g_dist, side), pick_side(bg.tgt_dist, side), bg.gdw, lse_k,
                                  dist_k, xk);
    }
    __syncthreads();
    store_tile(tile, nr * len, n1, stride, out + first * len);
  }
}

// ---- host side -------------------------------------------------------------

// The rows of an integral-family op, tile by tile.
template <typename scalar_t, typename acc_t, bool DECODE>
void launch_rows_dist(const scalar_t* pred, int64_t rows, int n1, const SideGeo<acc_t>& geo, scalar_t* out,
                      int num_sms, cudaStream_t stream) {
  const int per_tile = tile_rows(n1, sizeof(acc_t));
  constexpr auto K = rows_dist_kernel<scalar_t, acc_t, DECODE>;
  const size_t smem = tile_smem(per_tile, n1, sizeof(acc_t));
  launch<K>(tile_grid<K>(rows, per_tile, smem, num_sms), kThreads, smem, stream, pred, rows, n1, per_tile, geo, out);
}

template <typename scalar_t, typename acc_t, bool DECODE>
void launch_rows_dist_backward(const acc_t* grad, const scalar_t* pred, int64_t rows, int n1,
                               const SideGeo<acc_t>& geo, scalar_t* out, int num_sms, cudaStream_t stream) {
  const int per_tile = tile_rows(n1, sizeof(acc_t));
  constexpr auto K = rows_dist_backward_kernel<scalar_t, acc_t, DECODE>;
  const size_t smem = tile_smem(per_tile, n1, sizeof(acc_t));
  launch<K>(tile_grid<K>(rows, per_tile, smem, num_sms), kThreads, smem, stream, grad, pred, rows, n1, per_tile, geo,
            out);
}

// pred (rows, n1) -> out (rows,) in pred's dtype.
inline cudaError_t integral(DType dt, const void* pred, int64_t rows, int n1, void* out, int num_sms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    launch_rows_dist<scalar_t, acc_t, false>(static_cast<const scalar_t*>(pred), rows, n1, SideGeo<acc_t>{},
                                             static_cast<scalar_t*>(out), num_sms, stream);
  });
  return cudaGetLastError();
}

inline cudaError_t integral_backward(DType dt, const void* grad, const void* pred, int64_t rows, int n1, void* out,
                              int num_sms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    launch_rows_dist_backward<scalar_t, acc_t, false>(static_cast<const acc_t*>(grad),
                                                      static_cast<const scalar_t*>(pred), rows, n1, SideGeo<acc_t>{},
                                                      static_cast<scalar_t*>(out), num_sms, stream);
  });
  return cudaGetLastError();
}

template <typename acc_t> SideGeo<acc_t> side_geo(const DecodeArgs& a) {
  SideGeo<acc_t> g;
  g.pts = static_cast<const acc_t*>(a.points);
  g.st = static_cast<const acc_t*>(a.strides);
  g.anchors = a.anchors;
  g.clamp = a.clamp;
  g.h = static_cast<acc_t>(a.max_h);
  g.w = static_cast<acc_t>(a.max_w);
  return g;
}

// out (boxes, 4) in pred's dtype.
inline cudaError_t decode(const DecodeArgs& a, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    launch_rows_dist<scalar_t, acc_t, true>(static_cast<const scalar_t*>(a.pred), 4 * a.boxes, a.n1,
                                            side_geo<acc_t>(a), static_cast<scalar_t*>(out), a.num_sms, stream);
  });
  return cudaGetLastError();
}

// grad (boxes, 4) accumulation dtype -> out (boxes, 4 * n1).
inline cudaError_t decode_backward(const DecodeArgs& a, const void* grad, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    launch_rows_dist_backward<scalar_t, acc_t, true>(static_cast<const acc_t*>(grad),
                                                     static_cast<const scalar_t*>(a.pred), 4 * a.boxes, a.n1,
                                                     side_geo<acc_t>(a), static_cast<scalar_t*>(out), a.num_sms,
                                                     stream);
  });
  return cudaGetLastError();
}

// Anchors per box-branch tile: 4 side rows of n1 logits each, one a lane.
inline int box_branch_tile(const DecodeArgs& a) { return tile_rows(a.n1, acc_size(a.dtype)) / kBranchLanes; }

// Entries per partial sum that box_branch() needs (it takes two of them).
inline int box_branch_blocks(const DecodeArgs& a) { return max_tile_grid(a.boxes, box_branch_tile(a), a.num_sms); }

// a.anchors == a.boxes == P. giou_sum, dfl_sum: scalars; score (P,); partials:
// 2 * box_branch_blocks() entries; all in the accumulation dtype.
inline cudaError_t box_branch(const DecodeArgs& a, const void* gt, const void* weight, void* giou_sum, void* dfl_sum,
                       void* score, void* partials, cudaStream_t stream) {
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    auto* part = static_cast<acc_t*>(partials);
    const int per_tile = box_branch_tile(a);
    constexpr auto K = box_branch_kernel<scalar_t, acc_t>;
    const size_t smem = tile_smem(per_tile * kBranchLanes, a.n1, sizeof(acc_t));
    // No anchors: no partials, and the two sums over none are the one launch that writes the zeros.
    const int grid = a.boxes == 0 ? 0 : tile_grid<K>(a.boxes, per_tile, smem, a.num_sms);
    if (grid > 0)
      launch<K>(grid, kThreads, smem, stream, static_cast<const scalar_t*>(a.pred),
                static_cast<const acc_t*>(a.points), static_cast<const acc_t*>(a.strides),
                static_cast<const acc_t*>(gt), static_cast<const acc_t*>(weight), a.boxes, a.n1, per_tile,
                static_cast<acc_t*>(score), part);
    // The kernel writes its giou partials at [0, grid) and dfl partials at [grid, 2 grid).
    launch<sum_partials_kernel<acc_t>>(2, kThreads, 0, stream, static_cast<const acc_t*>(part), grid, acc_t(1),
                                       static_cast<acc_t*>(giou_sum), static_cast<acc_t*>(dfl_sum));
  });
  return cudaGetLastError();
}

inline cudaError_t box_branch_backward(const DecodeArgs& a, const void* gt, const void* weight, const void* g_giou,
                                const void* g_dfl, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    const int per_tile = box_branch_tile(a);
    constexpr auto K = box_branch_backward_kernel<scalar_t, acc_t>;
    const size_t smem = tile_smem(per_tile * kBranchLanes, a.n1, sizeof(acc_t));
    launch<K>(tile_grid<K>(a.boxes, per_tile, smem, a.num_sms), kThreads, smem, stream,
              static_cast<const acc_t*>(g_giou), static_cast<const acc_t*>(g_dfl), static_cast<const scalar_t*>(a.pred),
              static_cast<const acc_t*>(a.points), static_cast<const acc_t*>(a.strides), static_cast<const acc_t*>(gt),
              static_cast<const acc_t*>(weight), a.boxes, a.n1, per_tile, static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
