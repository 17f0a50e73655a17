// CUDA kernels of the QFL/DFL family and their torch-free host entry points.
// Raw pointers only, so CI compiles this header with nvcc on a machine whose
// PyTorch has no CUDA. Included by losses.cu alone.
//
// QFL forward (sum) and backward walk the logits as one flat array in 16-byte
// packs (rows never straddle a pack: C % VEC == 0 is checked by the caller);
// QFL forward (none) gives each row one warp; DFL gives each row one thread,
// its logits staged through shared memory (row_tiles.cuh).
// Without validation nothing here reads or writes out of bounds for any
// value: labels outside [0, C) match no column and DFL targets are clamped
// to [0, reg_max] (gf::dfl_split).
#pragma once

#include <cstdint>

#include "../common/dfl.h"
#include "row_tiles.cuh"
#include "../common/qfl.h"
#include "common.cuh"
#include "runtime.cuh"

namespace gf {
namespace cuda {

struct LossArgs {
  const void* pred = nullptr;      // (rows, cols) logits, contiguous
  const int64_t* label = nullptr;  // QFL: (rows,)
  const void* target = nullptr;    // QFL score / DFL target, (rows,), accumulation dtype
  const void* weight = nullptr;    // (rows,) accumulation dtype, or null
  const void* grad = nullptr;      // backward: () or (rows,), accumulation dtype
  bool grad_per_row = false;
  bool mean = false;               // "mean": the sum and the incoming gradient scaled by mean_scale()
  double divisor = 1;
  int64_t rows = 0;
  int64_t cols = 0;
  double beta = 2.0;
  DType dtype = DType::Float;
  bool vectorized = false;         // pred is 16-byte aligned and cols % pack_width == 0
  int num_sms = 1;
};

template <typename scalar_t, typename acc_t, int VEC, bool BETA2, typename index_t>
__global__ void __launch_bounds__(kThreads)
qfl_forward_sum_kernel(const scalar_t* __restrict__ pred, const int64_t* __restrict__ label,
                       const acc_t* __restrict__ score, const acc_t* __restrict__ weight,
                       index_t rows, index_t cols, acc_t beta, acc_t* __restrict__ partials) {
  using P = Pack<scalar_t, VEC>;
  const index_t npacks = rows * cols / VEC;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  acc_t acc = acc_t(0);
  const index_t v0 = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  RowStep<index_t> at(v0 * VEC, stride * VEC, cols > 0 ? cols : index_t(1));  // no columns: no packs, no loop
  for (index_t v = v0; v < npacks; v += stride, at.next()) {
    const index_t row = at.row, c0 = at.col;
    const P pk = reinterpret_cast<const P*>(pred)[v];
    const int64_t lab = label[row];
    const acc_t sc = score[row];
    acc_t rs = acc_t(0);
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      rs += qfl_loss<acc_t, BETA2>(cvt<acc_t>(pk.v[k]), qfl_target<acc_t>(c0 + k, lab, sc), beta);
    acc += rs * weight_of(weight, row);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// 'none': `lanes` lanes a row (a power of two up to 32, qfl_row_lanes), so a
// warp takes 32 / lanes rows at a time and a row's packs fill its lanes (a
// warp a row left 12 of 32 lanes idle at 80 classes); each row's lanes then
// add their sums by butterfly shuffles in a fixed order.
template <typename scalar_t, typename acc_t, int VEC, bool BETA2>
__global__ void __launch_bounds__(kThreads)
qfl_forward_rows_kernel(const scalar_t* __restrict__ pred, const int64_t* __restrict__ label,
                        const acc_t* __restrict__ score, const acc_t* __restrict__ weight,
                        int64_t rows, int64_t cols, int lanes, acc_t beta, acc_t* __restrict__ out) {
  using P = Pack<scalar_t, VEC>;
  const int lane = threadIdx.x & 31;
  const int sub = lane & (lanes - 1);
  const int per_warp = 32 / lanes;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t npacks = cols / VEC;
  // Warp-uniform bounds: every lane reaches the shuffles.
  for (int64_t base = (static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5)) * per_warp;
       base < rows; base += warps * per_warp) {
    const int64_t row = base + lane / lanes;
    acc_t acc = acc_t(0);
    if (row < rows) {
      const P* rp = reinterpret_cast<const P*>(pred + row * cols);
      const int64_t lab = label[row];
      const acc_t sc = score[row];
      for (int64_t p = sub; p < npacks; p += lanes) {
        const P pk = rp[p];
#pragma unroll
        for (int k = 0; k < VEC; ++k)
          acc += qfl_loss<acc_t, BETA2>(cvt<acc_t>(pk.v[k]), qfl_target<acc_t>(p * VEC + k, lab, sc), beta);
      }
    }
    for (int o = lanes >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (row < rows && sub == 0) out[row] = acc * weight_of(weight, row);
  }
}

template <typename scalar_t, typename acc_t, int VEC, bool BETA2, typename index_t>
__global__ void __launch_bounds__(kThreads)
qfl_backward_kernel(const scalar_t* __restrict__ pred, const int64_t* __restrict__ label,
                    const acc_t* __restrict__ score, const acc_t* __restrict__ weight,
                    const acc_t* __restrict__ grad, acc_t grad_scale, bool grad_per_row, index_t rows,
                    index_t cols, acc_t beta, scalar_t* __restrict__ out) {
  using P = Pack<scalar_t, VEC>;
  const index_t npacks = rows * cols / VEC;
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  const acc_t g0 = grad[0] * grad_scale;
  const index_t v0 = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  RowStep<index_t> at(v0 * VEC, stride * VEC, cols > 0 ? cols : index_t(1));  // no columns: no packs, no loop
  for (index_t v = v0; v < npacks; v += stride, at.next()) {
    const index_t row = at.row, c0 = at.col;
    const P pk = reinterpret_cast<const P*>(pred)[v];
    const int64_t lab = label[row];
    const acc_t sc = score[row];
    const acc_t scale = (grad_per_row ? grad[row] : g0) * weight_of(weight, row);
    P res;
#pragma unroll
    for (int k = 0; k < VEC; ++k)
      res.v[k] = cvt<scalar_t>(scale * qfl_grad<acc_t, BETA2>(cvt<acc_t>(pk.v[k]),
                                                               qfl_target<acc_t>(c0 + k, lab, sc), beta));
    reinterpret_cast<P*>(out)[v] = res;
  }
}

// The DFL rows staged through shared memory (row_tiles.cuh): coalesced loads
// of the logits (and stores of the gradient), one thread per row.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
dfl_forward_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ target,
                         const acc_t* __restrict__ weight, int64_t rows, int n1, int per_tile,
                         acc_t* __restrict__ row_out, acc_t* __restrict__ partials) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  const int stride = n1 | 1;
  acc_t acc = acc_t(0);
  GF_TILE_LOOP(first, nr, rows, per_tile) {
    __syncthreads();
    load_tile(pred + first * n1, nr * n1, n1, stride, tile);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < nr) {
      const int64_t r = first + threadIdx.x;
      const acc_t l = dfl_row_loss<acc_t>(tile + threadIdx.x * stride, n1, target[r]) * weight_of(weight, r);
      if (row_out) row_out[r] = l;
      acc += l;
    }
  }
  if (partials) {  // uniform across the grid, so every thread reaches block_sum
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
dfl_backward_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ target,
                          const acc_t* __restrict__ weight, const acc_t* __restrict__ grad, acc_t grad_scale,
                          bool grad_per_row, int64_t rows, int n1, int per_tile, scalar_t* __restrict__ out) {
  GF_DYNAMIC_SHARED(unsigned char, smem);
  acc_t* tile = reinterpret_cast<acc_t*>(smem);
  const int stride = n1 | 1;
  const acc_t g0 = grad[0] * grad_scale;
  GF_TILE_LOOP(first, nr, rows, per_tile) {
    __syncthreads();
    load_tile(pred + first * n1, nr * n1, n1, stride, tile);
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < nr) {
      const int64_t r = first + threadIdx.x;
      acc_t* x = tile + threadIdx.x * stride;
      const acc_t scale = (grad_per_row ? grad[r] : g0) * weight_of(weight, r);
      dfl_row_grad<acc_t>(x, n1, target[r], scale, x);  // in place: each logit is read before it is replaced
    }
    __syncthreads();
    store_tile(tile, nr * n1, n1, stride, out + first * n1);
  }
}

// ---- host side -------------------------------------------------------------

// DFL rows per tile.
inline int dfl_tile(const LossArgs& a) { return tile_rows(static_cast<int>(a.cols), acc_size(a.dtype)); }

// Lanes a row for qfl_forward_rows_kernel over `packs` packs: the most (up to
// 32) whose idle lane-steps are at most 1/16 of the packs (1 lane: none).
inline int qfl_row_lanes(int64_t packs) {
  int l = 32;
  while (l > 1 && ((packs + l - 1) / l * l - packs) * 16 > packs) l >>= 1;
  return l;
}

// Entries `partials` must have for qfl_forward/dfl_forward with sum = true.
inline int qfl_forward_blocks(const LossArgs& a) { return max_grid(a.rows * a.cols, a.num_sms); }
inline int dfl_forward_blocks(const LossArgs& a) { return max_tile_grid(a.rows, dfl_tile(a), a.num_sms); }

// out: (rows,) when `sum` is false, else a scalar; partials: qfl_forward_blocks() entries.
inline cudaError_t qfl_forward(const LossArgs& a, bool sum, void* out, void* partials, cudaStream_t stream) {
  if (!sum && (a.rows == 0 || a.cols == 0))
    return a.rows > 0 ? cudaMemsetAsync(out, 0, acc_size(a.dtype) * a.rows, stream) : cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr int V = pack_width<scalar_t>();
    const auto* pred = static_cast<const scalar_t*>(a.pred);
    const auto* score = static_cast<const acc_t*>(a.target);
    const auto* weight = static_cast<const acc_t*>(a.weight);
    const acc_t beta = static_cast<acc_t>(a.beta);
    const bool b2 = a.beta == 2.0;
    const bool vec = a.vectorized && aligned16(a.pred);
    if (!sum) {
      auto* o = static_cast<acc_t*>(out);
      const int lanes = qfl_row_lanes(a.cols / (vec ? V : 1));
      auto rows = [&](auto kernel_tag) {
        constexpr auto K = decltype(kernel_tag)::value;
        launch<K>(grid_for<K>(a.rows * lanes, a.num_sms), kThreads, 0, stream, pred, a.label, score, weight, a.rows,
                  a.cols, lanes, beta, o);
      };
      if (vec) { if (b2) rows(Kern<qfl_forward_rows_kernel<scalar_t, acc_t, V, true>>{}); else rows(Kern<qfl_forward_rows_kernel<scalar_t, acc_t, V, false>>{}); }
      else { if (b2) rows(Kern<qfl_forward_rows_kernel<scalar_t, acc_t, 1, true>>{}); else rows(Kern<qfl_forward_rows_kernel<scalar_t, acc_t, 1, false>>{}); }
      return;
    }
    auto* part = static_cast<acc_t*>(partials);
    auto reduce = [&](auto kernel_tag, auto index_tag) {
      constexpr auto K = decltype(kernel_tag)::value;
      using IT = decltype(index_tag);
      // No rows: no partials, and the sum is 0 * the mean's scale, as ATen would divide it.
      const int grid = a.rows == 0 ? 0 : grid_for<K>(a.rows * a.cols / (vec ? V : 1), a.num_sms);
      if (grid > 0)
        launch<K>(grid, kThreads, 0, stream, pred, a.label, score, weight, static_cast<IT>(a.rows),
                  static_cast<IT>(a.cols), beta, part);
      launch<sum_partials_kernel<acc_t>>(1, kThreads, 0, stream, static_cast<const acc_t*>(part), grid,
                                         mean_scale<acc_t>(a.mean, a.divisor), static_cast<acc_t*>(out), nullptr);
    };
#define GF_QFL_SUM(VV, BB, IT) reduce(Kern<qfl_forward_sum_kernel<scalar_t, acc_t, VV, BB, IT>>{}, IT{})
    if (fits_int32(a.rows * a.cols)) {
      if (vec) { if (b2) GF_QFL_SUM(V, true, int32_t); else GF_QFL_SUM(V, false, int32_t); }
      else { if (b2) GF_QFL_SUM(1, true, int32_t); else GF_QFL_SUM(1, false, int32_t); }
    } else {
      if (vec) { if (b2) GF_QFL_SUM(V, true, int64_t); else GF_QFL_SUM(V, false, int64_t); }
      else { if (b2) GF_QFL_SUM(1, true, int64_t); else GF_QFL_SUM(1, false, int64_t); }
    }
#undef GF_QFL_SUM
  });
  return cudaGetLastError();
}

