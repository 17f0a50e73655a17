// CUDA kernels of the box family (box_iou, GIoU loss) and their torch-free
// host entry points. Included by boxes.cu alone.
//
// Pairwise IoU: a block computes a tile of the (N, M) matrix of one image,
// 32 or 8 columns wide (iou_cols: the narrow tile for the few gt boxes an image
// usually has, where a 32-wide one would leave most lanes idle) and 4096
// outputs big. Both tiles of boxes are staged through shared memory once, each
// box with its area (computed once, not per pair), and each thread writes 16
// outputs of one column, so the staging's loads and barrier are paid once for
// 16 outputs. A warp's stores cover 32 (or 4 x 8) consecutive columns.
#pragma once

#include <type_traits>

#include "../common/box.h"
#include "common.cuh"

namespace gf {
namespace cuda {

constexpr int kIouThreads = 256;
constexpr int kIouRowsPerThread = 16;
// A tile of COLS columns: COLS threads across (threadIdx.x), 256 / COLS down
// (threadIdx.y), 16 rows each.
template <int COLS> constexpr int iou_tile_rows() { return kIouRowsPerThread * kIouThreads / COLS; }
constexpr int kIouRows = iou_tile_rows<32>();  // the fewest rows a tile has

// The tile width for m columns: 8 where it pads the columns less than 32 does,
// counting the narrow tile's extra staging (its a-boxes are staged m / 8 times,
// not m / 32: 9% more instructions an output by tools/sass_model.py). E.g. 8
// for m <= 24 and m = 100 (104 columns, not 128), 32 for m = 32, 64 or 4000.
inline int iou_cols(int64_t m) {
  const int64_t pad8 = (m + 7) / 8 * 8, pad32 = (m + 31) / 32 * 32;
  return pad8 * 109 < pad32 * 100 ? 8 : 32;
}

// A box in shared memory, aligned so that one 16-byte load (float) reads it.
template <typename T> struct alignas(4 * sizeof(T)) StagedBox {
  Box4<T> b;
};

// Box i of src and its area into shared memory; a box past `count` is zeros.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_box(const scalar_t* __restrict__ src, int64_t i, int64_t count,
                                          StagedBox<acc_t>& box, acc_t& area) {
  Box4<acc_t> bx{acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
  if (i < count) bx = Box4<acc_t>{cvt<acc_t>(src[4 * i]), cvt<acc_t>(src[4 * i + 1]), cvt<acc_t>(src[4 * i + 2]),
                                  cvt<acc_t>(src[4 * i + 3])};
  box.b = bx;
  area = box_area(bx);
}

template <typename scalar_t, typename acc_t, bool GIOU, int COLS>
__global__ void __launch_bounds__(kIouThreads)
box_iou_pairwise_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, int64_t m,
                        acc_t eps, scalar_t* __restrict__ out) {
  constexpr int R = iou_tile_rows<COLS>(), RT = kIouThreads / COLS;
  GF_SHARED(StagedBox<acc_t>, sa, [R]);
  GF_SHARED(acc_t, sa_area, [R]);
  GF_SHARED(StagedBox<acc_t>, sb, [COLS]);
  GF_SHARED(acc_t, sb_area, [COLS]);
  const int64_t img = blockIdx.z;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * R;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * COLS;
  const int tid = threadIdx.y * COLS + threadIdx.x;
#pragma unroll
  for (int k = 0; k < (R + COLS + kIouThreads - 1) / kIouThreads; ++k) {
    const int t = tid + k * kIouThreads;
    if (t < R) stage_box(a + img * n * 4, row0 + t, n, sa[t], sa_area[t]);
    else if (t < R + COLS) stage_box(b + img * m * 4, col0 + (t - R), m, sb[t - R], sb_area[t - R]);
  }
  __syncthreads();
  const int64_t col = col0 + threadIdx.x;
  if (col >= m) return;
  const Box4<acc_t> bb = sb[threadIdx.x].b;
  const acc_t area_b = sb_area[threadIdx.x];
  const int rows = n - row0 < R ? static_cast<int>(n - row0) : R;
  // The address steps from one output to the thread's next, as an integer (it
  // may pass the end, where nothing is stored): no index product per output.
  // (The stores are then generic ST.E, not STG.E: the same path to global
  // memory on sm_80/sm_90; the int64 index cost 2.8 instructions an output.)
  uintptr_t addr = reinterpret_cast<uintptr_t>(out) +
                   static_cast<uintptr_t>((img * n + row0 + threadIdx.y) * m + col) * sizeof(scalar_t);
  const uintptr_t step = static_cast<uintptr_t>(RT * m) * sizeof(scalar_t);
#pragma unroll
  for (int k = 0; k < kIouRowsPerThread; ++k, addr += step) {
    const int r = threadIdx.y + k * RT;
    if (r < rows) {
      const Overlap<acc_t> ov = overlap_areas(sa[r].b, sa_area[r], bb, area_b, eps);
      *reinterpret_cast<scalar_t*>(addr) = cvt<scalar_t>(GIOU ? ov.giou : ov.iou);
    }
  }
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ Box4<acc_t> load_box_as(const scalar_t* p) {
  return Box4<acc_t>{cvt<acc_t>(p[0]), cvt<acc_t>(p[1]), cvt<acc_t>(p[2]), cvt<acc_t>(p[3])};
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
box_iou_aligned_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, acc_t eps,
                       bool giou, scalar_t* __restrict__ out) {
  GF_GRID_STRIDE(i, n) {
    out[i] = cvt<scalar_t>(iou_or_giou(load_box_as<scalar_t, acc_t>(a + 4 * i), load_box_as<scalar_t, acc_t>(b + 4 * i),
                                       eps, giou));
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
giou_loss_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ target, const acc_t* __restrict__ weight,
                 int64_t n, acc_t eps, acc_t* __restrict__ row_out, acc_t* __restrict__ partials) {
  acc_t acc = acc_t(0);
  GF_GRID_STRIDE(i, n) {
    const Overlap<acc_t> o = overlap(load_box_as<scalar_t, acc_t>(pred + 4 * i), load_box(target + 4 * i), eps);
    const acc_t l = (acc_t(1) - o.giou) * weight_of(weight, i);
    if (row_out) row_out[i] = l;
    acc += l;
  }
  if (partials) {  // uniform across the grid
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
giou_loss_backward_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ target,
                          const acc_t* __restrict__ weight, const acc_t* __restrict__ grad, acc_t grad_scale,
                          bool grad_per_row, int64_t n, acc_t eps, scalar_t* __restrict__ out) {
  const acc_t g0 = grad[0] * grad_scale;
  GF_GRID_STRIDE(i, n) {
    const acc_t g = -(grad_per_row ? grad[i] : g0) * weight_of(weight, i);  // loss = 1 - giou
    const Box4<acc_t> d = overlap_grad_a(load_box_as<scalar_t, acc_t>(pred + 4 * i), load_box(target + 4 * i), eps, true, g);
    out[4 * i + 0] = cvt<scalar_t>(d.x1);
    out[4 * i + 1] = cvt<scalar_t>(d.y1);
    out[4 * i + 2] = cvt<scalar_t>(d.x2);
    out[4 * i + 3] = cvt<scalar_t>(d.y2);
  }
}

// ---- host side -------------------------------------------------------------

// Pairwise: a (batch, n, 4), b (batch, m, 4) -> out (batch, n, m). Aligned: a, b (n, 4) -> out (n,).
inline cudaError_t box_iou(DType dt, const void* a, const void* b, int64_t batch, int64_t n, int64_t m, bool aligned,
                    bool giou, double eps, void* out, int num_sms, cudaStream_t stream) {
  if (aligned ? n == 0 : batch * n * m == 0) return cudaSuccess;
  if (!aligned && (batch > 65535 || (n + kIouRows - 1) / kIouRows > 65535)) return cudaErrorInvalidConfiguration;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    const auto* pa = static_cast<const scalar_t*>(a);
    const auto* pb = static_cast<const scalar_t*>(b);
    auto* o = static_cast<scalar_t*>(out);
    const acc_t e = static_cast<acc_t>(eps);
    if (aligned) {
      constexpr auto K = box_iou_aligned_kernel<scalar_t, acc_t>;
      launch<K>(grid_for<K>(n, num_sms), kThreads, 0, stream, pa, pb, n, e, giou, o);
      return;
    }
    auto pairwise = [&](auto cols_tag) {
      constexpr int C = decltype(cols_tag)::value;
      const dim3 block(C, kIouThreads / C);
      const dim3 grid(static_cast<unsigned>((m + C - 1) / C),
                      static_cast<unsigned>((n + iou_tile_rows<C>() - 1) / iou_tile_rows<C>()),
                      static_cast<unsigned>(batch));
      if (giou) launch<box_iou_pairwise_kernel<scalar_t, acc_t, true, C>>(grid, block, 0, stream, pa, pb, n, m, e, o);
      else launch<box_iou_pairwise_kernel<scalar_t, acc_t, false, C>>(grid, block, 0, stream, pa, pb, n, m, e, o);
    };
    if (iou_cols(m) == 8) pairwise(std::integral_constant<int, 8>{});
    else pairwise(std::integral_constant<int, 32>{});
  });
  return cudaGetLastError();
}

inline int giou_loss_blocks(int64_t n, int num_sms) { return max_grid(n, num_sms); }

// out: (n,) when `sum` is false, else a scalar (times mean_scale(mean, divisor));
// partials: giou_loss_blocks() entries.
inline cudaError_t giou_loss(DType dt, const void* pred, const void* target, const void* weight, int64_t n, double eps,
                      bool sum, bool mean, double divisor, void* out, void* partials, int num_sms,
                      cudaStream_t stream) {
  if (n == 0 && !sum) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = giou_loss_kernel<scalar_t, acc_t>;
    const int grid = n == 0 ? 0 : grid_for<K>(n, num_sms);
    auto* part = sum ? static_cast<acc_t*>(partials) : nullptr;
    if (grid > 0)
      launch<K>(grid, kThreads, 0, stream, static_cast<const scalar_t*>(pred), static_cast<const acc_t*>(target),
                static_cast<const acc_t*>(weight), n, static_cast<acc_t>(eps),
                sum ? nullptr : static_cast<acc_t*>(out), part);
    if (sum)  // no boxes: 0 * the mean's scale, as ATen would divide it
      launch<sum_partials_kernel<acc_t>>(1, kThreads, 0, stream, static_cast<const acc_t*>(part), grid,
                                         mean_scale<acc_t>(mean, divisor), static_cast<acc_t*>(out), nullptr);
  });
  return cudaGetLastError();
}

// grad: () (times mean_scale(mean, divisor)) or (n,) when grad_per_row.
inline cudaError_t giou_loss_backward(DType dt, const void* pred, const void* target, const void* weight, const void* grad,
                               bool grad_per_row, bool mean, double divisor, int64_t n, double eps, void* out,
                               int num_sms, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = giou_loss_backward_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(n, num_sms), kThreads, 0, stream, static_cast<const scalar_t*>(pred), static_cast<const acc_t*>(target), static_cast<const acc_t*>(weight),
        static_cast<const acc_t*>(grad), mean_scale<acc_t>(mean, divisor), grad_per_row, n, static_cast<acc_t>(eps),
        static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
