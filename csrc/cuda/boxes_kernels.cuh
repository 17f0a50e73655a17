// CUDA kernels of the box family (box_iou, GIoU loss) and their torch-free
// host entry points. Included by boxes.cu alone.
//
// Pairwise IoU: a block computes a 128 x 32 tile of the (N, M) matrix of one
// image. Both tiles of boxes are staged through shared memory once, each box
// with its area (computed once, not per pair), and each thread writes 16
// outputs of one column, so stores are coalesced along M and the staging's
// load and barrier are paid once for 16 outputs.
#pragma once

#include "../common/box.h"
#include "common.cuh"

namespace gf {
namespace cuda {

constexpr int kIouCols = 32;                                    // threadIdx.x: a column each
constexpr int kIouRowThreads = 8;                               // threadIdx.y
constexpr int kIouRowsPerThread = 16;
constexpr int kIouRows = kIouRowThreads * kIouRowsPerThread;  // a tile's rows

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

template <typename scalar_t, typename acc_t, bool GIOU>
__global__ void __launch_bounds__(kIouCols * kIouRowThreads)
box_iou_pairwise_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b, int64_t n, int64_t m,
                        acc_t eps, scalar_t* __restrict__ out) {
  GF_SHARED(StagedBox<acc_t>, sa, [kIouRows]);
  GF_SHARED(acc_t, sa_area, [kIouRows]);
  GF_SHARED(StagedBox<acc_t>, sb, [kIouCols]);
  GF_SHARED(acc_t, sb_area, [kIouCols]);
  const int64_t img = blockIdx.z;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kIouRows;
  const int64_t col0 = static_cast<int64_t>(blockIdx.x) * kIouCols;
  const int tid = threadIdx.y * kIouCols + threadIdx.x;
  if (tid < kIouRows) {
    stage_box(a + img * n * 4, row0 + tid, n, sa[tid], sa_area[tid]);
  } else if (tid < kIouRows + kIouCols) {
    const int j = tid - kIouRows;
    stage_box(b + img * m * 4, col0 + j, m, sb[j], sb_area[j]);
  }
  __syncthreads();
  const int64_t col = col0 + threadIdx.x;
  if (col >= m) return;
  const Box4<acc_t> bb = sb[threadIdx.x].b;
  const acc_t area_b = sb_area[threadIdx.x];
  const int rows = n - row0 < kIouRows ? static_cast<int>(n - row0) : kIouRows;
  // The offset steps from one output to the thread's next: no 64-bit index product per output.
  int64_t o = (img * n + row0 + threadIdx.y) * m + col;
  const int64_t step = kIouRowThreads * m;
#pragma unroll
  for (int k = 0; k < kIouRowsPerThread; ++k, o += step) {
    const int r = threadIdx.y + k * kIouRowThreads;
    if (r < rows) {
      const Overlap<acc_t> ov = overlap_areas(sa[r].b, sa_area[r], bb, area_b, eps);
      out[o] = cvt<scalar_t>(GIOU ? ov.giou : ov.iou);
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
    const dim3 block(kIouCols, kIouRowThreads);
    const dim3 grid(static_cast<unsigned>((m + kIouCols - 1) / kIouCols),
                    static_cast<unsigned>((n + kIouRows - 1) / kIouRows), static_cast<unsigned>(batch));
    if (giou) launch<box_iou_pairwise_kernel<scalar_t, acc_t, true>>(grid, block, 0, stream, pa, pb, n, m, e, o);
    else launch<box_iou_pairwise_kernel<scalar_t, acc_t, false>>(grid, block, 0, stream, pa, pb, n, m, e, o);
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
