// CUDA kernels of the decoding family (integral, fused decode, fused GFL box
// branch) and their torch-free host entry points. Included by decode.cu alone.
// One thread per distribution row (integral) or per anchor (decode, box
// branch: its 4 x (reg_max + 1) logits), the math in csrc/common. The anchor
// kernels ask for at least 1 resident block, not ptxas's default target: it
// then keeps their 48-70 registers instead of spilling to reach 8 blocks/SM
// (benchmarks/results/ptxas_resources.md); grids follow the real occupancy.
#pragma once

#include "../common/box_branch.h"
#include "common.cuh"

namespace gf {
namespace cuda {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
integral_kernel(const scalar_t* __restrict__ pred, int64_t rows, int n1, scalar_t* __restrict__ out) {
  GF_GRID_STRIDE(r, rows) {
    acc_t lse, dist;
    row_lse_dist<acc_t>(pred + r * n1, n1, lse, dist);
    out[r] = cvt<scalar_t>(dist);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
integral_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ pred, int64_t rows, int n1,
                         scalar_t* __restrict__ out) {
  GF_GRID_STRIDE(r, rows) {
    const scalar_t* x = pred + r * n1;
    acc_t lse, d;
    row_lse_dist<acc_t>(x, n1, lse, d);
    const acc_t g = grad[r];
    for (int b = 0; b < n1; ++b) out[r * n1 + b] = cvt<scalar_t>(g * integral_grad(cvt<acc_t>(x[b]), b, lse, d));
  }
}

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

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1)
decode_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts, const acc_t* __restrict__ st,
              int64_t boxes, int64_t anchors, int n1, bool clamp, acc_t h, acc_t w, scalar_t* __restrict__ out) {
  GF_GRID_STRIDE(i, boxes) {
    const int64_t a = i % anchors;
    const Box4<acc_t> b = decode_forward<acc_t>(pred + i * 4 * n1, n1, pts[2 * a], pts[2 * a + 1], st[a], clamp, h, w);
    out[4 * i + 0] = cvt<scalar_t>(b.x1);
    out[4 * i + 1] = cvt<scalar_t>(b.y1);
    out[4 * i + 2] = cvt<scalar_t>(b.x2);
    out[4 * i + 3] = cvt<scalar_t>(b.y2);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1)
decode_backward_kernel(const acc_t* __restrict__ grad, const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts,
                       const acc_t* __restrict__ st, int64_t boxes, int64_t anchors, int n1, bool clamp, acc_t h,
                       acc_t w, scalar_t* __restrict__ out) {
  GF_GRID_STRIDE(i, boxes) {
    const int64_t a = i % anchors;
    decode_backward<acc_t>(pred + i * 4 * n1, n1, pts[2 * a], pts[2 * a + 1], st[a], clamp, h, w, grad + 4 * i,
                           out + i * 4 * n1);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads, 1)
box_branch_kernel(const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts, const acc_t* __restrict__ st,
                  const acc_t* __restrict__ gt, const acc_t* __restrict__ weight, int64_t p, int n1,
                  acc_t* __restrict__ score, acc_t* __restrict__ partials) {
  acc_t giou = acc_t(0), dfl = acc_t(0);
  GF_GRID_STRIDE(i, p) {
    const BranchOut<acc_t> r =
        box_branch_forward<acc_t>(pred + i * 4 * n1, n1, pts[2 * i], pts[2 * i + 1], st[i], gt + 4 * i, weight[i]);
    giou += r.giou_loss;
    dfl += r.dfl;
    score[i] = r.score;
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
                           const scalar_t* __restrict__ pred, const acc_t* __restrict__ pts, const acc_t* __restrict__ st,
                           const acc_t* __restrict__ gt, const acc_t* __restrict__ weight, int64_t p, int n1,
                           scalar_t* __restrict__ out) {
  const acc_t gg = *g_giou, gd = *g_dfl;
  GF_GRID_STRIDE(i, p) {
    box_branch_backward<acc_t>(pred + i * 4 * n1, n1, pts[2 * i], pts[2 * i + 1], st[i], gt + 4 * i, weight[i], gg, gd,
                               out + i * 4 * n1);
  }
}

// ---- host side -------------------------------------------------------------

// pred (rows, n1) -> out (rows,) in pred's dtype.
inline cudaError_t integral(DType dt, const void* pred, int64_t rows, int n1, void* out, int num_sms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = integral_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(rows, num_sms), kThreads, 0, stream,
        static_cast<const scalar_t*>(pred), rows, n1, static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

inline cudaError_t integral_backward(DType dt, const void* grad, const void* pred, int64_t rows, int n1, void* out,
                              int num_sms, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  dispatch_dtype(dt, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = integral_backward_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(rows, num_sms), kThreads, 0, stream,
        static_cast<const acc_t*>(grad), static_cast<const scalar_t*>(pred), rows, n1, static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

// out (boxes, 4) in pred's dtype.
inline cudaError_t decode(const DecodeArgs& a, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = decode_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(a.boxes, a.num_sms), kThreads, 0, stream,
        static_cast<const scalar_t*>(a.pred), static_cast<const acc_t*>(a.points), static_cast<const acc_t*>(a.strides),
        a.boxes, a.anchors, a.n1, a.clamp, static_cast<acc_t>(a.max_h), static_cast<acc_t>(a.max_w),
        static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

// grad (boxes, 4) accumulation dtype -> out (boxes, 4 * n1).
inline cudaError_t decode_backward(const DecodeArgs& a, const void* grad, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = decode_backward_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(a.boxes, a.num_sms), kThreads, 0, stream,
        static_cast<const acc_t*>(grad), static_cast<const scalar_t*>(a.pred), static_cast<const acc_t*>(a.points),
        static_cast<const acc_t*>(a.strides), a.boxes, a.anchors, a.n1, a.clamp, static_cast<acc_t>(a.max_h),
        static_cast<acc_t>(a.max_w), static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

inline int box_branch_blocks(int64_t p, int num_sms) { return max_grid(p, num_sms); }

// a.anchors == a.boxes == P. giou_sum, dfl_sum: scalars; score (P,); partials:
// 2 * box_branch_blocks() entries; all in the accumulation dtype.
inline cudaError_t box_branch(const DecodeArgs& a, const void* gt, const void* weight, void* giou_sum, void* dfl_sum,
                       void* score, void* partials, cudaStream_t stream) {
  if (a.boxes == 0) {
    cudaError_t e = cudaMemsetAsync(giou_sum, 0, acc_size(a.dtype), stream);
    return e != cudaSuccess ? e : cudaMemsetAsync(dfl_sum, 0, acc_size(a.dtype), stream);
  }
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = box_branch_kernel<scalar_t, acc_t>;
    const int grid = grid_for<K>(a.boxes, a.num_sms);
    auto* part = static_cast<acc_t*>(partials);
    launch<K>(grid, kThreads, 0, stream, static_cast<const scalar_t*>(a.pred), static_cast<const acc_t*>(a.points), static_cast<const acc_t*>(a.strides),
        static_cast<const acc_t*>(gt), static_cast<const acc_t*>(weight), a.boxes, a.n1, static_cast<acc_t*>(score),
        part);
    // The kernel writes its giou partials at [0, grid) and dfl partials at [grid, 2 grid).
    launch<sum_partials_kernel<acc_t>>(1, kThreads, 0, stream, static_cast<const acc_t*>(part), grid,
                                       static_cast<acc_t*>(giou_sum));
    launch<sum_partials_kernel<acc_t>>(1, kThreads, 0, stream, static_cast<const acc_t*>(part + grid), grid,
                                       static_cast<acc_t*>(dfl_sum));
  });
  return cudaGetLastError();
}

inline cudaError_t box_branch_backward(const DecodeArgs& a, const void* gt, const void* weight, const void* g_giou,
                                const void* g_dfl, void* out, cudaStream_t stream) {
  if (a.boxes == 0) return cudaSuccess;
  dispatch_dtype(a.dtype, [&](auto t) {
    using scalar_t = typename decltype(t)::scalar_t;
    using acc_t = typename decltype(t)::acc_t;
    constexpr auto K = box_branch_backward_kernel<scalar_t, acc_t>;
    launch<K>(grid_for<K>(a.boxes, a.num_sms), kThreads, 0, stream,
        static_cast<const acc_t*>(g_giou), static_cast<const acc_t*>(g_dfl), static_cast<const scalar_t*>(a.pred),
        static_cast<const acc_t*>(a.points), static_cast<const acc_t*>(a.strides), static_cast<const acc_t*>(gt),
        static_cast<const acc_t*>(weight), a.boxes, a.n1, static_cast<scalar_t*>(out));
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace gf