// out: (rows, cols) in the logits' dtype. The packed path stores 16 bytes at a
// time, so it is taken only when `out` is 16-byte aligned too.
inline cudaError_t qfl_backward(const LossArgs& a, void* out, cudaStream_t stream) {
  if (a.rows * a.cols == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr int V = pack_width<scalar_t>();
    const auto* pred = static_cast<const scalar_t*>(a.pred);
    const auto* score = static_cast<const acc_t*>(a.target);
    const auto* weight = static_cast<const acc_t*>(a.weight);
    const auto* grad = static_cast<const acc_t*>(a.grad);
    auto* o = static_cast<scalar_t*>(out);
    const acc_t beta = static_cast<acc_t>(a.beta);
    const bool b2 = a.beta == 2.0;
    const bool vec = a.vectorized && aligned16(a.pred) && aligned16(out);
    auto run = [&](auto kernel_tag, auto index_tag) {
      constexpr auto K = decltype(kernel_tag)::value;
      using IT = decltype(index_tag);
      launch<K>(grid_for<K>(a.rows * a.cols / (vec ? V : 1), a.num_sms), kThreads, 0, stream, pred, a.label, score,
                weight, grad, mean_scale<acc_t>(a.mean, a.divisor), a.grad_per_row, static_cast<IT>(a.rows),
                static_cast<IT>(a.cols), beta, o);
    };
#define GF_QFL_BWD(VV, BB, IT) run(Kern<qfl_backward_kernel<scalar_t, acc_t, VV, BB, IT>>{}, IT{})
    if (fits_int32(a.rows * a.cols)) {
      if (vec) { if (b2) GF_QFL_BWD(V, true, int32_t); else GF_QFL_BWD(V, false, int32_t); }
      else { if (b2) GF_QFL_BWD(1, true, int32_t); else GF_QFL_BWD(1, false, int32_t); }
    } else {
      if (vec) { if (b2) GF_QFL_BWD(V, true, int64_t); else GF_QFL_BWD(V, false, int64_t); }
      else { if (b2) GF_QFL_BWD(1, true, int64_t); else GF_QFL_BWD(1, false, int64_t); }
    }
#undef GF_QFL_BWD
  });
  return cudaGetLastError();
}

inline cudaError_t dfl_forward(const LossArgs& a, bool sum, void* out, void* partials, cudaStream_t stream) {
  if (a.rows == 0 && !sum) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    auto* part = sum ? static_cast<acc_t*>(partials) : nullptr;
    const int per_tile = dfl_tile(a);
    constexpr auto K = dfl_forward_kernel<scalar_t, acc_t>;
    const size_t smem = tile_smem(per_tile, static_cast<int>(a.cols), sizeof(acc_t));
    const int grid = a.rows == 0 ? 0 : tile_grid<K>(a.rows, per_tile, smem, a.num_sms);
    if (grid > 0)
      launch<K>(grid, kThreads, smem, stream, static_cast<const scalar_t*>(a.pred),
                static_cast<const acc_t*>(a.target), static_cast<const acc_t*>(a.weight), a.rows,
                static_cast<int>(a.cols), per_tile, sum ? nullptr : static_cast<acc_t*>(out), part);
    if (sum)  // no rows: 0 * the mean's scale, as ATen would divide it
      launch<sum_partials_kernel<acc_t>>(1, kThreads, 0, stream, static_cast<const acc_t*>(part), grid,
                                         mean_scale<acc_t>(a.mean, a.divisor), static_cast<acc_t*>(out), nullptr);
  });
  return cudaGetLastError();
}

inline cudaError_t dfl_backward(const LossArgs& a, void* out, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    const int per_tile = dfl_tile(a);
    constexpr auto K = dfl_backward_kernel<scalar_t, acc_t>;
    const size_t smem = tile_smem(per_tile, static_cast<int>(a.cols), sizeof(acc_t));
    launch<K>(tile_grid<K>(a.rows, per_tile, smem, a.num_sms), kThreads, smem, stream,
              static_cast<const scalar_t*>(a.pred), static_cast<const acc_t*>(a.target),
              static_cast<const acc_t*>(a.weight), static_cast<const acc_t*>(a.grad),
              mean_scale<acc_t>(a.mean, a.divisor), a.grad_per_row, a.rows,
              static_cast<int>(a.cols), per_tile, static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
